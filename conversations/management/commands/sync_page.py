"""`manage.py sync_page PAGE_ID [--full]`: one sync of one page, in the foreground.

Exit codes: 0 succeeded, 1 partial, 2 failed or cancelled, 3 refused (no such page, the page
needs re-authorisation, or a run of the page is already queued or running: its id is printed).
"""

from __future__ import annotations

import sys
import time
from typing import Any, NoReturn

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from conversations.models import SYNC_RUN_COUNTERS, FacebookPage, SyncMode, SyncRun, SyncStatus
from conversations.services.sync import (
    SyncRefused,
    sync_request,
    sync_run_cancel,
    sync_run_execute,
)

EXIT_SUCCEEDED = 0
EXIT_PARTIAL = 1
EXIT_FAILED = 2
EXIT_REFUSED = 3
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT
EXIT_CODE_BY_STATUS = {
    SyncStatus.SUCCEEDED: EXIT_SUCCEEDED,
    SyncStatus.PARTIAL: EXIT_PARTIAL,
    SyncStatus.FAILED: EXIT_FAILED,
    SyncStatus.CANCELLED: EXIT_FAILED,
}
SPINNER = "|/-\\"


class Command(BaseCommand):
    help = (
        "Sync one Facebook page from the Graph API in the foreground (incremental by default), "
        "with a progress line. Exit 0 succeeded, 1 partial, 2 failed or cancelled, 3 refused "
        "(unknown page, re-authorisation needed, or a sync of the page already live)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("page_id", help="the Facebook page id")
        parser.add_argument(
            "--full", action="store_true", help="a full sync (every conversation and message)"
        )
        parser.add_argument("--no-progress", action="store_true", help="no progress line")

    def handle(self, *args: Any, page_id: str, full: bool, **options: Any) -> None:
        page = FacebookPage.objects.filter(page_id=page_id).first()
        if page is None:
            self._exit(EXIT_REFUSED, f"refused: no page with id {page_id}")
        mode = SyncMode.FULL if full else SyncMode.INCREMENTAL
        try:
            run, created = sync_request(page=page, mode=mode, trigger="command", enqueue=False)
        except SyncRefused as error:
            self._exit(EXIT_REFUSED, f"refused: {error}")
        if not created:
            self._exit(
                EXIT_REFUSED,
                f"refused: a sync of page {page_id} is already {run.status}: run {run.pk}",
            )
        self.stdout.write(
            f"sync run {run.pk} of page {page_id} ({mode}), request id {run.request_id}, "
            f"Graph API at {settings.GRAPH_API_BASE_URL}"
        )
        progress = _ProgressLine(self.stderr, enabled=not options["no_progress"])
        try:
            final = sync_run_execute(run_id=run.pk, progress=progress.draw)
        except KeyboardInterrupt:
            # Ctrl-C: the run gives its lease back now instead of holding the page until its
            # heartbeat expires; its cursor stays for the next run.
            progress.close()
            sync_run_cancel(run_id=run.pk)
            self._exit(EXIT_INTERRUPTED, f"interrupted: sync run {run.pk} cancelled")
        progress.close()
        self._report(final)
        code = EXIT_CODE_BY_STATUS.get(SyncStatus(final.status), EXIT_FAILED)
        if code != EXIT_SUCCEEDED:
            sys.exit(code)

    def _report(self, run: SyncRun) -> None:
        self.stdout.write(f"sync run {run.pk} {run.status}")
        if run.error_code:
            self.stdout.write(f"  error: {run.error_code}: {run.error}")
        for name in SYNC_RUN_COUNTERS:
            self.stdout.write(f"  {name.replace('_', ' ')}: {getattr(run, name)}")
        if run.status == SyncStatus.PARTIAL:
            # Say why it stopped early: a partial run with no failed batch stopped on its
            # budget or an error of the whole run, named here.
            why = (
                f"{run.error_code}: {run.error}"
                if run.error_code
                else f"{len(run.failed_batches or [])} batches failed"
            )
            self.stdout.write(f"  partial because {why}; the next run resumes from its cursor")
        if run.failed_batches:
            self.stdout.write(f"  failed batches: {len(run.failed_batches)}")
            for batch in run.failed_batches[:10]:
                self.stdout.write(
                    f"    {batch.get('folder')} after {batch.get('after') or 'start'}: "
                    f"{batch.get('error_code')}: {batch.get('detail')}"
                )

    def _exit(self, code: int, message: str) -> NoReturn:
        self.stderr.write(message)
        sys.exit(code)


class _ProgressLine:
    """One line redrawn in place (no total is known, so a spinner and the counters)."""

    def __init__(self, stream: Any, *, enabled: bool) -> None:
        self.stream = stream
        self.enabled = enabled
        self.turn = 0
        self.started = time.monotonic()
        self.drawn = False

    def draw(self, run: SyncRun) -> None:
        if not self.enabled:
            return
        self.turn += 1
        elapsed = time.monotonic() - self.started
        line = (
            f"\r{SPINNER[self.turn % len(SPINNER)]} {run.status} {elapsed:6.1f}s"
            f" | conversations {run.conversations_seen}"
            f" | messages inserted {run.messages_inserted}"
            f" | API calls {run.api_calls}"
            f" | throttled waits {run.throttled_waits}"
        )
        self.stream.write(line, ending="")
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        if self.drawn:
            self.stream.write("")
