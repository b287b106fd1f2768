"""The permission matrix of docs/permissions.md, as data: one line per endpoint (method and URL
pattern), per admin model and per admin action, one answer per role.

tests/core/test_permission_matrix.py walks the URLconf and the admin's registered actions and
fails for any of them without a line here, then issues every request as every role and checks
the answer. Adding an endpoint or an action means adding one line below, and regenerating the
tables of docs/permissions.md with `python -m tests.core.permission_matrix` (a test compares).

Roles, from the least trusted: `anonymous` (no login), `guest` (logged in, no permission: a
person who only reads their own messages), `host` (the "hosts" group: event hosts), `operator`
(staff in the "operators" group), `superuser`.

Answers are HTTP statuses as the test sees them with the request described (`login`: the admin's
redirect to its login page). Allowed is the 2xx (or the admin's 302 after an action); `401` no
credentials; `403` authenticated without the permission; `404` an object the role may not know
exists (another host's event is not found, never forbidden).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ROLES = ("anonymous", "guest", "host", "operator", "superuser")
LOGIN = "login"


@dataclass(frozen=True)
class Endpoint:
    method: str
    route: str  # the URL pattern, as the URLconf spells it
    answers: str  # one answer per role, in the order of ROLES
    body: Any = None  # JSON body; a str names a builder in the test (a fresh contact, ...)
    path: str = ""  # the URL to ask, when the route's parameters do not say it
    given: dict[str, str] = field(default_factory=dict)  # parameter -> which object
    note: str = ""

    def answer(self, role: str) -> str:
        return self.answers.split()[ROLES.index(role)]


@dataclass(frozen=True)
class AdminModel:
    """A ModelAdmin's pages: what an operator and a superuser may do with the model there
    (view, add, change, delete). Non-staff roles are sent to the admin's login page."""

    model: str  # app_label.model_name
    operator: str
    superuser: str = "view add change delete"


API = "api/v1/"

