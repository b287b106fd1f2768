"""The deliveries app's Prometheus metrics (docs/deliveries.md, "Metrics").

* `evoflow_deliveries_saved_total{linked}`: deliveries created by this process, through the
  ORM's `save()` or `message_send`'s `INSERT ... SELECT`, by whether the database linked them;
  counted once their transaction committed.
* Figures of the requirements, computed from the audit table when /metrics is read, so every
  process shows the same and every write path counts (raw SQL included): link attempts of the
  last 24 hours by method and outcome, the triggers' success rate (successful links / attempts)
  and the backfill activity (automatic and historical backfill operations). The query reads the
  last 24 hours through the audit's BRIN index; its result is kept `CACHE_SECONDS` per process
  so frequent scrapes do not repeat it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from django.db import DatabaseError, connection, transaction
from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from deliveries.models import LinkMethod, LinkOutcome
from evoflow.db import set_local_statement_timeout

logger = logging.getLogger(__name__)

DELIVERIES_CREATED = Counter(
    "evoflow_deliveries_saved_total",
    "Deliveries created through the ORM's save() or message_send, by whether the database "
    "linked them",
    ["linked"],
)


def deliveries_created_count(*, linked: int, unlinked: int) -> None:
    """Count created deliveries once the transaction that created them commits."""

    def count() -> None:
        if linked:
            DELIVERIES_CREATED.labels("yes").inc(linked)
        if unlinked:
            DELIVERIES_CREATED.labels("no").inc(unlinked)

    transaction.on_commit(count)


CACHE_SECONDS = 30.0
QUERY_TIMEOUT_MS = 2_000
# The attempts the linking triggers make (on insert, and when a guest is linked): the
# requirements' "trigger success rate" is over these.
TRIGGER_METHODS = (LinkMethod.GUEST, LinkMethod.PHONE_FALLBACK, LinkMethod.GUEST_BACKFILL)
SUCCESSFUL_OUTCOMES = (LinkOutcome.LINKED, LinkOutcome.ALREADY_LINKED)
# Backfills: when a guest gets its user (automatic) and the historical backfill (the command,
# the integrity repair, the admin action). One operation is one transaction's statement: its
# audit rows share their `created_at` (the transaction's time).
BACKFILL_METHODS = (LinkMethod.GUEST_BACKFILL, LinkMethod.HISTORICAL)

ACTIVITY_SQL = """
SELECT method, outcome, count(*)
FROM deliveries_userlinkaudit
WHERE created_at >= now() - interval '24 hours'
GROUP BY method, outcome
"""


@dataclass(frozen=True)
class LinkActivity:
    """The last 24 hours of the audit: attempts per (method, outcome), and operations (distinct
    transaction times) per method."""

    attempts: dict[tuple[str, str], int]
    operations: dict[str, int]

    @property
    def trigger_success_ratio(self) -> float | None:
        attempts = sum(
            count for (method, _), count in self.attempts.items() if method in TRIGGER_METHODS
        )
        successes = sum(
            count
            for (method, outcome), count in self.attempts.items()
            if method in TRIGGER_METHODS and outcome in SUCCESSFUL_OUTCOMES
        )
        return successes / attempts if attempts else None


def link_activity_24h() -> LinkActivity:
    with transaction.atomic(), connection.cursor() as cursor:
        set_local_statement_timeout(QUERY_TIMEOUT_MS)
        cursor.execute(ACTIVITY_SQL)
        rows = cursor.fetchall()
    attempts: dict[tuple[str, str], int] = {}
    operations: dict[str, int] = {}
    for method, outcome, count in rows:
        attempts[(str(method), str(outcome))] = int(count)
    # An operation's rows may have several outcomes: its distinct times are counted per method.
    if any(method in BACKFILL_METHODS for method, _ in attempts):
        with transaction.atomic(), connection.cursor() as cursor:
            set_local_statement_timeout(QUERY_TIMEOUT_MS)
            cursor.execute(
                "SELECT method, count(DISTINCT created_at) FROM deliveries_userlinkaudit"
                " WHERE created_at >= now() - interval '24 hours' AND method = ANY(%s)"
                " GROUP BY method",
                [list(BACKFILL_METHODS)],
            )
            operations = {str(method): int(count) for method, count in cursor.fetchall()}
    return LinkActivity(attempts=attempts, operations=operations)


class LinkActivityCollector(Collector):
    """The requirements' deliveries figures, from the database at scrape time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cached: tuple[float, LinkActivity] | None = None

    def cache_clear(self) -> None:
        with self._lock:
            self._cached = None

    def _activity(self) -> LinkActivity | None:
        with self._lock:
            if self._cached is not None and time.monotonic() - self._cached[0] < CACHE_SECONDS:
                return self._cached[1]
        try:
            activity = link_activity_24h()
        except DatabaseError:
            # /metrics must answer even without the database; /healthz reports that.
            logger.warning("deliveries link activity could not be read", exc_info=True)
            return None
        with self._lock:
            self._cached = (time.monotonic(), activity)
        return activity

    def collect(self) -> Iterator[GaugeMetricFamily]:
        activity = self._activity()
        if activity is None:
            return
        attempts = GaugeMetricFamily(
            "evoflow_deliveries_link_attempts_24h",
            "Link attempts audited in the last 24 hours, by method and outcome (every path)",
            labels=["method", "outcome"],
        )
        for method in LinkMethod.values:
            for outcome in LinkOutcome.values:
                attempts.add_metric([method, outcome], activity.attempts.get((method, outcome), 0))
        yield attempts
        ratio = activity.trigger_success_ratio
        if ratio is not None:
            yield GaugeMetricFamily(
                "evoflow_deliveries_trigger_success_ratio_24h",
                "The linking triggers' successful links (linked, already_linked) over their "
                "attempts in the last 24 hours; absent without attempts",
                value=ratio,
            )
        operations = GaugeMetricFamily(
            "evoflow_deliveries_backfill_operations_24h",
            "Backfill operations in the last 24 hours: guest_backfill (automatic, a guest got "
            "its user) and historical (command, integrity repair, admin action)",
            labels=["method"],
        )
        for method in BACKFILL_METHODS:
            operations.add_metric([method], activity.operations.get(method, 0))
        yield operations


LINK_ACTIVITY = LinkActivityCollector()
