"""`manage.py backfill_deliveries [--batch-size N] [--dry-run]`: the historical backfill."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from deliveries import selectors, services


class Command(BaseCommand):
    help = (
        "Link every delivery without a user to its guest's user (or, with the fallback flag "
        "on, its phone's single user), in id-range batches, audited as 'historical'. "
        "Idempotent; --dry-run only reports what it would change."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--batch-size",
            type=int,
            default=services.DEFAULT_BACKFILL_BATCH_SIZE,
            help="delivery ids per batch (one transaction each); default %(default)s",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="report what would change, change nothing"
        )
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")

    def handle(self, *args: Any, batch_size: int, dry_run: bool, **options: Any) -> None:
        if batch_size < 1:
            raise CommandError("--batch-size must be a positive number")
        bar = tqdm(
            unit="ids",
            unit_scale=True,
            desc="backfill (dry run)" if dry_run else "backfill",
            disable=options["no_progress"],
            file=self.stderr,
        )
        with bar:
            report = services.deliveries_backfill(
                batch_size=batch_size, dry_run=dry_run, progress=bar.update
            )
        if report.first_id is None:
            self.stdout.write("Nothing to do: every delivery has a user.")
            return
        verb = "would link" if dry_run else "linked"
        self.stdout.write(
            f"{verb} {report.linked} of {report.examined} deliveries without a user "
            f"(ids {report.first_id}..{report.last_id}, {report.batches} batches)"
        )
        for outcome, count in sorted(report.outcomes.items()):
            self.stdout.write(f"  {outcome}: {count}")
        if not report.linked:
            # Say why nothing was linked, so "skipped: 5" is never left unexplained.
            reason = selectors.linking_off_reason()
            self.stdout.write(
                f"Nothing {verb}: {reason}."
                if reason
                else f"Nothing {verb}: no delivery's guest is linked to a user (and no phone "
                "matches a single user where the fallback flag allows it)."
            )
