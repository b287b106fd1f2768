"""Shared pieces of the project's ModelAdmins, beyond their lists (`evoflow.admin_lists`).

- `NoAddMixin`, `NoChangeMixin`, `NoDeleteMixin`: a permission the admin never grants, whoever
  asks (rows another path writes: a service, a trigger, a webhook). They suit a ModelAdmin and
  an inline alike. `ReadOnlyAdmin` refuses all three: its pages only show rows.
- `ObjectPageMixin`: a change page with context of its own about its object. The object id
  from the URL is read with `pk_or_none`, so "²" or a number past bigint finds no object (the
  admin's usual "no such object" answer) instead of failing in int() or in the query.
- `model_page_response(...)`: a page of the admin's own under a model (a confirmation, a
  repair preview). Its template extends `admin/evoflow/model_page.html`, which draws the
  breadcrumbs from the `opts` and `title` given here.
- `action_confirmation(...)`: the page a state-changing changelist action shows first; the
  action runs when that page's form posts back with `confirm`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.contrib import admin
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.options import BaseModelAdmin
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from evoflow.admin_lists import QueryStringCheckedAdmin, pk_or_none

# -- permissions nobody gets ---------------------------------------------------------------------


class NoAddMixin(BaseModelAdmin):
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class NoChangeMixin(BaseModelAdmin):
    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class NoDeleteMixin(BaseModelAdmin):
    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ReadOnlyAdmin(NoAddMixin, NoChangeMixin, NoDeleteMixin, QueryStringCheckedAdmin):
    """Rows shown to whoever may view them, and never added, changed or deleted here."""


# -- a change page with its own context ----------------------------------------------------------


class ObjectPageMixin(admin.ModelAdmin):
    """Fills the change page's context from `change_page_context(request, obj)` (module
    docstring); `change_page_object` finds the object, among `get_queryset` by default."""

    def change_page_object(self, request: HttpRequest, pk: int) -> Any:
        return self.get_queryset(request).filter(pk=pk).first()

    def change_page_context(self, request: HttpRequest, obj: Any) -> dict[str, Any]:
        return {}

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        context = dict(extra_context or {})
        pk = pk_or_none(object_id)
        obj = self.change_page_object(request, pk) if pk is not None else None
        if obj is not None:
            context.update(self.change_page_context(request, obj))
        return super().change_view(request, object_id, form_url, extra_context=context)


# -- the admin's own pages -----------------------------------------------------------------------


def model_page_response(
    model_admin: admin.ModelAdmin,
    request: HttpRequest,
    *,
    template: str,
    title: str,
    context: Mapping[str, Any],
) -> TemplateResponse:
    """A page of the admin's own under `model_admin`'s model (module docstring)."""
    return TemplateResponse(
        request,
        template,
        {
            **model_admin.admin_site.each_context(request),
            "title": title,
            "opts": model_admin.opts,
            **context,
        },
    )


ACTION_CONFIRM_TEMPLATE = "admin/evoflow/action_confirm.html"


def is_action_confirmed(request: HttpRequest) -> bool:
    return "confirm" in request.POST


def action_confirmation(
    model_admin: admin.ModelAdmin,
    request: HttpRequest,
    queryset: QuerySet,
    *,
    action: str,
    title: str,
    question: str,
) -> TemplateResponse:
    """The page a changelist action shows before it changes anything: what it will do, the
    rows it will do it to, and a form that posts the same action back confirmed."""
    return model_page_response(
        model_admin,
        request,
        template=ACTION_CONFIRM_TEMPLATE,
        title=title,
        context={
            "question": question,
            "objects": list(queryset[:100]),
            "object_count": queryset.count(),
            "selected_ids": [str(pk) for pk in queryset.values_list("pk", flat=True)],
            "action": action,
            "action_checkbox_name": ACTION_CHECKBOX_NAME,
        },
    )
