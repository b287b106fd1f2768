"""Pages, conversations, messages, interaction events and webhook receipts.

Invariants of docs/invariants.md live here, in the database, so every write path (the webhook,
the coming Graph sync, the admin, raw SQL) obeys them:

- C1 one conversation per (page, PSID): a unique constraint, the single conflict target of every
  conversation upsert (F14);
- C2 one message per (page, mid): a unique constraint, the conflict target of message inserts;
- C3 one interaction event per dedupe key (and one received/sent event per message);
- C4 `message_count` and `last_message*` are maintained by a statement-level trigger over the
  rows really inserted into (or deleted from) the message table, so the count follows the stored
  messages on every path (F19) and the last message only ever moves forward (F1); a second
  trigger refuses any update that would move `last_message_at` backwards, and bumps `version`
  on every change so a writer can make a version-checked update;
- C8 conversations and messages are never removed: a row-level trigger refuses every DELETE of
  either table, whatever path issues it (the ORM, a cascade from a page, raw SQL). Removing a
  page is a soft operation (`removed_at`); data leaves only through the audited purge
  (`manage.py conversations_purge`, `services/purge.py`), which lifts the two triggers for its
  own transaction and writes a `PurgeRecord` in it.
- C9 edits and reactions converge: a message's text only moves to a newer version (by
  `num_edit` and time), every version is kept in an append-only history, and a reaction's state
  only changes for a newer event, whichever path (webhook, sync) and order they come in.
"""

from __future__ import annotations

import pgtrigger
from django.contrib.postgres.indexes import BrinIndex
from django.db import models
from django.db.models.functions import Now

from evoflow.db import refuse_truncate
from evoflow.encryption import decrypt_text, encrypt_text
from evoflow.sqlfiles import trigger_body


class FacebookPage(models.Model):
    page_id = models.CharField(max_length=64, unique=True)
    name = models.CharField(max_length=255, blank=True, default="")
    # Fernet ciphertext of the page access token; the plaintext is never stored, shown or logged.
    access_token_encrypted = models.TextField(blank=True, default="", editable=False)
    is_reauthorization_required = models.BooleanField(default=False, db_default=False)
    # The newest conversation `updated_time` a completed sync has seen (the incremental sync
    # walks back to it, with a safety overlap).
    sync_watermark = models.DateTimeField(null=True, blank=True)
    # Removed by an operator (C8: soft): no token, no sync, every conversation kept. Purging its
    # data is a separate, audited command.
    removed_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(db_default=Now(), editable=False)
    updated_at = models.DateTimeField(db_default=Now(), auto_now=True)

    class Meta:
        verbose_name = "Facebook page"
        triggers = [
            # The page id is the row's identity for webhooks (and the services' cached primary
            # keys): a page that moved is another page, created anew.
            pgtrigger.ReadOnly(name="facebookpage_page_id_fixed", fields=["page_id"]),
        ]

    def __str__(self) -> str:
        return f"{self.name or 'page'} ({self.page_id})"

    @property
    def has_access_token(self) -> bool:
        return bool(self.access_token_encrypted)

    def access_token(self) -> str:
        """The decrypted token, for the one call that needs it. Never log the result."""
        return decrypt_text(self.access_token_encrypted) if self.access_token_encrypted else ""

    def set_access_token(self, token: str) -> None:
        self.access_token_encrypted = encrypt_text(token) if token else ""


# C4's two statement-level trigger bodies (counters and last message), kept as SQL files
# (conversations/sql/): one UPDATE per statement over the rows really inserted or deleted.
_COUNT_AND_LAST_ON_INSERT = trigger_body(__file__, "message_count_and_last_on_insert.sql")
_COUNT_ON_DELETE = trigger_body(__file__, "message_count_on_delete.sql")
# Edits (conversations/sql/): pending edits applied to new messages, and a changed text's
# history, conversation version and preview.
_PENDING_EDITS_ON_INSERT = trigger_body(__file__, "message_pending_edits_on_insert.sql")
_TEXT_CHANGE = trigger_body(__file__, "message_text_change.sql")


# Foreign keys whose column leads a composite index or unique constraint get no index of their
# own (db_index=False): it would be redundant, and every index costs each insert and every
# non-HOT update on the ingest path.


