"""The operator dashboard on the admin index, through the test client as operators use it."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from django.contrib.auth.models import Group, Permission
from django.db import connection, transaction
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django_q.models import Failure, OrmQ

from conversations import dashboard as conversations_dashboard
from conversations import selectors as conversations_selectors
from conversations.models import FacebookPage, ReceiptStatus, SyncRun, SyncStatus, WebhookReceipt
from deliveries import dashboard as deliveries_dashboard
from deliveries.models import FeatureFlag, MessageDelivery, UserLinkAudit
from evoflow import dashboard
from evoflow.integrity.registry import all_checks
from evoflow.models import IntegrityCheckResult, IntegrityRun
from evoflow.permissions import OPERATORS_GROUP
from journeys import dashboard as journeys_dashboard
from journeys import selectors as journeys_selectors
from journeys.models import Contact, JourneySession
from tests.core.changelists import changelist_get
from tests.core.factories import UserFactory
from tests.deliveries.conftest import triggers_bypassed
from tests.deliveries.factories import EventFactory, EventGuestFactory, MessageFactory
from tests.journeys.factories import JourneyFactory

pytestmark = pytest.mark.django_db


# -- helpers --------------------------------------------------------------------------------------


class DataTestIdCollector(HTMLParser):
    """Every element with a data-testid: its attributes and its text."""

    VOID = {"br", "img", "input", "meta", "link", "hr"}

    def __init__(self) -> None:
        super().__init__()
        self.found: dict[str, dict[str, Any]] = {}
        self._open: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        testid = attributes.get("data-testid")
        if testid:
            self.found[testid] = {**attributes, "text": ""}
        if tag not in self.VOID:
            self._open.append((tag, testid))

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            open_tag, _ = self._open.pop()
            if open_tag == tag:
                break

    def handle_data(self, data: str) -> None:
        for _, testid in self._open:
            if testid:
                self.found[testid]["text"] += data


def elements(html: bytes) -> dict[str, dict[str, Any]]:
    parser = DataTestIdCollector()
    parser.feed(html.decode())
    return parser.found


def text(found: dict[str, dict[str, Any]], testid: str) -> str:
    return " ".join(found[testid]["text"].split())


def query(url: str) -> dict[str, str]:
    return {key: values[0] for key, values in parse_qs(urlsplit(url).query).items()}


def path(url: str) -> str:
    return urlsplit(url).path


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def operator():
    user = UserFactory(is_staff=True)
    user.groups.add(Group.objects.get(name=OPERATORS_GROUP))
    return user


@pytest.fixture
def operator_client(operator) -> Client:
    return client_for(operator)


def dashboard_page(client: Client) -> tuple[Any, dict[str, dict[str, Any]]]:
    response = client.get("/admin/")
    assert response.status_code == 200
    return response, elements(response.content)


def listed_count(client: Client, url: str) -> int:
    """How many rows the admin list at `url` shows."""
    changelist, _ = changelist_get(client, url)
    return changelist.result_count


def assert_since(value: str, *, before: datetime, after: datetime, age: timedelta) -> None:
    """An ISO 8601 UTC timestamp with whole seconds, `age` before the moment of the request."""
    moment = datetime.fromisoformat(value)
    assert value.endswith("+00:00")
    assert moment.microsecond == 0
    assert before.replace(microsecond=0) - age <= moment <= after - age


# -- who sees it ----------------------------------------------------------------------------------


def test_staff_operator_sees_the_tiles_the_chart_and_still_the_app_list(operator_client):
    response, found = dashboard_page(operator_client)

    for area in ("journeys", "conversations", "deliveries", "tasks"):
        assert found[f"tile-{area}"]["data-status"] == "unknown"
        assert text(found, f"status-{area}") == "not checked yet"
    assert "trend-chart-empty" in found
    assert text(found, "last-integrity-run") == "No full integrity run yet."
    # Django's list of apps is still on the page, below the tiles.
    html = response.content.decode()
    assert 'class="app-journeys module' in html
    assert html.index('data-testid="tile-tasks"') < html.index('class="app-journeys module')


def test_the_tiles_keep_their_order_whatever_order_the_apps_register_them_in(operator_client):
    # The apps register their tiles from ready(); TileSpec.order decides where each goes.
    assert dashboard.tile_areas() == ("journeys", "conversations", "deliveries", "tasks")

    response, _ = dashboard_page(operator_client)

    html = response.content.decode()
    positions = [html.index(f'data-testid="tile-{area}"') for area in dashboard.tile_areas()]
    assert positions == sorted(positions)


def test_superuser_sees_the_same_dashboard():
    _, found = dashboard_page(client_for(UserFactory(is_staff=True, is_superuser=True)))

    assert {f"tile-{area}" for area in ("journeys", "conversations", "deliveries", "tasks")} <= set(
        found
    )


def test_non_staff_user_is_sent_to_the_login_page_as_before():
    response = client_for(UserFactory()).get("/admin/")

    assert response.status_code == 302
    assert response["Location"] == "/admin/login/?next=/admin/"


def test_staff_without_permissions_sees_no_numbers():
    response, found = dashboard_page(client_for(UserFactory(is_staff=True)))

    assert not any(testid.startswith("tile-") for testid in found)
    assert "trend-chart" not in found
    assert "trend-chart-empty" not in found
    assert b"may not view any area" in response.content


def staff_with(*permissions: str):
    """A staff member with exactly these permissions ("app_label.codename")."""
    user = UserFactory(is_staff=True)
    for permission in permissions:
        app_label, codename = permission.split(".")
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label=app_label, codename=codename)
        )
    return user


# Every number on the page (the ones always listed), by the model whose view permission it needs.
FIGURES_BY_MODEL = {
    "journeys.journeysession": {"sessions-overdue"},
    "journeys.contact": {"stub-contacts"},
    "conversations.facebookpage": {"pages-reauthorization"},
    "conversations.syncrun": {"syncs-running", "last-syncs"},
    "conversations.webhookreceipt": {"receipts-received", "receipts-failed"},
    "deliveries.messagedelivery": {"inconsistent-count", "deliveries-total", "inconsistency-rate"},
    "deliveries.userlinkaudit": {"audits-linked", "audits-no_match"},
    "deliveries.featureflag": {"flag-whatsapp_delivery_linkage"},
    "django_q.ormq": {"tasks-queued"},
    "django_q.failure": {"tasks-failed"},
}
TABLES_BY_MODEL = {
    "journeys.journeysession": "journeys_journeysession",
    "journeys.contact": "journeys_contact",
    "conversations.facebookpage": "conversations_facebookpage",
    "conversations.syncrun": "conversations_syncrun",
    "conversations.webhookreceipt": "conversations_webhookreceipt",
    "deliveries.messagedelivery": "deliveries_messagedelivery",
    "deliveries.userlinkaudit": "deliveries_userlinkaudit",
    "deliveries.featureflag": "deliveries_featureflag",
    "django_q.ormq": "django_q_ormq",
    "django_q.failure": "django_q_task",
}
# Sync runs are listed with the name of their page.
ALSO_READ_BY_MODEL = {"conversations.syncrun": {"conversations_facebookpage"}}


@pytest.mark.parametrize("model", sorted(FIGURES_BY_MODEL))
def test_each_number_needs_the_view_permission_of_the_model_it_counts(model):
    # Given a staff member who may view this one model, and a flag row to list.
    FeatureFlag.objects.update_or_create(name="whatsapp_delivery_linkage")
    app_label, model_name = model.split(".")
    client = client_for(staff_with(f"{app_label}.view_{model_name}"))

    with CaptureQueriesContext(connection) as queries:
        _, found = dashboard_page(client)

    # Then they see that model's numbers and no other, in that area's tile only...
    every_figure = set().union(*FIGURES_BY_MODEL.values())
    assert every_figure & set(found) == FIGURES_BY_MODEL[model]
    area = "tasks" if app_label == "django_q" else app_label
    assert {testid for testid in found if testid.startswith("tile-")} == {f"tile-{area}"}
    # ...and no other model's table is read.
    hidden = {table for name, table in TABLES_BY_MODEL.items() if name != model}
    hidden -= ALSO_READ_BY_MODEL.get(model, set())
    read = {table for table in hidden for query in queries if f'"{table}"' in query["sql"]}
    assert read == set()


def test_flag_viewer_sees_no_delivery_or_link_audit_numbers():
    _, found = dashboard_page(client_for(staff_with("deliveries.view_featureflag")))

    assert "tile-deliveries" in found
    for testid in ("deliveries-total", "inconsistent-count", "inconsistency-rate", "audits-linked"):
        assert testid not in found
    assert "repair-deliveries.unlinked_deliveries" not in found


def test_viewing_journeys_alone_shows_no_session_or_contact_numbers():
    # Journeys (the definitions) are not counted on the dashboard: no tile at all.
    response, found = dashboard_page(client_for(staff_with("journeys.view_journey")))

    assert "stub-contacts" not in found
    assert "tile-journeys" not in found
    assert b"may not view any area" in response.content


def test_failing_checks_and_their_counts_need_the_integrity_permission():
    store_run({"deliveries.unlinked_deliveries": "warning"})
    viewer = staff_with("deliveries.view_featureflag")

    _, found = dashboard_page(client_for(viewer))

    # The colour stays; the stored failing count (the inconsistent deliveries) does not show.
    assert found["tile-deliveries"]["data-status"] == "warning"
    assert "failing" not in text(found, "tile-deliveries")


# -- journeys -------------------------------------------------------------------------------------


def make_sessions(now: datetime, statuses: dict[str, int], **fields: Any) -> list[JourneySession]:
    journey = JourneyFactory()
    contacts = Contact.objects.bulk_create(
        [Contact(id=uuid.uuid4()) for _ in range(sum(statuses.values()))]
    )
    kinds = [status for status, count in statuses.items() for _ in range(count)]
    return JourneySession.objects.bulk_create(
        [
            JourneySession(journey=journey, contact=contact, status=status, **fields)
            for contact, status in zip(contacts, kinds, strict=True)
        ]
    )


def test_journeys_tile_counts_sessions_overdue_waits_and_stubs(operator_client):
    now = timezone.now()
    make_sessions(now, {"completed": 3, "failed": 1, "paused": 1})
    make_sessions(now, {"waiting": 2}, wait_until=now - timedelta(minutes=30))  # overdue
    make_sessions(now, {"waiting": 1}, wait_until=now + timedelta(hours=1))
    make_sessions(now, {"active": 1}, lease_until=now - timedelta(minutes=30))  # stalled
    make_sessions(now, {"active": 1}, lease_until=now + timedelta(minutes=5))
    Contact.objects.filter(pk__in=Contact.objects.values("pk")[:4]).update(crm_synced_at=now)
    stubs = Contact.objects.filter(crm_synced_at__isnull=True).count()

    _, found = dashboard_page(operator_client)

    sessions_url = reverse("admin:journeys_journeysession_changelist")
    expected = {"active": 2, "waiting": 3, "paused": 1, "completed": 3, "failed": 1}
    for status, count in expected.items():
        link = found[f"sessions-{status}"]
        assert text(found, f"sessions-{status}") == str(count)
        assert path(link["href"]) == sessions_url
        assert query(link["href"]) == {"status__exact": status}
        assert listed_count(operator_client, link["href"]) == count
    assert "sessions-cancelled" not in found  # statuses with no session are left out
    assert text(found, "sessions-overdue") == "3"
    assert found["sessions-overdue"]["href"] == f"{sessions_url}?overdue=yes"
    assert listed_count(operator_client, found["sessions-overdue"]["href"]) == 3
    assert text(found, "stub-contacts") == str(stubs) == "6"
    assert query(found["stub-contacts"]["href"]) == {"enrichment": "stub"}
    assert listed_count(operator_client, found["stub-contacts"]["href"]) == stubs


def test_a_big_sessions_table_is_estimated_except_the_live_sessions(operator_client, monkeypatch):
    now = timezone.now()
    make_sessions(now, {"completed": 30, "waiting": 2})
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {JourneySession._meta.db_table}")
    monkeypatch.setattr(dashboard, "EXACT_COUNT_LIMIT", 10)

    _, found = dashboard_page(operator_client)

    assert text(found, "sessions-completed") == "~30"
    assert text(found, "sessions-waiting") == "2"  # live: always exact


def big_sessions_table_with_unlisted_statuses(monkeypatch, *, failed: int, cancelled: int) -> None:
    """Statistics that know only completed and waiting sessions, and finished sessions they do
    not list; the table counts as big."""
    now = timezone.now()
    make_sessions(now, {"completed": 30, "waiting": 2})
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {JourneySession._meta.db_table}")
    make_sessions(now, {"failed": failed, "cancelled": cancelled})
    estimates = dashboard.column_value_estimates(JourneySession, "status", rows=32)
    assert set(estimates) == {"completed", "waiting"}
    monkeypatch.setattr(dashboard, "EXACT_COUNT_LIMIT", 10)


def test_a_status_the_statistics_do_not_list_is_counted_not_taken_for_zero(
    operator_client, monkeypatch
):
    big_sessions_table_with_unlisted_statuses(monkeypatch, failed=1, cancelled=5)

    _, found = dashboard_page(operator_client)

    assert text(found, "sessions-completed") == "~30"
    assert text(found, "sessions-failed") == "1"
    assert text(found, "sessions-cancelled") == "5"
    assert query(found["sessions-failed"]["href"]) == {"status__exact": "failed"}


def test_a_status_the_statistics_do_not_list_is_counted_up_to_a_limit(operator_client, monkeypatch):
    big_sessions_table_with_unlisted_statuses(monkeypatch, failed=1, cancelled=5)
    monkeypatch.setattr(journeys_dashboard, "RARE_STATUS_COUNT_LIMIT", 3)

    _, found = dashboard_page(operator_client)

    assert text(found, "sessions-failed") == "1"
    assert text(found, "sessions-cancelled") == "3+"  # "at least 3"


def test_the_capped_count_of_an_ended_status_uses_the_ended_sessions_index():
    make_sessions(timezone.now(), {"failed": 3, "cancelled": 1})

    with CaptureQueriesContext(connection) as queries:
        counts = journeys_selectors.sessions_count_by_status_up_to(
            statuses=["failed", "cancelled"], limit=2
        )

    assert counts == {"failed": 2, "cancelled": 1}
    assert len(queries) == 1
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute(f"EXPLAIN {queries[0]['sql']}")
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert plan.count("journeys_session_ended_idx") == 2, plan


def test_a_capped_figure_reads_at_least():
    figure = dashboard.Figure(key="k", label="l", value=10_000, is_capped=True)
    assert figure.display == "10,000+"


# -- conversations --------------------------------------------------------------------------------


def make_run(page: FacebookPage, status: str, created_at: datetime, **counters: int) -> SyncRun:
    return SyncRun.objects.create(
        page=page, mode="incremental", status=status, created_at=created_at, **counters
    )


def test_conversations_tile(operator_client):
    now = timezone.now()
    pages = FacebookPage.objects.bulk_create(
        [FacebookPage(page_id=str(800 + index), name=f"Shop {index}") for index in range(3)]
    )
    FacebookPage.objects.filter(pk=pages[0].pk).update(is_reauthorization_required=True)
    make_run(pages[0], SyncStatus.SUCCEEDED, now - timedelta(hours=3))
    last_of_first = make_run(pages[0], SyncStatus.FAILED, now - timedelta(hours=2))
    make_run(pages[1], SyncStatus.SUCCEEDED, now - timedelta(hours=5))
    running = make_run(
        pages[1], SyncStatus.RUNNING, now - timedelta(minutes=1), messages_inserted=40, api_calls=3
    )
    old = now - timedelta(hours=2)
    recent = now - timedelta(minutes=10)
    WebhookReceipt.objects.bulk_create(
        [
            WebhookReceipt(
                body=b"{}",
                body_sha256="0",
                signature_verdict="valid",
                status=status,
                received_at=at,
            )
            for status, at in [
                ("processed", recent),
                ("processed", recent),
                ("failed", recent),
                ("processed", old),
                ("rejected", old),
            ]
        ]
    )

    before = timezone.now()
    response, found = dashboard_page(operator_client)
    after = timezone.now()

    assert text(found, "pages-reauthorization") == "1"
    assert query(found["pages-reauthorization"]["href"]) == {
        "is_reauthorization_required__exact": "1"
    }
    assert listed_count(operator_client, found["pages-reauthorization"]["href"]) == 1
    assert text(found, "syncs-running") == "1"
    assert query(found["syncs-running"]["href"]) == {"status__exact": "running"}
    assert listed_count(operator_client, found["syncs-running"]["href"]) == 1
    line = found[f"running-sync-{running.pk}"]
    assert line["href"] == reverse("admin:conversations_syncrun_change", args=[running.pk])
    assert "api calls 3, messages inserted 40" in text(found, "running-syncs")
    # The newest run of each synced page, most recent first; a page never synced is not listed.
    tile = response.context["dashboard"]["tiles"][1].tile
    assert [line.run_id for line in tile.syncs.last_syncs] == [running.pk, last_of_first.pk]
    assert text(found, f"last-sync-{last_of_first.pk}") == "failed"
    assert found[f"last-sync-{last_of_first.pk}"]["href"] == reverse(
        "admin:conversations_syncrun_change", args=[last_of_first.pk]
    )
    runs_link = found[f"page-runs-{last_of_first.pk}"]["href"]
    assert query(runs_link) == {"page__id__exact": str(pages[0].pk)}
    assert listed_count(operator_client, runs_link) == 2
    # Receipts of the last hour, every status listed.
    expected = {"received": 0, "processed": 2, "failed": 1, "rejected": 0}
    for status, count in expected.items():
        link = found[f"receipts-{status}"]["href"]
        assert text(found, f"receipts-{status}") == str(count)
        assert path(link) == reverse("admin:conversations_webhookreceipt_changelist")
        assert query(link)["status__exact"] == status
        assert_since(
            query(link)["received_since"], before=before, after=after, age=timedelta(hours=1)
        )
        assert listed_count(operator_client, link) == count


def test_running_syncs_are_capped_with_the_rest_counted(operator_client):
    now = timezone.now()
    pages = FacebookPage.objects.bulk_create(
        [FacebookPage(page_id=str(500 + index)) for index in range(12)]
    )
    SyncRun.objects.bulk_create(
        [SyncRun(page=page, mode="full", status="running", created_at=now) for page in pages]
    )

    _, found = dashboard_page(operator_client)

    assert text(found, "syncs-running") == "12"
    assert text(found, "running-syncs-more") == "and 2 more"
    assert sum(testid.startswith("running-sync-") for testid in found) == 10
    assert sum(testid.startswith("last-sync-") for testid in found) == 10
    assert text(found, "all-pages") == "all 12 synced pages"


def test_the_last_sync_per_page_is_one_lateral_query_served_by_the_page_index():
    now = timezone.now()
    pages = FacebookPage.objects.bulk_create(
        [FacebookPage(page_id=str(600 + index)) for index in range(3)]
    )
    SyncRun.objects.bulk_create(
        [
            SyncRun(page=page, mode="full", status="succeeded", created_at=now - timedelta(hours=h))
            for page in pages
            for h in range(1, 4)
        ]
    )
    with CaptureQueriesContext(connection) as queries:
        latest, total = conversations_selectors.sync_runs_latest_per_page(limit=2)
    assert len(queries) == 1
    assert total == 3
    assert len(latest) == 2
    assert all(line.created_at == now - timedelta(hours=1) for line in latest)

    sql = queries[0]["sql"]
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute(f"EXPLAIN {sql}")
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "syncrun_page_created" in plan


# -- deliveries -----------------------------------------------------------------------------------


def build_deliveries(*, consistent: int, inconsistent: int) -> None:
    """Deliveries written around the triggers: `inconsistent` have no user though their guest
    is linked (as in the backfill tests)."""
    message = MessageFactory(event=EventFactory())
    users = UserFactory.create_batch(2)
    with triggers_bypassed():
        guests = EventGuestFactory.create_batch(
            consistent + inconsistent, event=message.event, user=users[0]
        )
        MessageDelivery.objects.bulk_create(
            [
                MessageDelivery(
                    message=message, guest=guest, user=users[0] if index < consistent else None
                )
                for index, guest in enumerate(guests)
            ]
        )


def make_audits(outcomes: list[tuple[str, datetime]]) -> None:
    UserLinkAudit.objects.bulk_create(
        [UserLinkAudit(outcome=outcome, method="manual", created_at=at) for outcome, at in outcomes]
    )


def test_deliveries_tile_rate_audits_flags_and_repair(operator_client):
    build_deliveries(consistent=19, inconsistent=1)
    now = timezone.now()
    make_audits(
        [("linked", now - timedelta(hours=1))] * 3
        + [("no_match", now - timedelta(hours=2)), ("linked", now - timedelta(days=2))]
    )
    for name, enabled in FeatureFlag.DEFAULTS.items():
        FeatureFlag.objects.update_or_create(name=name, defaults={"enabled": enabled})

    before = timezone.now()
    _, found = dashboard_page(operator_client)
    after = timezone.now()

    assert text(found, "inconsistency-rate") == "5.00%"
    assert text(found, "inconsistent-count") == "1"
    assert found["inconsistent-count"]["href"] == (
        reverse("admin:deliveries_messagedelivery_changelist") + "?consistency=inconsistent"
    )
    assert listed_count(operator_client, found["inconsistent-count"]["href"]) == 1
    expected = {"linked": 3, "no_match": 1, "skipped": 0, "already_linked": 0}
    for outcome, count in expected.items():
        link = found[f"audits-{outcome}"]["href"]
        assert text(found, f"audits-{outcome}") == str(count)
        assert path(link) == reverse("admin:deliveries_userlinkaudit_changelist")
        assert query(link)["outcome__exact"] == outcome
        assert_since(
            query(link)["created_since"], before=before, after=after, age=timedelta(hours=24)
        )
        assert listed_count(operator_client, link) == count
    for flag in FeatureFlag.objects.all():
        assert found[f"flag-{flag.name}"]["href"] == reverse(
            "admin:deliveries_featureflag_change", args=[flag.pk]
        )
    assert text(found, "tile-deliveries").count(": on") == 1
    try:
        repair = reverse(
            "admin:evoflow_integrityrun_repair", args=["deliveries.unlinked_deliveries"]
        )
    except NoReverseMatch:
        assert "repair-deliveries.unlinked_deliveries" not in found
    else:
        assert found["repair-deliveries.unlinked_deliveries"]["href"] == repair


def test_no_repair_button_without_the_repair_permission():
    viewer = UserFactory(is_staff=True)
    viewer.user_permissions.add(
        *Group.objects.get(name=OPERATORS_GROUP).permissions.exclude(codename="repair_integrity")
    )

    _, found = dashboard_page(client_for(viewer))

    assert "tile-deliveries" in found
    assert "repair-deliveries.unlinked_deliveries" not in found


def test_no_deliveries_means_a_zero_rate(operator_client):
    _, found = dashboard_page(operator_client)

    assert text(found, "inconsistency-rate") == "0%"
    assert text(found, "inconsistent-count") == "0"


def test_a_big_deliveries_table_is_estimated_with_a_tilde(operator_client, monkeypatch):
    build_deliveries(consistent=38, inconsistent=2)
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {MessageDelivery._meta.db_table}")
    monkeypatch.setattr(dashboard, "EXACT_COUNT_LIMIT", 10)

    _, found = dashboard_page(operator_client)

    assert text(found, "deliveries-total") == "~40"
    assert text(found, "inconsistency-rate") == "~5.00%"
    assert text(found, "inconsistent-count") == "2"  # the failing count is always exact


# -- background tasks -----------------------------------------------------------------------------


def make_failures(stopped: list[datetime]) -> None:
    Failure.objects.bulk_create(
        [
            Failure(
                id=uuid.uuid4().hex,
                name=f"task {index}",
                func="evoflow.tasks.nothing",
                started=at,
                stopped=at,
                success=False,
            )
            for index, at in enumerate(stopped)
        ]
    )


def test_tasks_tile_counts_the_queue_and_recent_failures(operator_client):
    now = timezone.now()
    OrmQ.objects.bulk_create([OrmQ(key="evoflow", payload="x", lock=now) for _ in range(4)])
    make_failures([now - timedelta(hours=1), now - timedelta(hours=2), now - timedelta(days=3)])

    before = timezone.now()
    _, found = dashboard_page(operator_client)
    after = timezone.now()

    assert text(found, "tasks-queued") == "4"
    assert found["tasks-queued"]["href"] == reverse("admin:django_q_ormq_changelist")
    assert listed_count(operator_client, found["tasks-queued"]["href"]) == 4
    link = found["tasks-failed"]["href"]
    assert text(found, "tasks-failed") == "2"
    assert path(link) == reverse("admin:django_q_failure_changelist")
    assert_since(query(link)["stopped_since"], before=before, after=after, age=timedelta(hours=24))
    assert listed_count(operator_client, link) == 2


def test_with_redis_the_queue_size_comes_from_the_broker_without_a_link(
    operator_client, settings, monkeypatch
):
    class Broker:
        def queue_size(self) -> int:
            return 7

    settings.Q_CLUSTER = {key: value for key, value in settings.Q_CLUSTER.items() if key != "orm"}
    monkeypatch.setattr("django_q.brokers.get_broker", lambda: Broker())

    _, found = dashboard_page(operator_client)

    assert text(found, "tasks-queued") == "7"
    assert "href" not in found["tasks-queued"]


# -- colours from the stored integrity results ----------------------------------------------------


def store_run(results: dict[str, str], *, at: datetime | None = None) -> IntegrityRun:
    at = at or timezone.now()
    run = IntegrityRun.objects.create(status="warning", started_at=at, finished_at=at)
    IntegrityCheckResult.objects.bulk_create(
        [
            IntegrityCheckResult(
                run=run,
                check_id=check_id,
                status=status,
                created_at=at,
                failing_count=0 if status == "ok" else 2,
            )
            for check_id, status in results.items()
        ]
    )
    return run


def test_tile_colours_are_the_worst_latest_result_of_the_area(operator_client):
    now = timezone.now()
    # An older run's error no longer counts: each check's latest result does.
    store_run(
        {"journeys.sessions_overdue": "error", "deliveries.user_mismatch": "ok"},
        at=now - timedelta(hours=2),
    )
    last = store_run(
        {
            "journeys.sessions_overdue": "ok",
            "journeys.sessions_missing_contact": "warning",
            "conversations.duplicate_messages": "ok",
            "deliveries.user_mismatch": "failed",
        },
        at=now - timedelta(hours=1),
    )

    _, found = dashboard_page(operator_client)

    statuses = {area: found[f"tile-{area}"]["data-status"] for area in dashboard.tile_areas()}
    assert statuses == {
        "journeys": "warning",
        "conversations": "ok",
        "deliveries": "error",
        "tasks": "unknown",
    }
    assert text(found, "status-journeys") == "warning"
    assert text(found, "status-deliveries") == "error"
    assert text(found, "status-tasks") == "not checked yet"
    assert "journeys.sessions_missing_contact: warning (2 failing)" in text(found, "tile-journeys")
    assert text(found, "last-integrity-run").endswith(", warning")
    assert f'href="{reverse("admin:evoflow_integrityrun_change", args=[last.pk])}"' in (
        operator_client.get("/admin/").content.decode()
    )


def test_a_check_removed_from_the_code_no_longer_colours_its_tile(operator_client):
    now = timezone.now()
    store_run({"deliveries.removed_long_ago": "error"}, at=now - timedelta(days=1))
    store_run({"deliveries.unlinked_deliveries": "ok"}, at=now - timedelta(hours=1))

    _, found = dashboard_page(operator_client)

    assert found["tile-deliveries"]["data-status"] == "ok"
    assert "deliveries.removed_long_ago" not in text(found, "tile-deliveries")


def test_the_latest_result_breaks_a_tie_in_time_by_the_newer_row():
    at = timezone.now() - timedelta(hours=1)
    store_run({"journeys.sessions_overdue": "ok"}, at=at)
    newer = store_run({"journeys.sessions_overdue": "warning"}, at=at)

    latest = dashboard.integrity_latest_results()

    assert [(check.check_id, check.status, check.run_id) for check in latest] == [
        ("journeys.sessions_overdue", "warning", newer.pk)
    ]


def test_the_latest_result_per_check_probes_the_index_instead_of_reading_the_history():
    # Given about 200,000 stored results: a run every hour for 15 months, every check in each.
    check_ids = sorted(check.id for check in all_checks())
    runs = 200_000 // len(check_ids)
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            WITH runs AS (
                INSERT INTO {IntegrityRun._meta.db_table}
                    (status, trigger, started_at, finished_at, requested_checks, fix_requested,
                     dry_run, error, request_id)
                SELECT 'healthy', 'schedule', now() - hours * interval '1 hour',
                       now() - hours * interval '1 hour', '[]', false, false, '', ''
                FROM generate_series(1, %s) AS hours
                RETURNING id, started_at
            )
            INSERT INTO {IntegrityCheckResult._meta.db_table}
                (run_id, check_id, status, failing_count, population, ratio, sample_ids,
                 duration_ms, error, created_at)
            SELECT runs.id, check_id, 'ok', 0, 0, 0, '[]', 1, '', runs.started_at
            FROM runs CROSS JOIN unnest(%s::text[]) AS check_id
            """,
            [runs, check_ids],
        )
        cursor.execute(f"ANALYZE {IntegrityCheckResult._meta.db_table}")
        # The runs too: the results' deferred foreign-key checks at the end of the test are
        # planned on its statistics, and with those of an empty table they scan every run for
        # each of the 200,000 results (past the statement timeout).
        cursor.execute(f"ANALYZE {IntegrityRun._meta.db_table}")
    newest = store_run({"tasks.failed_recently": "warning"})

    with CaptureQueriesContext(connection) as queries:
        latest = dashboard.integrity_latest_results()

    assert len(latest) == len(check_ids)
    assert {check.run_id for check in latest if check.check_id == "tasks.failed_recently"} == {
        newest.pk
    }
    assert len(queries) == 1
    with connection.cursor() as cursor:  # the planner's own choice: no setting forces an index
        cursor.execute(f"EXPLAIN {queries[0]['sql']}")
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "integrity_result_latest_idx" in plan, plan
    assert f"Seq Scan on {IntegrityCheckResult._meta.db_table}" not in plan, plan
    assert "Index Cond: ((check_id)::text = registered.check_id)" in plan, plan


