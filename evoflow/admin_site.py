"""The admin site: Django's, with the operator dashboard as its index page.

The dashboard shows a tile only for the areas whose app the user may view, so a staff member
without permissions sees no numbers; Django's app list stays below the tiles.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.utils import timezone

from evoflow.dashboard import AREA_APP_LABELS, AREAS, dashboard_tiles, integrity_last_run
from evoflow.integrity.trends import integrity_trend, integrity_trend_svg

REPAIR_PERMISSION = "evoflow.repair_integrity"


class EvoflowAdminSite(admin.AdminSite):
    site_header = "evoflow administration"
    site_title = "evoflow admin"
    index_title = "Operator dashboard"
    index_template = "admin/dashboard/index.html"

    def index(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> TemplateResponse:
        context = dict(extra_context or {})
        user = request.user
        if user.is_active and user.is_staff:
            context["dashboard"] = dashboard_context(request)
        return super().index(request, extra_context=context)


def dashboard_context(request: HttpRequest) -> dict[str, Any]:
    user = request.user
    areas = [area for area in AREAS if user.has_module_perms(AREA_APP_LABELS[area])]
    tiles = dashboard_tiles(
        now=timezone.now(), areas=areas, can_repair=user.has_perm(REPAIR_PERMISSION)
    )
    can_see_integrity = user.has_perm("evoflow.view_integrityrun")
    return {
        "tiles": tiles,
        "last_run": integrity_last_run() if can_see_integrity else None,
        "can_see_integrity": can_see_integrity,
        "trend_svg": integrity_trend_svg(integrity_trend()) if can_see_integrity else "",
    }
