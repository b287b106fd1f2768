"""Who may do what with journeys (docs/permissions.md): the API's permission classes and the
rule for `http_request` nodes, shared by the API and the admin.

Journeys and their sessions use Django's model permissions (view / add / change) in the API as
in the admin; a session, whose variables and steps hold what its nodes answered (an
`http_request` node's response among them), also needs the permission to view journeys. An
`http_request` node calls a URL from the server and keeps the answer, so creating or changing
one needs `journeys.run_http_request_nodes` on top of the journey's add or change permission.
"""

from __future__ import annotations

import json
from typing import Any

from evoflow.api.permissions import permissions_required
from journeys.services import JourneyError

HTTP_REQUEST_NODE_PERMISSION = "journeys.run_http_request_nodes"
VIEW_JOURNEY = "journeys.view_journey"
VIEW_SESSION = "journeys.view_journeysession"

JourneysPermission = permissions_required(
    GET=(VIEW_JOURNEY,), POST=(VIEW_JOURNEY, "journeys.add_journey")
)
JourneyPermission = permissions_required(
    GET=(VIEW_JOURNEY,), PATCH=(VIEW_JOURNEY, "journeys.change_journey")
)
SessionReadPermission = permissions_required(GET=(VIEW_JOURNEY, VIEW_SESSION))
SessionStartPermission = permissions_required(POST=(VIEW_JOURNEY, "journeys.add_journeysession"))
# A contact event starts sessions and resumes waiting ones.
ContactEventPermission = permissions_required(
    POST=("journeys.add_journeysession", "journeys.change_journeysession")
)
SessionChangePermission = permissions_required(
    POST=(VIEW_JOURNEY, VIEW_SESSION, "journeys.change_journeysession")
)


class HttpRequestNodePermissionRequired(JourneyError):
    code = "http_request_permission_required"
    status = 403


def _http_request_nodes(flow: Any) -> dict[str, str]:
    """Each `http_request` node of a flow, by id, as canonical JSON (to compare versions)."""
    nodes = flow.get("nodes") if isinstance(flow, dict) else None
    if not isinstance(nodes, list):
        return {}
    return {
        str(node.get("id")): json.dumps(node, sort_keys=True)
        for node in nodes
        if isinstance(node, dict) and node.get("type") == "http_request"
    }


def http_request_nodes_changed(*, flow: Any, previous_flow: Any) -> list[str]:
    """The ids of `flow`'s http_request nodes that are new or differ from `previous_flow`'s."""
    before = _http_request_nodes(previous_flow)
    return sorted(
        node_id
        for node_id, node in _http_request_nodes(flow).items()
        if before.get(node_id) != node
    )


def http_request_nodes_check(*, user: Any, flow: Any, previous_flow: Any = None) -> None:
    """Refuse a flow that adds or changes an http_request node when the user may not.

    A journey that already has such nodes stays editable without the permission, as long as
    those nodes are kept as they are (or removed).
    """
    if user.has_perm(HTTP_REQUEST_NODE_PERMISSION):
        return
    changed = http_request_nodes_changed(flow=flow, previous_flow=previous_flow)
    if changed:
        names = ", ".join(f'"{node_id}"' for node_id in changed)
        raise HttpRequestNodePermissionRequired(
            f"Adding or changing http_request nodes ({names}) needs the permission "
            f"{HTTP_REQUEST_NODE_PERMISSION}."
        )