# -- query count ----------------------------------------------------------------------------------


def fill(rows: int) -> None:
    """`rows` more rows in every table the dashboard counts (or lists)."""
    now = timezone.now()
    per = max(rows // 5, 1)
    make_sessions(now, {"completed": per * 2, "failed": per, "active": per})
    make_sessions(now, {"waiting": per}, wait_until=now - timedelta(hours=1))
    Contact.objects.bulk_create([Contact(id=uuid.uuid4()) for _ in range(rows)])
    pages = FacebookPage.objects.bulk_create(
        [
            FacebookPage(page_id=f"{uuid.uuid4().int % 10**12}", is_reauthorization_required=True)
            for _ in range(rows)
        ]
    )
    SyncRun.objects.bulk_create(
        [
            SyncRun(page=page, mode="full", status=status, created_at=now, messages_inserted=5)
            for page in pages
            for status in ("succeeded", "running")
        ]
    )
    WebhookReceipt.objects.bulk_create(
        [
            WebhookReceipt(
                body=b"{}",
                body_sha256="0",
                signature_verdict="valid",
                status=ReceiptStatus.values[index % 4],
            )
            for index in range(rows)
        ]
    )
    build_deliveries(consistent=rows - rows // 10, inconsistent=rows // 10)
    make_audits([("linked", now)] * rows)
    OrmQ.objects.bulk_create([OrmQ(key="evoflow", payload="x", lock=now) for _ in range(rows)])
    make_failures([now] * rows)
    store_run({check.id: "warning" for check in all_checks()})
    store_run({"deliveries.unlinked_deliveries": "warning"}, at=now - timedelta(hours=1))


TILE_BUILDERS: dict[str, Callable[[datetime], object]] = {
    "journeys": lambda now: journeys_dashboard.journeys_tile(now=now, health=UNKNOWN),
    "conversations": lambda now: conversations_dashboard.conversations_tile(
        now=now, health=UNKNOWN
    ),
    "deliveries": lambda now: deliveries_dashboard.deliveries_tile(
        now=now, health=UNKNOWN, can_repair=True
    ),
    "tasks": lambda now: dashboard.tasks_tile(now=now, health=UNKNOWN),
}
UNKNOWN = dashboard.AreaHealth(status="unknown", checks=())


def query_counts(client: Client) -> dict[str, int]:
    counts = {}
    for area, build in TILE_BUILDERS.items():
        with CaptureQueriesContext(connection) as queries:
            build(timezone.now())
        counts[area] = len(queries)
    client.get("/admin/")  # the process's caches (content types, permissions) are warm
    with CaptureQueriesContext(connection) as queries:
        assert client.get("/admin/").status_code == 200
    counts["page"] = len(queries)
    return counts


def test_each_tile_and_the_page_cost_the_same_queries_at_10_and_at_1000_rows(operator_client):
    fill(10)
    small = query_counts(operator_client)
    fill(990)
    big = query_counts(operator_client)

    assert small == big
    page = small.pop("page")
    assert small == {"journeys": 4, "conversations": 4, "deliveries": 5, "tasks": 3}
    # The tiles, the latest results, the last run and the trend, plus the admin's own
    # (session, user, permissions, recent actions).
    assert page <= 26
