"""The sync benchmark runs end to end at a tiny scale, verifies its work and leaves nothing."""

from __future__ import annotations

import json

import pytest

from conversations.models import Conversation, FacebookPage, Message, SyncRun
from evoflow.models import RateBucket
from tests.helpers import run_python


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_sync_benchmark_runs_and_cleans_up(subprocess_env, tmp_path):
    completed = run_python(
        "-m",
        "bench",
        "--quick",
        "--scale",
        "0.01",
        "--only",
        "sync",
        "--results",
        str(tmp_path / "results.jsonl"),
        env=subprocess_env,
        timeout=240,
    )

    assert completed.returncode == 0, completed.stderr + completed.stdout
    records = {
        record["benchmark"]: record["figures"]
        for record in (
            json.loads(line.removeprefix("BENCH "))
            for line in completed.stdout.splitlines()
            if line.startswith("BENCH ")
        )
    }
    # 100 conversations (10,000 x 0.01) of 10 messages, all verified by the benchmark itself
    assert records["conversations.sync.full"]["messages"] == 1_000
    assert records["conversations.sync.full"]["conversations"] == 100
    incremental = records["conversations.sync.incremental"]
    assert incremental["messages_inserted"] == incremental["changed"] == 10
    assert incremental["graph_calls"] <= incremental["full_sync_graph_calls"]
    assert records["conversations.sync.naive"]["messages"] >= 100
    assert "conversations.sync.postgres.copy.write_row" in records
    assert (
        FacebookPage.objects.count(),
        Conversation.objects.count(),
        Message.objects.count(),
        SyncRun.objects.count(),
        RateBucket.objects.filter(key__startswith="graph:page:").count(),
    ) == (0, 0, 0, 0, 0)
