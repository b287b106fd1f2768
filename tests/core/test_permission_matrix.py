"""The permission matrix (docs/permissions.md, tests/core/permission_matrix.py), enforced.

1. Coverage: every URL pattern of the URLconf and every method its view answers, and every action
   of every registered ModelAdmin, has a line in the matrix; a new one without a line fails here.
2. Answers: every line is asked as every role, over real HTTP through Django's test client with
   a real login, and answers what the matrix says.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib import admin
from django.contrib.contenttypes.models import ContentType
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone
from django.views.generic import RedirectView

from tests.core import permission_matrix as matrix
from tests.core.factories import UserFactory, role_user

pytestmark = pytest.mark.django_db

DOC = Path(__file__).resolve().parents[2] / "docs" / "permissions.md"
# Methods a view may answer that the matrix does not list separately.
IMPLIED_METHODS = {"HEAD", "OPTIONS"}


def _url_patterns() -> Iterator[tuple[str, Callable[..., Any]]]:
    def walk(patterns: list[Any], prefix: str) -> Iterator[tuple[str, Callable[..., Any]]]:
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                yield from walk(pattern.url_patterns, prefix + str(pattern.pattern))
            elif isinstance(pattern, URLPattern):
                yield prefix + str(pattern.pattern), pattern.callback

    yield from walk(get_resolver().url_patterns, "")


def _view_methods(route: str, callback: Callable[..., Any]) -> set[str]:
    """The methods a view answers with something else than 405, as far as it says."""
    view_class = getattr(callback, "view_class", None) or getattr(callback, "cls", None)
    if view_class is None or route.startswith("admin/"):
        # Function views (probes, the webhook) and the admin's pages: their lines are the
        # methods they are for (the admin's forms post to the pages the lines name).
        return set()
    if issubclass(view_class, RedirectView):
        return {"GET"}
    return {
        method.upper()
        for method in view_class.http_method_names
        if hasattr(view_class, method) and method.upper() not in IMPLIED_METHODS
    }


def _registered_actions() -> set[tuple[str, str]]:
    found = set()
    for model, model_admin in admin.site._registry.items():
        for _function, name, _description in model_admin._get_base_actions():
            found.add((model._meta.label_lower, name))
    return found


def test_every_url_pattern_method_and_admin_action_has_a_line(capsys):
    rows = {(row.method, row.route) for row in matrix.all_endpoints()}
    routes = {route for _method, route in rows}
    patterns = list(_url_patterns())

    missing_routes = sorted(route for route, _callback in patterns if route not in routes)
    missing_methods = sorted(
        (method, route)
        for route, callback in patterns
        for method in _view_methods(route, callback)
        if (method, route) not in rows
    )
    stale = sorted(routes - {route for route, _callback in patterns})
    actions = _registered_actions()
    missing_actions = sorted(actions - set(matrix.ADMIN_ACTIONS))
    stale_actions = sorted(set(matrix.ADMIN_ACTIONS) - actions)
    admin_models = {model._meta.label_lower for model in admin.site._registry}

    assert missing_routes == [], "URL patterns without a line in the permission matrix"
    assert missing_methods == [], "methods of a view without a line in the permission matrix"
    assert stale == [], "lines of the permission matrix for URL patterns that are gone"
    assert missing_actions == [], "admin actions without a line in the permission matrix"
    assert stale_actions == [], "admin actions in the permission matrix that are gone"
    assert sorted(admin_models) == sorted(entry.model for entry in matrix.ADMIN_MODELS)
    with capsys.disabled():
        print(
            f"\npermission matrix: {len(patterns)}/{len(patterns)} URL patterns, "
            f"{len(rows)} method+pattern lines, {len(actions)}/{len(actions)} admin actions, "
            f"{len(matrix.ROLES)} roles"
        )


def test_the_documentation_shows_the_matrix():
    assert matrix.markdown_tables() in DOC.read_text(), (
        "docs/permissions.md is out of date: paste `python -m tests.core.permission_matrix`"
    )


# -- asking every line as every role ------------------------------------------------------------


class World:
    """The objects the requests name, created on first use, and one user per role. The host
    owns the event and guest the deliveries lines name; nobody else does."""

    def __init__(self, role: str) -> None:
        self.role = role
        self.user = None if role == "anonymous" else role_user(role)
        self.host = self.user if role == "host" else role_user("host")
        self._made: dict[str, Any] = {}

    def get(self, name: str) -> Any:
        if name not in self._made:
            self._made[name] = getattr(self, f"_make_{name}")()
        return self._made[name]

    # Journeys
    def _make_journey(self) -> Any:
        from tests.journeys.factories import JourneyFactory

        return JourneyFactory()

    def _make_session(self) -> Any:
        from journeys.models import JourneySession
        from journeys.services import session_start
        from tests.journeys.factories import ContactFactory

        session_id = session_start(
            journey_id=self.get("journey").pk, contact_id=ContactFactory().id
        )
        return JourneySession.objects.get(pk=session_id)

    def _make_paused_session(self) -> Any:
        from journeys.services import session_pause

        return session_pause(session_id=self.get("session").pk)

    # Conversations
    def _make_page(self) -> Any:
        from conversations.services.pages import page_set_access_token
        from tests.conversations.factories import FacebookPageFactory

        return page_set_access_token(page=FacebookPageFactory(), access_token="page-token")

    def _make_conversation(self) -> Any:
        from tests.conversations.factories import MessageFactory

        return MessageFactory(conversation__page=self.get("page")).conversation

    def _make_sync_run(self) -> Any:
        from conversations.models import SyncRun

        now = timezone.now()
        return SyncRun.objects.create(
            page=self.get("page"),
            mode="incremental",
            status="succeeded",
            started_at=now,
            finished_at=now,
        )

    # Deliveries
    def _make_event(self) -> Any:
        from tests.deliveries.factories import EventFactory

        return EventFactory(host=self.host)

    def _make_guest(self) -> Any:
        from tests.deliveries.factories import EventGuestFactory, MessageDeliveryFactory

        guest = EventGuestFactory(event=self.get("event"))
        MessageDeliveryFactory(guest=guest, message__event=self.get("event"))
        return guest

    def _make_own_guest(self) -> Any:
        """A guest of an event of the requester's own (a host's, an operator's...)."""
        from tests.deliveries.factories import EventFactory, EventGuestFactory

        owner = self.user if self.user is not None else self.host
        if not owner.groups.filter(name="hosts").exists() and not owner.is_superuser:
            owner.groups.add(*role_user("host").groups.all())
        return EventGuestFactory(event=EventFactory(host=owner))

    def _make_integrity_run(self) -> Any:
        from evoflow.integrity.runner import integrity_run

        return integrity_run(trigger="command")


