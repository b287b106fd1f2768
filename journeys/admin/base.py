"""What the journeys admin's pages share: every write through a service, and what jsonb can
store checked first."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect

from evoflow.admin_lists import QueryStringCheckedAdmin
from evoflow.jsonvalues import UnstorableJson, json_value_check
from journeys.services import JourneyError


class ServiceWritesAdmin(QueryStringCheckedAdmin):
    """Every write goes through a service, inside the change form's own atomic block.

    That block is the admin's transaction, so `save_model` calls the services'
    `*_in_transaction` variants (their durable entry points refuse to run nested) and the
    enqueued tasks commit or roll back with it. A domain error the form could not foresee
    (a race: the contact got a live session meanwhile) rolls the block back and is shown as
    a message instead of a server error.
    """

    service_error_prefix = "Not saved"

    def changeform_view(
        self,
        request: HttpRequest,
        object_id: str | None = None,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except JourneyError as error:
            self.message_user(
                request, f"{self.service_error_prefix}: {error.detail}", messages.ERROR
            )
            return redirect(request.get_full_path())


def storable(value: Any) -> Any:
    try:
        json_value_check(value)
    except UnstorableJson as error:
        raise forms.ValidationError(str(error)) from error
    return value