ENDPOINTS: tuple[Endpoint, ...] = (
    # -- public: the site root, probes, the schema, Meta's webhook --------------------------------
    Endpoint("GET", "", "302 302 302 302 302", note="to /admin/"),
    Endpoint("GET", "healthz", "200 200 200 200 200"),
    Endpoint(
        "GET",
        "metrics",
        "200 200 200 200 200",
        note="no login: keep it reachable from the monitoring network only",
    ),
    Endpoint("GET", "api/", "200 200 200 200 200"),
    Endpoint("GET", "api/schema/", "200 200 200 200 200"),
    Endpoint("GET", "api/docs/", "200 200 200 200 200"),
    Endpoint("GET", "api/redoc/", "200 200 200 200 200"),
    Endpoint(
        "GET",
        "webhooks/messenger/",
        "200 200 200 200 200",
        path="webhooks/messenger/?hub.mode=subscribe&hub.challenge=7&hub.verify_token={token}",
        note="Meta's verification: the verify token decides, not a role",
    ),
    Endpoint(
        "POST",
        "webhooks/messenger/",
        "403 403 403 403 403",
        body={"object": "page", "entry": []},
        note="without a valid X-Hub-Signature-256: the signature decides, not a role",
    ),
    # -- journeys ---------------------------------------------------------------------------------
    Endpoint("GET", API + "journeys/", "401 403 403 200 200"),
    Endpoint("POST", API + "journeys/", "401 403 403 201 201", body="journey"),
    Endpoint(
        "POST",
        API + "journeys/",
        "401 403 403 201 201",
        body="http_journey",
        note="a flow with an http_request node: also journeys.run_http_request_nodes",
    ),
    Endpoint("GET", API + "journeys/<int:journey_id>/", "401 403 403 200 200"),
    Endpoint(
        "PATCH", API + "journeys/<int:journey_id>/", "401 403 403 200 200", body={"name": "New"}
    ),
    Endpoint("POST", API + "journeys/<int:journey_id>/start/", "401 403 403 201 201", body="start"),
    Endpoint("POST", API + "contact-events/", "401 403 403 200 200", body="contact_event"),
    Endpoint("GET", API + "journey-sessions/", "401 403 403 200 200"),
    Endpoint("GET", API + "journey-sessions/<int:session_id>/", "401 403 403 200 200"),
    Endpoint("POST", API + "journey-sessions/<int:session_id>/pause/", "401 403 403 200 200"),
    Endpoint(
        "POST",
        API + "journey-sessions/<int:session_id>/resume/",
        "401 403 403 200 200",
        given={"session_id": "paused_session"},
    ),
    Endpoint("POST", API + "journey-sessions/<int:session_id>/cancel/", "401 403 403 200 200"),
    # -- conversations ----------------------------------------------------------------------------
    Endpoint("GET", API + "conversations/", "401 403 403 200 200"),
    Endpoint("GET", API + "conversations/<int:conversation_id>/messages/", "401 403 403 200 200"),
    Endpoint(
        "POST",
        API + "pages/<str:page_id>/sync/",
        "401 403 403 202 202",
        body={"mode": "incremental"},
    ),
    Endpoint("GET", API + "sync-runs/", "401 403 403 200 200"),
    Endpoint("GET", API + "sync-runs/<int:run_id>/", "401 403 403 200 200"),
    Endpoint("GET", API + "sync-runs/<int:run_id>/stream/", "401 403 403 200 200"),
    # -- deliveries: hosts see their own events only ----------------------------------------------
    Endpoint("GET", API + "events/", "401 403 200 200 200", note="each host's own events"),
    Endpoint("POST", API + "events/", "401 403 201 201 201", body="event"),
    Endpoint(
        "GET",
        API + "events/<int:event_id>/",
        "401 403 200 404 404",
        note="the host's event; another host's is not found",
    ),
    Endpoint("GET", API + "events/<int:event_id>/guests/", "401 403 200 404 404"),
    Endpoint("POST", API + "events/<int:event_id>/guests/", "401 403 201 404 404", body="guests"),
    Endpoint("GET", API + "events/<int:event_id>/messages/", "401 403 200 404 404"),
    Endpoint(
        "POST",
        API + "events/<int:event_id>/messages/",
        "401 403 201 404 404",
        body={"body": "Doors at 7"},
    ),
    Endpoint("GET", API + "guests/<int:guest_id>/", "401 403 200 404 404"),
    Endpoint(
        "PATCH", API + "guests/<int:guest_id>/", "401 403 200 404 404", body={"name": "Renamed"}
    ),
    Endpoint(
        "PATCH",
        API + "guests/<int:guest_id>/",
        "401 403 403 200 200",
        body="link",
        given={"guest_id": "own_guest"},
        note="naming a user_id: deliveries.link_guest_to_any_user; 403 for every id otherwise",
    ),
    Endpoint("GET", API + "me/messages/", "401 200 200 200 200", note="one's own messages"),
    # -- integrity ---------------------------------------------------------------------------------
    Endpoint(
        "GET",
        API + "integrity/runs/latest/",
        "401 403 403 200 200",
        given={"_": "integrity_run"},
    ),
    # -- the admin's own pages ---------------------------------------------------------------------
    Endpoint("GET", "admin/", "login login login 200 200"),
    Endpoint("GET", "admin/login/", "200 200 200 302 302", note="staff are sent on to the admin"),
    Endpoint(
        "POST", "admin/logout/", "302 302 302 200 200", note="non-staff are sent to the admin"
    ),
    Endpoint("GET", "admin/password_change/", "login login login 200 200"),
    Endpoint("GET", "admin/password_change/done/", "login login login 200 200"),
    Endpoint(
        "GET",
        "admin/autocomplete/",
        "login login login 403 403",
        note="without a field the staff member may search",
    ),
    Endpoint("GET", "admin/jsi18n/", "login login login 200 200"),
    Endpoint(
        "GET",
        "admin/r/<path:content_type_id>/<path:object_id>/",
        "login login login 404 404",
        note="no model has a page outside the admin",
    ),
    Endpoint(
        "GET",
        "admin/^(?P<app_label>django_q|auth|authtoken|evoflow|journeys|conversations|deliveries)/$",
        "login login login 200 200",
        path="admin/journeys/",
    ),
    Endpoint("GET", "admin/(?P<url>.*)$", "login login login 404 404", path="admin/no-such-page/"),
    Endpoint("GET", "admin/evoflow/user/<id>/password/", "login login login 403 200"),
    Endpoint(
        "POST",
        "admin/evoflow/integrityrun/run-now/",
        "login login login 302 302",
        note="evoflow.run_integrity: queues a run and opens it",
    ),
    Endpoint(
        "GET",
        "admin/evoflow/integrityrun/repair/<str:check_id>/",
        "login login login 200 200",
        note="evoflow.repair_integrity: the repair's preview",
    ),
    Endpoint(
        "GET",
        "admin/journeys/journeysession/<str:object_id>/do/<str:action>/",
        "login login login 200 200",
        given={"object_id": "journeys.journeysession", "action": "cancel"},
        note="journeys.change_journeysession: the session action's confirmation",
    ),
    Endpoint(
        "POST",
        "admin/journeys/journeysession/<str:object_id>/do/<str:action>/",
        "login login login 302 302",
        given={"object_id": "journeys.journeysession", "action": "cancel"},
        note="journeys.change_journeysession: retry, pause, resume or cancel, then the session",
    ),
)

