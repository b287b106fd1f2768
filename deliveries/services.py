"""Every write of the deliveries app.

The linking rule itself is in PostgreSQL (see `deliveries.models`): services never decide who a
delivery belongs to; they write guests, messages and deliveries, and the triggers link and
audit in the same transaction. What services add is who asked (the actor and request id are
handed to the database for the audit rows) and the explicit operations the rule leaves to a
person: relinking a guest to another user, and the historical backfill.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from deliveries.locks import event_link_lock
from deliveries.metrics import deliveries_created_count
from deliveries.models import Event, EventGuest, FeatureFlag, Message, MessageDelivery
from evoflow.errors import DomainError
from evoflow.models import User
from evoflow.phones import InvalidPhoneNumber, phone_to_e164
from evoflow.requestid import NO_REQUEST_ID, get_request_id

logger = logging.getLogger(__name__)

MAX_GUESTS_PER_IMPORT = 10_000
DEFAULT_BACKFILL_BATCH_SIZE = 50_000


class DeliveriesError(DomainError):
    """A request the deliveries app refuses; `code` is stable, the detail is for people."""

    code = "deliveries_error"


class GuestImportInvalid(DeliveriesError):
    """Rows of a guest import that cannot be stored, as `errors`: `{index, field, reason}`."""

    code = "invalid_guest_rows"

    def __init__(self, errors: list[dict[str, Any]], *, detail: str | None = None) -> None:
        self.errors = errors
        if detail is None:
            first = errors[0]
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            detail = (
                f"row {first['index']}: {first['field']}: {first['reason']}{more};"
                " nothing was imported"
            )
        super().__init__(detail, extra={"errors": errors})


class GuestAlreadyLinked(DeliveriesError):
    code = "guest_already_linked"
    status = 409


class InvalidPhone(DeliveriesError):
    code = "invalid_phone"


class UnknownUser(DeliveriesError):
    code = "unknown_user"


class UnknownFeatureFlag(DeliveriesError):
    code = "unknown_feature_flag"


# -- the audit context ---------------------------------------------------------------------------


def link_audit_context_set(*, actor: User | None) -> None:
    """Tell the linking functions who is acting, for the audit rows of this transaction.

    Transaction-local settings (`set_config(..., true)`), so nothing leaks to the next user of
    the connection, PgBouncer included.
    """
    request_id = get_request_id()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT set_config('deliveries.actor_id', %s, true),"
            " set_config('deliveries.request_id', %s, true)",
            [
                str(actor.pk) if actor is not None and actor.pk is not None else "",
                "" if request_id == NO_REQUEST_ID else request_id,
            ],
        )


# -- events and guests ---------------------------------------------------------------------------


@transaction.atomic(durable=True)
def event_create(*, host: User, name: str, starts_at: datetime) -> Event:
    return Event.objects.create(host=host, name=name, starts_at=starts_at)


@dataclass(frozen=True)
class GuestRow:
    name: str
    phone: str
    phone_e164: str


def guest_rows_validate(rows: Sequence[Mapping[str, Any]]) -> list[GuestRow]:
    """Check every row; raise GuestImportInvalid naming each bad row (index from 0) and why."""
    errors: list[dict[str, Any]] = []
    valid: list[GuestRow] = []
    if len(rows) > MAX_GUESTS_PER_IMPORT:
        raise GuestImportInvalid(
            [
                {
                    "index": MAX_GUESTS_PER_IMPORT,
                    "field": "guests",
                    "reason": f"at most {MAX_GUESTS_PER_IMPORT} guests per import",
                }
            ]
        )
    for index, row in enumerate(rows):
        if not isinstance(row, Mapping):
            errors.append({"index": index, "field": "row", "reason": "must be an object"})
            continue
        name = row.get("name")
        phone = row.get("phone")
        if not isinstance(name, str) or not name.strip():
            errors.append({"index": index, "field": "name", "reason": "a name is required"})
        elif len(name.strip()) > 200:
            errors.append({"index": index, "field": "name", "reason": "at most 200 characters"})
        elif "\x00" in name:
            # PostgreSQL text cannot hold it; refused here rather than failing the insert.
            errors.append({"index": index, "field": "name", "reason": "no null characters"})
        if not isinstance(phone, str) or not phone.strip():
            errors.append({"index": index, "field": "phone", "reason": "a phone is required"})
            continue
        if len(phone) > 40:
            errors.append({"index": index, "field": "phone", "reason": "at most 40 characters"})
            continue
        try:
            e164 = phone_to_e164(phone)
        except InvalidPhoneNumber as exc:
            errors.append({"index": index, "field": "phone", "reason": str(exc)})
            continue
        if isinstance(name, str) and name.strip() and e164 is not None:
            valid.append(GuestRow(name=name.strip(), phone=phone.strip(), phone_e164=e164))
    if errors:
        raise GuestImportInvalid(errors)
    return valid


@transaction.atomic(durable=True)
def event_guests_import(*, event: Event, rows: Sequence[Mapping[str, Any]]) -> list[EventGuest]:
    """Add guests to an event, all or nothing: one bad row and nothing is written."""
    valid = guest_rows_validate(rows)
    now = timezone.now()
    return EventGuest.objects.bulk_create(
        [
            EventGuest(
                event=event,
                name=row.name,
                phone=row.phone,
                phone_e164=row.phone_e164,
                created_at=now,
                updated_at=now,
            )
            for row in valid
        ]
    )


def _guest_locked(guest: EventGuest) -> EventGuest:
    # FOR NO KEY UPDATE, the lock the UPDATE of the guest takes anyway: a plain FOR UPDATE would
    # also block the KEY SHARE that a concurrent delivery insert's foreign-key check takes at
    # commit, while that insert holds the event's lock the link trigger waits for: a deadlock.
    return EventGuest.objects.select_for_update(no_key=True).get(pk=guest.pk)


@transaction.atomic(durable=True)
def guest_link_user(*, guest: EventGuest, user: User, actor: User | None = None) -> EventGuest:
    """Link an unlinked guest to `user`; the database backfills the guest's deliveries (D1).

    Linking to the user it already has changes nothing; a guest linked to someone else needs
    `guest_relink_user`, which says so in the audit.
    """
    return _guest_link_user(guest=guest, user=user, actor=actor)


def _guest_link_user(*, guest: EventGuest, user: User, actor: User | None) -> EventGuest:
    locked = _guest_locked(guest)
    if locked.user_id == user.pk:
        return locked
    if locked.user_id is not None:
        raise GuestAlreadyLinked(
            f"guest {locked.pk} is linked to user {locked.user_id}; relink it explicitly"
        )
    link_audit_context_set(actor=actor)
    locked.user = user
    locked.updated_at = timezone.now()
    locked.save(update_fields=["user", "updated_at"])
    logger.info(
        "guest %s linked to user %s",
        locked.pk,
        user.pk,
        extra={"guest_id": locked.pk, "user_id": user.pk},
    )
    return locked


# The guest's deliveries that follow it to its new user: those on the previous user, or on none.
# The guest trigger (deliveries/sql/guest_link_backfill.sql) moves them and writes their
# `manual` audit rows, as it does for a guest moved by any other path.
DELIVERIES_TO_MOVE_SQL = """
SELECT count(*) FROM deliveries_messagedelivery
WHERE guest_id = %(guest)s AND (user_id IS NULL OR user_id = %(old_user)s)
"""


@transaction.atomic(durable=True)
def guest_relink_user(*, guest: EventGuest, user: User, actor: User | None = None) -> int:
    """Move a guest, and every delivery of it, from its current user to `user`.

    The guest's deliveries that carried the old user (or none) now carry `user`, each with a
    `manual` audit row naming the previous user: the guest trigger moves them, as it would
    after any other write of the guest's user. Returns how many deliveries moved. An unlinked
    guest is simply linked (the database backfills and audits it).
    """
    locked = _guest_locked(guest)
    old_user_id = locked.user_id
    if old_user_id is None:
        _guest_link_user(guest=locked, user=user, actor=actor)
        return MessageDelivery.objects.filter(guest=locked, user=user).count()
    if old_user_id == user.pk:
        return 0
    # Taken before counting: no delivery of the guest can be inserted between the count and the
    # move (the trigger takes the same lock, which this transaction then already holds).
    event_link_lock(locked.event_id)
    with connection.cursor() as cursor:
        cursor.execute(DELIVERIES_TO_MOVE_SQL, {"old_user": old_user_id, "guest": locked.pk})
        row = cursor.fetchone()
    moved = int(row[0]) if row else 0
    link_audit_context_set(actor=actor)
    locked.user = user
    locked.updated_at = timezone.now()
    locked.save(update_fields=["user", "updated_at"])
    logger.info(
        "guest %s relinked from user %s to %s, %d deliveries moved",
        locked.pk,
        old_user_id,
        user.pk,
        moved,
        extra={"guest_id": locked.pk, "user_id": user.pk, "previous_user_id": old_user_id},
    )
    return moved


@transaction.atomic(durable=True)
def guest_update(
    *,
    guest: EventGuest,
    name: str | None = None,
    phone: str | None = None,
    is_removed: bool | None = None,
    actor: User | None = None,
) -> EventGuest:
    """Rename, renumber, remove or restore a guest (restoring a linked guest backfills)."""
    locked = _guest_locked(guest)
    fields: list[str] = []
    if name is not None:
        locked.name = name.strip()
        fields.append("name")
    if phone is not None:
        try:
            phone_to_e164(phone)
        except InvalidPhoneNumber as exc:
            raise InvalidPhone(str(exc)) from exc
        locked.phone = phone.strip()
        fields.append("phone")
    if is_removed is not None and is_removed != (locked.removed_at is not None):
        locked.removed_at = timezone.now() if is_removed else None
        fields.append("removed_at")
    if not fields:
        return locked
    link_audit_context_set(actor=actor)
    locked.updated_at = timezone.now()
    locked.save(update_fields=[*fields, "updated_at"])
    return locked


# -- messages ------------------------------------------------------------------------------------

DELIVERIES_CREATE_SQL = """
INSERT INTO deliveries_messagedelivery
    (message_id, guest_id, phone, phone_e164, status, created_at, updated_at)
