"""The deliveries tile of the operator dashboard (see `evoflow.dashboard` for the frame): the
inconsistency rate (with its repair), link audit outcomes of the last 24 hours, feature flags.
Registered by `DeliveriesConfig.ready()`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlencode

from deliveries import selectors as deliveries_selectors
from deliveries.integrity import UNLINKED_DELIVERIES
from deliveries.models import FeatureFlag, MessageDelivery, UserLinkAudit
from evoflow.dashboard import (
    AreaHealth,
    Figure,
    TileRequest,
    TileSpec,
    ViewPermission,
    change_url,
    changelist_url,
    iso_seconds,
    may_view_everything,
    repair_url,
    table_row_count,
)

AUDIT_WINDOW = timedelta(hours=24)
RATE_CHECK_ID = UNLINKED_DELIVERIES.id


@dataclass(frozen=True)
class FlagState:
    name: str
    is_enabled: bool
    url: str


@dataclass(frozen=True)
class DeliveryConsistency:
    inconsistent: Figure
    deliveries: Figure
    rate: str
    repair_url: str


@dataclass(frozen=True)
class DeliveriesTile:
    health: AreaHealth
    # None: the user may not view that model (deliveries, link audits, feature flags).
    consistency: DeliveryConsistency | None
    audit_outcomes: tuple[Figure, ...] | None
    audits_since: datetime
    flags: tuple[FlagState, ...] | None
    area: str = "deliveries"
    title: str = "Deliveries"


def inconsistency_rate(*, failing: int, population: int) -> str:
    """ "5.00%"-style, "0%" when nothing fails; never above 100% (an estimated population can
    lag behind the exact failing count)."""
    if failing <= 0 or population <= 0:
        return "0%"
    return f"{min(failing / population, 1.0) * 100:.2f}%"


def delivery_consistency(*, can_repair: bool) -> DeliveryConsistency:
    failing = deliveries_selectors.deliveries_inconsistent().count()
    population = table_row_count(MessageDelivery)
    rate = inconsistency_rate(failing=failing, population=population.value)
    return DeliveryConsistency(
        inconsistent=Figure(
            key="inconsistent-count",
            label="inconsistent deliveries",
            label_one="inconsistent delivery",
            value=failing,
            url=changelist_url("deliveries", "messagedelivery", consistency="inconsistent"),
            is_problem=True,
        ),
        deliveries=Figure(
            key="deliveries-total",
            label="deliveries",
            label_one="delivery",
            value=population.value,
            url=changelist_url("deliveries", "messagedelivery"),
            is_estimate=population.is_estimate,
        ),
        rate=f"~{rate}" if population.is_estimate and failing else rate,
        # Offered only when there is something to repair.
        repair_url=repair_url(RATE_CHECK_ID) if can_repair and failing > 0 else "",
    )


def link_audit_figures(*, since: datetime) -> tuple[Figure, ...]:
    audits_url = changelist_url("deliveries", "userlinkaudit")
    return tuple(
        Figure(
            key=f"audits-{outcome}",
            label=outcome.replace("_", " "),
            value=count,
            url=f"{audits_url}?"
            + urlencode({"outcome__exact": outcome, "created_since": iso_seconds(since)}),
        )
        for outcome, count in deliveries_selectors.link_audit_outcome_counts(since=since).items()
    )


def deliveries_tile(
    *,
    now: datetime,
    health: AreaHealth,
    can_repair: bool,
    may_view: ViewPermission = may_view_everything,
) -> DeliveriesTile:
    since = now - AUDIT_WINDOW
    return DeliveriesTile(
        health=health,
        consistency=delivery_consistency(can_repair=can_repair)
        if may_view(MessageDelivery)
        else None,
        audit_outcomes=link_audit_figures(since=since) if may_view(UserLinkAudit) else None,
        audits_since=since,
        flags=tuple(
            FlagState(
                name=flag.name,
                is_enabled=flag.enabled,
                url=change_url("deliveries", "featureflag", flag.pk),
            )
            for flag in deliveries_selectors.feature_flag_list()
        )
        if may_view(FeatureFlag)
        else None,
    )


def deliveries_tile_build(request: TileRequest) -> DeliveriesTile:
    return deliveries_tile(
        now=request.now,
        health=request.health,
        can_repair=request.can_repair,
        may_view=request.may_view,
    )


def tile_spec() -> TileSpec:
    return TileSpec(
        area="deliveries",
        order=30,
        models=(MessageDelivery, UserLinkAudit, FeatureFlag),
        build=deliveries_tile_build,
    )
