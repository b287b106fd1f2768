"""The WSGI application with the webhook's durable commit switched off: for the benchmark only.

`bench_webhook` serves this beside the real `evoflow.wsgi` to measure what the durable receipt
commit costs (`synchronous_commit = on` for the receipt's transaction, C7). Production never
loads it: without the durable commit, a PostgreSQL crash can lose payloads already answered 200
(the crash test shows it), so there is no setting for it.
"""

from __future__ import annotations

import importlib

from evoflow.wsgi import application

# Imported once Django is set up (by evoflow.wsgi above).
webhook = importlib.import_module("conversations.services.webhook")
# The server's own synchronous_commit applies instead (off on the local cluster).
webhook.RECEIPT_COMMIT_DURABLE = False

__all__ = ["application"]
