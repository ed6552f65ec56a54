"""Crash recovery on the real Kafka and Redis: kill -9 of workers, of Redis, and scale-out.

Each test publishes 20,000 Agrawal credit events into a 3-partition topic, runs the
credit-scoring pipeline once without interruption as the reference, and once with
failures injected, then compares: every input id exactly once in the output (read
committed), every prediction equal to the reference's, and each partition's final
model fingerprint (from its last snapshot) equal to the reference's.
"""

from __future__ import annotations

import collections
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from kafka import KafkaAdminClient
from kafka.admin import NewTopic

from streamwise.connectors.redis_state import RedisStateStore
from streamwise.pipeline_config import load_pipeline_config
from streamwise.replay import iter_events
from streamwise.runner import Runner
from support import consume, produce

N_EVENTS = 20_000
PARTITIONS = 3
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "credit_scoring.yaml"


def _config(prefix: str, input_topic: str):
    cfg = load_pipeline_config(EXAMPLE)
    cfg.name = prefix
    cfg.input.topic = input_topic
    cfg.output.topic = f"{prefix}.predictions"
    return cfg


def _write(cfg, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg.model_dump(by_alias=True, exclude_none=True), sort_keys=False))
    return path


@pytest.fixture
def credit_topic(bootstrap, unique):
    topic = f"{unique}.events"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)])
    admin.close()
    assert produce(bootstrap, topic, iter_events("synth.Agrawal", {"seed": 42}, limit=N_EVENTS)) == N_EVENTS
    return topic


def _worker_env(redis_url: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        STREAMWISE_SNAPSHOT__EVERY_EVENTS="1000",
        STREAMWISE_KAFKA__POLL_TIMEOUT_MS="200",
        STREAMWISE_KAFKA__SESSION_TIMEOUT_MS="6000",
        # Small polls: many batch boundaries (snapshots, commits) for failures to land on.
        STREAMWISE_KAFKA__MAX_POLL_RECORDS="500",
        PYTHONUNBUFFERED="1",
    )
    if redis_url:
        env["STREAMWISE_REDIS__URL"] = redis_url
    return env


def _start(cfg_path: Path, env: dict[str, str], index: int = 0, until_idle: float | None = None, log=None):
    cmd = [sys.executable, "-m", "streamwise", "run", "--config", str(cfg_path), "--worker-index", str(index), "-v"]
    if until_idle is not None:
        cmd += ["--until-idle", str(until_idle)]
    return subprocess.Popen(cmd, env=env, stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT)


def _committed(bootstrap: str, group: str) -> int:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        offsets = admin.list_group_offsets(group).get(group, {})
        return sum(o.offset for o in offsets.values() if o.offset > 0)
    finally:
        admin.close()


