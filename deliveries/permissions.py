"""Who may do what with events, guests and messages (docs/permissions.md).

Event hosts are the members of the "hosts" group (created by this app's migration): they create
events, import and edit their guests and send them messages, always only their own events (the
selectors filter by host, so another host's event is a 404). Every authenticated user reads
their own delivered messages (`GET /me/messages/`) and nothing else without a permission.

Linking a guest to a user account decides who reads the guest's messages, so it is an operator
permission, `deliveries.link_guest_to_any_user`: a host may not address user ids at all (every
request naming one is refused the same way, whether the user exists or not, so the API does not
reveal which ids exist). A host's guests are linked by the database's rule instead, through the
guest's phone number (the feature flags of docs/deliveries.md), or by an operator on request.
"""

from __future__ import annotations

from deliveries.services import DeliveriesError
from evoflow.api.permissions import permissions_required

HOSTS_GROUP = "hosts"
LINK_GUEST_PERMISSION = "deliveries.link_guest_to_any_user"
HOST_PERMISSIONS = (
    "deliveries.view_event",
    "deliveries.add_event",
    "deliveries.view_eventguest",
    "deliveries.add_eventguest",
    "deliveries.change_eventguest",
    "deliveries.view_message",
    "deliveries.add_message",
)

EventsPermission = permissions_required(
    GET=("deliveries.view_event",), POST=("deliveries.view_event", "deliveries.add_event")
)
EventPermission = permissions_required(GET=("deliveries.view_event",))
EventGuestsPermission = permissions_required(
    GET=("deliveries.view_event", "deliveries.view_eventguest"),
    POST=("deliveries.view_event", "deliveries.add_eventguest"),
)
GuestPermission = permissions_required(
    GET=("deliveries.view_eventguest",),
    PATCH=("deliveries.view_eventguest", "deliveries.change_eventguest"),
)
EventMessagesPermission = permissions_required(
    GET=("deliveries.view_event", "deliveries.view_message"),
    POST=("deliveries.view_event", "deliveries.add_message"),
)


class GuestLinkNotAllowed(DeliveriesError):
    code = "guest_link_not_allowed"
    status = 403
    default_detail = (
        "Linking a guest to a user needs the permission deliveries.link_guest_to_any_user; "
        "a guest is linked through its phone number, or by an operator on request."
    )
