"""gunicorn's settings for evoflow's web processes (gunicorn reads this file when started from
the project's directory; `-c gunicorn.conf.py` names it from anywhere).

Threaded workers (`gthread`): a progress stream (conversations/streams.py) holds its request
thread while it is open, and with one-thread `sync` workers each open progress page would hold
a whole process. Every process keeps at most SSE_MAX_STREAMS_PER_PROCESS streams open, which must
stay below its threads, so the other requests (`/healthz`, the admin, the API) always find a free
thread; a worker refuses to start otherwise. Command-line options override these values
(`--workers` sets the processes: about two per core).

The access and error logs go through `RedactingLogger`: Meta sends the webhook's verify token in
the query string of its verification request, and the access log prints request lines whole.
"""

from __future__ import annotations

import sys
from typing import Any

from gunicorn.glogging import Logger

from evoflow.logging import RedactSecretsFilter


class RedactingLogger(Logger):
    """gunicorn's logger, with the verify token's value replaced in every access and error line
    (the request line, the query string, a failed request's URI)."""

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        for log in (self.error_log, self.access_log):
            if not any(isinstance(each, RedactSecretsFilter) for each in log.filters):
                log.addFilter(RedactSecretsFilter())


logger_class = RedactingLogger
worker_class = "gthread"
threads = 4

# gunicorn's exit status for "a worker could not boot": the arbiter stops instead of respawning.
_WORKER_BOOT_ERROR = 3


def post_worker_init(worker: Any) -> None:
    """Refuse to serve when open streams could take every request thread of a process."""
    from django.conf import settings

    streams = settings.SSE_MAX_STREAMS_PER_PROCESS
    if streams >= worker.cfg.threads:
        worker.log.error(
            "SSE_MAX_STREAMS_PER_PROCESS (%s) must be below the worker's threads (%s), or open "
            "progress streams could leave no thread for other requests",
            streams,
            worker.cfg.threads,
        )
        sys.exit(_WORKER_BOOT_ERROR)


def child_exit(server: Any, worker: Any) -> None:
    """In multiprocess metrics mode, a worker that exited no longer counts in the gauges of
    live processes (its counters stay: what it counted happened)."""
    import os

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
