"""Every recurring task of evoflow, in one place, created idempotently by name.

`schedules_ensure()` runs after every `migrate` (and from `manage.py ensure_schedules`): it
creates each schedule listed here, or brings an existing one (matched by name) up to date, so
deploying twice, or on two hosts at once, never duplicates a schedule.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone
from django_q.models import Schedule

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


SCHEDULES: tuple[ScheduleSpec, ...] = (
    # The daily integrity run of docs/invariants.md (deliveries), at a quiet hour.
    ScheduleSpec(
        name="integrity.daily",
        func="evoflow.tasks.integrity_run_scheduled",
        schedule_type=Schedule.DAILY,
        daily_at=time(3, 15),
    ),
    # Failed webhook receipts are re-applied once their backoff (1 min doubling to 6 h) is due.
    ScheduleSpec(
        name="conversations.webhook_receipts_retry",
        func="conversations.tasks.webhook_receipts_retry_scheduled",
        schedule_type=Schedule.MINUTES,
        minutes=1,
    ),
    # Processed and rejected webhook receipts are kept 30 days, then deleted in small batches.
    ScheduleSpec(
        name="conversations.webhook_receipts_prune",
        func="conversations.tasks.webhook_receipts_prune_scheduled",
        schedule_type=Schedule.DAILY,
        daily_at=time(3, 45),
    ),
    # An incremental Graph sync of every page with a token (SYNC_SCHEDULE_MINUTES).
    ScheduleSpec(
        name="conversations.sync_active_pages",
        func="conversations.tasks.sync_active_pages_scheduled",
        schedule_type=Schedule.MINUTES,
        minutes=settings.SYNC_SCHEDULE_MINUTES,
    ),
    # Journeys: wake sessions whose wait is over, restart sessions whose worker died.
    ScheduleSpec(
        name="journeys.resume_due_sessions",
        func="journeys.tasks.sessions_resume_due_task",
        schedule_type=Schedule.MINUTES,
        minutes=1,
    ),
)


def schedules_ensure() -> list[Schedule]:
    return [
        schedule_ensure(
            name=spec.name,
            func=spec.func,
            schedule_type=spec.schedule_type,
            minutes=spec.minutes,
            first_run=spec.first_run(timezone.now()),
        )
        for spec in SCHEDULES
    ]


def ensure_after_migrate(sender: Any = None, **kwargs: Any) -> None:
    """post_migrate hook: only once per migrate (for this app), once django_q's table exists."""
    if getattr(sender, "name", None) == "evoflow":
        schedules_ensure()
