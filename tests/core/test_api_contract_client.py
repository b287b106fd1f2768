"""A client generated from the schema drives the main flows against a live server
(tests/client/flow.py; docs/api.md, "How the contract is checked").

The generator (openapi-python-client) runs in its own virtualenv under .local/, made here from
the pinned tests/client/requirements.txt the first time (and again when that file changes), so
`make test` needs nothing but PyPI. The generated client is never committed: it is made from
the live server's schema on every run.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from conversations.services.sync import sync_run_cancel
from tests.core.api_live import LIVE_PAGE_ID, api_accounts_seed, live_api_server
from tests.helpers import PROJECT_ROOT

CLIENT_REQUIREMENTS = PROJECT_ROOT / "tests" / "client" / "requirements.txt"
FLOW_SCRIPT = PROJECT_ROOT / "tests" / "client" / "flow.py"
CLIENT_VENV = PROJECT_ROOT / ".local" / "api-client-venv"


def _client_venv() -> Path:
    """The generator's virtualenv, (re)made when its pinned requirements change."""
    digest = hashlib.sha256(CLIENT_REQUIREMENTS.read_bytes()).hexdigest()[:12]
    stamp = CLIENT_VENV / f".installed-{digest}"
    bin_dir = CLIENT_VENV / "bin"
    if not stamp.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(CLIENT_VENV)], check=True)
        subprocess.run(
            [
                *(str(bin_dir / "python"), "-m", "pip", "install", "--quiet"),
                *("--disable-pip-version-check", "-r", str(CLIENT_REQUIREMENTS)),
            ],
            check=True,
            timeout=240,
        )
        stamp.touch()
    return bin_dir


def _generate(bin_dir: Path, base_url: str, where: Path) -> Path:
    """The client package generated from the live server's schema; returns its parent."""
    schema = where / "schema.json"
    with urllib.request.urlopen(f"{base_url}/api/schema/?format=json", timeout=30) as response:
        schema.write_text(json.dumps(json.load(response)))
    result = subprocess.run(
        [
            *(str(bin_dir / "openapi-python-client"), "generate", "--path", str(schema)),
            *("--meta", "none", "--output-path", str(where / "evoflow_client")),
        ],
        cwd=where,
        # The generator formats what it writes with ruff, from its own virtualenv.
        env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    # A schema the generator had to skip parts of would leave operations out of the client.
    assert "Warning" not in result.stdout + result.stderr, result.stdout + result.stderr
    return where


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_generated_client_drives_the_main_flows(subprocess_env, tmp_path):
    # Given a live server with data, and a client generated from its schema
    accounts = api_accounts_seed()
    bin_dir = _client_venv()
    with live_api_server(subprocess_env, log_path=tmp_path / "gunicorn.log") as base_url:
        package_dir = _generate(bin_dir, base_url, tmp_path)

        # When the flow script drives the API through it
        flow = subprocess.Popen(
            [str(bin_dir / "python"), str(FLOW_SCRIPT)],
            env={
                **os.environ,
                "PYTHONPATH": str(package_dir),
                "EVOFLOW_API_URL": base_url,
                "EVOFLOW_OPERATOR_TOKEN": accounts.operator_token,
                "EVOFLOW_MEMBER_TOKEN": accounts.member_token,
                "EVOFLOW_CONTACT_ID": accounts.contact_id,
                "EVOFLOW_JOURNEY_ID": str(accounts.journey_id),
                "EVOFLOW_PAGE_ID": LIVE_PAGE_ID,
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert flow.stdout is not None
        printed: list[str] = []
        for line in flow.stdout:
            printed.append(line)
            if line.startswith("sync-run ") and line.strip().endswith("streaming"):
                # The run ends as an operator's cancel ends it (no worker runs here): the
                # stream must then send its final event.
                assert sync_run_cancel(run_id=int(line.split()[1])) is True
        returncode = flow.wait(timeout=120)

    # Then every flow passed, every answer parsed by the generated models
    output = "".join(printed)
    assert returncode == 0, output
    assert output.strip().endswith("flows ok"), output
