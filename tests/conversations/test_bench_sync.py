"""The sync benchmark runs end to end at a tiny scale, verifies its work and leaves nothing."""

from __future__ import annotations

import pytest

from conversations.models import Conversation, FacebookPage, Message, SyncRun
from evoflow.models import RateBucket
from tests.helpers import bench_quick_records


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_sync_benchmark_runs_and_cleans_up(subprocess_env, tmp_path):
    records = bench_quick_records("sync", env=subprocess_env, results=tmp_path / "results.jsonl")
    # 20 conversations (2,000 x 0.01) of 10 messages, all verified by the benchmark itself
    assert records["conversations.sync.full"]["messages"] == 200
    assert records["conversations.sync.full"]["conversations"] == 20
    incremental = records["conversations.sync.incremental"]
    assert incremental["messages_inserted"] == incremental["changed"] == 10
    assert incremental["graph_calls"] <= incremental["full_sync_graph_calls"]
    # The write path's own page: 20 conversations (1,000 x 0.01, at least 20) of 10 messages,
    # written by the engine's batches into tables holding the full sync's, verified, then
    # removed below.
    write_path = records["conversations.sync.write_path"]
    assert write_path["messages"] == 200
    assert write_path["batches"] >= 1
    assert write_path["messages_per_s"] > 0
    assert records["conversations.sync.naive"]["messages"] >= 100
    assert "conversations.sync.postgres.copy.write_row" in records
    assert (
        FacebookPage.objects.count(),
        Conversation.objects.count(),
        Message.objects.count(),
        SyncRun.objects.count(),
        RateBucket.objects.filter(key__startswith="graph:page:").count(),
    ) == (0, 0, 0, 0, 0)
