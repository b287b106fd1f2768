"""The registries the apps fill at start-up: one item twice is fine, two under one name not."""

from __future__ import annotations

from datetime import time

import pytest
from django_q.models import Schedule

from evoflow.registry import Registry
from evoflow.schedules import ScheduleSpec, registered_schedules, schedule_register


def test_an_equal_item_registered_again_is_kept_once_in_registration_order():
    registry: Registry[tuple[str, int]] = Registry("pair", key=lambda pair: pair[0])

    registry.add(("b", 1))
    registry.add(("a", 2))
    registry.add(("b", 1))  # a second ready(), as a test that reloads apps runs

    assert registry.items() == (("b", 1), ("a", 2))
    assert registry.get("a") == ("a", 2)
    assert registry.get("c") is None


def test_a_different_item_under_a_taken_name_is_refused_and_the_first_kept():
    registry: Registry[tuple[str, int]] = Registry("pair", key=lambda pair: pair[0])
    registry.add(("b", 1))

    with pytest.raises(ValueError, match="pair 'b' is registered twice"):
        registry.add(("b", 2))

    assert registry.items() == (("b", 1),)


def test_an_app_cannot_replace_another_apps_schedule_by_reusing_its_name():
    taken = registered_schedules()[0]
    impostor = ScheduleSpec(
        name=taken.name,
        func="tests.core.test_registry.nothing",
        schedule_type=Schedule.DAILY,
        daily_at=time(1, 0),
    )

    with pytest.raises(ValueError, match="registered twice"):
        schedule_register(impostor)

    assert registered_schedules()[0] == taken
