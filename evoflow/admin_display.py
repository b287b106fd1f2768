"""How the admin shows values, written once for every app's ModelAdmin and the dashboard.

- `admin_time(value)`: the one time format of the admin, `2026-12-01 21:00:38 UTC` (date, time
  with seconds, zone), in a `<time>` element whose title is the relative time ("3 minutes
  ago"). Fields the admin renders itself get the same format from `evoflow/formats/`, and the
  base template adds the relative title to them.
- `admin_duration(seconds)`: a duration rounded, with its unit (`840 ms`, `5.3 s`,
  `2 min 05 s`, `1 h 02 min`).
- `short_id(value)`: a long id (a UUID, a Graph id) cut to its first characters, the full
  value on hover and copied whole (the element carries it in `data-copy`).
- `truncated(text, length)`: text cut to `length` characters with the whole text on hover.
- `status_badge(status)`: a status as a coloured badge with its word (colour is never the only
  signal); one palette for sessions, runs, receipts and deliveries.
- `plural(count, singular, plural)`: "1 stub contact", "2 stub contacts".
- `pretty_json(value)`: JSON indented in a `<pre>`, for context, results and payloads.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.timesince import timesince, timeuntil

TIME_FORMAT = "%Y-%m-%d %H:%M:%S %Z"
EMPTY = "-"

# Text on these backgrounds is white: every colour is at least 4.5:1 against it (WCAG AA).
BADGE_COLOURS: dict[str, str] = {
    # good, done
    "ok": "#287d28",
    "healthy": "#287d28",
    "succeeded": "#287d28",
    "completed": "#287d28",
    "processed": "#287d28",
    "delivered": "#287d28",
    "linked": "#287d28",
    "sent": "#287d28",
    # in progress
    "active": "#205493",
    "running": "#205493",
    "waiting": "#205493",
    "received": "#205493",
    "processing": "#205493",
    # waiting on someone, or held
    "queued": "#5c5c5c",
    "paused": "#5c5c5c",
    "pending": "#5c5c5c",
    "skipped": "#5c5c5c",
    "cancelled": "#5c5c5c",
    "ignored": "#5c5c5c",
    # half done, look at it
    "warning": "#8a5f00",
    "partial": "#8a5f00",
    "no_match": "#8a5f00",
    "ambiguous": "#8a5f00",
    "quarantined": "#8a5f00",
    # broken
    "error": "#ba2121",
    "failed": "#ba2121",
    "rejected": "#ba2121",
    "lost": "#7a0000",
}
BADGE_DEFAULT_COLOUR = "#5c5c5c"


def admin_time(value: datetime | None, *, now: datetime | None = None) -> str:
    """`value` in the admin's one format, with the relative time as its title."""
    if value is None:
        return EMPTY
    local = timezone.localtime(value)
    now = now or timezone.now()
    relative = f"{timesince(value, now)} ago" if value <= now else f"in {timeuntil(value, now)}"
    return format_html(
        '<time class="ev-time" datetime="{}" title="{}">{}</time>',
        value.isoformat(),
        relative.replace("\xa0", " "),
        local.strftime(TIME_FORMAT),
    )


def admin_duration(seconds: float | timedelta | None) -> str:
    """A duration rounded to what a reader compares, with its unit."""
    if seconds is None:
        return EMPTY
    if isinstance(seconds, timedelta):
        seconds = seconds.total_seconds()
    if seconds < 0:
        return EMPTY
    if seconds < 1:
        return f"{round(seconds * 1000)} ms"
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{round(seconds)} s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def admin_duration_ms(milliseconds: float | None) -> str:
    return EMPTY if milliseconds is None else admin_duration(milliseconds / 1000)


def short_id(value: object, *, length: int = 8) -> str:
    """A long id shown by its first `length` characters; the whole id on hover and on copy."""
    if value is None or value == "":
        return EMPTY
    text = str(value)
    if len(text) <= length + 1:
        return format_html('<span class="ev-id">{}</span>', text)
    return format_html(
        '<span class="ev-id" title="{}" data-copy="{}">{}…</span>', text, text, text[:length]
    )


def truncated(text: str | None, *, length: int = 60) -> str:
    """`text` on one line, cut to `length` characters, the whole text on hover."""
    if not text:
        return EMPTY
    one_line = " ".join(str(text).split())
    if len(one_line) <= length:
        return format_html('<span class="ev-text">{}</span>', one_line)
    return format_html(
        '<span class="ev-text" title="{}">{}…</span>', one_line, one_line[: length - 1].rstrip()
    )


def status_badge(status: str | None, *, label: str | None = None) -> str:
    """A status as a badge: its colour from `BADGE_COLOURS`, its word always written."""
    if not status:
        return EMPTY
    return format_html(
        '<span class="ev-badge" data-status="{}" style="background:{}">{}</span>',
        status,
        BADGE_COLOURS.get(str(status), BADGE_DEFAULT_COLOUR),
        label or str(status).replace("_", " "),
    )


def plural(count: int, singular: str, plural_form: str | None = None) -> str:
    """`count` with the noun that agrees with it: "1 session", "3 sessions", "1,200 runs"."""
    noun = singular if count == 1 else (plural_form or f"{singular}s")
    return f"{count:,} {noun}"


def pretty_json(value: Any) -> SafeString:
    """JSON indented for reading, in a `<pre>` that wraps long strings."""
    if value in (None, {}, [], ""):
        return SafeString(EMPTY)
    if isinstance(value, str):  # a text column (a step's error): shown as it is
        return format_html('<pre class="ev-json">{}</pre>', value)
    return format_html(
        '<pre class="ev-json">{}</pre>',
        json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str),
    )
