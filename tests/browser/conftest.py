"""Browser tests: Playwright for Python driving the machine's Chromium, headless.

Playwright's own browser download is not used: `make test` installs Debian's `chromium`
(devtools/scripts/install-system-packages.sh) and these tests launch it by path
(`EVOFLOW_CHROMIUM`, default /usr/bin/chromium). Screenshots go to test-artifacts/browser/.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.contrib.auth.models import Group, Permission
from playwright.sync_api import Browser, Page, sync_playwright

from evoflow.models import User
from evoflow.permissions import OPERATORS_GROUP, grant_operator_permissions

# Autouse: the flags back at their defaults, which a flushed database no longer holds.
from tests.deliveries.conftest import feature_flags  # noqa: F401
from tests.helpers import PROJECT_ROOT

CHROMIUM = os.environ.get("EVOFLOW_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = PROJECT_ROOT / "test-artifacts" / "browser"
PASSWORD = "browser-test-password"  # noqa: S105 - a throwaway login of the test database

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"no Chromium at {CHROMIUM}: run `make test` (it installs it) or set EVOFLOW_CHROMIUM"
        )
    # Playwright's sync API runs an event loop in this thread; the test's own ORM calls (setting
    # up rows, reading results) are still plain synchronous calls, so Django may allow them.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser, live_server) -> Iterator[Page]:
    context = browser.new_context(
        base_url=live_server.url, viewport={"width": 1400, "height": 1000}
    )
    page = context.new_page()
    page.set_default_timeout(20_000)
    yield page
    context.close()


@pytest.fixture
def screenshot(page: Page, request: pytest.FixtureRequest):
    """`screenshot("step")` saves the page as test-artifacts/browser/<test>-<step>.png."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    test_name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)

    def take(step: str) -> Path:
        path = ARTIFACTS / f"{test_name}-{step}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take


def operator_create(*, username: str, can_repair: bool = True) -> User:
    """A staff user with the operators group's permissions (optionally without repairs).

    Browser tests run on a flushed database (the live server needs committed rows), so the
    group a data migration made may be gone: it is recreated and granted here.
    """
    group, _ = Group.objects.get_or_create(name=OPERATORS_GROUP)
    grant_operator_permissions()
    user = User.objects.create_user(username=username, password=PASSWORD, is_staff=True)
    if can_repair:
        user.groups.add(group)
    else:
        user.user_permissions.set(
            group.permissions.exclude(
                codename="repair_integrity", content_type__app_label="evoflow"
            )
        )
    assert user.has_perm("evoflow.repair_integrity") is can_repair
    assert Permission.objects.filter(codename="repair_integrity").exists()
    return user


def log_in(page: Page, *, username: str) -> None:
    page.goto("/admin/login/?next=/admin/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url("**/admin/")
