"""The admin's one way of showing times, durations, ids, text, statuses and counts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.template import Context, Template

from evoflow.admin_display import (
    admin_duration,
    admin_duration_ms,
    admin_time,
    plural,
    pretty_json,
    short_id,
    status_badge,
    truncated,
)

NOW = datetime(2026, 12, 1, 21, 0, 38, 123456, tzinfo=UTC)


def test_a_time_has_date_seconds_and_zone_and_the_relative_time_as_its_title():
    shown = admin_time(NOW - timedelta(minutes=3), now=NOW)

    assert ">2026-12-01 20:57:38 UTC</time>" in shown
    assert 'title="3 minutes ago"' in shown
    assert 'datetime="2026-12-01T20:57:38.123456+00:00"' in shown
    assert 'title="in 2 hours"' in admin_time(NOW + timedelta(hours=2), now=NOW)
    assert admin_time(None) == "-"


def test_the_fields_django_renders_itself_use_the_same_format(settings):
    rendered = Template("{{ moment }}|{{ moment|date }}").render(Context({"moment": NOW}))

    assert rendered == "2026-12-01 21:00:38 UTC|2026-12-01"


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0.0053259, "5 ms"),
        (0.840, "840 ms"),
        (5.325905999939096, "5.3 s"),
        (42.4, "42 s"),
        (125, "2 min 05 s"),
        (3725, "1 h 02 min"),
        (timedelta(seconds=61), "1 min 01 s"),
        (None, "-"),
    ],
)
def test_a_duration_is_rounded_with_its_unit(seconds, shown):
    assert admin_duration(seconds) == shown


def test_milliseconds_as_stored_by_the_steps():
    assert admin_duration_ms(5325.905999939096) == "5.3 s"
    assert admin_duration_ms(None) == "-"


def test_a_long_id_is_short_with_the_whole_id_on_hover_and_copy():
    contact = "24e0217a-0880-54a7-8479-1e18f0db3997"

    shown = short_id(contact)

    assert ">24e0217a…</span>" in shown
    assert f'title="{contact}"' in shown
    assert f'data-copy="{contact}"' in shown
    assert short_id(42) == '<span class="ev-id">42</span>'


def test_text_is_cut_with_the_whole_text_on_hover_and_escaped():
    shown = truncated("<b>tomorrow</b>   photo\norder " * 5, length=20)

    assert "<b>" not in shown
    assert "&lt;b&gt;tomorrow&lt;/b&gt; pho…</span>" in shown
    assert 'title="&lt;b&gt;tomorrow&lt;/b&gt; photo order' in shown
    assert truncated("") == "-"


def test_a_status_is_a_badge_with_its_word():
    assert ">no match</span>" in status_badge("no_match")
    assert 'data-status="failed" style="background:#ba2121"' in status_badge("failed")
    assert status_badge("") == "-"


@pytest.mark.parametrize(
    ("count", "shown"),
    [
        (0, "0 stub contacts"),
        (1, "1 stub contact"),
        (2, "2 stub contacts"),
        (1200, "1,200 stub contacts"),
    ],
)
def test_plurals_agree_with_their_count(count, shown):
    assert plural(count, "stub contact") == shown


def test_json_is_indented_and_text_shown_as_it_is():
    assert pretty_json({"b": 1, "a": "<x>"}) == (
        '<pre class="ev-json">{\n  &quot;a&quot;: &quot;&lt;x&gt;&quot;,\n'
        "  &quot;b&quot;: 1\n}</pre>"
    )
    assert pretty_json("HTTPError: 503") == '<pre class="ev-json">HTTPError: 503</pre>'
    assert pretty_json({}) == "-"
