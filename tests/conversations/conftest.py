"""Fixtures of the conversations tests: a page and a signed webhook poster."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.conf import settings
from django.test import Client

from conversations.services.pages import page_pk_cache_clear
from conversations.simulator.payloads import signed_body

PAGE_ID = "111222333"


@pytest.fixture(autouse=True)
def _forget_cached_page_ids() -> Iterator[None]:
    # Tests that commit and flush reuse page ids with new primary keys.
    page_pk_cache_clear()
    yield
    page_pk_cache_clear()


@pytest.fixture
def page(db):
    from tests.conversations.factories import FacebookPageFactory

    return FacebookPageFactory(page_id=PAGE_ID, name="MyShop")


PostWebhook = Callable[..., Any]


@pytest.fixture
def post_webhook(client: Client) -> PostWebhook:
    """POST a document (signed Meta-style) or raw bytes to the webhook; returns the response."""

    def post(document: Any = None, *, body: bytes | None = None, headers=None):
        if body is None:
            body, signed_headers = signed_body(document, secret=settings.FB_APP_SECRET)
        else:
            signed_headers = {}
        merged = {**signed_headers, **(headers or {})}
        extra = {
            "HTTP_" + name.upper().replace("-", "_"): value
            for name, value in merged.items()
            if name.lower() != "content-type"
        }
        return client.generic(
            "POST", "/webhooks/messenger/", body, content_type="application/json", **extra
        )

    return post