def _wait_committed(bootstrap: str, group: str, at_least: int, proc, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while _committed(bootstrap, group) < at_least:
        assert proc.poll() is None, "worker exited early"
        assert time.monotonic() < deadline, f"no progress to {at_least} committed events"
        time.sleep(0.1)


def _outputs(bootstrap: str, topic: str) -> dict[int, dict]:
    records = consume(bootstrap, topic, N_EVENTS, timeout_s=120)
    counts = collections.Counter(json.loads(r.value)["id"] for r in records)
    repeated = {i: c for i, c in counts.items() if c > 1}
    assert not repeated, f"{len(repeated)} ids emitted more than once, e.g. {list(repeated.items())[:5]}"
    assert set(counts) == set(range(N_EVENTS)), f"{N_EVENTS - len(counts)} ids missing"
    return {json.loads(r.value)["id"]: json.loads(r.value) for r in records}


def _fingerprints(store: RedisStateStore, pipeline: str) -> dict[int, str]:
    return {p: store.list(pipeline, p)[0].meta["fingerprint"] for p in range(PARTITIONS)}


@pytest.fixture
def reference(settings, bootstrap, credit_topic, unique, services):
    """The uninterrupted run: its outputs and each partition's final fingerprint."""
    cfg = _config(f"{unique}-ref", credit_topic)
    summary = Runner(cfg, settings).run(until_idle_s=1.0)
    assert summary.events_in == N_EVENTS
    store = RedisStateStore(services["STREAMWISE_REDIS__URL"], settings.snapshot.signing_key.get_secret_value().encode())
    return {"outputs": _outputs(bootstrap, cfg.output.topic), "fingerprints": _fingerprints(store, cfg.name), "store": store}


def _assert_same_as_reference(bootstrap, cfg, reference, store):
    out = _outputs(bootstrap, cfg.output.topic)
    ref = reference["outputs"]
    different = [i for i in range(N_EVENTS) if out[i]["models"] != ref[i]["models"]]
    assert not different, (
        f"{len(different)} predictions differ from the uncrashed run, e.g. id {different[:1]}: "
        f"{out[different[0]] if different else ''} vs {ref[different[0]] if different else ''}"
    )
    assert _fingerprints(store, cfg.name) == reference["fingerprints"]


def test_kill_9_at_ten_random_points_changes_no_output_and_no_model(bootstrap, credit_topic, unique, reference, tmp_path):
    cfg = _config(f"{unique}-crash", credit_topic)
    path = _write(cfg, tmp_path / "pipeline.yaml")
    env = _worker_env()
    rng = random.Random(20261127)
    kill_points = sorted(rng.sample(range(500, N_EVENTS - 1000), 10))
    log = open(tmp_path / "workers.log", "wb")
    for point in kill_points:
        proc = _start(path, env, log=log)
        _wait_committed(bootstrap, cfg.group_id, point, proc)
        time.sleep(rng.uniform(0, 0.3))  # land anywhere: mid-batch, mid-transaction, mid-snapshot
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    final = _start(path, env, until_idle=2.0, log=log)
    assert final.wait(timeout=180) == 0, (tmp_path / "workers.log").read_text()[-3000:]
    _assert_same_as_reference(bootstrap, cfg, reference, reference["store"])


@pytest.fixture
def private_redis(tmp_path):
    """A Redis of this test's own (the real server, on a free port) that it may kill."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    data = tmp_path / "redis"
    data.mkdir()

    def start():
        proc = subprocess.Popen(
            [shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data),
             "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
            stdout=subprocess.DEVNULL,
        )
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return proc
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("private redis-server did not start")

    handle = {"proc": start(), "start": start, "url": f"redis://127.0.0.1:{port}/0"}
    yield handle
    handle["proc"].kill()


def test_redis_killed_and_restarted_mid_run_loses_nothing(bootstrap, credit_topic, unique, reference, private_redis, tmp_path, settings):
    cfg = _config(f"{unique}-redis", credit_topic)
    path = _write(cfg, tmp_path / "pipeline.yaml")
    log = open(tmp_path / "worker.log", "wb")
    proc = _start(path, _worker_env(private_redis["url"]), until_idle=2.0, log=log)
    _wait_committed(bootstrap, cfg.group_id, 4000, proc)
    private_redis["proc"].send_signal(signal.SIGKILL)
    private_redis["proc"].wait()
    down_at = _committed(bootstrap, cfg.group_id)
    # Processing goes on without Redis, and the worker says its snapshots fail.
    _wait_committed(bootstrap, cfg.group_id, min(down_at + 3000, N_EVENTS), proc)
    deadline = time.monotonic() + 60
    while b"snapshot failed" not in (tmp_path / "worker.log").read_bytes():
        assert time.monotonic() < deadline and proc.poll() is None, "no snapshot failure reported"
        time.sleep(0.1)
    assert _committed(bootstrap, cfg.group_id) < N_EVENTS, "Redis went down too late to matter"
    private_redis["proc"] = private_redis["start"]()
    assert proc.wait(timeout=180) == 0, (tmp_path / "worker.log").read_text()[-3000:]
    store = RedisStateStore(private_redis["url"], settings.snapshot.signing_key.get_secret_value().encode())
    _assert_same_as_reference(bootstrap, cfg, reference, store)


def test_two_workers_one_killed_the_survivor_takes_over(bootstrap, credit_topic, unique, reference, tmp_path):
    cfg = _config(f"{unique}-scale", credit_topic)
    path = _write(cfg, tmp_path / "pipeline.yaml")
    env = _worker_env()
    log = open(tmp_path / "workers.log", "wb")
    survivor = _start(path, env, index=0, until_idle=8.0, log=log)
    victim = _start(path, env, index=1, log=log)
    _wait_committed(bootstrap, cfg.group_id, 6000, survivor)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert survivor.wait(timeout=240) == 0, (tmp_path / "workers.log").read_text()[-3000:]
    _assert_same_as_reference(bootstrap, cfg, reference, reference["store"])


def test_stopping_in_the_middle_of_a_replay_never_moves_the_group_back(settings, bootstrap, unique):
    """A worker that re-learns records below the committed offset must not commit their
    offsets: the group would move back, and the next owner would emit them again."""
    from kafka import KafkaConsumer
    from kafka.structs import TopicPartition

    from streamwise.core.sensors import Sensor
    from support import phishing_pipeline

    cfg = phishing_pipeline(unique)
    produce(bootstrap, cfg.input.topic, iter_events("Phishing"))
    settings.kafka.max_poll_records = 100
    settings.snapshot.enabled = False
    Runner(cfg, settings).run(max_events=1000)  # commits ~1000, leaves no snapshot
    settings.snapshot.enabled = True

    class StopAfterTwoBatches(Sensor):
        batches = 0

        def on_batch(self, n_records: int, seconds: float) -> None:
            self.batches += 1
            if self.batches == 2:
                replaying.stop()

    replaying = Runner(cfg, settings, sensors=[StopAfterTwoBatches()])
    replaying.run()  # re-learns offsets 0-199 without emitting, then stops
    assert replaying.counts.events_in == 0

    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=cfg.group_id, enable_auto_commit=False)
    assert c.committed(TopicPartition(cfg.input.topic, 0)) >= 1000
    c.close()
    Runner(cfg, settings).run(until_idle_s=1.0)
    ids = [json.loads(r.value)["id"] for r in consume(bootstrap, cfg.output.topic, 1250)]
    assert collections.Counter(ids) == collections.Counter(range(1250))