def _admin_object(world: World, model_label: str) -> Any:
    """One row of a model the admin shows, made the way the application makes it."""
    from django_q.models import OrmQ, Schedule, Task
    from rest_framework.authtoken.models import Token, TokenProxy

    from conversations.models import PurgeRecord, PurgeScope
    from evoflow.models import IntegrityRun

    app_label, model_name = model_label.split(".")
    now = timezone.now()
    if app_label == "django_q":
        if model_name in {"success", "failure"}:
            return Task.objects.create(
                id=uuid.uuid4().hex,
                name=uuid.uuid4().hex,
                func="math.floor",
                args=(1.5,),
                kwargs={},
                started=now,
                stopped=now,
                success=model_name == "success",
            )
        if model_name == "ormq":
            return OrmQ.objects.create(key="evoflow", payload="x", lock=None)
        return Schedule.objects.create(name=uuid.uuid4().hex, func="math.floor")
    makers: dict[str, Callable[[], Any]] = {
        "auth.group": lambda: role_user("operator").groups.get(),
        # The token admin finds a token by its user's id (DRF's TokenProxy.pk).
        "authtoken.tokenproxy": lambda: TokenProxy.objects.get(
            pk=Token.objects.create(user=UserFactory()).pk
        ),
        "evoflow.user": UserFactory,
        "evoflow.integrityrun": lambda: IntegrityRun.objects.create(trigger="command"),
        "journeys.journey": lambda: world.get("journey"),
        "journeys.journeysession": lambda: world.get("session"),
        "journeys.contact": lambda: world.get("session").contact,
        "conversations.facebookpage": lambda: world.get("page"),
        "conversations.conversation": lambda: world.get("conversation"),
        "conversations.message": lambda: world.get("conversation").messages.get(),
        "conversations.interactionevent": lambda: _interaction_event(world),
        "conversations.webhookreceipt": _webhook_receipt,
        "conversations.syncrun": lambda: world.get("sync_run"),
        "conversations.purgerecord": lambda: PurgeRecord.objects.create(
            scope=PurgeScope.PAGE,
            page_id="1" * 15,
            conversations=0,
            messages=0,
            events=0,
            sync_runs=0,
            reason="matrix",
            requested_by="ops",
        ),
        "deliveries.event": lambda: world.get("event"),
        "deliveries.eventguest": lambda: world.get("guest"),
        "deliveries.message": lambda: world.get("guest").deliveries.get().message,
        "deliveries.messagedelivery": lambda: world.get("guest").deliveries.get(),
        "deliveries.userlinkaudit": lambda: _link_audit(world),
        "deliveries.featureflag": _feature_flag,
    }
    return makers[model_label]()