class Conversation(models.Model):
    page = models.ForeignKey(
        FacebookPage, on_delete=models.CASCADE, related_name="conversations", db_index=False
    )
    psid = models.CharField("participant PSID", max_length=64)
    # The Graph API thread id (t_...), known once a sync has seen the thread. Deliberately not
    # unique: (page, psid) is the one conflict target of every upsert (F14).
    thread_id = models.CharField(max_length=128, blank=True, default="", db_default="")
    participant_name = models.CharField(max_length=255, blank=True, default="", db_default="")
    last_message_text = models.TextField(blank=True, default="", db_default="")
    last_message_at = models.DateTimeField(null=True, blank=True)
    last_message_mid = models.CharField(max_length=255, blank=True, default="", db_default="")
    message_count = models.IntegerField(default=0, db_default=0)
    # Bumped by a trigger on every update: a writer holding an old version can detect that
    # someone else changed the row (the sync's version-checked updates, F1).
    version = models.BigIntegerField(default=0, db_default=0)
    # Outbound messages sent at or before these were delivered / read (marks arriving before
    # their messages are applied when the messages arrive).
    delivered_watermark = models.DateTimeField(null=True, blank=True)
    read_watermark = models.DateTimeField(null=True, blank=True)
    # Soft delete (C8): set when the conversation disappears from Facebook; never removed.
    deleted_at = models.DateTimeField(null=True, blank=True)
    # The full sync (the first run of a chain of resumed runs) that last saw this conversation
    # in the Graph API; after a complete full sync, live conversations it did not see and with no
    # activity since it started are gone from Facebook (C8).
    full_sync_seen = models.BigIntegerField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(db_default=Now(), editable=False)
    updated_at = models.DateTimeField(db_default=Now())

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["page", "psid"], name="conversation_one_per_page_psid"),
            # The target of the messages' and events' composite foreign key.
            models.UniqueConstraint(fields=["id", "page"], name="conversation_id_page_key"),
            models.CheckConstraint(
                condition=models.Q(message_count__gte=0), name="conversation_message_count_gte_0"
            ),
        ]
        indexes = [
            models.Index(fields=["page", "-updated_at", "-id"], name="conversation_page_updated"),
            models.Index(fields=["-updated_at", "-id"], name="conversation_updated"),
            models.Index(fields=["page", "thread_id"], name="conversation_page_thread"),
        ]
        triggers = [
            pgtrigger.Trigger(
                name="conversation_last_message_forward_only",
                when=pgtrigger.Before,
                operation=pgtrigger.Update,
                condition=(
                    pgtrigger.Q(old__last_message_at__gt=pgtrigger.F("new__last_message_at"))
                    | pgtrigger.Q(
                        old__last_message_at__isnull=False, new__last_message_at__isnull=True
                    )
                ),
                func=(
                    "RAISE EXCEPTION 'conversation %: last_message_at may not move backwards "
                    "(% -> %)', OLD.id, OLD.last_message_at, NEW.last_message_at "
                    "USING ERRCODE = 'check_violation'; RETURN NULL;"
                ),
            ),
            # C8: never removed, on any path; the audited purge alone lifts it.
            pgtrigger.Protect(name="conversation_protect_delete", operation=pgtrigger.Delete),
            refuse_truncate("conversation_no_truncate"),
            pgtrigger.Trigger(
                name="conversation_version_bump",
                when=pgtrigger.Before,
                operation=pgtrigger.Update,
                # A no-op upsert (ON CONFLICT DO UPDATE that changes nothing) is not a change,
                # and a writer that bumps the version itself (the message triggers, on the hot
                # path) spares the per-row function call.
                condition=pgtrigger.Condition(
                    "OLD.* IS DISTINCT FROM NEW.* AND NEW.version = OLD.version"
                ),
                func="NEW.version := OLD.version + 1; RETURN NEW;",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.participant_name or self.psid} on {self.page_id}"


class Direction(models.TextChoices):
    INBOUND = "inbound", "Inbound"
    OUTBOUND = "outbound", "Outbound"


class Source(models.TextChoices):
    WEBHOOK = "webhook", "Webhook"
    SYNC = "sync", "Sync"


# Messages and events point at their conversation AND its page through one composite foreign key,
# (conversation_id, page_id) -> conversation (id, page_id), created in migration 0004: a row can
# never name a page other than its conversation's, and the database checks one key per row
# instead of two on the ingest path (about a sixth of a batch's time). The two Django foreign
# keys therefore carry no constraint of their own (db_constraint=False); deletes still cascade
# through Django, and raw SQL deletes are refused by the composite key.


class Message(models.Model):
    page = models.ForeignKey(
        FacebookPage,
        on_delete=models.CASCADE,
        related_name="+",
        db_index=False,
        db_constraint=False,
    )
    conversation = models.ForeignKey(
        Conversation,
        on_delete=models.CASCADE,
        related_name="messages",
        db_index=False,
        db_constraint=False,
    )
    # The one canonical message id (webhook `mid` and Graph `id` are stored alike).
    mid = models.CharField(max_length=255)
    direction = models.CharField(max_length=8, choices=Direction.choices)
    is_echo = models.BooleanField(default=False, db_default=False)
    app_id = models.CharField(max_length=64, blank=True, default="", db_default="")
    text = models.TextField(blank=True, default="", db_default="")
    attachments = models.JSONField(default=list, db_default=models.Value([], models.JSONField()))
    reply_to_mid = models.CharField(max_length=255, blank=True, default="", db_default="")
    sent_at = models.DateTimeField()
    source = models.CharField(max_length=8, choices=Source.choices)
    delivered_at = models.DateTimeField(null=True, blank=True)
    read_at = models.DateTimeField(null=True, blank=True)
    # Edits (C9): the highest `num_edit` known (Meta's count; a change only the sync saw adds
    # one), and when the stored text became current: null for the text as first received, the
    # edit's time, or the moment the sync read it from Graph. An edit or a sync only replaces
    # the text with a newer one, so neither can take it backwards.
    edit_count = models.IntegerField(default=0, db_default=0)
    text_as_of = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(db_default=Now(), editable=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["page", "mid"], name="message_one_per_page_mid"),
        ]
        indexes = [
            models.Index(fields=["conversation", "-sent_at", "-id"], name="message_conv_sent"),
            # The integrity checks' "messages stored since the previous run". Rows arrive in
            # time order and created_at never changes: a BRIN index costs next to nothing per
            # insert and never stops a HOT update.
            BrinIndex(fields=["created_at"], name="message_created_brin", pages_per_range=32),
        ]
        triggers = [
            pgtrigger.Trigger(
                name="message_count_and_last_on_insert",
                when=pgtrigger.After,
                operation=pgtrigger.Insert,
                level=pgtrigger.Statement,
                referencing=pgtrigger.Referencing(new="new_messages"),
                func=_COUNT_AND_LAST_ON_INSERT,
            ),
            pgtrigger.Trigger(
                name="message_count_on_delete",
                when=pgtrigger.After,
                operation=pgtrigger.Delete,
                level=pgtrigger.Statement,
                referencing=pgtrigger.Referencing(old="old_messages"),
                func=_COUNT_ON_DELETE,
            ),
            # Moving a message to another conversation would silently break both counts.
            pgtrigger.ReadOnly(name="message_conversation_fixed", fields=["conversation", "page"]),
            # C8: never removed, on any path; the audited purge alone lifts it.
            pgtrigger.Protect(name="message_protect_delete", operation=pgtrigger.Delete),
            refuse_truncate("message_no_truncate"),
            # Named to sort after message_count_and_last_on_insert: PostgreSQL fires triggers
            # of one event in name order, and the preview must be set before it is edited.
            pgtrigger.Trigger(
                name="message_pending_edits_on_insert",
                when=pgtrigger.After,
                operation=pgtrigger.Insert,
                level=pgtrigger.Statement,
                referencing=pgtrigger.Referencing(new="new_messages"),
                func=_PENDING_EDITS_ON_INSERT,
            ),
            pgtrigger.Trigger(
                name="message_text_change",
                when=pgtrigger.After,
                operation=pgtrigger.Update,
                level=pgtrigger.Statement,
                referencing=pgtrigger.Referencing(old="old_messages", new="new_messages"),
                func=_TEXT_CHANGE,
            ),
        ]

    def __str__(self) -> str:
        return self.mid


