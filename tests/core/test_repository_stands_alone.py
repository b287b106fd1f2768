"""The repository stands alone: no tracked file cites a document that is not in it.

The requirements, the Graph API facts and the coding conventions are written down in docs/
(invariants.md, graph-api.md, conventions.md); code and docs cite those. Planning documents
that lived outside the repository must not be named, because a reader of the repository
cannot open them.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from tests.helpers import PROJECT_ROOT

# Spelt in pieces, so that this file does not name them itself.
_OUTSIDE_DOCUMENTS = [
    "DESIGN" + ".md",
    "back" + "ground.md",
    "graph-api-" + "facts.md",
    "STYLE" + ".md",
    "../" + "shared",
]
CITATION = re.compile("|".join(re.escape(name) for name in _OUTSIDE_DOCUMENTS), re.IGNORECASE)

# Data that tests feed to the code as it comes from outside (payload examples and the like)
# may contain any text; none exists today.
FIXTURE_DATA_PREFIXES = ("tests/fixtures/",)


def _tracked_text_files() -> list[str]:
    if shutil.which("git") is None or not (PROJECT_ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    listed = subprocess.run(
        ["git", "ls-files", "-z"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [path for path in listed.split("\0") if path]


def test_no_tracked_file_cites_a_document_outside_the_repository():
    citations = []
    for path in _tracked_text_files():
        if path.startswith(FIXTURE_DATA_PREFIXES):
            continue
        file = PROJECT_ROOT / path
        if not file.is_file():
            continue  # deleted in the working tree, not yet committed
        content = file.read_bytes()
        if b"\0" in content:
            continue  # binary (images)
        for number, line in enumerate(content.decode("utf-8", "replace").splitlines(), 1):
            if CITATION.search(line):
                citations.append(f"{path}:{number}: {line.strip()}")

    assert citations == [], "cite docs/ instead:\n" + "\n".join(citations)


def test_the_documents_cited_instead_exist():
    for name in ("invariants.md", "graph-api.md", "conventions.md"):
        assert (PROJECT_ROOT / "docs" / name).is_file()