SELECT %(message)s, guest.id, guest.phone, guest.phone_e164, 'queued', now(), now()
FROM deliveries_eventguest AS guest
WHERE guest.event_id = %(event)s AND guest.removed_at IS NULL
ORDER BY guest.id
"""


@dataclass(frozen=True)
class MessageSendResult:
    message: Message
    delivery_count: int
    linked_count: int


@transaction.atomic(durable=True)
def message_send(*, event: Event, sender: User | None, body: str) -> MessageSendResult:
    """Create the message and one delivery per active guest in one `INSERT ... SELECT`.

    The insert trigger links and audits every delivery in the same statement.
    """
    link_audit_context_set(actor=sender)
    message = Message.objects.create(event=event, sender=sender, body=body)
    with connection.cursor() as cursor:
        cursor.execute(DELIVERIES_CREATE_SQL, {"message": message.pk, "event": event.pk})
        cursor.execute(
            "SELECT count(*), count(user_id) FROM deliveries_messagedelivery WHERE message_id = %s",
            [message.pk],
        )
        row = cursor.fetchone()
    delivery_count, linked_count = (int(row[0]), int(row[1])) if row else (0, 0)
    deliveries_created_count(linked=linked_count, unlinked=delivery_count - linked_count)
    logger.info(
        "message %s sent to %d guests, %d linked",
        message.pk,
        delivery_count,
        linked_count,
        extra={"message_id": message.pk, "event_id": event.pk},
    )
    return MessageSendResult(message, delivery_count, linked_count)


# -- historical backfill -------------------------------------------------------------------------


@dataclass
class BackfillReport:
    """What a backfill did (or, dry, would do): deliveries examined, outcomes, batches."""

    dry_run: bool
    first_id: int | None = None
    last_id: int | None = None
    batches: int = 0
    examined: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)

    @property
    def linked(self) -> int:
        return self.outcomes.get("linked", 0)


BATCH_IDS_SQL = (
    "SELECT id FROM deliveries_messagedelivery"
    " WHERE id >= %(low)s AND id < %(high)s AND user_id IS NULL"
)


def deliveries_backfill(
    *,
    batch_size: int = DEFAULT_BACKFILL_BATCH_SIZE,
    dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
    actor: User | None = None,
) -> BackfillReport:
    """Historical backfill (method `historical`) of every unlinked delivery, by id range.

    Each batch of `batch_size` ids is one transaction: one `UPDATE ... FROM` through the same
    SQL rule as the triggers, and one `INSERT ... SELECT` of an audit row for every delivery it
    looked at, in the same statement: every attempt is logged, those that link nothing too
    (`no_match` or `skipped`, with the reason). A second run links nothing more, and logs its
    attempts again. Flags are honoured. `progress(n)` is told how many ids each batch covered.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    report = BackfillReport(dry_run=dry_run)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT min(id), max(id) FROM deliveries_messagedelivery WHERE user_id IS NULL"
        )
        bounds = cursor.fetchone()
    if bounds is None or bounds[0] is None:
        return report
    report.first_id, report.last_id = int(bounds[0]), int(bounds[1])
    for low in range(report.first_id, report.last_id + 1, batch_size):
        high = min(low + batch_size, report.last_id + 1)
        outcomes = _backfill_batch(low=low, high=high, dry_run=dry_run, actor=actor)
        report.batches += 1
        report.examined += sum(outcomes.values())
        report.outcomes.update(outcomes)
        if progress is not None:
            progress(high - low)
    logger.info(
        "historical backfill%s: %d examined, %s",
        " (dry run)" if dry_run else "",
        report.examined,
        dict(report.outcomes),
        extra={"dry_run": dry_run, "linked": report.linked},
    )
    return report


