"""Contact enrichment: fill stub rows from the CRM without overwriting newer local data."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from evoflow.http import UpstreamUnavailable
from evoflow.phones import InvalidPhoneNumber, phone_to_e164
from journeys.crm import CrmContact, crm_client
from journeys.models import Contact

logger = logging.getLogger(__name__)


def _is_empty(value: Any) -> bool:
    return value is None or value == "" or value == {} or value == []


def contact_changes_from_crm(contact: Contact, crm: CrmContact) -> dict[str, Any]:
    """The fields to change: empty local fields are filled; a filled one is replaced only when
    the CRM's copy changed after the local row did. A stub (never enriched) takes the CRM's
    block whatever its age."""
    is_crm_newer = crm.updated_at is not None and crm.updated_at > contact.updated_at
    changes: dict[str, Any] = {}
    for local_field, value in (
        ("name", crm.name),
        ("email", crm.email),
        ("phone", crm.phone_number),
    ):
        current = getattr(contact, local_field)
        if value and (_is_empty(current) or (is_crm_newer and current != value)):
            changes[local_field] = value
    if "phone" in changes:
        try:
            changes["phone_e164"] = phone_to_e164(changes["phone"]) or ""
        except InvalidPhoneNumber:
            changes["phone_e164"] = ""
    for local_field, crm_map in (
        ("custom_attributes", crm.custom_attributes),
        ("additional_attributes", crm.additional_attributes),
    ):
        current_map = getattr(contact, local_field) or {}
        merged = {**current_map, **crm_map} if is_crm_newer else {**crm_map, **current_map}
        if merged != current_map:
            changes[local_field] = merged
    if crm.labels and (_is_empty(contact.labels) or is_crm_newer) and crm.labels != contact.labels:
        changes["labels"] = crm.labels
    # A stub's `is_blocked` is its column default, not something known here: a block made in
    # the CRM before the stub existed (so "older" than the stub's row) still applies. Only a
    # newer CRM copy lifts a block, or sets one on a contact already enriched.
    is_block_unknown_here = contact.is_stub and not contact.is_blocked
    if crm.blocked != contact.is_blocked and (is_crm_newer or is_block_unknown_here):
        changes["is_blocked"] = crm.blocked
    return changes


def contact_enrich(*, contact_id: uuid.UUID | str) -> bool:
    """Fetch the contact from the CRM and merge it into the local row; False if either is gone.

    The CRM call happens before the (short) transaction that locks and updates the row.
    """
    crm_contact = crm_client().contact_get(str(contact_id))
    if crm_contact is None:
        return False
    with transaction.atomic(durable=True):
        contact = Contact.objects.select_for_update().filter(pk=contact_id).first()
        if contact is None:
            return False
        changes = contact_changes_from_crm(contact, crm_contact)
        now = timezone.now()
        Contact.objects.filter(pk=contact.pk).update(**changes, crm_synced_at=now, updated_at=now)
    return True


def contacts_enrich(*, contact_ids: Sequence[uuid.UUID | str]) -> int:
    """Enrich several contacts; returns how many were found in the CRM.

    A contact that fails on its own (its answer has an unexpected shape, its data cannot be
    stored) is logged and skipped, so it does not keep the others from being enriched; it
    stays a stub, which the integrity check reports and repairs later. A CRM that cannot be
    reached (UpstreamUnavailable, after the client's retries) stops the batch at once: every
    other contact would wait through the same retries.
    """
    found = 0
    for contact_id in contact_ids:
        try:
            found += contact_enrich(contact_id=contact_id)
        except UpstreamUnavailable:
            raise
        except Exception as error:
            logger.warning(
                "enrichment of contact %s failed: %s",
                contact_id,
                type(error).__name__,
                extra={"contact_id": str(contact_id)},
            )
    return found


def contacts_stale_stub_ids(*, older_than_seconds: int = 3600, limit: int = 500) -> list[str]:
    cutoff = timezone.now() - timedelta(seconds=older_than_seconds)
    return [
        str(contact_id)
        for contact_id in Contact.objects.filter(crm_synced_at__isnull=True, created_at__lt=cutoff)
        .order_by("created_at")
        .values_list("id", flat=True)[:limit]
    ]
