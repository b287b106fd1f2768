"""The storm's driver: a Django process of the topology (through PgBouncer, like the web and
worker processes) that the topology test talks to over stdin/stdout, one JSON command per line
and one JSON answer per line. It starts work through the services (sync runs, journey
sessions, guest imports, links and deliveries) and reads back what is stored; the test sends the
webhooks itself, holds the simulators and decides what is right.

Run by the test as `python -m tests.topology.storm` with the topology's environment.
"""

from __future__ import annotations

import json
import sys
import traceback
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import django

WAIT_SECONDS = 2
FLOW_NODES = ["start", "hello", "pause", "mark", "bye", "end"]


def journey_flow() -> dict[str, Any]:
    """Two CRM calls (send_message) around a wait."""
    nodes = [
        ("start", "entry", {}),
        ("hello", "send_message", {"conversation_id": "{{contact.id}}", "content": "hi"}),
        ("pause", "wait", {"seconds": WAIT_SECONDS}),
        ("mark", "set_variable", {"name": "greeted", "value": True}),
        ("bye", "send_message", {"conversation_id": "{{contact.id}}", "content": "bye"}),
        ("end", "exit", {}),
    ]
    return {
        "nodes": [{"id": i, "type": kind, "config": config} for i, kind, config in nodes],
        "edges": [
            {"source": nodes[n][0], "target": nodes[n + 1][0]} for n in range(len(nodes) - 1)
        ],
    }


def setup(pages: list[dict[str, str]], contacts: int, guests: int) -> dict[str, Any]:
    from django.contrib.auth import get_user_model

    from conversations.services.pages import page_upsert
    from conversations.services.sync import sync_request
    from deliveries.services import event_create, event_guests_import
    from journeys.services import journey_create, sessions_start_many

    runs = []
    for page in pages:
        row = page_upsert(page_id=page["id"], name=page["name"], access_token=page["token"])
        if page.get("sync", True):
            run, _ = sync_request(page=row, mode="full")
            runs.append(run.pk)
    journey = journey_create(name="topology storm", flow=journey_flow())
    contact_ids = [str(uuid.uuid4()) for _ in range(contacts)]
    started = sessions_start_many(journey_id=journey.pk, contact_ids=contact_ids)
    users = get_user_model()
    host = users.objects.create_user(username="storm-host", password=None)
    event = event_create(host=host, name="storm", starts_at=datetime.now(tz=UTC))
    imported = event_guests_import(
        event=event,
        rows=[{"name": f"Guest {n}", "phone": f"+1 415 555 {n:04d}"} for n in range(guests)],
    )
    return {
        "sync_runs": runs,
        "journey": journey.pk,
        "sessions": len(started.session_ids),
        "event": event.pk,
        "host": host.pk,
        "guests": [guest.pk for guest in imported],
    }


def deliveries_storm(
    event_id: int, host_id: int, guest_ids: list[int], late_guests: int
) -> dict[str, Any]:
    """Link every other guest to a user of its own from two threads (the link triggers meet on
    the event's advisory lock) while a third imports `late_guests` more guests in batches of
    ten and a fourth sends messages; messages go out before and after too. Says how many
    deliveries each message made (a message counts the active guests when it commits)."""
    from django.contrib.auth import get_user_model
    from django.db import connection

    from deliveries.models import Event, EventGuest
    from deliveries.services import event_guests_import, guest_link_user, message_send

    users = get_user_model()
    event = Event.objects.get(pk=event_id)
    host = users.objects.get(pk=host_id)
    to_link = guest_ids[::2]

    def link(chunk: list[int]) -> int:
        try:
            for guest_id in chunk:
                user = users.objects.create_user(username=f"guest-user-{guest_id}", password=None)
                guest_link_user(guest=EventGuest.objects.get(pk=guest_id), user=user, actor=host)
            return len(chunk)
        finally:
            connection.close()

    def send(count: int) -> list[int]:
        try:
            return [
                message_send(event=event, sender=host, body=f"storm {n}").delivery_count
                for n in range(count)
            ]
        finally:
            connection.close()

    def import_late() -> int:
        try:
            imported = 0
            for start in range(0, late_guests, 10):
                rows = [
                    {"name": f"Late guest {n}", "phone": f"+1 415 556 {n:04d}"}
                    for n in range(start, min(start + 10, late_guests))
                ]
                imported += len(event_guests_import(event=event, rows=rows))
            return imported
        finally:
            connection.close()

    before = send(2)
    with ThreadPoolExecutor(max_workers=4) as pool:
        linked = [pool.submit(link, to_link[0::2]), pool.submit(link, to_link[1::2])]
        importing = pool.submit(import_late)
        during = pool.submit(send, 4)
        count = sum(future.result() for future in linked)
        imported = importing.result()
        sent_during = during.result()
    return {
        "linked": count,
        "imported": imported,
        "per_message": {"before": before, "during": sent_during, "after": send(2)},
    }


def in_flight(journey_id: int) -> dict[str, Any]:
    """What the workers hold right now: journey sessions under a live lease, sync runs running,
    and what is still to do (the test kills a worker cluster only while this is not empty)."""
    from django.utils import timezone

    from conversations.models import SyncRun
    from journeys.models import JourneySession

    now = timezone.now()
    sessions = JourneySession.objects.filter(journey_id=journey_id)
    return {
        "sessions_leased": sessions.filter(lease_until__gt=now).count(),
        "sessions_active": sessions.filter(status="active").count(),
        "sessions_waiting": sessions.filter(status="waiting").count(),
        "syncs_running": SyncRun.objects.filter(status="running").count(),
    }


