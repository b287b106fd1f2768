"""`manage.py seed_demo`: create or refresh the demo accounts and demo data, for local runs.

Idempotent. With DEBUG off it refuses unless `--allow-production` is given, and then the
password must come from `EVOFLOW_DEMO_PASSWORD`. `--json` prints one JSON document instead of
text (`make run` reads it to show the credentials once everything is up).
"""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from evoflow.demo import DEMO_PASSWORD_ENV, DemoSeedContext, DemoSeedRefused, demo_seed


class Command(BaseCommand):
    help = "Create (or reset) the demo operator and superuser and load the demo data."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--allow-production",
            action="store_true",
            help=f"seed even with DEBUG off (then {DEMO_PASSWORD_ENV} must be set)",
        )
        parser.add_argument("--json", action="store_true", help="print one JSON document")
        parser.add_argument(
            "--with-backlog",
            action="store_true",
            help="also seed an inconsistent backlog to repair from the dashboard "
            "(integrity then reports it)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            context = demo_seed(
                is_production_allowed=options["allow_production"],
                with_backlog=options["with_backlog"],
            )
        except DemoSeedRefused as exc:
            raise CommandError(str(exc)) from exc
        if options["json"]:
            self.stdout.write(json.dumps(demo_seed_document(context)))
        else:
            self._print_text(context)

    def _print_text(self, context: DemoSeedContext) -> None:
        for line in context.summary:
            self.stdout.write(line)
        self.stdout.write("Demo logins (the admin is at /admin/):")
        password = _shown_password(context)
        for account in context.accounts:
            state = "created" if account.is_created else "updated"
            self.stdout.write(
                f"  {account.role:<10} username {account.username:<10} "
                f"password {password}  ({state})"
            )


def _shown_password(context: DemoSeedContext) -> str:
    if context.is_password_printable:
        return context.password
    return f"(the value of {DEMO_PASSWORD_ENV})"


def demo_seed_document(context: DemoSeedContext) -> dict[str, Any]:
    """The JSON form of a seeding run; the password only where it may be printed."""
    return {
        "accounts": [
            {
                "role": account.role,
                "username": account.username,
                "password": context.password if context.is_password_printable else None,
                "created": account.is_created,
            }
            for account in context.accounts
        ],
        "summary": context.summary,
    }
