"""Every recurring task of evoflow, created idempotently by name.

Each app registers its own schedules from its `AppConfig.ready()` with
`schedule_register(ScheduleSpec(...))` (the core registers the daily integrity run), so this
module names no app. `schedules_ensure()` runs after every `migrate` (and from
`manage.py ensure_schedules`): it creates each registered schedule, or brings an existing one
(matched by name) up to date, so deploying twice, or on two hosts at once, never duplicates a
schedule.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any

from django.utils import timezone
from django_q.models import Schedule

from evoflow.registry import Registry
from evoflow.tasks import schedule_ensure


@dataclass(frozen=True)
class ScheduleSpec:
    name: str
    func: str
    schedule_type: str
    minutes: int | None = None
    # For daily schedules: the UTC time of day of the first run (later runs follow every 24 h).
    daily_at: time | None = None

    def first_run(self, now: datetime) -> datetime | None:
        if self.daily_at is None:
            return None
        candidate = datetime.combine(now.date(), self.daily_at, tzinfo=UTC)
        return candidate if candidate > now else candidate + timedelta(days=1)


_schedules: Registry[ScheduleSpec] = Registry("schedule", key=lambda spec: spec.name)


def schedule_register(spec: ScheduleSpec) -> ScheduleSpec:
    """Add a recurring task (from its app's `ready()`); registering it again is a no-op."""
    return _schedules.add(spec)


def registered_schedules() -> tuple[ScheduleSpec, ...]:
    """Every registered schedule, in registration order (the order of INSTALLED_APPS)."""
    return _schedules.items()


def schedules_ensure() -> list[Schedule]:
    return [
        schedule_ensure(
            name=spec.name,
            func=spec.func,
            schedule_type=spec.schedule_type,
            minutes=spec.minutes,
            first_run=spec.first_run(timezone.now()),
        )
        for spec in registered_schedules()
    ]


def ensure_after_migrate(sender: Any = None, **kwargs: Any) -> None:
    """post_migrate hook: only once per migrate (for this app), once django_q's table exists."""
    if getattr(sender, "name", None) == "evoflow":
        schedules_ensure()