class MessageEdit(models.Model):
    """One version of a message's text, append-only (C9): version 0 is the text as first
    stored, then one row per `num_edit` Meta sent (kept even when the message is not stored
    yet: it is applied when the message arrives), and a row without `num_edit` for each change
    only the sync saw (Graph serves the current text, not the count). Keyed by mid, not by a
    foreign key: an edit may come before its message."""

    page = models.ForeignKey(
        FacebookPage, on_delete=models.CASCADE, related_name="+", db_index=False
    )
    mid = models.CharField(max_length=255)
    num_edit = models.IntegerField(null=True, blank=True)
    text = models.TextField(blank=True, default="")
    # When this version became current: the edit's time, or when the sync read it.
    occurred_at = models.DateTimeField()
    source = models.CharField(max_length=8, choices=Source.choices)
    created_at = models.DateTimeField(db_default=Now(), editable=False)

    class Meta:
        constraints = [
            # A re-delivered edit adds nothing (NULLs, the sync's rows, are distinct).
            models.UniqueConstraint(
                fields=["page", "mid", "num_edit"], name="messageedit_one_per_num_edit"
            ),
        ]
        triggers = [
            pgtrigger.Protect(name="messageedit_append_only", operation=pgtrigger.Update),
        ]

    def __str__(self) -> str:
        return f"{self.mid} edit {self.num_edit}"


