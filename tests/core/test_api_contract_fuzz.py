"""The OpenAPI schema says what the server does: schemathesis over every operation of a live
server, as the operator and as a non-staff member (docs/api.md, "How the contract is checked").

A failure prints schemathesis's report (the operation, the check, a curl to reproduce it).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.core.api_live import api_accounts_seed, live_api_server
from tests.helpers import PROJECT_ROOT

# The checks the contract is held to (schemathesis's names).
CONTRACT_CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
    "negative_data_rejection",
    "positive_data_acceptance",
)
# Fixed, so a failure found once is found again; bounded, so both roles take about a minute.
FUZZ_SEED = 20260416
FUZZ_MAX_EXAMPLES = 20
# The progress stream stays open until its run ends (up to 30 minutes): it cannot be fuzzed
# request by request. The generated-client test follows a stream to its end instead.
EXCLUDED_OPERATION_IDS = ("sync_runs_stream",)
FUZZ_TIMEOUT_SECONDS = 240
SCHEMATHESIS_CONFIG = Path(__file__).with_name("schemathesis.toml")


def _schemathesis() -> list[str]:
    executable = Path(sys.executable).with_name("st")
    if not executable.exists():
        found = shutil.which("st")
        assert found, "schemathesis is not installed (it is in requirements-dev.txt)"
        executable = Path(found)
    return [str(executable)]


def _fuzz(base_url: str, token: str, report_dir: Path) -> tuple[int, str]:
    command = [
        *_schemathesis(),
        *("--config-file", str(SCHEMATHESIS_CONFIG)),
        "run",
        f"{base_url}/api/schema/",
        *("--checks", ",".join(CONTRACT_CHECKS)),
        *("--seed", str(FUZZ_SEED)),
        *("--max-examples", str(FUZZ_MAX_EXAMPLES)),
        *("--header", f"Authorization: Token {token}"),
        *(
            arg
            for operation_id in EXCLUDED_OPERATION_IDS
            for arg in ("--exclude-operation-id", operation_id)
        ),
        # One worker: hypothesis reads lambdas through `ast`, which is not thread-safe here.
        *("--workers", "1"),
        *("--phases", "examples,coverage,fuzzing,stateful"),
        *("--request-timeout", "20"),
        "--no-color",
        *("--report", "junit"),
        *("--report-dir", str(report_dir)),
    ]
    # The report goes to a file as it is written, so a run that hangs still shows where.
    output = report_dir / "schemathesis.txt"
    with output.open("w") as stream:
        completed = subprocess.run(
            command,
            cwd=PROJECT_ROOT,
            stdout=stream,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=FUZZ_TIMEOUT_SECONDS,
            check=False,
        )
    return completed.returncode, output.read_text()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("role", ["operator", "member"])
def test_schemathesis_finds_no_contract_failure(role, subprocess_env, tmp_path):
    # Given a live server with data, and the role's token
    accounts = api_accounts_seed()
    token = accounts.operator_token if role == "operator" else accounts.member_token

    # When schemathesis runs every operation with the contract's checks
    with live_api_server(subprocess_env, log_path=tmp_path / "gunicorn.log") as base_url:
        returncode, report = _fuzz(base_url, token, tmp_path)

    # Then it finds no failure (its report is the assertion message)
    assert returncode == 0, report
