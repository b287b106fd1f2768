"""`manage.py integrity`: run the registered integrity checks, for cron and on-call.

Exit codes: 0 healthy, 1 warnings only, 2 an error check failed, 3 the run itself failed.
"""

from __future__ import annotations

import json
import sys

from django.core.management.base import BaseCommand, CommandParser

from evoflow.integrity.registry import UnknownCheck, all_checks, get_check
from evoflow.integrity.runner import EXIT_RUN_FAILED, FAIL_LEVELS, integrity_run, run_document

STATUS_MARKS = {"ok": "OK", "warning": "WARN", "error": "ERROR", "failed": "FAILED"}


class Command(BaseCommand):
    help = "Run every registered integrity check (or those given with --check) and store the run."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--check",
            action="append",
            dest="checks",
            metavar="ID",
            default=[],
            help="run only this check (repeatable)",
        )
        parser.add_argument("--json", action="store_true", help="print one JSON document")
        parser.add_argument(
            "--fail-level",
            choices=FAIL_LEVELS,
            default="warning",
            help="lowest status that makes the exit code non-zero (default warning)",
        )
        parser.add_argument(
            "--fix", action="store_true", help="run the repair of each failing check"
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="with --fix: report what the repairs would change, change nothing",
        )
        parser.add_argument(
            "--full",
            action="store_true",
            help="read every row of every check (a full sweep), not only the rows changed "
            "since the previous run",
        )
        parser.add_argument(
            "--list", action="store_true", help="list the registered checks and exit"
        )

    def handle(self, *args, **options) -> None:
        if options["dry_run"] and not options["fix"]:
            # A dry run of no repair would store an ordinary run that looks like a preview.
            self._fail(
                "--dry-run only applies to --fix (it previews the repairs); nothing was run. "
                "Use `integrity --fix --dry-run` to preview, or drop --dry-run to check.",
                options,
            )
        if options["list"]:
            for check in all_checks():
                repair = " [repair]" if check.repair else ""
                self.stdout.write(f"{check.id}{repair}: {check.description}")
            return
        try:
            run = integrity_run(
                check_ids=options["checks"],
                fix=options["fix"],
                dry_run=options["dry_run"],
                fail_level=options["fail_level"],
                trigger="command",
                full=options["full"],
            )
        except UnknownCheck as exc:
            self._fail(f"unknown check {exc.args[0]!r}; `integrity --list` shows the ids", options)
        except Exception as exc:  # the run could not even start: database down, bad settings
            self._fail(f"integrity run failed: {exc}", options)
        document = run_document(run)
        if options["json"]:
            self.stdout.write(json.dumps(document, indent=2))
        else:
            self._print_table(document)
        sys.stdout.flush()
        if run.exit_code:
            sys.exit(run.exit_code)

    def _fail(self, message: str, options: dict) -> None:
        if options["json"]:
            self.stdout.write(
                json.dumps({"status": "failed", "exit_code": EXIT_RUN_FAILED, "error": message})
            )
        else:
            self.stderr.write(message)
        sys.exit(EXIT_RUN_FAILED)

    def _print_table(self, document: dict) -> None:
        for check in document["checks"]:
            mark = STATUS_MARKS.get(check["status"], check["status"])
            line = (
                f"{mark:<6} {check['id']}: {check['failing_count']} of {check['population']}"
                f" ({check['ratio']:.4%}) in {check['duration_ms']:.0f} ms"
            )
            if check["repaired_count"] is not None:
                verb = "would repair" if document["dry_run"] else "repaired"
                line += f"; {verb} {check['repaired_count']}"
                if not check["repaired_count"]:
                    line += f" ({_nothing_repaired_reason(check['id'])})"
            if check["error"]:
                line += f"; {check['error']}"
            elif check["sample_ids"] and check["status"] != "ok":
                line += f"; e.g. {', '.join(check['sample_ids'][:5])}"
            self.stdout.write(line)
        self.stdout.write(
            f"run {document['run_id']}: {document['status']} (exit {document['exit_code']})"
        )


def _nothing_repaired_reason(check_id: str) -> str:
    """Why a failing check's repair changed nothing, as far as its app can tell."""
    try:
        check = get_check(check_id)
    except UnknownCheck:
        return "the check is no longer registered"
    reason = check.repair_blocked_reason() if check.repair_blocked_reason else None
    return reason or "the repair found nothing it could change"
