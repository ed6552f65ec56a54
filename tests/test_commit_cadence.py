"""Commit cadence: several polls share one transaction until ``kafka.commit_interval_ms``."""

from __future__ import annotations

import json

import pytest
from streamwise.core.sensors import Sensor
from streamwise.core.settings import Settings

from streamwise.pipeline_config import parse_pipeline_config
from streamwise.testing import MemoryBroker, MemoryStateStore, memory_runner

EVENTS = 300
POLL = 10


class Commits(Sensor):
    def __init__(self) -> None:
        self.n = 0

    def on_commit(self, n_partitions: int) -> None:
        self.n += 1


def _run(interval_ms: int, snapshots: bool) -> tuple[int, list[int]]:
    cfg = parse_pipeline_config({
        "name": "cadence", "input": {"topic": "cadence.events"}, "output": {"topic": "cadence.out"},
        "schema": {"id": "id", "label": "y", "label_type": "bool", "features": {"x": "float"}},
        "models": [{"name": "lr", "steps": ["linear_model.LogisticRegression"]}],
    })
    settings = Settings()
    settings.kafka.poll_timeout_ms, settings.kafka.max_poll_records = 10, POLL
    settings.kafka.commit_interval_ms = interval_ms
    # Far fewer events between snapshots than the stream holds.
    settings.snapshot.every_events = 50
    settings.snapshot.enabled = snapshots
    broker = MemoryBroker()
    broker.create_topic("cadence.events", partitions=1)
    for i in range(EVENTS):
        broker.produce("cadence.events", json.dumps({"id": i, "x": i % 7, "y": i % 2 == 1}).encode(), key=b"k")
    commits = Commits()
    store = MemoryStateStore() if snapshots else None
    memory_runner(cfg, settings, broker, store, sensors=[commits]).run(until_idle_s=0.05)
    return commits.n, [json.loads(r.value)["id"] for r in broker.read("cadence.out")]


@pytest.mark.parametrize("snapshots", [False, True], ids=["snapshots off", "snapshots on"])
def test_polls_share_a_transaction_until_the_interval_has_passed(snapshots):
    per_poll, ids = _run(0, snapshots)
    assert ids == list(range(EVENTS))
    assert per_poll >= EVENTS // POLL
    # A minute: nothing but the end of the input (an empty poll) ends the transaction,
    # or, with snapshots on, a partition due for its snapshot (every 50 events).
    shared, ids = _run(60_000, snapshots)
    assert ids == list(range(EVENTS))
    if snapshots:
        assert EVENTS // 50 <= shared <= EVENTS // 50 + 2
    else:
        # Snapshots off: no snapshot is waiting for a commit (it was every poll after 50 events).
        assert shared <= 2