class MessageReaction(models.Model):
    """Whether a person's reaction of one name is on a message now (C9): `react` sets it,
    `unreact` removes the reaction it names, and only an event newer than the one the row holds
    changes it, so re-deliveries and reordering converge. Keyed by mid: a reaction may come
    before its message."""

    page = models.ForeignKey(
        FacebookPage, on_delete=models.CASCADE, related_name="+", db_index=False
    )
    mid = models.CharField(max_length=255)
    psid = models.CharField("participant PSID", max_length=64)
    # Meta's reaction name (`love`, `smile`, ...), else its emoji.
    reaction = models.CharField(max_length=32)
    emoji = models.CharField(max_length=32, blank=True, default="", db_default="")
    active = models.BooleanField()
    # The time of the event this state comes from.
    as_of = models.DateTimeField()
    updated_at = models.DateTimeField(db_default=Now())

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["page", "mid", "psid", "reaction"], name="messagereaction_one_per_key"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.reaction} by {self.psid} on {self.mid}"


class EventKind(models.TextChoices):
    MESSAGE_RECEIVED = "message_received", "Message received"
    MESSAGE_SENT = "message_sent", "Message sent"
    DELIVERED = "delivered", "Delivered"
    READ = "read", "Read"
    REACTION = "reaction", "Reaction"
    POSTBACK = "postback", "Postback"


# A message's own events (one per message, keyed by it rather than by a dedupe key).
MESSAGE_EVENT_KINDS = [str(EventKind.MESSAGE_RECEIVED), str(EventKind.MESSAGE_SENT)]


