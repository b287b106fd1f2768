"""Facebook pages: creation, tokens (encrypted at rest), re-authorisation."""

from __future__ import annotations

import threading
from typing import Any

from django.db import connection, transaction

from conversations.models import FacebookPage

# page_id -> primary key, per process. A page's id never changes once created (a trigger refuses
# it), so an entry can only go stale when its page is deleted: saves and deletes clear this
# process's cache (`page_pk_cache_invalidate`, connected in apps.py), and another process finds
# out from the foreign key violation its next write raises, clears its cache and tries once
# more (`webhook_receive`; a stored receipt's retry does the same on its next attempt).
_page_pk_cache: dict[str, int] = {}
_cache_lock = threading.Lock()


def page_pks_ensure(*, page_ids: list[str]) -> dict[str, int]:
    """Primary keys of these pages, creating rows for pages not seen before.

    A webhook for a page evoflow does not know yet is kept, not dropped: the page row is created
    without a token and flagged for (re-)authorisation, so an operator sees it.
    """
    with _cache_lock:
        found = {
            page_id: _page_pk_cache[page_id] for page_id in page_ids if page_id in _page_pk_cache
        }
    missing = sorted(set(page_ids) - set(found))
    if missing:
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO conversations_facebookpage (page_id, name, access_token_encrypted,"
                " is_reauthorization_required) SELECT u, '', '', true FROM unnest(%s::text[]) u"
                " ORDER BY u ON CONFLICT (page_id) DO NOTHING",
                [missing],
            )
            cursor.execute(
                "SELECT page_id, id FROM conversations_facebookpage WHERE page_id = ANY(%s)",
                [missing],
            )
            fetched = dict(cursor.fetchall())
        found.update(fetched)
        # Remembered only once committed: a rolled-back insert must not leave a dangling id.
        transaction.on_commit(lambda: page_pk_cache_remember(fetched))
    return found


def page_pk_cache_clear() -> None:
    with _cache_lock:
        _page_pk_cache.clear()


def page_pk_cache_invalidate(**_: Any) -> None:
    """Signal receiver (post_save / post_delete of a page): forget every cached id now, and
    once more after commit, so no entry read meanwhile survives the change."""
    page_pk_cache_clear()
    transaction.on_commit(page_pk_cache_clear)


def page_pk_cache_remember(pks: dict[str, int]) -> None:
    with _cache_lock:
        _page_pk_cache.update(pks)


@transaction.atomic(durable=True)
def page_upsert(*, page_id: str, name: str = "", access_token: str | None = None) -> FacebookPage:
    """Create a page, or update the one with this page id (which never changes); a new token
    clears the re-authorisation flag."""
    page, _ = FacebookPage.objects.select_for_update().get_or_create(page_id=page_id)
    fields = ["updated_at"]
    if name:
        page.name = name
        fields.append("name")
    if access_token is not None:
        page.set_access_token(access_token)
        page.is_reauthorization_required = not access_token
        fields += ["access_token_encrypted", "is_reauthorization_required"]
    page.save(update_fields=fields)
    return page


# Not durable: the admin calls it inside its own change-form transaction.
@transaction.atomic
def page_set_access_token(*, page: FacebookPage, access_token: str) -> FacebookPage:
    page = FacebookPage.objects.select_for_update().get(pk=page.pk)
    page.set_access_token(access_token)
    page.is_reauthorization_required = not access_token
    page.save(update_fields=["access_token_encrypted", "is_reauthorization_required", "updated_at"])
    return page


@transaction.atomic
def page_flag_reauthorization(*, page: FacebookPage, reason: str = "") -> FacebookPage:
    """Graph error 190 (invalid token): stop using the token until an operator sets a new one."""
    FacebookPage.objects.filter(pk=page.pk).update(is_reauthorization_required=True)
    page.refresh_from_db(fields=["is_reauthorization_required"])
    return page
