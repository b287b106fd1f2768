"""Module names say what they hold, and the modules cut at their seams stay small.

Two modules once shared a name while holding different things (the flow graph and the session
runner were both "engine"; the webhook views and the webhook service, the Graph client and the
Graph simulator each shared a file name). The old names must not come back, and the modules
split out of the runner, the webhook service and the simulator stay under ~500 lines.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Old dotted name -> where what it held lives now.
RENAMED = {
    "journeys.engine": "journeys.flows",
    "conversations.webhook": "conversations.webhook_views",
    "conversations.graph": "conversations.graph_client",
}

# Packages and modules that were cut at their seams, and the most lines any of them may have.
SPLIT = (
    "journeys/services/engine",
    "conversations/simulator/graph.py",
    "conversations/simulator/control.py",
    "conversations/simulator/wire.py",
    "conversations/simulator/bodies.py",
    "conversations/services/webhook.py",
    "conversations/services/webhook_payload.py",
    "conversations/admin",
    "journeys/admin",
)
MAX_LINES = 530


@pytest.mark.parametrize(("old", "new"), sorted(RENAMED.items()))
def test_a_renamed_module_is_gone_under_its_old_name(old, new):
    assert importlib.util.find_spec(new) is not None, f"{new} should exist"
    assert importlib.util.find_spec(old) is None, f"{old} is back; its code lives in {new}"


def _modules() -> list[Path]:
    found: list[Path] = []
    for entry in SPLIT:
        path = ROOT / entry
        found.extend(sorted(path.glob("*.py")) if path.is_dir() else [path])
    return found


@pytest.mark.parametrize("path", _modules(), ids=lambda path: str(path.relative_to(ROOT)))
def test_a_split_module_stays_small(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, (
        f"{path.relative_to(ROOT)} has {lines} lines (at most {MAX_LINES}): cut it at a seam"
    )
