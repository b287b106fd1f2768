"""The operator dashboard and the admin lists it links to, over tables of millions of rows.

Figures (median of 5 timed requests after one warm-up, 3 in `--quick`, in ms, with the queries
each ran; latencies, so no ratio to the PostgreSQL reference, which is a rate):

* `dashboard.page`: `GET /admin/` as a superuser, the whole render;
* `dashboard.tile.*`: each read of the dashboard tiles (and the trend chart) on its own;
* `dashboard.list.*`: the first page of every admin list the dashboard links to, the URLs read
  from the rendered page; values that change per view (timestamps, ids) are left out of the
  names, and one list per such shape is timed;
* references in the same run: `dashboard.naive.count.*`, a bare `SELECT count(*)` of each big
  table (what a stock admin list runs on every page view, twice with `show_full_result_count`),
  and `dashboard.naive.list.*`, the deliveries list with Django's default paginator and full
  result count, the way a stock `ModelAdmin` would page it;
* `dashboard.data`: the rows loaded and how long loading and ANALYZE took.

The data set (full size; `--quick` loads a twentieth): 1,000,000 message deliveries of which
one in ten has no user although its guest is linked, 1,000,000 link audit rows over 30 days,
500,000 webhook receipts over 2 days, 200,000 journey sessions of mixed statuses, 100,000 failed
django-q tasks over 30 days, 1,000 integrity runs over 30 days with a result per registered
check, and 20 pages with about 1,000 sync runs. It is written with set-based SQL, triggers off
(`session_replication_role = replica`: the rows are consistent by construction, and the
linking trigger would repair the inconsistent deliveries the dashboard is meant to show).

The dashboard reads whole tables, so the bench runs in a database of its own: a fresh one next
to the configured database, migrated the way the test runner does it, dropped at the end
whatever happens. The configured database is never written to.
"""

from __future__ import annotations

import dataclasses
import html
import re
import secrets
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from django.db import connection, reset_queries, transaction
from django.test import Client
from django.test.utils import CaptureQueriesContext, override_settings
from django.utils import timezone

from bench import Context, Result

REPEATS = 5
# `--quick` shrinks the sample, never the warm-up call before it.
QUICK_REPEATS = 3
_repeats = REPEATS  # this run's, set by run()
WARMUP = "one call before the timed ones (its queries are the ones counted)"
MESSAGES_PER_EVENT = 100
SYNC_PAGES = 20
# What the dashboard renders between these two markers is its own; below them is Django's list
# of every app and model, which links to every changelist.
DASHBOARD_START = 'class="ops-dashboard"'
DASHBOARD_END = 'class="ops-app-list"'
CHANGELIST_PATH = re.compile(r"^/admin/(?P<app>[\w-]+)/(?P<model>[\w-]+)/$")
# Query values that change with every view or with the data (timestamps, row ids): left out of
# the figure's name.
TIMESTAMP_VALUE = re.compile(r"^\d{4}-\d\d-\d\dT")
BIG_TABLES = (
    "deliveries_messagedelivery",
    "deliveries_userlinkaudit",
    "conversations_webhookreceipt",
    "journeys_journeysession",
    "django_q_task",
    "evoflow_integritycheckresult",
)


def _execute(sql: str, params: dict[str, Any] | list[Any] | None = None) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


# -- a database of its own ----------------------------------------------------------------------


@contextmanager
def bench_database() -> Iterator[str]:
    """A freshly migrated database beside the configured one, for this process's connection,
    dropped on exit. Django's test-database machinery does the work, under a name of ours."""
    settings_dict = connection.settings_dict
    original_name = settings_dict["NAME"]
    test_settings = settings_dict.setdefault("TEST", {})
    original_test_name = test_settings.get("NAME")
    # Never the configured test database's name: creating it would drop the one in use.
    name = f"{original_name}_bench_dashboard_{secrets.token_hex(3)}"[:63]
    test_settings["NAME"] = name
    try:
        connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
        try:
            yield name
        finally:
            connection.creation.destroy_test_db(original_name, verbosity=0)
    finally:
        test_settings["NAME"] = original_test_name


# -- the data set -------------------------------------------------------------------------------


