"""`manage.py conversations_purge`: the one way stored conversations really leave the database.

Without `--confirm` it only shows what would go. With it, the purge runs in one transaction and
writes its audit record (conversations/services/purge.py):

    manage.py conversations_purge --page 111222333
    manage.py conversations_purge --page 111222333 --confirm 111222333 \
        --reason "page closed, contract ended" --requested-by ops-jane
    manage.py conversations_purge --page 111222333 --psid 6100000000001 --confirm 6100000000001 \
        --reason "erasure request 2024-17" --requested-by ops-jane
"""

from __future__ import annotations

import getpass
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from conversations.models import Conversation, FacebookPage
from conversations.services import (
    PurgeCounts,
    PurgeRefused,
    conversation_purge,
    conversation_purge_preview,
    page_purge,
    page_purge_preview,
)


def _describe(counts: PurgeCounts) -> str:
    return (
        f"{counts.conversations} conversation(s), {counts.messages} message(s),"
        f" {counts.events} interaction event(s), {counts.sync_runs} sync run(s)"
    )


class Command(BaseCommand):
    help = (
        "Purge stored conversation data for good, audited: a removed page with everything it"
        " holds (--page), or one person's conversation (--page with --psid). Without --confirm,"
        " only shows what would be deleted."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--page", required=True, help="the Facebook page id")
        parser.add_argument("--psid", help="purge only this person's conversation of the page")
        parser.add_argument(
            "--confirm",
            help="repeat the page id (or, with --psid, the PSID) to really delete",
        )
        parser.add_argument("--reason", default="", help="why: kept in the purge record")
        parser.add_argument(
            "--requested-by",
            default="",
            help="who asked for it (default: the operating-system user running the command)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        page = FacebookPage.objects.filter(page_id=options["page"]).first()
        if page is None:
            raise CommandError(f"no page {options['page']}")
        conversation = None
        if options["psid"]:
            conversation = Conversation.objects.filter(page=page, psid=options["psid"]).first()
            if conversation is None:
                raise CommandError(
                    f"page {page.page_id} has no conversation with PSID {options['psid']}"
                )
        counts = (
            conversation_purge_preview(conversation=conversation)
            if conversation is not None
            else page_purge_preview(page=page)
        )
        target = (
            f"conversation {conversation.pk} ({conversation.psid}) of page {page.page_id}"
            if conversation is not None
            else f"page {page.page_id}{'' if page.removed_at else ' (not removed yet)'}"
        )
        if options["confirm"] is None:
            expected = conversation.psid if conversation is not None else page.page_id
            self.stdout.write(f"Would delete {target}: {_describe(counts)}.")
            self.stdout.write(
                f"Nothing deleted. To purge, repeat --confirm {expected} with --reason."
            )
            return
        requested_by = options["requested_by"] or getpass.getuser()
        try:
            if conversation is not None:
                record = conversation_purge(
                    conversation=conversation,
                    confirm=options["confirm"],
                    reason=options["reason"],
                    requested_by=requested_by,
                )
            else:
                record = page_purge(
                    page=page,
                    confirm=options["confirm"],
                    reason=options["reason"],
                    requested_by=requested_by,
                )
        except PurgeRefused as error:
            raise CommandError(str(error)) from error
        done = PurgeCounts(record.conversations, record.messages, record.events, record.sync_runs)
        self.stdout.write(f"Deleted {target}: {_describe(done)}. Purge record {record.pk}.")
