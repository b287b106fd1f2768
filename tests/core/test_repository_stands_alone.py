"""The repository stands alone: no tracked file cites a document that is not in it.

The requirements, the Graph API facts and the coding conventions are written down in docs/
(invariants.md, graph-api.md, conventions.md); code and docs cite those. Planning documents
that lived outside the repository must not be named, because a reader of the repository
cannot open them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

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


# What the checkout holds that is not the repository's own text: the virtualenv, the local
# cluster, caches and results (the directories .gitignore names).
NOT_THE_REPOSITORY = {
    ".git",
    ".venv",
    ".local",
    "__pycache__",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    "test-artifacts",
    "results",
}


def repository_files(root: Path) -> list[Path]:
    """Every file of the repository under `root`, found by walking it (no git needed)."""
    files = []
    for directory, subdirectories, names in os.walk(root):
        subdirectories[:] = [name for name in subdirectories if name not in NOT_THE_REPOSITORY]
        files += [Path(directory) / name for name in names]
    return sorted(files)


def citations_in(root: Path) -> list[str]:
    """`path:line: text` of every line under `root` that names an outside document."""
    citations = []
    for file in repository_files(root):
        path = file.relative_to(root).as_posix()
        if path.startswith(FIXTURE_DATA_PREFIXES):
            continue
        content = file.read_bytes()
        if b"\0" in content:
            continue  # binary (images)
        for number, line in enumerate(content.decode("utf-8", "replace").splitlines(), 1):
            if CITATION.search(line):
                citations.append(f"{path}:{number}: {line.strip()}")
    return citations


def test_no_file_of_the_repository_cites_a_document_outside_it():
    assert citations_in(PROJECT_ROOT) == [], "cite docs/ instead:\n" + "\n".join(
        citations_in(PROJECT_ROOT)
    )


def test_a_citation_anywhere_in_the_tree_is_found(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text("See the design.\nAs " + "DESIGN" + ".md says.\n")
    (tmp_path / "code.py").write_text("# per " + "back" + "ground.md, F3\n")
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "vendored.py").write_text("# " + "STYLE" + ".md\n")

    assert citations_in(tmp_path) == [
        "code.py:1: # per " + "back" + "ground.md, F3",
        "docs/page.md:2: As " + "DESIGN" + ".md says.",
    ]


def test_the_documents_cited_instead_exist():
    for name in ("invariants.md", "graph-api.md", "conventions.md"):
        assert (PROJECT_ROOT / "docs" / name).is_file()
