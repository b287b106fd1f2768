"""Events, guests, messages and their deliveries; the link audit; the feature flags.

The rule that links a delivery to its user (D1, D2) and the audit row every attempt writes (D3)
live in PostgreSQL, so that every write path obeys them (ORM, `bulk_create`,
`QuerySet.update`, raw SQL, data migrations):

* `deliveries_link_resolve(ids)` (SQL, in `deliveries/sql/link_rule.sql`) decides, for a set of
  deliveries, which user each should carry and why: the rule, written once;
* `deliveries_link_apply(ids, method, audit_all, previous_user_id)` applies that decision in one
  `UPDATE ... FROM` and writes the audit rows in one `INSERT ... SELECT`, in the caller's
  transaction; it is the only writer of audit rows;
* the statement-level triggers declared below call it: after every INSERT of deliveries, and
  after every UPDATE of guests that links an active guest (NULL -> user, or a linked guest
  restored) or moves a linked guest to another user or to none; the historical backfill calls
  it per id-range batch;
* a guard after every UPDATE of deliveries refuses a changed guest or message, and a user other
  than the one of the delivery's active, linked guest, whatever path wrote it.

Both triggers are statement-level with transition tables, so inserting 100,000 deliveries
costs one set-based pass rather than 100,000 trigger calls.
"""

from __future__ import annotations

import pgtrigger
from django.conf import settings
from django.contrib.postgres.indexes import BrinIndex
from django.db import models
from django.db.models.functions import Now
from django.utils import timezone

from evoflow.db import refuse_truncate
from evoflow.phones import e164_column_valid, phone_e164_or_none, phone_e164_refresh
from evoflow.sqlfiles import trigger_body

# The trigger bodies, kept as SQL files next to the rule they call (deliveries/sql/). Both take
# the event's link lock (deliveries/locks.py): a delivery insert shared, a guest link
# exclusively, both for the rest of the transaction.
DELIVERY_INSERTED_SQL = trigger_body(__file__, "delivery_link_on_insert.sql")
GUEST_UPDATED_SQL = trigger_body(__file__, "guest_link_backfill.sql")
DELIVERY_UPDATED_SQL = trigger_body(__file__, "delivery_update_guard.sql")


class Event(models.Model):
    """Something a host invites guests to and sends messages about."""

    name = models.CharField(max_length=200)
    starts_at = models.DateTimeField()
    host = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="hosted_events"
    )
    created_at = models.DateTimeField(default=timezone.now, db_default=Now())

    class Meta:
        ordering = ["-starts_at", "-id"]
        indexes = [models.Index(fields=["host", "-id"], name="event_host_idx")]

    def __str__(self) -> str:
        return self.name


class EventGuest(models.Model):
    """An invited person: a name and a phone, linked to a user once they have an account.

    `removed_at` set means the guest was removed: a removed guest never links.
    """

    event = models.ForeignKey(Event, on_delete=models.CASCADE, related_name="guests")
    name = models.CharField(max_length=200)
    phone = models.CharField(max_length=40, db_default="", default="", blank=True)
    phone_e164 = models.CharField(  # noqa: DJ001 - NULL: no number, never matches
        max_length=16, null=True, blank=True, editable=False
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="guest_entries",
    )
    removed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_default=Now())
    updated_at = models.DateTimeField(default=timezone.now, db_default=Now())

    class Meta:
        ordering = ["id"]
        permissions = [
            (
                "link_guest_to_any_user",
                "Can link a guest to any user",
            )
        ]
        indexes = [
            # The phone fallback counts the event's active guests with a number.
            models.Index(
                fields=["event", "phone_e164"],
                name="guest_event_phone_active_idx",
                condition=models.Q(removed_at__isnull=True),
            ),
            models.Index(
                fields=["user"], name="guest_user_idx", condition=models.Q(user__isnull=False)
            ),
        ]
        constraints = [
            models.CheckConstraint(
                condition=e164_column_valid(),
                name="guest_phone_e164_format",
            )
        ]
        triggers = [
            pgtrigger.Trigger(
                name="guest_link_backfill",
                level=pgtrigger.Statement,
                when=pgtrigger.After,
                operation=pgtrigger.Update,
                referencing=pgtrigger.Referencing(old="old_rows", new="new_rows"),
                declare=[("moved", "record")],
                func=GUEST_UPDATED_SQL,
            )
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.phone})"

    def save(self, *args, **kwargs) -> None:
        # A bad number is refused by services; one written around them matches nobody, and the
        # integrity check `deliveries.phone_not_normalised` lists it.
        phone_e164_refresh(self, kwargs)
        super().save(*args, **kwargs)


