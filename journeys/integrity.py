"""Integrity checks of the journeys app (`manage.py integrity`)."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from evoflow.db import queryset_sql
from evoflow.integrity import IntegrityCheck, register
from evoflow.integrity.sql import partial_index_population_sql, population_sql
from journeys.models import JourneySession, SessionStatus
from journeys.selectors import OVERDUE_MINUTES, sessions_overdue
from journeys.services import contacts_enrich, sessions_resume_due
from journeys.services.contacts import contacts_stale_stub_ids

STUB_ENRICHMENT_HOURS = 1
STEP_STUCK_MINUTES = 10
# sessions_resume_due's defaults: at most this many sessions of each kind per call.
RESUME_BATCH_SIZE = 500
RESUME_MAX_BATCHES = 20


def _resume_overdue(*, dry_run: bool) -> int:
    if dry_run:
        return _resume_due_count()
    report = sessions_resume_due()
    return report.resumed + report.restarted_stalled


def _resume_due_count() -> int:
    """How many sessions `sessions_resume_due` would wake or restart now (the same filters,
    capped as its batches are), for the repair's dry run."""
    now = timezone.now()
    stalled_before = now - timedelta(seconds=int(settings.JOURNEYS_STALLED_AFTER_SECONDS))
    cap = RESUME_BATCH_SIZE * RESUME_MAX_BATCHES
    due = JourneySession.objects.filter(status=SessionStatus.WAITING, wait_until__lte=now)
    stalled = JourneySession.objects.filter(status=SessionStatus.ACTIVE).filter(
        Q(lease_until__lt=now) | Q(lease_until__isnull=True, updated_at__lt=stalled_before)
    )
    return sum(queryset.order_by()[:cap].count() for queryset in (due, stalled))


def _sessions_overdue_sql() -> str:
    # The failing rows are the selector `sessions_overdue` (the admin's filter), compiled: the
    # rule is written once. The population is the live sessions that can be overdue.
    overdue = queryset_sql(sessions_overdue().order_by().values("id"))
    live = JourneySession.objects.filter(status__in=[SessionStatus.ACTIVE, SessionStatus.WAITING])
    # The population is shown beside count thresholds only: once large, the entries of the
    # waiting and active sessions' partial indexes stand for it.
    population = partial_index_population_sql(
        indexes=("journeys_session_due_idx", "journeys_session_active_idx"),
        exact_sql=f"SELECT count(*) FROM ({queryset_sql(live.order_by().values('id'))}) AS live",
    )
    return f"""
        WITH overdue AS ({overdue})
        SELECT (SELECT count(*) FROM overdue),
               {population},
               ARRAY(SELECT id::text FROM overdue ORDER BY overdue.id LIMIT %(sample_limit)s)
    """


def _enrich_stale_stubs(*, dry_run: bool) -> int:
    stale = contacts_stale_stub_ids(older_than_seconds=STUB_ENRICHMENT_HOURS * 3600)
    if dry_run:
        return len(stale)
    return contacts_enrich(contact_ids=stale)


register(
    IntegrityCheck(
        id="journeys.sessions_missing_contact",
        description=(
            "Sessions whose contact row does not exist (J1). Always 0 while the funnel and the"
            " foreign key hold: the check proves it. Between full sweeps: the sessions written"
            " since the previous run and those failing then (a contact deleted around the"
            " foreign key's cascade waits for the next full sweep)."
        ),
        sql=f"""
            WITH missing AS (
                SELECT s.id FROM journeys_journeysession AS s
                LEFT JOIN journeys_contact AS c ON c.id = s.contact_id
                WHERE c.id IS NULL)
            SELECT (SELECT count(*) FROM missing),
                   {population_sql("journeys_journeysession")},
                   ARRAY(SELECT id::text FROM missing ORDER BY missing.id LIMIT %(sample_limit)s)
        """,
        # A session's contact is set when it starts and never changes: the sessions started
        # since (created_at, BRIN) are the ones to read.
        changed_sql=f"""
            WITH changed AS (
                SELECT id FROM journeys_journeysession WHERE created_at >= %(since)s
                UNION SELECT unnest(%(recheck)s::text[])::bigint),
            missing AS (
                SELECT s.id FROM journeys_journeysession AS s
                JOIN changed ON changed.id = s.id
                LEFT JOIN journeys_contact AS c ON c.id = s.contact_id
                WHERE c.id IS NULL)
            SELECT (SELECT count(*) FROM missing),
                   {population_sql("journeys_journeysession")},
                   ARRAY(SELECT id::text FROM missing ORDER BY missing.id LIMIT %(sample_limit)s)
        """,
        error_count=1,
        sample_admin_url_name="admin:journeys_journeysession_change",
    )
)

register(
    IntegrityCheck(
        id="journeys.sessions_overdue",
        description=(
            f"Live sessions more than {OVERDUE_MINUTES} minutes past their resume time (waiting),"
            " or active without a working worker for as long (stalled)."
        ),
        sql=_sessions_overdue_sql,
        warning_count=1,
        error_count=100,
        repair=_resume_overdue,
        repair_description="resume the due sessions and restart the stalled ones now",
        sample_admin_url_name="admin:journeys_journeysession_change",
    )
)

register(
    IntegrityCheck(
        id="journeys.stub_contacts_not_enriched",
        description=(
            f"Contact stubs not enriched from the CRM {STUB_ENRICHMENT_HOURS} hour after creation"
            " (the enrichment task failed, or the CRM does not know the contact)."
        ),
        sql=f"""
            WITH stale AS (
                SELECT id, created_at FROM journeys_contact
                WHERE crm_synced_at IS NULL
                  AND created_at < now() - interval '{STUB_ENRICHMENT_HOURS} hours')
            SELECT (SELECT count(*) FROM stale),
                   {population_sql("journeys_contact")},
                   ARRAY(SELECT id::text FROM stale ORDER BY created_at
                         LIMIT %(sample_limit)s)
        """,
        warning_count=1,
        warning_ratio=0.01,
        repair=_enrich_stale_stubs,
        repair_description="enrich up to 500 stale stubs from the CRM now",
        sample_admin_url_name="admin:journeys_contact_change",
    )
)

register(
    IntegrityCheck(
        id="journeys.steps_started_not_finished",
        description=(
            f"Steps started more than {STEP_STUCK_MINUTES} minutes ago and never finished, whose"
            " session is not waiting to retry them: a side effect may or may not have happened."
            " Samples are session ids."
        ),
        sql=f"""
            WITH stuck AS (
                SELECT st.id, st.session_id FROM journeys_journeystep AS st
                JOIN journeys_journeysession AS s ON s.id = st.session_id
                WHERE st.status = 'started'
                  AND st.started_at < now() - interval '{STEP_STUCK_MINUTES} minutes'
                  AND s.status NOT IN ('waiting', 'paused'))
            SELECT (SELECT count(*) FROM stuck),
                   (SELECT count(*) FROM journeys_journeystep WHERE status = 'started'),
                   ARRAY(SELECT session_id::text FROM stuck ORDER BY id LIMIT %(sample_limit)s)
        """,
        warning_count=1,
        sample_admin_url_name="admin:journeys_journeysession_change",
    )
)
