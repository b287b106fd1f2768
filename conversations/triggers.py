"""The database triggers the conversations app's invariants rest on.

Each entry is (table, trigger name as declared in the model's `Meta.triggers`; pgtrigger
installs it as `pgtrigger_<name>_<hash>`). A check that they are all present and enabled (and a
test here) reads this list: if one is dropped or disabled (`ALTER TABLE ... DISABLE TRIGGER`),
the invariant beside it no longer holds on every write path.
"""

from __future__ import annotations

REQUIRED_TRIGGERS: tuple[tuple[str, str], ...] = (
    # C4, F19: message_count and last_message* follow the rows really inserted or deleted.
    ("conversations_message", "message_count_and_last_on_insert"),
    ("conversations_message", "message_count_on_delete"),
    # C4, F1: last_message_at never moves backwards; version-checked updates.
    ("conversations_conversation", "conversation_last_message_forward_only"),
    ("conversations_conversation", "conversation_version_bump"),
    # A message never moves to another conversation (both counts would break).
    ("conversations_message", "message_conversation_fixed"),
    # C8: conversations and messages are never removed outside the audited purge.
    ("conversations_conversation", "conversation_protect_delete"),
    ("conversations_message", "message_protect_delete"),
    ("conversations_purgerecord", "purgerecord_append_only"),
    # The page id is the row's identity for the webhook's cached keys.
    ("conversations_facebookpage", "facebookpage_page_id_fixed"),
    # C6: a sync run's status moves only forward.
    ("conversations_syncrun", "syncrun_status_fsm"),
)
