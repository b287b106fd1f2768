"""The WSGI application with the webhook's durable commit switched off: for the benchmark only.

`bench_webhook` serves this beside the real `evoflow.wsgi` to measure what the durable receipt
commit costs (`synchronous_commit = on` for the receipt's transaction, C7). Production never
loads it: without the durable commit, a PostgreSQL crash can lose payloads already answered 200
(the crash test shows it), so there is no setting for it.
"""

from __future__ import annotations

from evoflow.wsgi import application


def _durable_commit_off() -> None:
    # Imported once Django is set up (by evoflow.wsgi above); the server's own
    # synchronous_commit applies instead (off on the local cluster).
    from conversations.services import webhook

    webhook.RECEIPT_COMMIT_DURABLE = False


_durable_commit_off()

__all__ = ["application"]
