"""The operator's dashboard in a real browser: read the inconsistency, follow it to the rows,
repair it, and see the repair in the numbers and the trend; and the repair permission."""

from __future__ import annotations

import pytest
from django.utils import timezone
from playwright.sync_api import Page, expect

from deliveries import services
from deliveries.demo import backlog_seed
from deliveries.models import MessageDelivery
from evoflow.integrity.runner import (
    integrity_run,
    integrity_run_request,
)
from evoflow.models import IntegrityCheckResult, IntegrityRun, User
from tests.browser.conftest import log_in, operator_create
from tests.helpers import qcluster, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

CHECK = "deliveries.unlinked_deliveries"


def deliveries_seed(*, host: User, consistent: int, inconsistent: int) -> None:
    """`consistent` deliveries linked as usual, `inconsistent` written while linking was off."""
    event = services.event_create(host=host, name="Linked as usual", starts_at=host.date_joined)
    guests = services.event_guests_import(
        event=event,
        rows=[{"name": f"Guest {n}", "phone": f"+1 415 555 04{n:02d}"} for n in range(consistent)],
    )
    for guest in guests:
        user = User.objects.create_user(username=f"linked-{guest.pk}")
        services.guest_link_user(guest=guest, user=user, actor=host)
    services.message_send(event=event, sender=host, body="Hello")
    backlog_seed(host=host, name="Sent while linking was off", guest_count=inconsistent)


def test_an_operator_repairs_the_inconsistent_backlog_from_the_dashboard(
    page: Page, screenshot, subprocess_env
):
    operator = operator_create(username="operator-one")
    deliveries_seed(host=operator, consistent=6, inconsistent=6)
    first_run = integrity_run(trigger="test")

    with qcluster(subprocess_env):
        log_in(page, username="operator-one")
        tile = page.get_by_test_id("tile-deliveries")
        expect(tile).to_be_visible()
        expect(page.get_by_test_id("inconsistency-rate")).to_have_text("50.00%")
        expect(tile).to_have_attribute("data-status", "error")
        chart = page.get_by_test_id("trend-chart")
        expect(chart).to_have_attribute("data-latest-run", str(first_run.pk))
        screenshot("1-dashboard-with-backlog")

        # The number leads to exactly the inconsistent deliveries.
        page.get_by_test_id("inconsistent-count").click()
        page.wait_for_url("**/admin/deliveries/messagedelivery/?consistency=inconsistent")
        rows = page.locator("#result_list tbody tr")
        expect(rows).to_have_count(6)
        inconsistent = set(
            MessageDelivery.objects.filter(user__isnull=True).values_list("pk", flat=True)
        )
        listed = {
            int(pk)
            for pk in rows.locator("input.action-select").evaluate_all(
                "boxes => boxes.map(box => box.value)"
            )
        }
        assert listed == inconsistent
        screenshot("2-inconsistent-deliveries")

        # Back on the dashboard: the repair shows what it will change before it changes it.
        page.go_back()
        page.get_by_test_id(f"repair-{CHECK}").click()
        expect(page.get_by_test_id("repair-preview")).to_contain_text("6")
        screenshot("3-repair-preview")
        assert MessageDelivery.objects.filter(user__isnull=True).count() == 6
        page.get_by_test_id("repair-confirm").click()

        assert wait_for(
            lambda: (
                IntegrityRun.objects.filter(pk__gt=first_run.pk)
                .exclude(status__in=["queued", "running"])
                .exists()
            ),
            timeout=60,
        ), "the repair run did not finish"
        repair_run = IntegrityRun.objects.filter(pk__gt=first_run.pk).get()
        assert repair_run.fix_requested
        expect(page.get_by_text("healthy").first).to_be_visible(timeout=30_000)
        screenshot("4-repair-run")

        page.goto("/admin/")
        expect(page.get_by_test_id("inconsistency-rate")).to_have_text("0%")
        expect(page.get_by_test_id("trend-chart")).to_have_attribute(
            "data-latest-run", str(repair_run.pk)
        )
        expect(
            page.locator(f'[data-testid="trend-chart"] [data-run-id="{repair_run.pk}"]').first
        ).to_be_attached()
        screenshot("5-dashboard-repaired")

    assert not MessageDelivery.objects.filter(user__isnull=True).exists()


def test_an_operator_without_the_repair_permission_sees_no_repair_and_cannot_post_it(
    page: Page, screenshot, live_server
):
    operator = operator_create(username="operator-two", can_repair=False)
    deliveries_seed(host=operator, consistent=2, inconsistent=2)
    run = integrity_run(trigger="test")

    log_in(page, username="operator-two")
    expect(page.get_by_test_id("inconsistency-rate")).to_have_text("50.00%")
    expect(page.get_by_test_id(f"repair-{CHECK}")).to_have_count(0)
    screenshot("1-dashboard-without-repair")

    page.goto(f"/admin/evoflow/integrityrun/{run.pk}/change/")
    expect(page.get_by_text(CHECK).first).to_be_visible()
    expect(page.locator("a[href*='/repair/']")).to_have_count(0)
    screenshot("2-run-without-repair")

    token = next(c["value"] for c in page.context.cookies() if c["name"] == "csrftoken")
    url = f"/admin/evoflow/integrityrun/repair/{CHECK}/"
    posted = page.request.post(
        url, form={"csrfmiddlewaretoken": token}, headers={"X-CSRFToken": token}
    )
    assert posted.status == 403
    assert "CSRF" not in posted.text()
    assert page.request.get(url).status == 403
    assert MessageDelivery.objects.filter(user__isnull=True).count() == 2


def test_a_live_run_page_keeps_the_keyboard_focus_and_shows_the_result_when_done(
    page: Page, screenshot
):
    operator = operator_create(username="operator-three")
    deliveries_seed(host=operator, consistent=2, inconsistent=2)
    run, _ = integrity_run_request(check_ids=[CHECK])  # queued: no worker runs it yet

    log_in(page, username="operator-three")
    page.goto(f"/admin/evoflow/integrityrun/{run.pk}/change/")
    expect(page.get_by_test_id("run-live")).to_be_visible()
    home = page.locator(".breadcrumbs a").first
    home.focus()
    page.wait_for_timeout(4_500)  # two polls of the page
    assert page.evaluate("document.activeElement.textContent") == home.text_content()

    # A worker takes the run and stores the check's result: the poll shows it, in place.
    IntegrityRun.objects.filter(pk=run.pk).update(status="running", heartbeat_at=timezone.now())
    IntegrityCheckResult.objects.create(
        run=run, check_id=CHECK, status="error", failing_count=2, population=4, ratio=0.5
    )
    repair = page.get_by_test_id("repair-link")
    expect(repair).to_be_visible(timeout=10_000)
    expect(page.get_by_test_id("run-live")).to_be_visible()
    # A link inside the refreshed table keeps the focus too: unchanged content is not rewritten.
    repair.focus()
    page.wait_for_timeout(4_500)
    assert page.evaluate("document.activeElement.dataset.testid") == "repair-link"
    screenshot("1-live-run")

    IntegrityRun.objects.filter(pk=run.pk).update(
        status="error", exit_code=2, finished_at=timezone.now()
    )

    expect(page.get_by_test_id("run-live")).to_have_count(0, timeout=15_000)
    expect(page.locator(f'tr.integrity-check[data-check="{CHECK}"]')).to_be_visible()
    screenshot("2-finished-run")
