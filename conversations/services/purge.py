"""Removing a page (soft) and purging stored conversation data (audited): C8.

Conversations and messages are never removed by the application: a trigger on each table refuses
every DELETE, whatever path issues it. An operator *removes* a page instead (`page_remove`): it
keeps every conversation, message and event, loses its token (so nothing syncs it) and has its
live sync runs cancelled; `page_restore` brings it back (with a new token set in the admin).

Data really leaves the database only through a purge, `manage.py conversations_purge`: a removed
page with everything it holds, or one conversation (a person's erasure request). A purge runs in
one durable transaction that locks what it purges, lifts the two delete triggers for that
transaction only (`pgtrigger.ignore`, a transaction-local setting the triggers read), deletes set
by set (events, messages, conversations, sync runs, the page), and writes its `PurgeRecord`
(what, how many rows, why, on whose word) in the same transaction: a purge without its record
cannot commit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pgtrigger
from django.db import connection, transaction
from django.db.backends.utils import CursorWrapper
from django.db.models.functions import Now

from conversations.models import (
    Conversation,
    FacebookPage,
    PurgeRecord,
    PurgeScope,
    SyncRun,
    SyncStatus,
)
from conversations.services.pages import page_pk_cache_invalidate
from evoflow.errors import DomainError

logger = logging.getLogger(__name__)

# The triggers a purge lifts for its own transaction (app_label.Model:trigger name).
PURGE_LIFTS = (
    "conversations.Conversation:conversation_protect_delete",
    "conversations.Message:message_protect_delete",
)


class PurgeRefused(DomainError):
    """The purge cannot run as asked (the page is not removed, the confirmation differs...)."""

    code = "purge_refused"
    status = 409


@dataclass(frozen=True)
class PurgeCounts:
    conversations: int
    messages: int
    events: int
    sync_runs: int


# -- removing a page (soft) ---------------------------------------------------------------------


@transaction.atomic
def page_remove(*, page: FacebookPage) -> bool:
    """Remove a page softly: every row it holds stays; its token goes and its live sync runs are
    cancelled, so nothing reads it from Facebook any more. False when it was removed already."""
    removed = FacebookPage.objects.filter(pk=page.pk, removed_at__isnull=True).update(
        removed_at=Now(), access_token_encrypted="", updated_at=Now()
    )
    if not removed:
        return False
    SyncRun.objects.filter(
        page_id=page.pk, status__in=[SyncStatus.QUEUED, SyncStatus.RUNNING]
    ).update(
        status=SyncStatus.CANCELLED,
        finished_at=Now(),
        lease_token=None,
        error_code="page_removed",
        error="the page was removed by an operator",
    )
    logger.info("page %s removed (soft; its conversations are kept)", page.page_id)
    return True


@transaction.atomic
def page_restore(*, page: FacebookPage) -> bool:
    """Undo a removal; the page syncs again once an operator sets a new token."""
    restored = FacebookPage.objects.filter(pk=page.pk, removed_at__isnull=False).update(
        removed_at=None, updated_at=Now()
    )
    return bool(restored)


# -- purging --------------------------------------------------------------------------------------

_COUNT = """
SELECT (SELECT count(*) FROM conversations_conversation WHERE {own}),
       (SELECT count(*) FROM conversations_message WHERE {child}),
       (SELECT count(*) FROM conversations_interactionevent WHERE {child})
"""


def _counts(own: str, child: str, key: int, *, sync_runs: int) -> PurgeCounts:
    with connection.cursor() as cursor:
        cursor.execute(_COUNT.format(own=own, child=child), [key] * 3)
        conversations, messages, events = cursor.fetchone()
    return PurgeCounts(conversations, messages, events, sync_runs)


def page_purge_preview(*, page: FacebookPage) -> PurgeCounts:
    """What purging the page would delete."""
    runs = SyncRun.objects.filter(page_id=page.pk).count()
    return _counts("page_id = %s", "page_id = %s", page.pk, sync_runs=runs)


def conversation_purge_preview(*, conversation: Conversation) -> PurgeCounts:
    """What purging the conversation would delete."""
    return _counts("id = %s", "conversation_id = %s", conversation.pk, sync_runs=0)


def _check_request(*, confirm: str, expected: str, reason: str, requested_by: str) -> None:
    if confirm != expected:
        raise PurgeRefused(f"the confirmation must repeat {expected!r} exactly")
    if not reason.strip():
        raise PurgeRefused("a purge needs a reason (it is kept in the purge record)")
    if not requested_by.strip():
        raise PurgeRefused("a purge needs the name of whoever asked for it")


def statistics_refresh_before_bulk_delete(cursor: CursorWrapper) -> None:
    """ANALYZE the tables a page's delete goes through, first.

    At commit, each deleted conversation's foreign-key check looks for messages still naming it
    (conversation_id, page_id). Planned on statistics that predate a large sync (a page
    synced minutes ago, before autovacuum analysed it), that lookup takes the (page_id, mid)
    index and reads every message of the page for every conversation: quadratic, 24 s for
    40,000 messages, hours for a million. With fresh statistics it takes the conversation's
    index: 0.07 s. ANALYZE reads a fixed-size sample, so this costs a fraction of a second at
    any size, and it may run inside the purge's transaction."""
    cursor.execute(
        "ANALYZE conversations_conversation, conversations_message, conversations_interactionevent"
    )