def _backfill_batch(*, low: int, high: int, dry_run: bool, actor: User | None) -> dict[str, int]:
    function = "deliveries_link_resolve" if dry_run else "deliveries_link_apply"
    column = "outcome" if dry_run else "link_outcome"
    aggregate = "count(*)" if dry_run else "sum(delivery_count)"
    extra_args = "" if dry_run else ", 'historical', true"
    statement = (
        f"SELECT {column}, {aggregate} FROM {function}(ARRAY({BATCH_IDS_SQL}){extra_args})"
        f" GROUP BY {column}"
    )
    with transaction.atomic():
        if not dry_run:
            link_audit_context_set(actor=actor)
        with connection.cursor() as cursor:
            cursor.execute(statement, {"low": low, "high": high})
            return {str(outcome): int(count) for outcome, count in cursor.fetchall()}


def deliveries_backfill_selected(
    *, delivery_ids: Sequence[int], actor: User | None = None
) -> dict[str, int]:
    """Backfill the given deliveries (those still without a user), auditing every attempt."""
    with transaction.atomic(durable=True):
        link_audit_context_set(actor=actor)
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT link_outcome, delivery_count FROM deliveries_link_apply("
                " ARRAY(SELECT id FROM deliveries_messagedelivery"
                "       WHERE id = ANY(%s) AND user_id IS NULL ORDER BY id),"
                " 'historical', true)",
                [list(delivery_ids)],
            )
            return {str(outcome): int(count) for outcome, count in cursor.fetchall()}


# -- feature flags -------------------------------------------------------------------------------


@transaction.atomic(durable=True)
def feature_flag_set(*, name: str, enabled: bool, actor: User | None) -> FeatureFlag:
    """Switch a flag; the linking functions read it on their very next statement."""
    try:
        flag = FeatureFlag.objects.select_for_update().get(name=name)
    except FeatureFlag.DoesNotExist:
        raise UnknownFeatureFlag(f"no feature flag named {name!r}") from None
    if flag.enabled == enabled:
        return flag
    flag.enabled = enabled
    flag.updated_by = actor
    flag.updated_at = timezone.now()
    flag.save(update_fields=["enabled", "updated_by", "updated_at"])
    logger.warning(
        "feature flag %s turned %s by user %s",
        name,
        "on" if enabled else "off",
        actor.pk if actor else None,
        extra={"flag": name, "enabled": enabled},
    )
    return flag
