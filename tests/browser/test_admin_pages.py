"""Every admin page of the demo data in a real browser at 1440x900, and the operator's jobs done
through the pages: retry, pause, resume and cancel a session from its page, link a guest found
by name with its backfill previewed and its audit rows shown after, sync a page and watch its
run, and run integrity from the dashboard."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.contrib import admin
from django.contrib.auth.models import Group
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from playwright.sync_api import Browser, Page, expect

from conversations.models import FacebookPage, SyncRun
from deliveries import services as deliveries_services
from deliveries.models import MessageDelivery, UserLinkAudit
from evoflow.demo import demo_seed
from evoflow.models import IntegrityRun, User
from evoflow.permissions import OPERATORS_GROUP, grant_operator_permissions
from journeys.models import JourneySession, JourneyStep, SessionStatus
from tests.browser.conftest import PASSWORD, log_in
from tests.helpers import qcluster, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

VIEWPORT = {"width": 1440, "height": 900}

# What overflows: the page, the content area, or any scrolling box inside it (a list's table
# in its box, an inline) that is wider than the box.
OVERFLOW_JS = """() => {
  const found = [];
  const doc = document.documentElement;
  if (doc.scrollWidth > doc.clientWidth + 1)
    found.push(`page ${doc.scrollWidth} > ${doc.clientWidth}`);
  const content = document.getElementById('content');
  if (content && content.scrollWidth > content.clientWidth + 1)
    found.push(`#content ${content.scrollWidth} > ${content.clientWidth}`);
  for (const el of document.querySelectorAll('#content *')) {
    const overflow = getComputedStyle(el).overflowX;
    if ((overflow === 'auto' || overflow === 'scroll') && el.scrollWidth > el.clientWidth + 1)
      found.push(`${el.tagName}.${el.className} ${el.scrollWidth} > ${el.clientWidth}`);
  }
  return found;
}"""


def demo_loaded(settings) -> None:
    """`make run`'s demo data, plus the states the demo reaches only later: a failed session
    with its steps, a paused one, and a repair run."""
    group, _ = Group.objects.get_or_create(name=OPERATORS_GROUP)
    grant_operator_permissions()
    # pytest-django runs with DEBUG off, where the demo seeder refuses; it is the local demo.
    settings.DEBUG = True
    demo_seed()
    settings.DEBUG = False
    for username in ("operator", "admin"):
        user = User.objects.get(username=username)
        user.set_password(PASSWORD)
        user.save(update_fields=["password"])
    sessions = list(JourneySession.objects.order_by("id"))
    failed, paused = sessions[0], sessions[1]
    JourneySession.objects.filter(pk=failed.pk).update(
        status=SessionStatus.FAILED,
        current_node_id="welcome",
        error={"code": "crm_unavailable", "detail": "the CRM answered 503 three times " * 4},
        finished_at=timezone.now() - timedelta(minutes=3),
    )
    JourneyStep.objects.create(
        session=failed,
        step_number=99,
        node_id="welcome",
        node_type="send_message",
        status="failed",
        attempt=3,
        idempotency_key=f"journey-session-{failed.pk}-step-99",
        finished_at=timezone.now(),
        duration_ms=20123.4,
        result=None,
        error="HTTPError: 503 Service Unavailable for url " + "x" * 150,
    )
    JourneySession.objects.filter(pk=paused.pk).update(
        status=SessionStatus.PAUSED, context={"paused_from": "waiting", "wait_kind": "delay"}
    )


def admin_pages() -> tuple[list[str], list[str]]:
    """Every changelist of the admin, and the change page of every row of the data."""
    lists, changes = [], []
    for model in admin.site._registry:
        opts = model._meta
        try:
            lists.append(reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist"))
        except NoReverseMatch:
            continue
        for pk in model._default_manager.values_list("pk", flat=True):
            changes.append(reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[pk]))
    return lists, changes


def test_every_admin_page_of_the_demo_fits_1440_px_without_a_server_error(
    browser: Browser, live_server, settings
):
    demo_loaded(settings)
    lists, changes = admin_pages()
    context = browser.new_context(base_url=live_server.url, viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(30_000)
    log_in(page, username="admin")

    problems: dict[str, list[str]] = {}
    for url in ["/admin/", *lists, *changes]:
        response = page.goto(url, wait_until="load")
        assert response is not None
        if response.status != 200:
            problems[url] = [f"HTTP {response.status}"]
            continue
        overflow = page.evaluate(OVERFLOW_JS)
        if overflow:
            problems[url] = overflow
    context.close()

    print(
        f"visited {1 + len(lists) + len(changes)} admin pages at 1440x900: the dashboard, "
        f"{len(lists)} changelists, {len(changes)} change pages"
    )
    assert len(changes) > 100  # the demo's rows, not an empty database
    assert problems == {}


def test_the_operator_jobs_through_the_pages(
    page: Page, screenshot, live_server, subprocess_env, settings
):
    demo_loaded(settings)
    page.set_viewport_size(VIEWPORT)
    failed = JourneySession.objects.get(status=SessionStatus.FAILED)
    paused = JourneySession.objects.get(status=SessionStatus.PAUSED)
    host = User.objects.get(username="operator")
    event = deliveries_services.event_create(
        host=host, name="Browser gala", starts_at=host.date_joined
    )
    (guest,) = deliveries_services.event_guests_import(
        event=event, rows=[{"name": "Grace Guest", "phone": "+1 415 555 0188"}]
    )
    deliveries_services.message_send(event=event, sender=host, body="Doors open at 8")
    grace = User.objects.create_user(
        username="ghopper", first_name="Grace", last_name="Hopper", email="grace@example.com"
    )
    log_in(page, username="operator")

    # Retry a failed session from its page: asked first, then a link to the new session.
    page.goto(f"/admin/journeys/journeysession/{failed.pk}/change/")
    expect(page.get_by_test_id("session-actions")).to_be_visible()
    expect(page.get_by_test_id("session-cancel")).to_have_count(0)  # a failed session is final
    expect(page.locator("input[name=_save]")).to_have_count(0)  # nothing to save here
    screenshot("1-failed-session")
    page.get_by_test_id("session-retry").click()
    assert JourneySession.objects.count() == 5  # the confirmation page changed nothing
    page.get_by_test_id("session-action-confirm").click()
    new_session = JourneySession.objects.exclude(pk__lte=paused.pk).order_by("-id").first()
    assert new_session is not None
    assert new_session.context["retry_of"] == failed.pk
    link = page.get_by_test_id("retried-session")
    expect(link).to_have_text(f"session {new_session.pk}")
    link.click()
    page.wait_for_url(f"**/journeysession/{new_session.pk}/change/")

    # Resume the paused one, then cancel it: each asked for, each said.
    page.goto(f"/admin/journeys/journeysession/{paused.pk}/change/")
    expect(page.get_by_test_id("session-pause")).to_have_count(0)
    page.get_by_test_id("session-resume").click()
    page.get_by_test_id("session-action-confirm").click()
    expect(page.locator("ul.messagelist")).to_contain_text(f"Session {paused.pk} resumed")
    page.get_by_test_id("session-cancel").click()
    expect(page.get_by_text("A cancelled session is final")).to_be_visible()
    page.get_by_test_id("session-action-confirm").click()
    expect(page.locator("ul.messagelist")).to_contain_text(f"Session {paused.pk} cancelled.")
    paused.refresh_from_db()
    assert paused.status == SessionStatus.CANCELLED

    # The journey's page draws its flow with the live sessions on its nodes.
    page.goto(f"/admin/journeys/journey/{failed.journey_id}/change/")
    diagram = page.get_by_test_id("flow-diagram")
    expect(diagram).to_be_visible()
    expect(diagram.locator("g.flow-node")).to_have_count(len(failed.journey.flow["nodes"]))
    screenshot("2-journey")

    # Link the guest: the user found by name, the backfill shown first, the audit rows after.
    page.goto("/admin/deliveries/eventguest/?link_state=unlinked")
    page.locator(f"input.action-select[value='{guest.pk}']").check()
    page.select_option("select[name=action]", "link_to_user")
    page.click("button[name=index]")
    expect(page.get_by_test_id("backfill-preview")).to_contain_text("1 delivery")
    page.click(".select2-selection")
    page.fill(".select2-search__field", "Hopper")
    page.locator(
        ".select2-results__option", has_text="ghopper (Grace Hopper, grace@example.com)"
    ).click()
    screenshot("3-guest-link")
    page.get_by_test_id("action-confirm").click()
    expect(page.locator("ul.messagelist")).to_contain_text("1 guest linked to ghopper")
    assert MessageDelivery.objects.get(guest=guest).user_id == grace.pk
    page.get_by_test_id("link-audit").click()
    # The rows this link wrote (not the guest's earlier attempts, when it had no user yet).
    written = UserLinkAudit.objects.filter(guest=guest, user=grace)
    assert written.exists()
    expect(page.locator("#result_list tbody tr")).to_have_count(written.count())
    assert UserLinkAudit.objects.filter(guest=guest).count() > written.count()

    with qcluster(subprocess_env):
        # Sync a page: the message links the run, whose page follows it until it ends.
        facebook_page = FacebookPage.objects.get()
        page.goto("/admin/conversations/facebookpage/")
        page.locator(f"input.action-select[value='{facebook_page.pk}']").check()
        page.select_option("select[name=action]", "sync_full_now")
        page.click("button[name=index]")
        page.get_by_test_id("action-confirm").click()
        run_link = page.get_by_test_id("sync-run-link")
        run = SyncRun.objects.order_by("-id").first()
        assert run is not None
        expect(run_link).to_have_text(f"run {run.pk}")
        run_link.click()
        page.wait_for_url(f"**/syncrun/{run.pk}/change/")
        # However the run ends (the Graph API answers or not), the page reloads by itself
        # without the live note.
        expect(page.get_by_test_id("sync-live")).to_have_count(0, timeout=90_000)
        run.refresh_from_db()
        assert not run.is_live

        # Run integrity from the dashboard.
        page.goto("/admin/")
        before = IntegrityRun.objects.count()
        page.get_by_test_id("dashboard-run-integrity").click()
        page.wait_for_url(re.compile(r".*/admin/evoflow/integrityrun/\d+/change/"))
        assert IntegrityRun.objects.count() == before + 1
        assert wait_for(
            lambda: not IntegrityRun.objects.filter(status__in=["queued", "running"]).exists(),
            timeout=90,
        )
        expect(page.locator("#integrity-checks tr.integrity-check").first).to_be_visible(
            timeout=30_000
        )
        screenshot("4-integrity-run")
