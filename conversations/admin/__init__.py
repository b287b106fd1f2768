"""Admin for pages, conversations, messages, interaction events, webhook receipts and sync runs.

Thin: writes go through `conversations.services`. The page token is never displayed: the form
has a write-only field that replaces it. Messages, events, receipts and sync runs are records of
what happened, so they are read-only here.

Sync actions ("sync now", "full sync now", "retry failed batches", "cancel") need the
`conversations.add_syncrun` permission, the same one the sync API asks for (operators have it).

Every table here but the pages grows without bound: those lists count with the huge-table
paginator and filter by page without listing every page (evoflow.admin_lists).
"""

from conversations.admin import pages, receipts, syncs, threads

__all__ = ["pages", "receipts", "syncs", "threads"]