@transaction.atomic(durable=True)
def page_purge(*, page: FacebookPage, confirm: str, reason: str, requested_by: str) -> PurgeRecord:
    """Delete a removed page with all of its conversations, messages, events and sync runs,
    and record it. `confirm` must repeat the page id."""
    _check_request(confirm=confirm, expected=page.page_id, reason=reason, requested_by=requested_by)
    locked = FacebookPage.objects.select_for_update().filter(pk=page.pk).first()
    if locked is None:
        raise PurgeRefused(f"page {page.page_id} does not exist (any more)")
    if locked.removed_at is None:
        raise PurgeRefused(
            f"page {page.page_id} is not removed: remove it in the admin first (its data stays"
            " until purged)"
        )
    if SyncRun.objects.filter(
        page_id=page.pk, status__in=[SyncStatus.QUEUED, SyncStatus.RUNNING]
    ).exists():
        raise PurgeRefused(f"page {page.page_id} has a live sync run; cancel it first")
    with pgtrigger.ignore(*PURGE_LIFTS), connection.cursor() as cursor:
        statistics_refresh_before_bulk_delete(cursor)
        # Children first: the composite keys of messages and events refuse an orphan.
        cursor.execute("DELETE FROM conversations_interactionevent WHERE page_id = %s", [page.pk])
        events = cursor.rowcount
        cursor.execute("DELETE FROM conversations_message WHERE page_id = %s", [page.pk])
        messages = cursor.rowcount
        cursor.execute("DELETE FROM conversations_conversation WHERE page_id = %s", [page.pk])
        conversations = cursor.rowcount
        cursor.execute("DELETE FROM conversations_syncrun WHERE page_id = %s", [page.pk])
        sync_runs = cursor.rowcount
        cursor.execute("DELETE FROM conversations_facebookpage WHERE id = %s", [page.pk])
    # The webhook's page id cache must not keep the deleted row's primary key.
    page_pk_cache_invalidate()
    record = PurgeRecord.objects.create(
        scope=PurgeScope.PAGE,
        page_id=page.page_id,
        conversations=conversations,
        messages=messages,
        events=events,
        sync_runs=sync_runs,
        reason=reason.strip(),
        requested_by=requested_by.strip(),
    )
    logger.warning(
        "page %s purged: %d conversations, %d messages, %d events, %d sync runs (purge %s)",
        page.page_id,
        conversations,
        messages,
        events,
        sync_runs,
        record.pk,
    )
    return record


@transaction.atomic(durable=True)
def conversation_purge(
    *, conversation: Conversation, confirm: str, reason: str, requested_by: str
) -> PurgeRecord:
    """Delete one conversation with its messages and events (a person's erasure request), and
    record it. `confirm` must repeat the conversation's PSID."""
    _check_request(
        confirm=confirm, expected=conversation.psid, reason=reason, requested_by=requested_by
    )
    locked = (
        Conversation.objects.select_for_update()
        .select_related("page")
        .filter(pk=conversation.pk)
        .first()
    )
    if locked is None:
        raise PurgeRefused(f"conversation {conversation.pk} does not exist (any more)")
    with pgtrigger.ignore(*PURGE_LIFTS), connection.cursor() as cursor:
        cursor.execute(
            "DELETE FROM conversations_interactionevent WHERE conversation_id = %s",
            [locked.pk],
        )
        events = cursor.rowcount
        cursor.execute("DELETE FROM conversations_message WHERE conversation_id = %s", [locked.pk])
        messages = cursor.rowcount
        cursor.execute("DELETE FROM conversations_conversation WHERE id = %s", [locked.pk])
        conversations = cursor.rowcount
    record = PurgeRecord.objects.create(
        scope=PurgeScope.CONVERSATION,
        page_id=locked.page.page_id,
        psid=locked.psid,
        conversations=conversations,
        messages=messages,
        events=events,
        sync_runs=0,
        reason=reason.strip(),
        requested_by=requested_by.strip(),
    )
    logger.warning(
        "conversation %s of page %s purged: %d messages, %d events (purge %s)",
        locked.pk,
        locked.page.page_id,
        messages,
        events,
        record.pk,
    )
    return record