class Message(models.Model):
    """What a host sends to every active guest of an event."""

    event = models.ForeignKey(Event, on_delete=models.CASCADE, related_name="messages")
    body = models.TextField()
    sender = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="sent_event_messages",
    )
    created_at = models.DateTimeField(default=timezone.now, db_default=Now())

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["event", "-id"], name="message_event_idx")]

    def __str__(self) -> str:
        return self.body[:60]


class MessageDelivery(models.Model):
    """One message for one guest; `user` is who may read it (D1, D4)."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        SENT = "sent"
        DELIVERED = "delivered"
        READ = "read"
        FAILED = "failed"

    message = models.ForeignKey(
        Message, on_delete=models.CASCADE, related_name="deliveries", db_index=False
    )
    guest = models.ForeignKey(EventGuest, on_delete=models.CASCADE, related_name="deliveries")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="event_deliveries",
        db_index=False,
    )
    phone = models.CharField(max_length=40, db_default="", default="", blank=True)
    phone_e164 = models.CharField(max_length=16, null=True, blank=True)  # noqa: DJ001
    status = models.CharField(
        max_length=16, choices=Status.choices, default=Status.QUEUED, db_default=Status.QUEUED
    )
    created_at = models.DateTimeField(default=timezone.now, db_default=Now())
    updated_at = models.DateTimeField(default=timezone.now, db_default=Now())
    sent_at = models.DateTimeField(null=True, blank=True)
    read_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        verbose_name_plural = "message deliveries"
        # Migration 0001 also sets `fillfactor = 85` on the table (a link rewrites the row on
        # its own page).
        constraints = [
            models.UniqueConstraint(fields=["message", "guest"], name="delivery_once_per_guest"),
            models.CheckConstraint(
                condition=e164_column_valid(),
                name="delivery_phone_e164_format",
            ),
        ]
        indexes = [
            # GET /me/messages/: a user's deliveries, newest first.
            models.Index(fields=["user", "-id"], name="delivery_user_idx"),
            # Backfills (guest link, historical, integrity) only look at unlinked deliveries.
            models.Index(
                fields=["guest"],
                name="delivery_unlinked_guest_idx",
                condition=models.Q(user__isnull=True),
            ),
            models.Index(
                fields=["id"],
                name="delivery_unlinked_id_idx",
                condition=models.Q(user__isnull=True),
            ),
            # The integrity checks' "deliveries written since the previous run" (created_at
            # never changes, so the index never stops a HOT update of a link or a status).
            BrinIndex(fields=["created_at"], name="delivery_created_brin", pages_per_range=32),
        ]
        triggers = [
            pgtrigger.Trigger(
                name="delivery_link_on_insert",
                level=pgtrigger.Statement,
                when=pgtrigger.After,
                operation=pgtrigger.Insert,
                referencing=pgtrigger.Referencing(new="new_rows"),
                func=DELIVERY_INSERTED_SQL,
            ),
            pgtrigger.Trigger(
                name="delivery_update_guard",
                level=pgtrigger.Statement,
                when=pgtrigger.After,
                operation=pgtrigger.Update,
                referencing=pgtrigger.Referencing(old="old_rows", new="new_rows"),
                func=DELIVERY_UPDATED_SQL,
            ),
        ]

    def __str__(self) -> str:
        return f"delivery {self.pk} of message {self.message_id} to guest {self.guest_id}"

    def save(self, *args, **kwargs) -> None:
        # The delivery keeps the number it was sent to, even if the guest's changes later.
        if self._state.adding and not self.phone and self.guest_id is not None:
            self.phone = self.guest.phone
            self.phone_e164 = self.guest.phone_e164
        elif self.phone and not self.phone_e164:
            self.phone_e164 = phone_e164_or_none(self.phone)
        super().save(*args, **kwargs)


class LinkOutcome(models.TextChoices):
    """The outcomes of docs/invariants.md (D3); the audit's `details.reason` says why."""

    LINKED = "linked"
    # Nobody to link, or more than one candidate (reason `ambiguous_guests`, `ambiguous_users`).
    NO_MATCH = "no_match"
    # A feature flag is off (reason `flag_off`).
    SKIPPED = "skipped"
    ALREADY_LINKED = "already_linked"


