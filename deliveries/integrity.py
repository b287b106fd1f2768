"""The deliveries app's integrity checks (run by `manage.py integrity` and the daily schedule).

Each is one set-based query returning the failing count, the population and up to
`sample_limit` sample ids. The populations of the delivery table are the planner's estimate
once it is large (`evoflow.integrity.sql.population_sql`); between full sweeps, the checks of
linked deliveries read only the deliveries (and guests) changed since the previous run and
those failing then (`changed_sql`; docs/operations.md, "What a run costs").

Rows that break D1 or D3 can only appear when the triggers were bypassed (a restore,
`session_replication_role = replica`, a trigger dropped or disabled by hand, which
`core.required_triggers` reports); these checks find them.
"""

from __future__ import annotations

from deliveries import selectors, services
from evoflow.integrity.registry import IntegrityCheck, register
from evoflow.integrity.sql import population_sql

DELIVERIES = population_sql("deliveries_messagedelivery")
LINKED_DELIVERIES = population_sql("deliveries_messagedelivery", not_null="user_id")

# The linked deliveries written since the previous run: inserted (created_at, which never
# changes: its BRIN index stops no HOT update), linked or relinked (every link path writes an
# audit row, whose BRIN index serves the range), or of a guest changed since (a guest moved to
# another user around the trigger leaves its deliveries as they were); and those that failed
# last time. A delivery updated around the triggers without any of these waits for the next
# full sweep.
_CHANGED_DELIVERIES = """
    changed AS (
        SELECT id FROM deliveries_messagedelivery
        WHERE created_at >= %(since)s AND user_id IS NOT NULL
        UNION SELECT delivery_id FROM deliveries_userlinkaudit
        WHERE created_at >= %(since)s AND delivery_id IS NOT NULL
        UNION SELECT delivery.id FROM deliveries_messagedelivery AS delivery
        JOIN deliveries_eventguest AS guest ON guest.id = delivery.guest_id
        WHERE guest.updated_at >= %(since)s AND delivery.user_id IS NOT NULL
        UNION SELECT unnest(%(recheck)s::text[])::bigint)
"""


def unlinked_deliveries_sql() -> str:
    """Deliveries with NULL user whose guest is active and linked, over all deliveries.

    Healthy: 0; warning: any; error: above 1%. The failing rows are those of the selector
    `deliveries_inconsistent` (the admin's filter; tests/deliveries/test_backfill_and_integrity.py
    holds the two equal), read from the linked guests: for each, its deliveries in the partial
    index of unlinked deliveries, which for a linked guest are exactly the failing ones. The
    cost follows the linked guests and the violations, not the deliveries without a user
    (those of guests without an account are most of them, and legitimate).
    """
    return f"""
WITH failing AS MATERIALIZED (
    SELECT delivery.id
    FROM deliveries_eventguest AS guest
    CROSS JOIN LATERAL (
        SELECT d.id FROM deliveries_messagedelivery AS d
        WHERE d.guest_id = guest.id AND d.user_id IS NULL
        -- Kept a subquery (not merged into a join): one probe of the partial index per guest,
        -- where the planner would otherwise read every unlinked delivery to hash-join them.
        OFFSET 0
    ) AS delivery
    WHERE guest.user_id IS NOT NULL AND guest.removed_at IS NULL
)
SELECT (SELECT count(*) FROM failing),
       {DELIVERIES},
       ARRAY(SELECT id::text FROM failing ORDER BY failing.id LIMIT %(sample_limit)s)
"""


_USER_MISMATCH_WHERE = """
    delivery.user_id IS NOT NULL
    AND guest.user_id IS NOT NULL
    AND guest.removed_at IS NULL
    AND delivery.user_id <> guest.user_id
"""

USER_MISMATCH_SQL = f"""
WITH failing AS MATERIALIZED (
    SELECT delivery.id
    FROM deliveries_messagedelivery AS delivery
    JOIN deliveries_eventguest AS guest ON guest.id = delivery.guest_id
    WHERE {_USER_MISMATCH_WHERE}
)
SELECT (SELECT count(*) FROM failing),
       {LINKED_DELIVERIES},
       ARRAY(SELECT id::text FROM failing ORDER BY failing.id LIMIT %(sample_limit)s)
"""

USER_MISMATCH_CHANGED_SQL = f"""
WITH {_CHANGED_DELIVERIES},
failing AS MATERIALIZED (
    SELECT delivery.id
    FROM deliveries_messagedelivery AS delivery
    JOIN changed ON changed.id = delivery.id
    JOIN deliveries_eventguest AS guest ON guest.id = delivery.guest_id
    WHERE {_USER_MISMATCH_WHERE}
)
SELECT (SELECT count(*) FROM failing),
       {LINKED_DELIVERIES},
       ARRAY(SELECT id::text FROM failing ORDER BY failing.id LIMIT %(sample_limit)s)
"""

