"""`manage.py webhook_reprocess [--receipt ID ...] [--status STATUS] [--since ISO] [--json]`:
apply stored webhook receipts again with the code as it is now (after a fix).

Quarantined events (and rejected or failed receipts) are re-read from the raw bytes each receipt
kept; whatever now fits is applied. Idempotent: everything is written by key, so re-applying what
is stored already changes nothing, and the counts say so. Exit codes: 0 done (nothing left
quarantined or failed among the receipts taken), 1 done but some receipts are still quarantined,
failed or rejected, 2 bad arguments.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from conversations.models import ReceiptStatus
from conversations.services.webhook_reprocess import webhook_receipts_reprocess

EXIT_DONE = 0
EXIT_SOME_LEFT = 1
EXIT_BAD_ARGUMENTS = 2


def _moment(value: str) -> datetime:
    moment = parse_datetime(value)
    if moment is None:
        raise CommandError(f"--since: not an ISO 8601 date and time: {value!r}")
    return moment if timezone.is_aware(moment) else timezone.make_aware(moment, UTC)


class Command(BaseCommand):
    help = (
        "Apply stored webhook receipts again with the current code: those named with --receipt, "
        "or of --status, or received --since a time. Idempotent, with counts. Exit 0 done, 1 "
        "some receipts still quarantined, failed or rejected, 2 bad arguments."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--receipt", type=int, action="append", default=[], help="a receipt id (repeatable)"
        )
        parser.add_argument(
            "--status",
            choices=[str(status) for status in ReceiptStatus],
            help="only receipts of this status (e.g. quarantined)",
        )
        parser.add_argument(
            "--since", help="only receipts received at or after this ISO 8601 time (UTC if bare)"
        )
        parser.add_argument("--limit", type=int, help="at most this many receipts, oldest first")
        parser.add_argument("--json", action="store_true", help="one JSON document")

    def handle(self, *args: Any, **options: Any) -> None:
        receipts, status, since = options["receipt"], options["status"], options["since"]
        if not receipts and status is None and since is None:
            self.stderr.write("name receipts (--receipt), a --status or a --since time")
            sys.exit(EXIT_BAD_ARGUMENTS)
        try:
            moment = _moment(since) if since else None
        except CommandError as error:
            self.stderr.write(str(error))
            sys.exit(EXIT_BAD_ARGUMENTS)
        summary = webhook_receipts_reprocess(
            receipt_ids=receipts, status=status, since=moment, limit=options["limit"]
        )
        left = sum(
            summary.by_status.get(name, 0)
            for name in (ReceiptStatus.QUARANTINED, ReceiptStatus.FAILED, ReceiptStatus.REJECTED)
        )
        by_status = dict(sorted(summary.by_status.items()))
        document = {
            "receipts": summary.receipts,
            "by_status": by_status,
            "messages_inserted": summary.messages_inserted,
            "events_inserted": summary.events_inserted,
            "messages_edited": summary.messages_edited,
            "reactions_changed": summary.reactions_changed,
            "messages_marked": summary.messages_marked,
            "changed": summary.changed,
            "quarantined_events_left": summary.quarantined_events,
        }
        if options["json"]:
            self.stdout.write(json.dumps(document))
        else:
            statuses = ", ".join(f"{n} {s}" for s, n in by_status.items()) or "none"
            self.stdout.write(
                f"{summary.receipts} receipts reprocessed ({statuses}); "
                f"{summary.changed} changes: {summary.messages_inserted} messages inserted, "
                f"{summary.events_inserted} events inserted, {summary.messages_edited} messages "
                f"edited, {summary.reactions_changed} reactions changed, "
                f"{summary.messages_marked} messages marked; "
                f"{summary.quarantined_events} events still quarantined"
            )
            if summary.receipts and not summary.changed:
                self.stdout.write("Nothing changed: every event of these receipts was applied.")
        if left:
            sys.exit(EXIT_SOME_LEFT)
