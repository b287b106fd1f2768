"""The deliveries app's integrity checks (run by `manage.py integrity` and the daily schedule).

Each is one set-based query returning the failing count, the population and up to
`sample_limit` sample ids. Rows that break D1 or D3 can only appear when the triggers were
bypassed (a restore, `session_replication_role = replica`, a trigger dropped or disabled by hand,
which `core.required_triggers` reports); these checks find them.
"""

from __future__ import annotations

from deliveries import selectors, services
from evoflow.db import queryset_sql
from evoflow.integrity.registry import IntegrityCheck, register


def unlinked_deliveries_sql() -> str:
    """Deliveries with NULL user whose guest is active and linked, over all deliveries.

    Healthy: 0; warning: any; error: above 1%. The failing rows are the selector
    `deliveries_inconsistent` (the admin's filter), compiled: D1 is written once.
    """
    failing = queryset_sql(selectors.deliveries_inconsistent().order_by().values("id"))
    return f"""
WITH failing AS MATERIALIZED ({failing})
SELECT (SELECT count(*) FROM failing),
       (SELECT count(*) FROM deliveries_messagedelivery),
       ARRAY(SELECT id::text FROM failing ORDER BY failing.id LIMIT %(sample_limit)s)
"""


USER_MISMATCH_SQL = """
WITH failing AS MATERIALIZED (
    SELECT delivery.id
    FROM deliveries_messagedelivery AS delivery
    JOIN deliveries_eventguest AS guest ON guest.id = delivery.guest_id
    WHERE delivery.user_id IS NOT NULL
      AND guest.user_id IS NOT NULL
      AND guest.removed_at IS NULL
      AND delivery.user_id <> guest.user_id
)
SELECT (SELECT count(*) FROM failing),
       (SELECT count(*) FROM deliveries_messagedelivery WHERE user_id IS NOT NULL),
       ARRAY(SELECT id::text FROM failing ORDER BY failing.id LIMIT %(sample_limit)s)
"""

# A number is "not normalised" when it has text but no E.164 form (unreadable), an E.164 form
# but no text, or an E.164 form that does not end with the typed digits (the text was changed
# around the model, e.g. by raw SQL). Leading zeros are dropped before comparing: they are
# trunk or international prefixes that E.164 does not keep.
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
       (SELECT count(*) FROM deliveries_eventguest) + (SELECT count(*) FROM evoflow_user),
       ARRAY(SELECT ref FROM failing ORDER BY ref LIMIT %(sample_limit)s)
"""

LINKED_WITHOUT_AUDIT_SQL = """
WITH failing AS MATERIALIZED (
    SELECT delivery.id
    FROM deliveries_messagedelivery AS delivery
    WHERE delivery.user_id IS NOT NULL
      AND NOT EXISTS (
          SELECT 1 FROM deliveries_userlinkaudit AS audit
          WHERE audit.delivery_id = delivery.id
            AND audit.outcome IN ('linked', 'already_linked')
      )
)
SELECT (SELECT count(*) FROM failing),
       (SELECT count(*) FROM deliveries_messagedelivery WHERE user_id IS NOT NULL),
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
            "error; fix with the guest's 'relink' in the admin or the API."
        ),
        sql=USER_MISMATCH_SQL,
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
            "a link written around the triggers."
        ),
        sql=LINKED_WITHOUT_AUDIT_SQL,
        warning_count=1,
        sample_admin_url_name="admin:deliveries_messagedelivery_change",
    )
)
