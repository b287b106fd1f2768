"""API permissions: a view open to the authenticated users who hold one Django permission.

The same permission as the admin pages of the data asks for, so a user reads through the API
exactly what their group lets them read in the admin.
"""

from __future__ import annotations

from typing import ClassVar

from rest_framework import permissions
from rest_framework.request import Request
from rest_framework.views import APIView


class PermissionRequired(permissions.BasePermission):
    """The requester is authenticated and holds `permission` ("app_label.codename"); the
    subclass's `message` says which permission, for the 403."""

    permission: ClassVar[str]

    def has_permission(self, request: Request, view: APIView) -> bool:
        user = request.user
        return bool(user and user.is_authenticated and user.has_perm(self.permission))


# Methods that only read follow GET's permissions.
_READ_ALIASES = {"HEAD": "GET", "OPTIONS": "GET"}


def permissions_required(**by_method: tuple[str, ...]) -> type[permissions.BasePermission]:
    """A permission class: the requester is authenticated and holds every permission listed
    for the request's method (`GET=("journeys.view_journey",)`; HEAD and OPTIONS follow GET).
    A method not listed needs no more than a login (the view answers 405 to it).

    An anonymous request is 401 (DRF turns a refusal without credentials into
    `not_authenticated`); an authenticated one without a permission is 403 and the detail names
    the permissions it needs, never whether the object asked about exists.
    """
    required = {method.upper(): tuple(names) for method, names in by_method.items()}

    class MethodPermissionsRequired(permissions.BasePermission):
        message = "You do not have permission to perform this action."

        def has_permission(self, request: Request, view: APIView) -> bool:
            user = request.user
            if not (user and user.is_authenticated):
                return False
            method = request.method or "GET"
            names = required.get(method, required.get(_READ_ALIASES.get(method, ""), ()))
            missing = [name for name in names if not user.has_perm(name)]
            if missing:
                self.message = (
                    "You do not have permission to perform this action (it needs "
                    + ", ".join(missing)
                    + ")."
                )
                return False
            return True

    MethodPermissionsRequired.required = required  # type: ignore[attr-defined]
    return MethodPermissionsRequired
