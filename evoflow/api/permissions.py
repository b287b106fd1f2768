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
