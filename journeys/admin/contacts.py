"""The contacts' pages: read-only, with a "stub, not yet enriched" filter and enrichment."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from evoflow.admin_base import NoAddMixin, NoDeleteMixin, action_confirmation, is_action_confirmed
from evoflow.admin_display import (
    admin_time,
    plural,
    short_id,
)
from evoflow.admin_lists import HugeTableMixin, QueryStringCheckedAdmin
from journeys import services
from journeys.models import (
    Contact,
)


class StubFilter(admin.SimpleListFilter):
    title = "enrichment"
    parameter_name = "enrichment"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("stub", "stub, not yet enriched"), ("enriched", "enriched from the CRM")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Contact]) -> QuerySet[Contact]:
        if self.value() == "stub":
            return queryset.filter(crm_synced_at__isnull=True)
        if self.value() == "enriched":
            return queryset.filter(crm_synced_at__isnull=False)
        return queryset


@admin.register(Contact)
class ContactAdmin(NoAddMixin, NoDeleteMixin, HugeTableMixin, QueryStringCheckedAdmin):
    # Never added here: contacts come from the CRM, and the funnel creates stubs.
    list_display = ("id_short", "name", "email", "phone_e164", "enriched", "created")
    list_filter = (StubFilter, "is_blocked")
    search_fields = ("=id", "name", "email", "phone_e164")
    actions = ("enrich_from_crm",)
    readonly_fields = (
        "id",
        "name",
        "email",
        "phone",
        "phone_e164",
        "custom_attributes",
        "additional_attributes",
        "labels",
        "is_blocked",
        "crm_synced_at",
        "created_at",
        "updated_at",
    )

    @admin.display(description="id", ordering="id")
    def id_short(self, contact: Contact) -> str:
        return short_id(contact.id)

    @admin.display(description="CRM data", ordering="crm_synced_at")
    def enriched(self, contact: Contact) -> str:
        return admin_time(contact.crm_synced_at) if contact.crm_synced_at else "stub, not yet"

    @admin.display(description="created", ordering="created_at")
    def created(self, contact: Contact) -> str:
        return admin_time(contact.created_at)

    @admin.action(description="Enrich from the CRM now (asks to confirm)", permissions=["change"])
    def enrich_from_crm(self, request: HttpRequest, queryset: QuerySet[Contact]) -> Any:
        if not is_action_confirmed(request):
            return action_confirmation(
                self,
                request,
                queryset,
                action="enrich_from_crm",
                title="Enrich contacts from the CRM",
                question="Read these contacts from the CRM now and update them here with what "
                "it answers?",
            )
        asked = queryset.count()
        found = services.contacts_enrich(contact_ids=list(queryset.values_list("id", flat=True)))
        level = messages.SUCCESS if found == asked else messages.WARNING
        missing = asked - found
        self.message_user(
            request,
            f"Enriched {plural(found, 'contact')} from the CRM"
            + (f"; the CRM did not answer for {plural(missing, 'contact')}." if missing else "."),
            level,
        )
        return None
