"""The main flows of a frontend, driven through a client generated from the API's schema.

Run by tests/core/test_api_contract_client.py, in the generator's own virtualenv, with the
generated package `evoflow_client` on the path and, in the environment: EVOFLOW_API_URL,
EVOFLOW_OPERATOR_TOKEN, EVOFLOW_MEMBER_TOKEN, EVOFLOW_CONTACT_ID, EVOFLOW_JOURNEY_ID and
EVOFLOW_PAGE_ID. Every answer is parsed by the generated models (an answer that does not
match the schema fails to parse), and any status the schema does not list raises. Prints
`sync-run <id> streaming` once a sync's stream has shown its first event (the test then ends
the run, as a worker would) and `flows ok` at the end.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlparse

from evoflow_client import AuthenticatedClient
from evoflow_client.api.contact_events import contact_events_create
from evoflow_client.api.conversations import conversations_list, conversations_messages_list
from evoflow_client.api.events import event_guests_import, event_guests_list, events_create
from evoflow_client.api.journey_sessions import journey_sessions_retrieve
from evoflow_client.api.journeys import journeys_start
from evoflow_client.api.me import me_messages_list
from evoflow_client.api.root import api_root
from evoflow_client.api.sync import pages_sync, sync_runs_retrieve
from evoflow_client.models import (
    ContactEventRequest,
    Error,
    EventCreateRequest,
    GuestImportRequest,
    GuestImportRowRequest,
    JourneyStartRequest,
    PageSyncRequest,
    SyncMode,
    SyncRunOutput,
    SyncStatus,
)
from evoflow_client.types import UNSET


def client(token: str) -> AuthenticatedClient:
    return AuthenticatedClient(
        base_url=os.environ["EVOFLOW_API_URL"],
        token=token,
        prefix="Token",
        raise_on_unexpected_status=True,
        timeout=30,  # type: ignore[arg-type]
    )


def cursor_of(link: str | None) -> str | None:
    """The `cursor` of a `next`/`previous` link: a client follows links, it never makes one."""
    if not link:
        return None
    return parse_qs(urlparse(link).query)["cursor"][0]


def check(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def list_conversations_and_messages(operator: AuthenticatedClient) -> None:
    # Every conversation of the page, one per page, following `next`.
    seen: list[int] = []
    cursor: str | None = None
    while True:
        page = conversations_list.sync(
            client=operator,
            page_id=os.environ["EVOFLOW_PAGE_ID"],
            page_size=1,
            cursor=cursor if cursor else UNSET,
        )
        check(not isinstance(page, Error) and page is not None, f"conversations: {page!r}")
        seen += [conversation.id for conversation in page.results]
        cursor = cursor_of(page.next_ if isinstance(page.next_, str) else None)
        if cursor is None:
            break
    check(len(seen) == len(set(seen)) >= 2, f"conversations followed page by page: {seen}")

    # The messages of the first one, two per page.
    messages: list[str] = []
    cursor = None
    while True:
        page = conversations_messages_list.sync(
            seen[0], client=operator, page_size=2, cursor=cursor if cursor else UNSET
        )
        check(not isinstance(page, Error) and page is not None, f"messages: {page!r}")
        messages += [message.mid for message in page.results]
        cursor = cursor_of(page.next_ if isinstance(page.next_, str) else None)
        if cursor is None:
            break
    check(len(messages) == 3, f"three messages, newest first: {messages}")

    # The old filter name is refused, never silently ignored.
    refused = conversations_list.sync_detailed(client=operator, page_size=1)
    check(refused.status_code == 200, "a plain list answers")
    old = operator.get_httpx_client().get("/api/v1/conversations/", params={"page": "1"})
    check(old.status_code == 400 and old.json()["code"] == "validation_error", old.text)


def start_a_journey_and_post_a_contact_event(operator: AuthenticatedClient) -> None:
    contact_id = os.environ["EVOFLOW_CONTACT_ID"]
    started = journeys_start.sync(
        int(os.environ["EVOFLOW_JOURNEY_ID"]),
        client=operator,
        body=JourneyStartRequest(contact_id=contact_id),
    )
    check(not isinstance(started, Error) and started is not None, f"start: {started!r}")
    session = journey_sessions_retrieve.sync(started.session_id, client=operator)
    check(not isinstance(session, Error) and session is not None, f"session: {session!r}")
    check(str(session.contact_id) == contact_id, "the session is the contact's")

    # A second start while the first is live is the documented 409, parsed as an Error.
    again = journeys_start.sync(
        int(os.environ["EVOFLOW_JOURNEY_ID"]),
        client=operator,
        body=JourneyStartRequest(contact_id=contact_id),
    )
    check(isinstance(again, Error) and again.code == "session_already_live", f"{again!r}")

    result = contact_events_create.sync(
        client=operator,
        body=ContactEventRequest(name="order_placed", contact_id=contact_id, message_id="m-1"),
    )
    check(not isinstance(result, Error) and result is not None, f"event: {result!r}")
    check(result.is_duplicate is False, "a new event")
    duplicate = contact_events_create.sync(
        client=operator,
        body=ContactEventRequest(name="order_placed", contact_id=contact_id, message_id="m-1"),
    )
    check(not isinstance(duplicate, Error) and duplicate is not None, f"{duplicate!r}")
    check(duplicate.is_duplicate is True, "the same message id is a duplicate")


def _events(lines: Iterator[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    name, data = "", ""
    for line in lines:
        if line == "":
            if name:
                yield name, json.loads(data)
            name, data = "", ""
        elif line.startswith("event:"):
            name = line.partition(":")[2].strip()
        elif line.startswith("data:"):
            data = line.partition(":")[2].strip()


def start_a_sync_and_follow_it(operator: AuthenticatedClient) -> None:
    accepted = pages_sync.sync(
        os.environ["EVOFLOW_PAGE_ID"],
        client=operator,
        body=PageSyncRequest(mode=SyncMode.FULL),
    )
    check(not isinstance(accepted, Error) and accepted is not None, f"sync: {accepted!r}")
    check(accepted.status == SyncStatus.QUEUED, f"queued: {accepted.status}")
    run = sync_runs_retrieve.sync(accepted.sync_run_id, client=operator)
    check(isinstance(run, SyncRunOutput), f"run: {run!r}")

    # The stream's events carry the run in the REST shape: the generated model parses them.
    seen: list[tuple[str, SyncRunOutput]] = []
    with operator.get_httpx_client().stream(
        "GET",
        f"/api/v1/sync-runs/{accepted.sync_run_id}/stream/",
        headers={"Accept": "text/event-stream"},
        timeout=60,
    ) as response:
        check(response.status_code == 200, f"stream: {response.status_code}")
        for name, data in _events(response.iter_lines()):
            seen.append((name, SyncRunOutput.from_dict(data)))
            if len(seen) == 1:
                print(f"sync-run {accepted.sync_run_id} streaming", flush=True)
            if name == "end":
                break
    check(seen[0][0] == "progress" and seen[-1][0] == "end", f"events: {seen}")
    final = seen[-1][1]
    check(final.id == accepted.sync_run_id, "the stream is the run's")
    check(final.status == SyncStatus.CANCELLED, f"ended cancelled: {final.status}")
    after = sync_runs_retrieve.sync(accepted.sync_run_id, client=operator)
    check(isinstance(after, SyncRunOutput) and after.to_dict() == final.to_dict(), "one shape")


def create_an_event_and_import_guests(member: AuthenticatedClient) -> None:
    event = events_create.sync(
        client=member,
        body=EventCreateRequest(name="Launch", starts_at=datetime(2027, 1, 1, 19, tzinfo=UTC)),
    )
    check(not isinstance(event, Error) and event is not None, f"event: {event!r}")

    # A bad row refuses the whole import, saying which row and why.
    refused = event_guests_import.sync(
        event.id,
        client=member,
        body=GuestImportRequest(
            guests=[
                GuestImportRowRequest(name="Ada", phone="+1 415 555 0101"),
                GuestImportRowRequest(name="Bob", phone="not a phone"),
            ]
        ),
    )
    check(isinstance(refused, Error) and refused.code == "invalid_guest_rows", f"{refused!r}")
    errors = refused.errors if isinstance(refused, Error) else None
    check(isinstance(errors, list) and errors[0]["index"] == 1, f"errors: {errors!r}")
    empty = event_guests_list.sync(event.id, client=member)
    check(empty is not None and not isinstance(empty, Error) and empty.results == [], "none")

    imported = event_guests_import.sync(
        event.id,
        client=member,
        body=GuestImportRequest(
            guests=[
                GuestImportRowRequest(name="Ada", phone="+1 415 555 0101"),
                GuestImportRowRequest(name="Bob", phone="+1 415 555 0102"),
            ]
        ),
    )
    check(not isinstance(imported, Error) and imported is not None, f"{imported!r}")
    check(imported.created == 2, "two guests")
    guests = event_guests_list.sync(event.id, client=member)
    check(guests is not None and not isinstance(guests, Error), f"{guests!r}")
    check(sorted(guest.name for guest in guests.results) == ["Ada", "Bob"], "listed")


def read_my_messages(member: AuthenticatedClient) -> None:
    page = me_messages_list.sync(client=member, page_size=10)
    check(page is not None and not isinstance(page, Error), f"me: {page!r}")
    check(len(page.results) == 1, f"the member's one delivery: {page.results}")
    check(page.results[0].event.name != "", "with its event")


def main() -> int:
    operator = client(os.environ["EVOFLOW_OPERATOR_TOKEN"])
    member = client(os.environ["EVOFLOW_MEMBER_TOKEN"])
    root = api_root.sync(client=operator)
    check(root is not None and "conversation-list" in root.resources.additional_properties, "root")

    list_conversations_and_messages(operator)
    start_a_journey_and_post_a_contact_event(operator)
    create_an_event_and_import_guests(member)
    read_my_messages(member)
    start_a_sync_and_follow_it(operator)
    print("flows ok", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