class InteractionEvent(models.Model):
    # (conversation_id, page_id) is checked by the composite key described above Message.
    page = models.ForeignKey(
        FacebookPage,
        on_delete=models.CASCADE,
        related_name="+",
        db_index=False,
        db_constraint=False,
    )
    conversation = models.ForeignKey(
        Conversation,
        on_delete=models.CASCADE,
        related_name="events",
        db_index=False,
        db_constraint=False,
    )
    message = models.ForeignKey(
        Message, on_delete=models.CASCADE, null=True, blank=True, related_name="events"
    )
    kind = models.CharField(max_length=20, choices=EventKind.choices)
    occurred_at = models.DateTimeField()
    metadata = models.JSONField(default=dict, db_default=models.Value({}, models.JSONField()))
    # Same event, same key, whichever path (webhook, re-delivery, sync) records it (C3, F10).
    dedupe_key = models.CharField(max_length=400)
    source = models.CharField(max_length=8, choices=Source.choices)
    created_at = models.DateTimeField(db_default=Now(), editable=False)

    class Meta:
        constraints = [
            # A message's own event is unique by (message, kind) below, and its key names its
            # mid, unique per page already: it needs no entry in this wide index (a tenth of a
            # sync batch's time).
            models.UniqueConstraint(
                fields=["page", "dedupe_key"],
                condition=~models.Q(kind__in=MESSAGE_EVENT_KINDS),
                name="event_one_per_dedupe_key",
            ),
            models.UniqueConstraint(
                fields=["message", "kind"],
                condition=models.Q(kind__in=MESSAGE_EVENT_KINDS),
                name="event_one_message_event_per_message",
            ),
        ]
        # No (kind, occurred_at) index: nothing reads events by kind over time (the admin
        # orders by id), and its entry cost every message's event about a tenth of a sync
        # batch's statement (docs/conversations.md, "Full sync performance").
        indexes = [
            models.Index(fields=["conversation", "-occurred_at"], name="event_conv_occurred"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.dedupe_key}"


class ReceiptStatus(models.TextChoices):
    RECEIVED = "received", "Received"
    PROCESSED = "processed", "Processed"
    FAILED = "failed", "Failed (will be retried)"
    # Applied, except events that fit no schema: kept in `quarantined_events` for a
    # `webhook_reprocess` after a fix.
    QUARANTINED = "quarantined", "Processed, with events quarantined"
    REJECTED = "rejected", "Rejected (not a page payload)"


class SignatureVerdict(models.TextChoices):
    VALID = "valid", "Valid X-Hub-Signature-256"
    # Payloads applied without HTTP (the demo loader): no signature was involved.
    INTERNAL = "internal", "Internal (not received over HTTP)"


class WebhookReceipt(models.Model):
    # The exact bytes Meta sent: the signature covers them and a retry re-reads them.
    body = models.BinaryField()
    # Not indexed: two index entries on every webhook POST for a lookup nothing on the hot path
    # needs (the demo loader's duplicate check scans a small local table).
    body_sha256 = models.CharField(max_length=64)
    signature_verdict = models.CharField(max_length=10, choices=SignatureVerdict.choices)
    status = models.CharField(
        max_length=12, choices=ReceiptStatus.choices, default=ReceiptStatus.RECEIVED
    )
    attempts = models.IntegerField(default=0, db_default=0)
    error = models.TextField(blank=True, default="", db_default="")
    event_count = models.IntegerField(default=0, db_default=0)
    unknown_event_count = models.IntegerField(default=0, db_default=0)
    # Events left out on purpose, each with its reason (bad participant, unknown kind).
    skipped_events = models.JSONField(
        default=list, db_default=models.Value([], models.JSONField()), blank=True
    )
    # Entries and events of a known kind that fit no schema, each with where it sits and why.
    quarantined_events = models.JSONField(
        default=list, db_default=models.Value([], models.JSONField()), blank=True
    )
    received_at = models.DateTimeField(db_default=Now(), editable=False)
    processed_at = models.DateTimeField(null=True, blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(db_default=Now())

    class Meta:
        indexes = [
            models.Index(
                fields=["next_attempt_at"],
                condition=models.Q(status="failed"),
                name="receipt_failed_due",
            ),
            models.Index(fields=["status", "-received_at"], name="receipt_status_received"),
        ]

    def __str__(self) -> str:
        return f"receipt {self.pk} ({self.status})"


class SyncMode(models.TextChoices):
    FULL = "full", "Full"
    INCREMENTAL = "incremental", "Incremental"


class SyncStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    PARTIAL = "partial", "Partial (failed batches or time budget; the next run resumes)"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


# A live run holds the page's lease (C6): at most one per page, by a partial unique index.
SYNC_LIVE_STATUSES = (SyncStatus.QUEUED, SyncStatus.RUNNING)
SYNC_TRANSITIONS = [
    (SyncStatus.QUEUED, SyncStatus.RUNNING),
    (SyncStatus.QUEUED, SyncStatus.FAILED),  # never picked up before its lease expired
    (SyncStatus.QUEUED, SyncStatus.CANCELLED),
    (SyncStatus.RUNNING, SyncStatus.SUCCEEDED),
    (SyncStatus.RUNNING, SyncStatus.PARTIAL),
    (SyncStatus.RUNNING, SyncStatus.FAILED),
    (SyncStatus.RUNNING, SyncStatus.CANCELLED),
]


# A run's counters, in the order the API, the admin and `sync_page` show them.
SYNC_RUN_COUNTERS = (
    "api_calls",
    "throttled_waits",
    "conversations_seen",
    "conversations_inserted",
    "conversations_updated",
    "conversations_soft_deleted",
    "conversations_skipped",
    "messages_inserted",
    "events_inserted",
    "batches_succeeded",
)


class SyncRun(models.Model):
    """One sync of one page from the Graph API: its lease, where it is, and what it did.

    A run that stops before the end of its walk (time budget, a crash, a batch it cannot get past)
    keeps its `cursor`; the next run of the page in the same mode resumes from it and points back
    with `resumed_from`. `chain_id` is the first run of such a chain: a full sync's soft deletes
    consider what the whole chain saw.
    """

    page = models.ForeignKey(
        FacebookPage, on_delete=models.CASCADE, related_name="sync_runs", db_index=False
    )
    mode = models.CharField(max_length=12, choices=SyncMode.choices)
    status = models.CharField(max_length=10, choices=SyncStatus.choices, default=SyncStatus.QUEUED)
    trigger = models.CharField(max_length=16, default="api", db_default="api")
    request_id = models.CharField(max_length=128, blank=True, default="", db_default="")
    resumed_from = models.ForeignKey(
        "self", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    chain_id = models.BigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(db_default=Now(), editable=False)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    # Set by the worker that claimed the run; every write of the run checks it.
    lease_token = models.UUIDField(null=True, blank=True, editable=False)
    # Where the walk stands: {"folder": ..., "after": ...}; null before it starts and once the
    # walk has reached its end.
    cursor = models.JSONField(null=True, blank=True)
    # The newest conversation `updated_time` the chain saw: the page's next watermark, applied
    # only when the run completes.
    watermark_candidate = models.DateTimeField(null=True, blank=True)
    api_calls = models.IntegerField(default=0, db_default=0)
    throttled_waits = models.IntegerField(default=0, db_default=0)
    conversations_seen = models.IntegerField(default=0, db_default=0)
    conversations_inserted = models.IntegerField(default=0, db_default=0)
    conversations_updated = models.IntegerField(default=0, db_default=0)
    conversations_soft_deleted = models.IntegerField(default=0, db_default=0)
    conversations_skipped = models.IntegerField(default=0, db_default=0)
    messages_inserted = models.IntegerField(default=0, db_default=0)
    events_inserted = models.IntegerField(default=0, db_default=0)
    batches_succeeded = models.IntegerField(default=0, db_default=0)
    # Batches that failed after their retries: [{"kind", "folder", "after", "thread_id",
    # "error_code", "detail", "attempts", "at"}]; the next run retries them first.
    failed_batches = models.JSONField(
        default=list, db_default=models.Value([], models.JSONField()), blank=True
    )
    # Conversations left out on purpose with the reason (no usable participant, F7).
    skipped = models.JSONField(
        default=list, db_default=models.Value([], models.JSONField()), blank=True
    )
    error_code = models.CharField(max_length=40, blank=True, default="", db_default="")
    error = models.TextField(blank=True, default="", db_default="")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["page"],
                condition=models.Q(status__in=[str(status) for status in SYNC_LIVE_STATUSES]),
                name="syncrun_one_live_per_page",
            ),
        ]
        indexes = [
            models.Index(fields=["page", "-created_at"], name="syncrun_page_created"),
            models.Index(fields=["status", "-created_at"], name="syncrun_status_created"),
        ]
        triggers = [
            pgtrigger.FSM(
                name="syncrun_status_fsm",
                field="status",
                transitions=[(str(old), str(new)) for old, new in SYNC_TRANSITIONS],
            ),
        ]

    def __str__(self) -> str:
        return f"{self.mode} sync {self.pk} of page {self.page_id} ({self.status})"

    @property
    def is_live(self) -> bool:
        return self.status in SYNC_LIVE_STATUSES


class PurgeScope(models.TextChoices):
    PAGE = "page", "A removed page with all of its data"
    CONVERSATION = "conversation", "One conversation with its messages and events"


class PurgeRecord(models.Model):
    """One purge of stored conversation data: what went, why and on whose word (C8). Written in
    the purge's own transaction; append-only (a trigger refuses UPDATE and DELETE)."""

    purged_at = models.DateTimeField(db_default=Now(), editable=False)
    scope = models.CharField(max_length=16, choices=PurgeScope.choices)
    # The Facebook page id (the page row itself may be gone), and the person for one
    # conversation.
    page_id = models.CharField(max_length=64)
    psid = models.CharField("participant PSID", max_length=64, blank=True, default="")
    conversations = models.IntegerField()
    messages = models.IntegerField()
    events = models.IntegerField()
    sync_runs = models.IntegerField()
    reason = models.TextField()
    requested_by = models.CharField(max_length=150)

    class Meta:
        indexes = [models.Index(fields=["page_id", "-purged_at"], name="purgerecord_page")]
        triggers = [
            pgtrigger.Protect(
                name="purgerecord_append_only", operation=pgtrigger.Update | pgtrigger.Delete
            ),
            refuse_truncate("purgerecord_no_truncate"),
        ]

    def __str__(self) -> str:
        return f"purge of {self.scope} {self.page_id}{'/' + self.psid if self.psid else ''}"