# Every `details.reason` the link rule writes (deliveries/sql/link_rule.sql), for the admin's
# filter and the docs; tests/deliveries/test_linking.py checks the rule writes no other.
LINK_REASONS: tuple[str, ...] = (
    "guest_user",
    "user_given",
    "unique_user_with_phone",
    "guest_relinked",
    "guest_unlinked",
    "guest_removed",
    "guest_not_linked",
    "no_phone",
    "no_user_with_phone",
    "ambiguous_guests",
    "ambiguous_users",
    "flag_off",
)


class LinkMethod(models.TextChoices):
    GUEST = "guest"
    PHONE_FALLBACK = "phone_fallback"
    GUEST_BACKFILL = "guest_backfill"
    HISTORICAL = "historical"
    MANUAL = "manual"


class UserLinkAudit(models.Model):
    """One row per link attempt (D3). Append-only: the database refuses UPDATE, DELETE and
    TRUNCATE.

    The references are plain ids without foreign-key constraints on purpose: the history must
    outlive the deliveries, guests and users it talks about.
    """

    Outcome = LinkOutcome
    Method = LinkMethod

    delivery = models.ForeignKey(
        MessageDelivery,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        null=True,
        blank=True,
        related_name="link_audits",
    )
    guest = models.ForeignKey(
        EventGuest,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        null=True,
        blank=True,
        related_name="link_audits",
        db_index=False,
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        null=True,
        blank=True,
        related_name="+",
        db_index=False,
    )
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    method = models.CharField(max_length=16, choices=Method.choices)
    details = models.JSONField(default=dict, db_default={}, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_default=Now())

    class Meta:
        ordering = ["-id"]
        indexes = [
            # Append-only and written in time order: a BRIN index costs next to nothing per
            # insert (the guest-link budget is 2 ms per 100 deliveries) and serves date ranges.
            BrinIndex(fields=["created_at"], name="link_audit_created_brin"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(outcome__in=LinkOutcome.values),
                name="link_audit_outcome_valid",
            ),
            models.CheckConstraint(
                condition=models.Q(method__in=LinkMethod.values),
                name="link_audit_method_valid",
            ),
        ]
        triggers = [
            pgtrigger.Protect(
                name="link_audit_append_only", operation=pgtrigger.Update | pgtrigger.Delete
            ),
            refuse_truncate("link_audit_no_truncate"),
        ]

    def __str__(self) -> str:
        return f"{self.method} {self.outcome} (delivery {self.delivery_id})"


class FeatureFlag(models.Model):
    """A switch operators flip without a deploy; the linking triggers read it on every use."""

    LINK_USER_BY_PHONE = "LINK_USER_BY_PHONE"
    LINK_USER_BY_PHONE_FALLBACK_TO_USERS = "LINK_USER_BY_PHONE_FALLBACK_TO_USERS"
    # The flags' defaults, defined here once: the value a new row gets, and what the link rule
    # (deliveries/sql/link_rule.sql) assumes when a row is missing; migration 0003 created the
    # rows with them. tests/deliveries/test_flag_defaults.py checks those two copies agree.
    DEFAULTS = {LINK_USER_BY_PHONE: True, LINK_USER_BY_PHONE_FALLBACK_TO_USERS: False}

    name = models.CharField(max_length=100, unique=True)
    enabled = models.BooleanField(default=False)
    description = models.TextField(blank=True, default="")
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    updated_at = models.DateTimeField(default=timezone.now, db_default=Now())

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({'on' if self.enabled else 'off'})"
