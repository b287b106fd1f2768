"""Factories and flow builders for the journeys tests."""

from __future__ import annotations

import uuid
from typing import Any

import factory

from journeys.models import Contact, Journey


def linear_flow(*nodes: tuple[str, str, dict[str, Any]]) -> dict[str, Any]:
    """A flow of (id, type, config) nodes joined one after the other by plain edges."""
    return {
        "nodes": [
            {"id": node_id, "type": kind, "config": config} for node_id, kind, config in nodes
        ],
        "edges": [
            {"source": nodes[index][0], "target": nodes[index + 1][0]}
            for index in range(len(nodes) - 1)
        ],
    }


def bench_flow() -> dict[str, Any]:
    """The issue's 5-node journey: set_variable, condition, split, set_variable, exit."""
    return {
        "nodes": [
            {"id": "greet", "type": "set_variable", "config": {"name": "greeting", "value": "hi"}},
            {
                "id": "check",
                "type": "condition",
                "config": {"field": "variables.greeting", "operator": "equals", "value": "hi"},
            },
            {
                "id": "ab",
                "type": "split",
                "config": {
                    "branches": [
                        {"handle": "a", "percentage": 50},
                        {"handle": "b", "percentage": 50},
                    ]
                },
            },
            {"id": "mark", "type": "set_variable", "config": {"name": "done", "value": True}},
            {"id": "end", "type": "exit", "config": {"reason": "finished"}},
        ],
        "edges": [
            {"source": "greet", "target": "check"},
            {"source": "check", "target": "ab", "handle": "true"},
            {"source": "check", "target": "end", "handle": "false"},
            {"source": "ab", "target": "mark", "handle": "a"},
            {"source": "ab", "target": "mark", "handle": "b"},
            {"source": "mark", "target": "end"},
        ],
    }


class ContactFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Contact

    id = factory.LazyFunction(uuid.uuid4)
    name = factory.Sequence(lambda n: f"Contact {n}")


class JourneyFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Journey

    name = factory.Sequence(lambda n: f"Journey {n}")
    flow = factory.LazyFunction(bench_flow)
    triggers = factory.LazyFunction(list)
    default_variables = factory.LazyFunction(dict)
