"""Integrity checks and the registry that holds them."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import import_module

from django.apps import apps
from django.utils.module_loading import module_has_submodule

from evoflow.registry import Registry

SAMPLE_LIMIT = 20
# A check that evaluates incrementally keeps every failing id up to this many, so the next
# incremental evaluation reads them again; past it, the next evaluation is a full sweep.
TRACK_LIMIT = 10_000

# A repair gets `dry_run` and returns how many rows it changed (or would change).
Repair = Callable[..., int]


@dataclass(frozen=True)
class CheckOutcome:
    failing_count: int
    population: int
    sample_ids: list[str]
    # Failing rows that are errors by themselves, from the check's optional fourth column.
    severe_count: int = 0

    @property
    def ratio(self) -> float:
        return self.failing_count / self.population if self.population else 0.0


@dataclass(frozen=True)
class IntegrityCheck:
    """One invariant, measured by one set-based query.

    `sql` (or a callable building it, so table names can come from models at run time) returns a
    single row: the failing count, the population, and an array of up to `SAMPLE_LIMIT` sample
    ids (cast to text). The query may use `%(sample_limit)s`.

    Status: no failing rows is `ok`; otherwise `error` when the count reaches `error_count` or the
    ratio exceeds `error_ratio`, else `warning` when the count reaches `warning_count` or the
    ratio exceeds `warning_ratio`; a failing count below every threshold is still `ok`.

    A check whose full query reads whole tables may also declare `changed_sql`: the same
    measure over the rows changed since `%(since)s` (a timestamp the runner gives: the previous
    run's start, less an overlap) and the ids in `%(recheck)s` (text array: the rows that failed
    last time), so its cost follows the changes and the violations rather than the tables. The
    runner uses it between full sweeps (`evoflow.integrity.runner`, docs/operations.md). Such a
    check's third column lists every failing id up to `%(sample_limit)s`, which the runner sets
    to TRACK_LIMIT for it: the first SAMPLE_LIMIT are the samples, the rest are tracked.

    A check whose rows each have a severity of their own (a page failing for hours is worse
    than one failing for minutes) returns a fourth column: how many failing rows are errors by
    themselves. Any such row makes the check an `error`, whatever the thresholds say.
    """

    id: str
    description: str
    sql: str | Callable[[], str]
    warning_count: int | None = 1
    error_count: int | None = None
    warning_ratio: float | None = None
    error_ratio: float | None = None
    repair: Repair | None = None
    repair_description: str = ""
    # Why the repair can change nothing right now (a feature flag off), or None: said next to
    # a repair that changed (or would change) nothing, so "0" is never left unexplained.
    repair_blocked_reason: Callable[[], str | None] | None = None
    # Where a sample id leads in the admin, e.g. "admin:deliveries_messagedelivery_change".
    sample_admin_url_name: str | None = None
    tags: tuple[str, ...] = field(default_factory=tuple)
    # The check whose ratio the dashboard's trend draws as "the inconsistency rate"; its app
    # says so when it registers it (at most one check should).
    is_trend_rate: bool = False
    changed_sql: str | Callable[[], str] | None = None

    def render_sql(self) -> str:
        return self.sql() if callable(self.sql) else self.sql

    def render_changed_sql(self) -> str | None:
        if self.changed_sql is None:
            return None
        return self.changed_sql() if callable(self.changed_sql) else self.changed_sql

    @property
    def is_incremental(self) -> bool:
        return self.changed_sql is not None

    def status_for(self, outcome: CheckOutcome) -> str:
        count, ratio = outcome.failing_count, outcome.ratio
        if count <= 0:
            return "ok"
        if outcome.severe_count > 0:
            return "error"
        if (self.error_count is not None and count >= self.error_count) or (
            self.error_ratio is not None and ratio > self.error_ratio
        ):
            return "error"
        if (self.warning_count is not None and count >= self.warning_count) or (
            self.warning_ratio is not None and ratio > self.warning_ratio
        ):
            return "warning"
        return "ok"

    @property
    def thresholds(self) -> dict[str, float | int | None]:
        return {
            "warning_count": self.warning_count,
            "error_count": self.error_count,
            "warning_ratio": self.warning_ratio,
            "error_ratio": self.error_ratio,
        }


_registry: Registry[IntegrityCheck] = Registry("integrity check", key=lambda check: check.id)


class UnknownCheck(KeyError):
    """No check is registered under that id."""


def register(check: IntegrityCheck) -> IntegrityCheck:
    return _registry.add(check)


def unregister(check_id: str) -> None:
    _registry.remove(check_id)


def get_check(check_id: str) -> IntegrityCheck:
    check = _registry.get(check_id)
    if check is None:
        raise UnknownCheck(check_id)
    return check


def all_checks() -> list[IntegrityCheck]:
    return sorted(_registry.items(), key=lambda check: check.id)


@contextlib.contextmanager
def registered(*checks: IntegrityCheck) -> Iterator[None]:
    """Register checks for the duration of a block (tests, one-off scripts)."""
    for check in checks:
        register(check)
    try:
        yield
    finally:
        for check in checks:
            unregister(check.id)


def autodiscover() -> None:
    """Import every installed app's `integrity` module, which registers its checks.

    The project's own checks (`evoflow.integrity.checks`) are imported by the evoflow app's
    `ready()`: `evoflow.integrity` is this package, and the registry knows no check module.
    """
    for app_config in apps.get_app_configs():
        if app_config.name != "evoflow" and module_has_submodule(app_config.module, "integrity"):
            import_module(f"{app_config.name}.integrity")
