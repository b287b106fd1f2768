"""The admin's screenshots in docs/images/, taken from the demo: `python -m devtools.screenshots`.

Run it against a `make run` stack (its demo data and its `operator` account): it logs in with
the demo password, opens the pages the docs show at 1440x900 in the machine's headless
Chromium (`EVOFLOW_CHROMIUM`, as the browser tests) and saves one PNG per page:

    python -m devtools.screenshots [--base-url URL] [--out DIR] [--prefix P]

`--base-url` defaults to `http://127.0.0.1:$EVOFLOW_WEB_PORT`, `--out` to docs/images, and
`--prefix` (e.g. `before-`) goes in front of every file name. The pages are found by walking
the admin as an operator would (the first row of each list), so no id is hard-coded and no
image is taken by hand. The module does not import Django: it only talks HTTP to the stack.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from playwright.sync_api import Page, ViewportSize, sync_playwright

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = PROJECT_ROOT / "docs" / "images"
CHROMIUM = os.environ.get("EVOFLOW_CHROMIUM", "/usr/bin/chromium")
VIEWPORT: ViewportSize = {"width": 1440, "height": 900}
DEMO_USERNAME = "operator"
DEMO_PASSWORD = "evoflow-local-demo"  # noqa: S105 - the documented local demo password


@dataclass(frozen=True)
class Shot:
    """One image: its file name and how to reach the page from a logged-in admin."""

    name: str
    open: Callable[[Page], object]


def _first_row(page: Page, list_path: str, *fallbacks: str) -> None:
    """Open the change page of the first row of `list_path` (or of the first fallback list
    that has a row)."""
    for path in (list_path, *fallbacks):
        page.goto(path)
        link = page.locator("#result_list tbody tr th a").first
        if link.count():
            link.click()
            page.wait_for_load_state("load")
            return
    raise SystemExit(f"no row to show in {list_path} (is the demo data loaded?)")


def _guest_link(page: Page) -> None:
    page.goto("/admin/deliveries/eventguest/?link_state=unlinked")
    box = page.locator("#result_list input.action-select").first
    if not box.count():
        page.goto("/admin/deliveries/eventguest/")
        box = page.locator("#result_list input.action-select").first
    box.check()
    page.select_option("select[name=action]", "link_to_user")
    page.click("button[name=index]")
    page.wait_for_load_state("load")


SHOTS = (
    Shot("dashboard", lambda page: page.goto("/admin/")),
    Shot("sessions", lambda page: page.goto("/admin/journeys/journeysession/")),
    Shot("journey", lambda page: _first_row(page, "/admin/journeys/journey/")),
    Shot(
        "session",
        lambda page: _first_row(
            page,
            "/admin/journeys/journeysession/?status__exact=failed",
            "/admin/journeys/journeysession/",
        ),
    ),
    Shot("guest-link", _guest_link),
    Shot("integrity-run", lambda page: _first_row(page, "/admin/evoflow/integrityrun/")),
)


def take(*, base_url: str, out: Path, prefix: str, password: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    saved = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
        )
        context = browser.new_context(base_url=base_url, viewport=VIEWPORT)
        page = context.new_page()
        page.set_default_timeout(30_000)
        page.goto("/admin/login/?next=/admin/")
        page.fill("#id_username", DEMO_USERNAME)
        page.fill("#id_password", password)
        page.click("input[type=submit]")
        page.wait_for_url("**/admin/")
        for shot in SHOTS:
            shot.open(page)
            path = out / f"{prefix}{shot.name}.png"
            page.screenshot(path=str(path), full_page=True)
            saved.append(path)
        browser.close()
    return saved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.screenshots", description=__doc__)
    web_port = os.environ.get("EVOFLOW_WEB_PORT", "").strip() or "8000"
    parser.add_argument("--base-url", default=f"http://127.0.0.1:{web_port}")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--prefix", default="")
    args = parser.parse_args(argv)
    password = os.environ.get("EVOFLOW_DEMO_PASSWORD", "").strip() or DEMO_PASSWORD
    for path in take(base_url=args.base_url, out=args.out, prefix=args.prefix, password=password):
        print(path.relative_to(PROJECT_ROOT) if path.is_relative_to(PROJECT_ROOT) else path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
