"""`manage.py crm_simulator`: the CRM simulator in the foreground (see docs/journeys.md)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from devtools.simulator import (
    add_simulator_arguments,
    faults_from_options,
    rate_argument,
    serve_until_interrupted,
)
from journeys.simulator import CrmSimulator


class Command(BaseCommand):
    help = "Serve a simulated CRM (contacts, labels, conversation messages) with faults."

    def add_arguments(self, parser: CommandParser) -> None:
        add_simulator_arguments(parser, default_port=8011)
        parser.add_argument(
            "--throttle-rate", type=rate_argument, default=0.0, help="share of 429s"
        )
        parser.add_argument("--retry-after", type=int, default=1, help="seconds, on a 429")

    def handle(self, *args: Any, **options: Any) -> None:
        simulator = CrmSimulator(seed=options["seed"], faults=faults_from_options(options))
        simulator.throttle_rate = options["throttle_rate"]
        simulator.retry_after_seconds = options["retry_after"]
        serve_until_interrupted(
            simulator,
            host=options["host"],
            port=options["port"],
            announce=lambda line: self.stdout.write(f"crm simulator {line}", ending="\n"),
        )