def _interaction_event(world: World) -> Any:
    from conversations.models import InteractionEvent

    message = world.get("conversation").messages.get()
    return InteractionEvent.objects.create(
        page=message.page,
        conversation=message.conversation,
        message=message,
        kind="read",
        occurred_at=timezone.now(),
        dedupe_key=uuid.uuid4().hex,
        source="sync",
    )


def _webhook_receipt() -> Any:
    from conversations.models import WebhookReceipt

    return WebhookReceipt.objects.create(
        body=b"{}", body_sha256="0" * 64, signature_verdict="internal", status="processed"
    )


def _link_audit(world: World) -> Any:
    from deliveries.models import UserLinkAudit

    world.get("guest")
    return UserLinkAudit.objects.order_by("-id").first()


def _feature_flag() -> Any:
    from deliveries.models import FeatureFlag

    flag, _created = FeatureFlag.objects.get_or_create(
        name=FeatureFlag.LINK_USER_BY_PHONE, defaults={"enabled": True}
    )
    return flag


def _body(world: World, body: Any) -> Any:
    from tests.journeys.factories import ContactFactory, linear_flow

    if not isinstance(body, str):
        return body
    if body == "journey":
        return {"name": "New", "flow": linear_flow(("a", "exit", {}))}
    if body == "http_journey":
        flow = linear_flow(
            ("call", "http_request", {"url": "http://127.0.0.1:8011/hooks/x"}),
            ("end", "exit", {}),
        )
        return {"name": "Calls out", "flow": flow}
    if body == "start":
        return {"contact_id": str(ContactFactory().id)}
    if body == "contact_event":
        return {"name": "signed_up", "contact_id": str(uuid.uuid4())}
    if body == "event":
        return {"name": "Launch", "starts_at": "2027-01-01T19:00:00Z"}
    if body == "guests":
        return {"guests": [{"name": "Ada", "phone": "+14155550199"}]}
    if body == "link":
        return {"user_id": UserFactory().pk}
    raise ValueError(body)


PARAMETERS = {
    "journey_id": "journey",
    "session_id": "session",
    "conversation_id": "conversation",
    "page_id": "page",
    "run_id": "sync_run",
    "event_id": "event",
    "guest_id": "guest",
}
_PARAMETER = re.compile(r"<(?:\w+:)?(\w+)>")