# The admin's models. The operators group views everything of evoflow's apps and the task queue,
# adds and changes the records of evoflow's apps, deletes nothing and changes no user or run;
# some records are never added, changed or deleted in the admin by anyone.
ADMIN_MODELS: tuple[AdminModel, ...] = (
    AdminModel("auth.group", operator="", superuser="view add change delete"),
    AdminModel("authtoken.tokenproxy", operator="", superuser="view add change delete"),
    AdminModel("django_q.failure", operator="view", superuser="view change delete"),
    AdminModel("django_q.ormq", operator="view", superuser="view change delete"),
    AdminModel("django_q.schedule", operator="view", superuser="view add change delete"),
    AdminModel("django_q.success", operator="view", superuser="view change delete"),
    AdminModel("evoflow.user", operator="view", superuser="view add change delete"),
    AdminModel("evoflow.integrityrun", operator="view", superuser="view delete"),
    AdminModel("journeys.journey", operator="view add change", superuser="view add change"),
    AdminModel("journeys.journeysession", operator="view add change", superuser="view add change"),
    AdminModel("journeys.contact", operator="view change", superuser="view change"),
    # A page is removed softly (an action), never deleted: its conversations stay.
    AdminModel(
        "conversations.facebookpage", operator="view add change", superuser="view add change"
    ),
    AdminModel("conversations.purgerecord", operator="view", superuser="view"),
    AdminModel("conversations.conversation", operator="view", superuser="view"),
    AdminModel("conversations.message", operator="view", superuser="view"),
    AdminModel("conversations.interactionevent", operator="view", superuser="view"),
    AdminModel("conversations.webhookreceipt", operator="view", superuser="view"),
    AdminModel("conversations.syncrun", operator="view", superuser="view"),
    AdminModel("deliveries.event", operator="view add change"),
    AdminModel("deliveries.eventguest", operator="view change", superuser="view change delete"),
    AdminModel("deliveries.message", operator="view change", superuser="view change delete"),
    AdminModel(
        "deliveries.messagedelivery", operator="view change", superuser="view change delete"
    ),
    AdminModel("deliveries.userlinkaudit", operator="view", superuser="view"),
    AdminModel("deliveries.featureflag", operator="view change", superuser="view change"),
)