def progress(journey_id: int, page_ids: list[str], mode: str, since: int) -> dict[str, Any]:
    """Wake the journeys' due sessions (what the one-minute schedule does), and make sure each
    page gets a `mode` sync run newer than run `since`: a run whose worker died is failed once
    its lease is over (the request does that), and one is requested again while none is live
    (the schedule's own incremental runs come and go beside them). Says where everything is."""
    from conversations.models import FacebookPage, SyncRun
    from conversations.services.sync import sync_request
    from journeys.models import JourneySession
    from journeys.services import sessions_resume_due

    report = sessions_resume_due()
    syncs = {}
    for page in FacebookPage.objects.filter(page_id__in=page_ids):
        runs = SyncRun.objects.filter(page=page, pk__gt=since, mode=mode)
        done = runs.filter(status="succeeded").exists()
        if not done:
            sync_request(page=page, mode=mode)  # a no-op while a live run holds the lease
        syncs[page.page_id] = {
            "succeeded": done,
            "runs": list(
                SyncRun.objects.filter(page=page).order_by("pk").values_list("pk", "mode", "status")
            ),
        }
    sessions = Counter(
        JourneySession.objects.filter(journey_id=journey_id).values_list("status", flat=True)
    )
    return {
        "syncs": syncs,
        "sessions": dict(sessions),
        "resumed": report.resumed,
        "restarted": report.restarted_stalled,
        "last_run": SyncRun.objects.order_by("-pk").values_list("pk", flat=True).first() or 0,
    }


def pages_state(page_ids: list[str]) -> dict[str, Any]:
    from conversations.models import FacebookPage
    from tests.conversations.sync_helpers import db_state

    return {
        page.page_id: db_state(page) for page in FacebookPage.objects.filter(page_id__in=page_ids)
    }


def webhook_messages(page_id: str) -> dict[str, Any]:
    from django.db.models import Count

    from conversations.models import Message, WebhookReceipt

    per_mid = dict(
        Message.objects.filter(page__page_id=page_id)
        .values_list("mid")
        .annotate(n=Count("id"))
        .order_by()
    )
    receipts = Counter(WebhookReceipt.objects.values_list("status", flat=True))
    return {"per_mid": per_mid, "receipts": dict(receipts)}


def message_details(page_ids: list[str]) -> dict[str, Any]:
    """Per page: every stored message's text and edit count, and the reactions on now, for the
    edits and reactions the storm sent (C9)."""
    from conversations.models import Message, MessageEdit, MessageReaction

    answer: dict[str, Any] = {}
    for page_id in page_ids:
        messages = Message.objects.filter(page__page_id=page_id)
        answer[page_id] = {
            "messages": {
                mid: [text, edit_count]
                for mid, text, edit_count in messages.values_list("mid", "text", "edit_count")
            },
            "reactions": sorted(
                MessageReaction.objects.filter(page__page_id=page_id, active=True).values_list(
                    "mid", "psid", "reaction"
                )
            ),
            "edit_history": MessageEdit.objects.filter(page__page_id=page_id).count(),
        }
    return answer


def journey_state(journey_id: int) -> dict[str, Any]:
    from django.db.models import Count

    from journeys.models import JourneySession, JourneyStep

    sessions = JourneySession.objects.filter(journey_id=journey_id)
    steps = JourneyStep.objects.filter(session__journey_id=journey_id)
    return {
        "sessions": dict(Counter(sessions.values_list("status", flat=True))),
        "step_counts": dict(Counter(sessions.values_list("step_count", flat=True))),
        "per_node": dict(steps.values_list("node_id").annotate(n=Count("id")).order_by()),
        "step_statuses": dict(Counter(steps.values_list("status", flat=True))),
        "duplicate_steps": steps.values("session_id", "step_number")
        .annotate(n=Count("id"))
        .filter(n__gt=1)
        .count(),
        "session_ids": list(sessions.values_list("pk", flat=True)),
    }


def deliveries_state(event_id: int) -> dict[str, Any]:
    from django.db.models import F

    from deliveries.models import MessageDelivery, UserLinkAudit

    deliveries = MessageDelivery.objects.filter(message__event_id=event_id)
    linked = deliveries.filter(user__isnull=False)
    audited = set(
        UserLinkAudit.objects.filter(delivery__in=linked, outcome="linked").values_list(
            "delivery_id", flat=True
        )
    )
    return {
        "deliveries": deliveries.count(),
        "linked": linked.count(),
        "should_be_linked": deliveries.filter(guest__user__isnull=False).count(),
        "wrong_user": deliveries.filter(guest__user__isnull=False)
        .exclude(user=F("guest__user"))
        .count(),
        "linked_without_audit": linked.exclude(pk__in=audited).count(),
    }


COMMANDS: dict[str, Callable[..., dict[str, Any]]] = {
    "setup": setup,
    "deliveries_storm": deliveries_storm,
    "in_flight": in_flight,
    "progress": progress,
    "message_details": message_details,
    "pages_state": pages_state,
    "webhook_messages": webhook_messages,
    "journey_state": journey_state,
    "deliveries_state": deliveries_state,
}


def main() -> int:
    django.setup()
    for line in sys.stdin:
        command = json.loads(line)
        try:
            answer = {"ok": COMMANDS[command.pop("do")](**command)}
        except Exception:
            answer = {"error": traceback.format_exc()}
        print(json.dumps(answer, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