def _load(
    *, deliveries: int, audits: int, receipts: int, sessions: int, failures: int, runs: int
) -> dict[str, int]:
    """Write the data set into the bench database; the rows of each big table, counted."""
    from evoflow.integrity.registry import all_checks

    guests = max(1, deliveries // MESSAGES_PER_EVENT)
    messages = min(MESSAGES_PER_EVENT, deliveries)
    users = max(1, guests // 2)
    check_ids = sorted(check.id for check in all_checks())
    params: dict[str, Any] = {
        "guests": guests,
        "messages": messages,
        "users": users,
        "audits": audits,
        "receipts": receipts,
        "sessions": sessions,
        "failures": failures,
        "runs": runs,
        "pages": SYNC_PAGES,
        "check_ids": check_ids,
    }
    with transaction.atomic():
        _execute("SET LOCAL session_replication_role = replica")
        _execute("SET LOCAL statement_timeout = 0")
        _execute(
            """
            INSERT INTO evoflow_user (password, is_superuser, username, first_name, last_name,
                                      email, is_staff, is_active, date_joined, phone)
            SELECT '!', false, 'bench-guest-user-' || n, '', '', '', false, true, now(), ''
            FROM generate_series(1, %(users)s + 1) AS n
            """,
            params,
        )
        # One event of `messages` messages sent over 30 days to every guest, all guests linked;
        # the deliveries of one in ten (guest, message) pairs kept no user (the backlog).
        _execute(
            """
            WITH host AS (SELECT min(id) AS id FROM evoflow_user),
            event AS (
                INSERT INTO deliveries_event (name, starts_at, host_id, created_at)
                SELECT 'bench event', now() - interval '30 days', host.id,
                       now() - interval '30 days'
                FROM host RETURNING id, host_id
            ),
            guests AS (
                INSERT INTO deliveries_eventguest
                    (event_id, name, phone, phone_e164, user_id, created_at, updated_at)
                SELECT event.id, 'guest ' || n, '+1415' || lpad(n::text, 7, '0'),
                       '+1415' || lpad(n::text, 7, '0'),
                       event.host_id + 1 + (n - 1) %% %(users)s,
                       now() - interval '30 days', now() - interval '30 days'
                FROM event, generate_series(1, %(guests)s) AS n
                RETURNING id
            )
            INSERT INTO deliveries_message (event_id, body, sender_id, created_at)
            SELECT event.id, 'bench message ' || n, event.host_id,
                   now() - interval '30 days' * (1 - n::float8 / %(messages)s)
            FROM event, generate_series(1, %(messages)s) AS n
            """,
            params,
        )
        _execute(
            """
            INSERT INTO deliveries_messagedelivery
                (message_id, guest_id, user_id, phone, phone_e164, status, created_at, updated_at)
            SELECT message.id, guest.id,
                   CASE WHEN (guest.id + message.id) %% 10 = 0 THEN NULL ELSE guest.user_id END,
                   guest.phone, guest.phone_e164,
                   (ARRAY['queued', 'sent', 'delivered', 'read', 'failed'])[1 + message.id %% 5],
                   message.created_at, message.created_at
            FROM deliveries_message AS message
            JOIN deliveries_eventguest AS guest ON guest.event_id = message.event_id
            ORDER BY message.id, guest.id
            """,
            params,
        )
        # Written in time order, as the audit is: its BRIN index depends on that.
        _execute(
            """
            INSERT INTO deliveries_userlinkaudit
                (delivery_id, guest_id, user_id, outcome, method, details, created_at)
            SELECT n, NULL, NULL,
                   CASE WHEN n %% 10 < 6 THEN 'linked' WHEN n %% 10 < 8 THEN 'no_match'
                        WHEN n %% 10 = 8 THEN 'already_linked' ELSE 'skipped' END,
                   'guest', '{}'::jsonb,
                   now() - interval '30 days' * (1 - n::float8 / %(audits)s)
            FROM generate_series(1, %(audits)s) AS n
            """,
            params,
        )
        _execute(
            """
            INSERT INTO conversations_webhookreceipt
                (body, body_sha256, signature_verdict, status, attempts, error, event_count,
                 unknown_event_count, skipped_events, received_at, processed_at, next_attempt_at,
                 updated_at)
            SELECT convert_to('{"object":"page","n":' || n || '}', 'UTF8'),
                   md5(n::text) || md5('receipt' || n), 'valid', status, 1,
                   CASE WHEN status = 'failed' THEN 'bench failure' ELSE '' END, 1, 0,
                   '[]'::jsonb, received_at,
                   CASE WHEN status = 'processed' THEN received_at END,
                   CASE WHEN status = 'failed' THEN received_at + interval '5 minutes' END,
                   received_at
            FROM generate_series(1, %(receipts)s) AS n,
                 LATERAL (SELECT
                     now() - interval '2 days' * (1 - n::float8 / %(receipts)s) AS received_at,
                     CASE WHEN n %% 100 < 2 THEN 'failed' WHEN n %% 100 = 2 THEN 'rejected'
                          WHEN n %% 100 = 3 THEN 'received' ELSE 'processed' END AS status
                 ) AS receipt
            """,
            params,
        )
        # One contact per session (one in ten a stub the CRM has not enriched yet); the
        # statuses: 70% completed, 10% failed, 5% cancelled, 10% waiting, 4% active, 1% paused,
        # half of the waiting and active ones overdue.
        _execute(
            """
            WITH journey AS (
                INSERT INTO journeys_journey (name, flow) VALUES ('bench journey', '{}'::jsonb)
                RETURNING id
            ),
            contacts AS (
                INSERT INTO journeys_contact (id, name, crm_synced_at, created_at, updated_at)
                SELECT md5('bench-contact-' || n)::uuid, 'contact ' || n,
                       CASE WHEN n %% 10 = 0 THEN NULL ELSE now() END, now(), now()
                FROM generate_series(1, %(sessions)s) AS n
            )
            INSERT INTO journeys_journeysession
                (journey_id, contact_id, status, current_node_id, step_count, variables, context,
                 wait_event, wait_filters, wait_until, lease_until, ended_reason, created_at,
                 updated_at, finished_at)
            SELECT journey.id, md5('bench-contact-' || n)::uuid, status, 'start', 1, '{}'::jsonb,
                   '{}'::jsonb, '', '{}'::jsonb,
                   CASE WHEN status = 'waiting' THEN now() + interval '1 hour' * overdue END,
                   CASE WHEN status = 'active' THEN now() + interval '1 hour' * overdue END,
                   '', created_at, created_at,
                   CASE WHEN status IN ('completed', 'failed', 'cancelled') THEN created_at END
            FROM journey, generate_series(1, %(sessions)s) AS n,
                 LATERAL (SELECT
                     CASE WHEN n %% 100 < 70 THEN 'completed' WHEN n %% 100 < 80 THEN 'failed'
                          WHEN n %% 100 < 85 THEN 'cancelled' WHEN n %% 100 < 95 THEN 'waiting'
                          WHEN n %% 100 < 99 THEN 'active' ELSE 'paused' END AS status,
                     CASE WHEN n %% 2 = 0 THEN -1 ELSE 1 END AS overdue,
                     now() - interval '30 days' * (1 - n::float8 / %(sessions)s) AS created_at
                 ) AS session
            """,
            params,
        )
        _execute(
            """
            INSERT INTO django_q_task
                (id, name, func, args, kwargs, result, started, stopped, success, attempt_count)
            SELECT md5('bench-task-' || n), 'bench-task-' || n, 'evoflow.tasks.bench', '()',
                   '{}', 'Traceback (most recent call last): bench', stopped - interval '1 second',
                   stopped, false, 1
            FROM generate_series(1, %(failures)s) AS n,
                 LATERAL (SELECT now() - interval '30 days' * (1 - n::float8 / %(failures)s)
                          AS stopped) AS task
            """,
            params,
        )
        _execute(
            """
            WITH runs AS (
                INSERT INTO evoflow_integrityrun
                    (started_at, finished_at, status, trigger, requested_checks, fix_requested,
                     dry_run, exit_code, error, request_id)
                SELECT started_at, started_at + interval '5 seconds', 'warning', 'schedule',
                       '[]'::jsonb, false, false, 1, '', ''
                FROM generate_series(1, %(runs)s) AS n,
                     LATERAL (SELECT now() - interval '30 days' * (1 - n::float8 / %(runs)s)
                              AS started_at) AS run
                RETURNING id, finished_at
            )
            INSERT INTO evoflow_integritycheckresult
                (run_id, check_id, status, failing_count, population, ratio, sample_ids,
                 duration_ms, error, created_at)
            SELECT runs.id, check_id,
                   CASE WHEN check_id = 'deliveries.unlinked_deliveries' THEN 'warning'
                        ELSE 'ok' END,
                   CASE WHEN check_id = 'deliveries.unlinked_deliveries'
                        THEN %(guests)s * %(messages)s / 10 ELSE 0 END,
                   %(guests)s * %(messages)s,
                   CASE WHEN check_id = 'deliveries.unlinked_deliveries' THEN 0.1 ELSE 0 END,
                   '[]'::jsonb, 12.5, '', runs.finished_at
            FROM runs, unnest(%(check_ids)s::text[]) AS check_id
            """,
            params,
        )
        _execute(
            """
            WITH pages AS (
                INSERT INTO conversations_facebookpage
                    (page_id, name, access_token_encrypted, is_reauthorization_required)
                SELECT (9000000000 + n)::text, 'bench page ' || n, '', n = 1
                FROM generate_series(1, %(pages)s) AS n
                RETURNING id
            )
            INSERT INTO conversations_syncrun
                (page_id, mode, status, created_at, started_at, finished_at, messages_inserted)
            SELECT pages.id, CASE WHEN n = 1 THEN 'full' ELSE 'incremental' END, 'succeeded',
                   created_at, created_at, created_at + interval '1 minute', 10
            FROM pages, generate_series(1, %(runs)s / %(pages)s + 1) AS n,
                 LATERAL (SELECT now() - interval '30 days' + interval '30 minutes' * n
                                 + interval '1 minute' * pages.id AS created_at) AS run
            """,
            params,
        )
    # Every table settled as autovacuum leaves it: statistics for the planner and the estimates
    # (the small tables too: a guest table never analysed makes the planner expect 9 guests),
    # and a visibility map for index-only scans.
    _execute("VACUUM ANALYZE")
    return {
        table: _execute(f"SELECT count(*) FROM {table}")[0][0]  # noqa: S608
        for table in (*BIG_TABLES, "evoflow_integrityrun", "conversations_syncrun")
    }


# -- timing -------------------------------------------------------------------------------------


def _measure(call: Callable[[], object]) -> dict[str, float]:
    """Median, fastest and slowest of REPEATS (QUICK_REPEATS in `--quick`) calls after one
    warm-up, and the queries of one."""
    # Every request clears the connection's query log when it starts; from an empty log the
    # capture still sees the request's queries.
    reset_queries()
    with CaptureQueriesContext(connection) as queries:
        call()
    samples = []
    for _ in range(_repeats):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return {
        "median_ms": round(statistics.median(samples) * 1000, 2),
        "min_ms": round(min(samples) * 1000, 2),
        "max_ms": round(max(samples) * 1000, 2),
        "queries": len(queries.captured_queries),
    }


def _get(client: Client, url: str) -> Callable[[], str]:
    def call() -> str:
        response = client.get(url)
        if response.status_code != 200:
            raise RuntimeError(f"GET {url} answered {response.status_code}")
        return response.content.decode()

    return call


def dashboard_list_urls(page: str) -> list[str]:
    """The admin lists the dashboard's own part of `page` links to, in page order, unique."""
    start = page.index(DASHBOARD_START)
    end = page.index(DASHBOARD_END, start)
    urls: list[str] = []
    for href in re.findall(r'href="([^"]+)"', page[start:end]):
        url = html.unescape(href)
        if CHANGELIST_PATH.match(urlsplit(url).path) and url not in urls:
            urls.append(url)
    return urls


def list_name(url: str) -> str:
    """`dashboard.list.<model>[.<param>=<value>,...]`, varying values reduced to the name."""
    parts = urlsplit(url)
    match = CHANGELIST_PATH.match(parts.path)
    assert match is not None
    params = [
        key
        if TIMESTAMP_VALUE.match(value) or (key.endswith("id__exact") and value.isdigit())
        else f"{key}={value}"
        for key, value in parse_qsl(parts.query)
    ]
    return ".".join(["dashboard.list", match["model"], *([",".join(params)] if params else [])])


def _tile_results() -> list[Result]:
    from conversations import dashboard as conversations_dashboard
    from deliveries import dashboard as deliveries_dashboard
    from evoflow import dashboard
    from evoflow.integrity.trends import integrity_trend, integrity_trend_svg
    from journeys import dashboard as journeys_dashboard

    now = timezone.now().replace(microsecond=0)
    latest = dashboard.integrity_latest_results()

    def health(area: str) -> dashboard.AreaHealth:
        return dashboard.area_health(area=area, latest=latest)

    reads: dict[str, Callable[[], object]] = {
        "integrity_latest_results": dashboard.integrity_latest_results,
        "integrity_last_run": dashboard.integrity_last_run,
        "journeys": lambda: journeys_dashboard.journeys_tile(now=now, health=health("journeys")),
        "conversations": lambda: conversations_dashboard.conversations_tile(
            now=now, health=health("conversations")
        ),
        "deliveries": lambda: deliveries_dashboard.deliveries_tile(
            now=now, health=health("deliveries"), can_repair=True
        ),
        "tasks": lambda: dashboard.tasks_tile(now=now, health=health("tasks")),
        "integrity_trend": lambda: integrity_trend_svg(integrity_trend()),
    }
    return [
        Result(f"dashboard.tile.{name}", _measure(read), notes="one read of the page, alone")
        for name, read in reads.items()
    ]


def _naive_results(client: Client) -> list[Result]:
    from django.contrib import admin
    from django.core.paginator import Paginator

    from deliveries.models import MessageDelivery

    results = []
    for table in BIG_TABLES:
        figures = _measure(partial(_execute, f"SELECT count(*) FROM {table}"))  # noqa: S608
        figures.pop("queries")
        results.append(
            Result(
                f"dashboard.naive.count.{table}",
                figures,
                notes="SELECT count(*): a stock admin list runs it per view, twice unfiltered",
            )
        )
    # The stock behaviour on the registered admin itself, for this measurement only: instance
    # attributes shadow the class's and are removed afterwards.
    stock = {"paginator": Paginator, "show_full_result_count": True}
    instance_attributes = vars(admin.site._registry[MessageDelivery])
    instance_attributes.update(stock)
    try:
        for suffix, query in (("", ""), (".consistency=inconsistent", "?consistency=inconsistent")):
            url = f"/admin/deliveries/messagedelivery/{query}"
            results.append(
                Result(
                    f"dashboard.naive.list.messagedelivery{suffix}",
                    _measure(_get(client, url)),
                    notes="Django's Paginator and full result count: exact counts per view",
                )
            )
    finally:
        for name in stock:
            instance_attributes.pop(name)
    return results


def _measure_all(loaded: dict[str, int], load_seconds: float) -> list[Result]:
    from evoflow.models import User

    superuser = User.objects.create_superuser(
        username=f"bench-admin-{secrets.token_hex(3)}", email="", password=None
    )
    client = Client()
    client.force_login(superuser)
    data_figures: dict[str, float] = {f"{table}_rows": rows for table, rows in loaded.items()}
    data_figures["load_seconds"] = round(load_seconds, 2)
    results = [
        Result(
            "dashboard.data",
            data_figures,
            notes="set-based SQL with triggers off, then VACUUM ANALYZE",
        )
    ]
    page = _get(client, "/admin/")()
    results.append(
        Result("dashboard.page", _measure(_get(client, "/admin/")), notes="GET /admin/, superuser")
    )
    results.extend(_tile_results())
    seen: set[str] = set()
    for url in dashboard_list_urls(page):
        name = list_name(url)
        if name in seen:
            continue
        seen.add(name)
        results.append(Result(name, _measure(_get(client, url)), notes=f"first page of {url}"))
    if not seen:
        raise RuntimeError("the dashboard linked to no admin list")
    results.extend(_naive_results(client))
    return results


def run(ctx: Context) -> list[Result]:
    global _repeats
    _repeats = QUICK_REPEATS if ctx.quick else REPEATS
    sizes = {
        "deliveries": ctx.size(quick=50_000, full=1_000_000, minimum=MESSAGES_PER_EVENT),
        "audits": ctx.size(quick=50_000, full=1_000_000, minimum=10),
        "receipts": ctx.size(quick=25_000, full=500_000, minimum=100),
        "sessions": ctx.size(quick=10_000, full=200_000, minimum=100),
        "failures": ctx.size(quick=5_000, full=100_000, minimum=10),
        "runs": ctx.size(quick=200, full=1_000, minimum=SYNC_PAGES),
    }
    # The test client's host, whatever ALLOWED_HOSTS the environment sets.
    with bench_database(), override_settings(ALLOWED_HOSTS=["testserver"]):
        started = time.perf_counter()
        loaded = _load(**sizes)
        load_seconds = time.perf_counter() - started
        return [
            dataclasses.replace(result, warmup=WARMUP) if "median_ms" in result.figures else result
            for result in _measure_all(loaded, load_seconds)
        ]