# Every action of every ModelAdmin: the roles offered it (and so allowed to run it; Django runs
# only an action it offers); "" is nobody. Non-staff roles never reach the admin.
ADMIN_ACTIONS: dict[tuple[str, str], str] = {
    ("auth.group", "delete_selected"): "superuser",
    ("authtoken.tokenproxy", "delete_selected"): "",
    ("django_q.failure", "delete_selected"): "superuser",
    ("django_q.failure", "resubmit_task"): "superuser",
    ("django_q.ormq", "delete_selected"): "superuser",
    ("django_q.schedule", "delete_selected"): "superuser",
    ("django_q.success", "delete_selected"): "superuser",
    ("django_q.success", "resubmit_task"): "superuser",
    ("evoflow.user", "delete_selected"): "superuser",
    ("evoflow.integrityrun", "delete_selected"): "superuser",
    ("journeys.journeysession", "retry_failed_sessions"): "operator superuser",
    ("journeys.journeysession", "cancel_sessions"): "operator superuser",
    ("journeys.contact", "enrich_from_crm"): "operator superuser",
    ("conversations.facebookpage", "delete_selected"): "",
    ("conversations.facebookpage", "remove_pages"): "operator superuser",
    ("conversations.facebookpage", "restore_pages"): "operator superuser",
    ("conversations.facebookpage", "sync_incremental_now"): "operator superuser",
    ("conversations.facebookpage", "sync_full_now"): "operator superuser",
    ("conversations.facebookpage", "retry_failed_batches"): "operator superuser",
    ("conversations.webhookreceipt", "retry_receipts"): "operator superuser",
    ("conversations.webhookreceipt", "reprocess_receipts"): "operator superuser",
    ("conversations.syncrun", "retry_failed_batches"): "operator superuser",
    ("conversations.syncrun", "cancel_runs"): "operator superuser",
    ("deliveries.event", "delete_selected"): "superuser",
    ("deliveries.eventguest", "delete_selected"): "superuser",
    ("deliveries.eventguest", "link_to_user"): "operator superuser",
    ("deliveries.message", "delete_selected"): "superuser",
    ("deliveries.messagedelivery", "delete_selected"): "superuser",
    ("deliveries.messagedelivery", "backfill_selected"): "operator superuser",
    ("deliveries.featureflag", "turn_on"): "operator superuser",
    ("deliveries.featureflag", "turn_off"): "operator superuser",
    # Django's "delete selected" exists for every model, offered only where deletion is allowed.
    ("conversations.conversation", "delete_selected"): "",
    ("conversations.interactionevent", "delete_selected"): "",
    ("conversations.message", "delete_selected"): "",
    ("conversations.purgerecord", "delete_selected"): "",
    ("conversations.syncrun", "delete_selected"): "",
    ("conversations.webhookreceipt", "delete_selected"): "",
    ("deliveries.featureflag", "delete_selected"): "",
    ("deliveries.userlinkaudit", "delete_selected"): "",
    ("journeys.contact", "delete_selected"): "",
    ("journeys.journey", "delete_selected"): "",
    ("journeys.journeysession", "delete_selected"): "",
}

ADMIN_PAGES = (
    # (route suffix, what the page needs)
    ("", "view"),
    ("add/", "add"),
    ("<path:object_id>/", "object"),
    ("<path:object_id>/history/", "view"),
    ("<path:object_id>/delete/", "delete"),
    ("<path:object_id>/change/", "view"),
)


def admin_page_rows() -> list[Endpoint]:
    """Each ModelAdmin page as an endpoint line, its answers derived from the model's line."""
    rows = []
    for entry in ADMIN_MODELS:
        app_label, model_name = entry.model.split(".")
        for suffix, needs in ADMIN_PAGES:
            cells = [LOGIN, LOGIN, LOGIN]
            for granted in (entry.operator.split(), entry.superuser.split()):
                if needs == "object":
                    # The object's short URL redirects to its change page for any staff.
                    cells.append("302")
                elif needs == "view":
                    cells.append("200" if {"view", "change"} & set(granted) else "403")
                else:
                    cells.append("200" if needs in granted else "403")
            rows.append(
                Endpoint(
                    "GET",
                    f"admin/{app_label}/{model_name}/{suffix}",
                    " ".join(cells),
                    given={"object_id": entry.model},
                )
            )
    return rows


def all_endpoints() -> list[Endpoint]:
    return [*ENDPOINTS, *admin_page_rows()]


def _cell(answer: str) -> str:
    return {"login": "login", "401": "401", "403": "403", "404": "404"}.get(answer, f"{answer} ✓")


def markdown_tables() -> str:
    """The tables of docs/permissions.md, generated from the lines above."""
    head = "| " + " | ".join(ROLES) + " |"
    rule = "|---|---|" + "---|" * len(ROLES)
    lines = ["| method | path | " + head[2:], rule]
    for row in ENDPOINTS:
        route = "/" + row.route.replace("|", "\\|")
        cells = " | ".join(_cell(row.answer(role)) for role in ROLES)
        note = f" ({row.note})" if row.note else ""
        lines.append(f"| {row.method} | `{route}`{note} | {cells} |")
    lines += ["", "| admin model | operator | superuser |", "|---|---|---|"]
    for entry in ADMIN_MODELS:
        lines.append(f"| `{entry.model}` | {entry.operator or '-'} | {entry.superuser or '-'} |")
    lines += ["", "| admin action | operator | superuser |", "|---|---|---|"]
    for (model, action), roles in ADMIN_ACTIONS.items():
        allowed = roles.split()
        lines.append(
            f"| `{model}`: `{action}` | {'✓' if 'operator' in allowed else '403'} | "
            f"{'✓' if 'superuser' in allowed else '403'} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown_tables(), end="")