# A number is "not normalised" when it has text but no E.164 form (unreadable), an E.164 form
# but no text, or an E.164 form that does not end with the typed digits (the text was changed
# around the model, e.g. by raw SQL). Leading zeros are dropped before comparing: they are
# trunk or international prefixes that E.164 does not keep. Migration 0007 indexes exactly these
# rows of both tables (partial indexes with this predicate, frozen there): the check reads the
# violations only. Changing the predicate means a migration replacing those indexes.
_PHONE_IS_STALE = """
    (phone <> '' AND phone_e164 IS NULL)
    OR (phone = '' AND phone_e164 IS NOT NULL)
    OR (phone_e164 IS NOT NULL AND right(
            phone_e164, length(ltrim(regexp_replace(phone, '[^0-9]', '', 'g'), '0'))
        ) <> ltrim(regexp_replace(phone, '[^0-9]', '', 'g'), '0'))
"""

PHONE_NOT_NORMALISED_SQL = f"""
WITH failing AS MATERIALIZED (
    SELECT 'guest:' || id AS ref FROM deliveries_eventguest WHERE {_PHONE_IS_STALE}
    UNION ALL
    SELECT 'user:' || id AS ref FROM evoflow_user WHERE {_PHONE_IS_STALE}
)
SELECT (SELECT count(*) FROM failing),
       {population_sql("deliveries_eventguest")} + {population_sql("evoflow_user")},
       ARRAY(SELECT ref FROM failing ORDER BY ref LIMIT %(sample_limit)s)
"""

_WITHOUT_AUDIT = """
    NOT EXISTS (
        SELECT 1 FROM deliveries_userlinkaudit AS audit
        WHERE audit.delivery_id = delivery.id
          AND audit.outcome IN ('linked', 'already_linked')
    )
"""

LINKED_WITHOUT_AUDIT_SQL = f"""
WITH failing AS MATERIALIZED (
    SELECT delivery.id
    FROM deliveries_messagedelivery AS delivery
    WHERE delivery.user_id IS NOT NULL AND {_WITHOUT_AUDIT}
)
SELECT (SELECT count(*) FROM failing),
       {LINKED_DELIVERIES},
       ARRAY(SELECT id::text FROM failing ORDER BY failing.id LIMIT %(sample_limit)s)
"""

LINKED_WITHOUT_AUDIT_CHANGED_SQL = f"""
WITH {_CHANGED_DELIVERIES},
failing AS MATERIALIZED (
    SELECT delivery.id
    FROM deliveries_messagedelivery AS delivery
    JOIN changed ON changed.id = delivery.id
    WHERE delivery.user_id IS NOT NULL AND {_WITHOUT_AUDIT}
)
SELECT (SELECT count(*) FROM failing),
       {LINKED_DELIVERIES},
       ARRAY(SELECT id::text FROM failing ORDER BY failing.id LIMIT %(sample_limit)s)
"""


def unlinked_deliveries_repair(*, dry_run: bool = False) -> int:
    """Run the historical backfill; returns how many deliveries it linked (or would link)."""
    return services.deliveries_backfill(dry_run=dry_run).linked


UNLINKED_DELIVERIES = register(
    IntegrityCheck(
        id="deliveries.unlinked_deliveries",
        description=(
            "Inconsistency rate: deliveries without a user whose guest is active and linked, "
            "out of all deliveries. Any is a warning; above 1% is an error."
        ),
        sql=unlinked_deliveries_sql,
        warning_count=1,
        error_ratio=0.01,
        repair=unlinked_deliveries_repair,
        repair_blocked_reason=selectors.linking_off_reason,
        repair_description="runs the historical backfill (method 'historical'), flags honoured",
        sample_admin_url_name="admin:deliveries_messagedelivery_change",
        is_trend_rate=True,
    )
)

USER_MISMATCH = register(
    IntegrityCheck(
        id="deliveries.user_mismatch",
        description=(
            "Deliveries whose user differs from their active guest's user (written around the "
            "triggers: a restore, a trigger disabled): the old user still reads them. Any is an "
            "error; fix with the guest's 'relink' in the admin or the API. Between full sweeps: "
            "the deliveries and guests changed since the previous run, and those failing then."
        ),
        sql=USER_MISMATCH_SQL,
        changed_sql=USER_MISMATCH_CHANGED_SQL,
        warning_count=1,
        error_count=1,
        sample_admin_url_name="admin:deliveries_messagedelivery_change",
    )
)

PHONE_NOT_NORMALISED = register(
    IntegrityCheck(
        id="deliveries.phone_not_normalised",
        description=(
            "Guests and users whose phone has no E.164 form, or one that does not match the "
            "typed number: they cannot be matched by phone. Samples are 'guest:ID' or 'user:ID'."
        ),
        sql=PHONE_NOT_NORMALISED_SQL,
        warning_count=1,
    )
)

LINKED_WITHOUT_AUDIT = register(
    IntegrityCheck(
        id="deliveries.linked_without_audit",
        description=(
            "Deliveries carrying a user with no 'linked' or 'already_linked' audit row (D3): "
            "a link written around the triggers. Between full sweeps: the deliveries and guests "
            "changed since the previous run, and those failing then (an audit row deleted around "
            "its append-only trigger waits for the next full sweep)."
        ),
        sql=LINKED_WITHOUT_AUDIT_SQL,
        changed_sql=LINKED_WITHOUT_AUDIT_CHANGED_SQL,
        warning_count=1,
        sample_admin_url_name="admin:deliveries_messagedelivery_change",
    )
)
