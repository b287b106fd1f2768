"""`manage.py graph_simulator`: the Graph API simulator in the foreground (see docs)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from conversations.simulator.graph import (
    DEFAULT_ACCESS_TOKEN,
    DEFAULT_PAGE_ID,
    THROTTLE_MESSAGES,
    GraphSimulator,
)
from conversations.simulator.world import BAD_PARTICIPANT_KINDS
from devtools.simulator import (
    add_simulator_arguments,
    faults_from_options,
    rate_argument,
    serve_until_interrupted,
)


class Command(BaseCommand):
    help = "Serve a simulated Graph API (Messenger conversations) with paging, usage and faults."

    def add_arguments(self, parser: CommandParser) -> None:
        add_simulator_arguments(parser, default_port=8012)
        parser.add_argument("--page-id", default=DEFAULT_PAGE_ID)
        parser.add_argument("--page-name", default="Simulated Shop")
        parser.add_argument("--conversations", type=int, default=50)
        parser.add_argument("--messages", type=int, default=500, help="total over all threads")
        parser.add_argument("--access-token", default=DEFAULT_ACCESS_TOKEN)
        parser.add_argument(
            "--drift", type=rate_argument, default=0.0, help="share of drifted answers"
        )
        parser.add_argument(
            "--churn-rate",
            type=rate_argument,
            default=0.0,
            help="share of conversations pages after which a later conversation changes or goes",
        )
        parser.add_argument("--rate-limit", type=int, default=0, help="calls per window; 0: none")
        parser.add_argument("--rate-window", type=float, default=60.0, help="seconds")
        parser.add_argument(
            "--throttle-code", type=int, default=80001, choices=sorted(THROTTLE_MESSAGES)
        )
        parser.add_argument(
            "--extra-pages",
            type=int,
            default=0,
            help="more pages: ids page-id+1.., seeds seed+1.., tokens <access-token>-<page id>",
        )
        parser.add_argument(
            "--other-folder-share",
            type=rate_argument,
            default=0.0,
            help='share of generated conversations in the "other" folder (the rest: inbox)',
        )
        parser.add_argument(
            "--bad-participants",
            type=int,
            default=0,
            help="the N newest generated threads of each page are served with unusable"
            " participants (F7), the kinds in turn: no_id, page_only, not_psid, two_people",
        )
        parser.add_argument(
            "--webhook-target",
            default=None,
            help="URL receiving signed webhook POSTs for messages added through the control API",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["conversations"] < 0 or options["messages"] < 0:
            raise CommandError("--conversations and --messages must not be negative")
        if options["extra_pages"] < 0:
            raise CommandError("--extra-pages must not be negative")
        if options["bad_participants"] < 0:
            raise CommandError("--bad-participants must not be negative")
        if options["extra_pages"] and not options["page_id"].isdigit():
            raise CommandError("--extra-pages needs a --page-id of digits (the next ids follow it)")
        simulator = GraphSimulator(
            page_id=options["page_id"],
            page_name=options["page_name"],
            conversations=options["conversations"],
            messages=options["messages"],
            seed=options["seed"],
            access_token=options["access_token"],
            faults=faults_from_options(options),
            drift_rate=options["drift"],
            churn_rate=options["churn_rate"],
            rate_limit=options["rate_limit"],
            rate_window_s=options["rate_window"],
            throttle_code=options["throttle_code"],
            webhook_target=options["webhook_target"],
            app_secret=settings.FB_APP_SECRET,
            other_folder_share=options["other_folder_share"],
            extra_pages=options["extra_pages"],
        )
        for world in simulator.pages.values():
            for index in range(min(options["bad_participants"], world.conversation_total)):
                kind = BAD_PARTICIPANT_KINDS[index % len(BAD_PARTICIPANT_KINDS)]
                world.participants_break(world.generated_key(index), kind)
            self.stdout.write(
                f"graph simulator: page {world.page_id}, {world.conversation_total} conversations,"
                f" {world.message_total} messages, seed {world.seed}"
            )
        try:
            serve_until_interrupted(
                simulator,
                host=options["host"],
                port=options["port"],
                announce=lambda line: self.stdout.write(line),
            )
        except OSError as error:
            raise CommandError(
                f"cannot listen on {options['host']}:{options['port']}: {error}"
            ) from error
