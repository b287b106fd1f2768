"""Every list endpoint of the API answers a tampered cursor or a bad page size with a 400 and a
stable code, never a 500 (nor DRF's 404 for a cursor it cannot decode).

The list endpoints are found, not listed: every route under /api/v1/ whose view is a
`CursorListApi`. A second test makes sure no other GET route answers a page, so a list that
pages by hand without the shared pagination cannot hide from the first.
"""

from __future__ import annotations

import base64
import uuid
from typing import Any

import pytest
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from rest_framework.test import APIClient

from conversations.models import SyncMode, SyncRun
from evoflow.api.pagination import CursorListApi
from journeys import services as journey_services
from tests.conversations.factories import ConversationFactory, FacebookPageFactory
from tests.conversations.factories import MessageFactory as ConversationMessageFactory
from tests.core.factories import UserFactory
from tests.deliveries.factories import EventFactory, EventGuestFactory, MessageDeliveryFactory
from tests.journeys.factories import JourneyFactory

pytestmark = pytest.mark.django_db


def _api_routes() -> list[tuple[str, type, list[str]]]:
    """(url name, view class, url parameters) of every GET-able DRF route under /api/v1/."""
    routes: list[tuple[str, type, list[str]]] = []

    def walk(patterns: list[Any], prefix: str) -> None:
        for pattern in patterns:
            route = prefix + str(pattern.pattern)
            if isinstance(pattern, URLResolver):
                walk(pattern.url_patterns, route)
            elif isinstance(pattern, URLPattern) and route.startswith("api/v1/"):
                view_class = getattr(pattern.callback, "view_class", None)
                if view_class is not None and hasattr(view_class, "get"):
                    parameters = list(pattern.pattern.regex.groupindex)
                    routes.append((str(pattern.name), view_class, parameters))

    walk(get_resolver().url_patterns, "")
    return routes


ROUTES = _api_routes()
LIST_ROUTES = [
    pytest.param(name, parameters, id=name)
    for name, view, parameters in ROUTES
    if issubclass(view, CursorListApi)
]
OTHER_ROUTES = [
    pytest.param(name, parameters, id=name)
    for name, view, parameters in ROUTES
    if not issubclass(view, CursorListApi)
]


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


TAMPERED_CURSORS = {
    "not-base64": "abc",
    "position-not-a-value": _b64("p=abc"),
    "position-out-of-range": _b64("p=99999999999999999999"),
    "nul-byte": "\x00",
    "nul-in-position": _b64("p=%00"),
    "offset-not-a-number": _b64("o=x&p=1"),
    "not-ascii": "é",
}
BAD_PAGE_SIZES = ["0", "-1", "abc", "null", "", "1.5", "²"]


@pytest.fixture
def reader() -> Any:
    # A superuser has every permission the endpoints ask for.
    return UserFactory(is_staff=True, is_superuser=True)


@pytest.fixture
def client(reader: Any) -> APIClient:
    api_client = APIClient()
    api_client.force_authenticate(reader)
    return api_client


@pytest.fixture
def url_kwargs(reader: Any) -> dict[str, Any]:
    """One reachable object of each kind a route names, with a row in each list."""
    journey = JourneyFactory()
    session_id = journey_services.session_start(journey_id=journey.pk, contact_id=str(uuid.uuid4()))
    event = EventFactory(host=reader)
    guest = EventGuestFactory(event=event, user=reader)
    MessageDeliveryFactory(guest=guest)
    facebook_page = FacebookPageFactory()
    conversation = ConversationFactory(page=facebook_page)
    ConversationMessageFactory(conversation=conversation)
    run = SyncRun.objects.create(page=facebook_page, mode=SyncMode.FULL)
    return {
        "journey_id": journey.pk,
        "session_id": session_id,
        "event_id": event.pk,
        "guest_id": guest.pk,
        "page_id": facebook_page.page_id,
        "conversation_id": conversation.pk,
        "run_id": run.pk,
    }


def _url(name: str, parameters: list[str], url_kwargs: dict[str, Any]) -> str:
    return reverse(name, kwargs={parameter: url_kwargs[parameter] for parameter in parameters})


def test_the_api_has_list_endpoints_to_check():
    names = {param.values[0] for param in LIST_ROUTES}
    assert {"journey-list", "deliveries-my-messages", "conversation-list"} <= names


@pytest.mark.parametrize(("name", "parameters"), LIST_ROUTES)
def test_a_list_pages_with_a_valid_cursor(client, url_kwargs, name, parameters):
    # Given a list with a row
    url = _url(name, parameters, url_kwargs)

    # When its first page of one row is read, then the next one
    first = client.get(url, {"page_size": "1"})
    body = first.json()
    following = client.get(body["next"]) if body["next"] else None

    # Then both are pages
    assert first.status_code == 200, body
    assert len(body["results"]) == 1
    assert following is None or following.status_code == 200


@pytest.mark.parametrize("cursor", TAMPERED_CURSORS.values(), ids=TAMPERED_CURSORS.keys())
@pytest.mark.parametrize(("name", "parameters"), LIST_ROUTES)
def test_a_tampered_cursor_is_a_400_invalid_cursor(client, url_kwargs, name, parameters, cursor):
    # When a list is asked for a page with a cursor the API did not make
    response = client.get(_url(name, parameters, url_kwargs), {"cursor": cursor})

    # Then the client is told, with the stable code
    assert response.status_code == 400, response.content
    assert response.json() == {"code": "invalid_cursor", "detail": "Invalid cursor."}


@pytest.mark.parametrize("page_size", BAD_PAGE_SIZES)
@pytest.mark.parametrize(("name", "parameters"), LIST_ROUTES)
def test_a_bad_page_size_is_a_400_invalid_page_size(
    client, url_kwargs, name, parameters, page_size
):
    # When a list is asked for pages of a size that is not a positive whole number
    response = client.get(_url(name, parameters, url_kwargs), {"page_size": page_size})

    # Then the client is told, with the stable code
    assert response.status_code == 400, response.content
    assert response.json()["code"] == "invalid_page_size"


@pytest.mark.parametrize(("name", "parameters"), LIST_ROUTES)
def test_a_page_size_above_the_maximum_is_clamped(client, url_kwargs, name, parameters):
    response = client.get(_url(name, parameters, url_kwargs), {"page_size": "9" * 5000})

    assert response.status_code == 200
    assert len(response.json()["results"]) == 1


@pytest.mark.parametrize(("name", "parameters"), OTHER_ROUTES)
def test_no_other_get_endpoint_answers_a_page(client, url_kwargs, name, parameters):
    # When any other GET route is read (a streaming answer is not read at all)
    response = client.get(_url(name, parameters, url_kwargs), {"cursor": "abc"})
    body = None if response.streaming else response.json()
    response.close()

    # Then it is not a list: a list would have to be a CursorListApi to be checked above
    assert response.status_code < 500
    assert not (isinstance(body, dict) and "results" in body and "next" in body), name


def test_the_schema_says_every_list_takes_a_cursor_and_a_page_size_from_1(client):
    schema = client.get("/api/schema/", {"format": "json"}).json()
    lists = {
        path: operation["get"]
        for path, operation in schema["paths"].items()
        if "cursor" in {p["name"] for p in operation.get("get", {}).get("parameters", [])}
    }

    assert len(lists) == len(LIST_ROUTES)
    for path, operation in lists.items():
        page_size = next(p for p in operation["parameters"] if p["name"] == "page_size")
        assert page_size["schema"] == {"type": "integer", "minimum": 1}, path
