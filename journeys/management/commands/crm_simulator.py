"""`manage.py crm_simulator`: the CRM simulator in the foreground (see docs/journeys.md)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from evoflow.simulator import Faults, serve_until_interrupted
from journeys.simulator import CrmSimulator


def _rate(value: str) -> float:
    number = float(value)
    if not 0 <= number <= 1:
        raise ValueError(value)
    return number


class Command(BaseCommand):
    help = "Serve a simulated CRM (contacts, labels, conversation messages) with faults."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8011)
        parser.add_argument("--seed", type=int, default=1)
        parser.add_argument("--fault-rate", type=_rate, default=0.0, help="share of 503 answers")
        parser.add_argument("--throttle-rate", type=_rate, default=0.0, help="share of 429s")
        parser.add_argument("--retry-after", type=int, default=1, help="seconds, on a 429")
        parser.add_argument("--slow-ms", type=int, default=0)
        parser.add_argument("--malformed-rate", type=_rate, default=0.0)

    def handle(self, *args: Any, **options: Any) -> None:
        simulator = CrmSimulator(
            seed=options["seed"],
            faults=Faults(
                fault_rate=options["fault_rate"],
                slow_ms=options["slow_ms"],
                malformed_rate=options["malformed_rate"],
                seed=options["seed"],
            ),
        )
        simulator.throttle_rate = options["throttle_rate"]
        simulator.retry_after_seconds = options["retry_after"]
        serve_until_interrupted(
            simulator,
            host=options["host"],
            port=options["port"],
            announce=lambda line: self.stdout.write(f"crm simulator {line}", ending="\n"),
        )
