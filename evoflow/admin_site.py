"""The admin site: Django's, with the operator dashboard as its index page.

The dashboard shows a number only to users who may view the model it counts, and a tile only
when one of its numbers remains, so a staff member without permissions sees no numbers;
Django's app list stays below the tiles.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.admin.views.autocomplete import AutocompleteJsonView
from django.contrib.auth import get_permission_codename
from django.db.models import Model
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.utils import timezone

from evoflow.dashboard import dashboard_tiles, integrity_last_run, tile_shown
from evoflow.integrity.trends import integrity_trend, integrity_trend_svg
from evoflow.models import User

RUN_PERMISSION = "evoflow.run_integrity"
REPAIR_PERMISSION = "evoflow.repair_integrity"
VIEW_PERMISSION = "evoflow.view_integrityrun"


def may_see_runs(user: Any) -> bool:
    # Django's admin shows a model's pages to users with its view or its change permission.
    return user.has_perm(VIEW_PERMISSION) or user.has_perm("evoflow.change_integrityrun")


def may_run(user: Any) -> bool:
    """Running or repairing ends on the run's page, so both need to see the runs too."""
    return user.has_perm(RUN_PERMISSION) and may_see_runs(user)


def may_repair(user: Any) -> bool:
    return user.has_perm(REPAIR_PERMISSION) and may_see_runs(user)


class EvoflowAdminSite(admin.AdminSite):
    site_header = "evoflow administration"
    site_title = "evoflow admin"
    index_title = "Operator dashboard"
    index_template = "admin/dashboard/index.html"
    # The app list stays on the dashboard; as a sidebar on every page it took a fifth of a
    # 1,440 px screen from the lists.
    enable_nav_sidebar = False

    def autocomplete_view(self, request: HttpRequest) -> Any:
        return AutocompleteView.as_view(admin_site=self)(request)

    def index(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> TemplateResponse:
        context = dict(extra_context or {})
        user = request.user
        if user.is_active and user.is_staff:
            context["dashboard"] = dashboard_context(request)
        return super().index(request, extra_context=context)


class AutocompleteView(AutocompleteJsonView):
    """Django's autocomplete, naming a user by more than the username: picking whom a guest is
    linked to is told apart by name, email and phone."""

    def serialize_result(self, obj: Any, to_field_name: str) -> dict[str, str]:
        result = super().serialize_result(obj, to_field_name)
        if isinstance(obj, User):
            details = [obj.get_full_name(), obj.email, obj.phone_e164 or ""]
            shown = ", ".join(detail for detail in details if detail)
            result["text"] = f"{obj.username} ({shown})" if shown else obj.username
        return result


def dashboard_context(request: HttpRequest) -> dict[str, Any]:
    user = request.user

    def may_view(model: type[Model]) -> bool:
        opts = model._meta
        return user.has_perm(f"{opts.app_label}.{get_permission_codename('view', opts)}")

    tiles = dashboard_tiles(now=timezone.now(), may_view=may_view, can_repair=may_repair(user))
    can_see_integrity = user.has_perm(VIEW_PERMISSION)
    return {
        "tiles": [tile_shown(tile) for tile in tiles],
        "last_run": integrity_last_run() if can_see_integrity else None,
        "can_see_integrity": can_see_integrity,
        "can_run_integrity": may_run(user),
        "trend_svg": integrity_trend_svg(integrity_trend()) if can_see_integrity else "",
    }