def _path(world: World, row: matrix.Endpoint) -> str:
    if row.path:
        return "/" + row.path.format(token=settings.FB_VERIFY_TOKEN)

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        given = row.given.get(name)
        if name == "object_id" and given is not None and "." in given:
            return str(_admin_object(world, given).pk)
        if name == "object_id":  # view_on_site's object: a journey
            return str(world.get("journey").pk)
        if name == "content_type_id":
            return str(ContentType.objects.get(app_label="journeys", model="journey").pk)
        if name == "id":
            return str(UserFactory().pk)
        if name == "action":
            return given or "cancel"
        if name == "check_id":
            from evoflow.integrity.registry import all_checks

            return next(check.id for check in all_checks() if check.repair is not None)
        thing = world.get(given or PARAMETERS[name])
        return str(thing.page_id if name == "page_id" else thing.pk)

    return "/" + _PARAMETER.sub(value, row.route)


def _row_id(row: matrix.Endpoint) -> str:
    extra = f" {row.body}" if isinstance(row.body, str) else ""
    return f"{row.method} /{row.route}{extra}"


@pytest.mark.parametrize("role", matrix.ROLES)
@pytest.mark.parametrize("row", matrix.all_endpoints(), ids=_row_id)
def test_each_role_gets_the_matrix_answer(row: matrix.Endpoint, role: str) -> None:
    # Given the objects the request names, and a client logged in as the role
    world = World(role)
    for parameter, name in row.given.items():
        # (a model label names an admin object, made for the path; an action is a word)
        if "." not in name and parameter != "action":
            world.get(name)
    client = Client()
    if world.user is not None:
        client.force_login(world.user)
    path = _path(world, row)

    # When it asks
    response = client.generic(
        row.method,
        path,
        data=_json(_body(world, row.body)),
        content_type="application/json",
    )
    response.close()

    # Then the answer is the matrix's
    expected = row.answer(role)
    if expected == matrix.LOGIN:
        assert response.status_code == 302, (path, response.status_code)
        assert response["Location"].startswith("/admin/login/"), response["Location"]
    else:
        assert response.status_code == int(expected), (path, response.content[:300])


def _json(body: Any) -> str:
    import json

    return "" if body is None else json.dumps(body)


@pytest.mark.parametrize("action", sorted(matrix.ADMIN_ACTIONS), ids=lambda a: f"{a[0]}:{a[1]}")
def test_each_admin_action_is_offered_to_the_matrix_roles_only(action: tuple[str, str]) -> None:
    model, name = action
    app_label, model_name = model.split(".")
    allowed = matrix.ADMIN_ACTIONS[action].split()
    for role in ("operator", "superuser"):
        client = Client()
        client.force_login(role_user(role))
        response = client.get(f"/admin/{app_label}/{model_name}/")
        form = response.context["action_form"] if response.status_code == 200 else None
        offered = [] if form is None else [value for value, _ in form.fields["action"].choices]
        assert (name in offered) == (role in allowed), (role, model, name, response.status_code)
    for role in ("guest", "host"):
        client = Client()
        client.force_login(role_user(role))
        assert client.get(f"/admin/{app_label}/{model_name}/").status_code == 302


def test_a_guest_can_do_nothing_beyond_reading_its_own_messages() -> None:
    # The guest column: past the public endpoints (probes, schema, Meta's webhook and the admin's
    # login and logout pages), reading one's own messages is all.
    public = {
        (row.method, row.route)
        for row in matrix.ENDPOINTS
        if row.answer("anonymous") not in {"401", matrix.LOGIN}
    }
    allowed = sorted(
        (row.method, row.route)
        for row in matrix.all_endpoints()
        if row.answer("guest") not in {"401", "403", "404", matrix.LOGIN}
        and (row.method, row.route) not in public
    )
    assert allowed == [("GET", "api/v1/me/messages/")]
