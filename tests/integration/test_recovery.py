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
import uuid
from pathlib import Path

import pytest
import yaml
from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import CoordinatorNotAvailableError
from streamwise.connectors.redis_state import RedisStateStore
from support import consume, produce

from streamwise.pipeline_config import load_pipeline_config
from streamwise.replay import iter_events
from streamwise.runner import Runner

N_EVENTS = 20_000
PARTITIONS = 3
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "credit_scoring.yaml"


def _config(prefix: str, input_topic: str):
    cfg = load_pipeline_config(EXAMPLE)
    cfg.name = prefix
    cfg.input.topic = input_topic
    cfg.output.topic = f"{prefix}.predictions"
    # These tests prove the per-partition recovery rules, which both stages of scope:
    # global rest on; tests/integration/test_global_scope.py crashes a global pipeline.
    cfg.scope = "partition"
    return cfg


def _write(cfg, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg.model_dump(by_alias=True, exclude_none=True), sort_keys=False))
    return path


# The input topic and the uninterrupted reference run are the same for every test of one
# Kafka client: made once per client and shared (each test reads the topic with a
# pipeline, group and output topic of its own, and never writes to it). Made per test,
# they cost ~21 s of set-up each, a quarter of this module's time in CI.
_SHARED: dict[tuple[str, str, str], dict] = {}


@pytest.fixture
def credit_topic(bootstrap, kafka_client):
    key = ("topic", bootstrap, kafka_client)
    if key not in _SHARED:
        topic = f"t-recovery-credit-{kafka_client}-{uuid.uuid4().hex[:6]}.events"
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)])
        admin.close()
        assert produce(bootstrap, topic, iter_events("synth.Agrawal", {"seed": 42}, limit=N_EVENTS)) == N_EVENTS
        _SHARED[key] = {"topic": topic}
    return _SHARED[key]["topic"]


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
    except CoordinatorNotAvailableError:
        return 0  # a broker just started has no coordinator for the group yet: asked again
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
def reference(settings, bootstrap, credit_topic, kafka_client, services):
    """The uninterrupted run: its outputs and each partition's final fingerprint (once
    per client, see _SHARED)."""
    key = ("reference", bootstrap, kafka_client)
    if key not in _SHARED:
        cfg = _config(credit_topic.removesuffix(".events") + "-ref", credit_topic)
        summary = Runner(cfg, settings).run(until_idle_s=1.0)
        assert summary.events_in == N_EVENTS
        signing_key = settings.snapshot.signing_key.get_secret_value().encode()
        store = RedisStateStore(services["STREAMWISE_REDIS__URL"], signing_key)
        _SHARED[key] = {
            "outputs": _outputs(bootstrap, cfg.output.topic), "fingerprints": _fingerprints(store, cfg.name),
            "store": store,
        }
    return _SHARED[key]


def _assert_same_as_reference(bootstrap, cfg, reference, store):
    out = _outputs(bootstrap, cfg.output.topic)
    ref = reference["outputs"]
    different = [i for i in range(N_EVENTS) if out[i]["models"] != ref[i]["models"]]
    assert not different, (
        f"{len(different)} predictions differ from the uncrashed run, e.g. id {different[:1]}: "
        f"{out[different[0]] if different else ''} vs {ref[different[0]] if different else ''}"
    )
    assert _fingerprints(store, cfg.name) == reference["fingerprints"]


def _kill_9_at(rng: random.Random, kills: int, among: range, bootstrap: str, cfg, path: Path, env, log) -> None:
    """Starts a worker and kills it (SIGKILL) once ``kills`` times, each soon after the
    group's committed count passes a point drawn from ``among``."""
    for point in sorted(rng.sample(among, kills)):
        proc = _start(path, env, log=log)
        _wait_committed(bootstrap, cfg.group_id, point, proc)
        time.sleep(rng.uniform(0, 0.3))  # land anywhere: mid-batch, mid-transaction, mid-snapshot
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def test_kill_9_at_ten_random_points_changes_no_output_and_no_model(bootstrap, credit_topic, unique, reference, tmp_path):
    cfg = _config(f"{unique}-crash", credit_topic)
    path = _write(cfg, tmp_path / "pipeline.yaml")
    env = _worker_env()
    log = open(tmp_path / "workers.log", "wb")
    _kill_9_at(random.Random(20261127), 10, range(500, N_EVENTS - 1000), bootstrap, cfg, path, env, log)
    final = _start(path, env, until_idle=2.0, log=log)
    assert final.wait(timeout=180) == 0, (tmp_path / "workers.log").read_text()[-3000:]
    _assert_same_as_reference(bootstrap, cfg, reference, reference["store"])


def test_at_least_once_kill_9_at_three_points_loses_no_event_and_learns_the_same(
    bootstrap, credit_topic, unique, reference, tmp_path
):
    # At least once, the flush and the offset commit may run in the background while
    # the next batch is processed (kafka.commit_in_background, on confluent): a kill
    # may then repeat outputs, never lose one, and never change what the models learn.
    cfg = _config(f"{unique}-alo", credit_topic)
    path = _write(cfg, tmp_path / "pipeline.yaml")
    env = {**_worker_env(), "STREAMWISE_KAFKA__GUARANTEE": "at_least_once"}
    log = open(tmp_path / "workers.log", "wb")
    _kill_9_at(random.Random(20261202), 3, range(1000, N_EVENTS - 3000), bootstrap, cfg, path, env, log)
    final = _start(path, env, until_idle=2.0, log=log)
    assert final.wait(timeout=180) == 0, (tmp_path / "workers.log").read_text()[-3000:]
    records = [json.loads(r.value) for r in consume(bootstrap, cfg.output.topic, N_EVENTS, timeout_s=120)]
    assert {r["id"] for r in records} == set(range(N_EVENTS)), "an event's output was lost"
    # A repeated output is the same prediction again: the state it was made from is
    # restored exactly.
    ref = reference["outputs"]
    different = [r["id"] for r in records if r["models"] != ref[r["id"]]["models"]]
    assert not different, f"{len(different)} outputs differ from the uninterrupted run, e.g. id {different[:1]}"
    assert _fingerprints(reference["store"], cfg.name) == reference["fingerprints"]


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

    cfg = phishing_pipeline(unique, scope="partition")
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



# ----- faults that are not crashes (issue 12): a forged claim, lost Redis data, a paused broker


def test_a_forged_owner_claim_in_redis_skips_no_event(bootstrap, credit_topic, unique, reference, tmp_path):
    """Someone raises every partition's owner claim while the worker runs: its snapshot
    writes are refused, and it must neither skip nor commit records it did not process.
    It holds those partitions, claims them again after a session timeout (Kafka still
    assigns them to it) and goes on from its snapshots."""
    import redis as _redis

    cfg = _config(f"{unique}-forged", credit_topic)
    path = _write(cfg, tmp_path / "pipeline.yaml")
    log = open(tmp_path / "worker.log", "wb")
    proc = _start(path, _worker_env(), until_idle=8.0, log=log)
    _wait_committed(bootstrap, cfg.group_id, 4000, proc)
    r = _redis.Redis.from_url(os.environ["STREAMWISE_REDIS__URL"])
    for p in range(PARTITIONS):
        r.set(f"streamwise:{cfg.name}:{p}:owner", 10_000)
    assert proc.wait(timeout=240) == 0, (tmp_path / "worker.log").read_text()[-3000:]
    text = (tmp_path / "worker.log").read_text()
    assert "dropping local state and pausing it" in text, text[-3000:]
    _assert_same_as_reference(bootstrap, cfg, reference, reference["store"])


@pytest.mark.parametrize("policy", ["replay", "refuse"])
def test_redis_data_lost_is_said_and_the_policy_applied(bootstrap, credit_topic, unique, reference, tmp_path, policy):
    import re

    cfg = _config(f"{unique}-lost", credit_topic)
    path = _write(cfg, tmp_path / "pipeline.yaml")
    log = open(tmp_path / "worker.log", "wb")
    env = _worker_env()
    proc = _start(path, env, log=log)
    # A fetch drains one partition before the next: past 2/3 of the stream every
    # partition has processed events, hence a snapshot once the worker stops.
    _wait_committed(bootstrap, cfg.group_id, 14_500, proc)
    proc.send_signal(signal.SIGTERM)  # a clean stop: every partition snapshotted
    assert proc.wait(timeout=60) == 0
    store = reference["store"]
    assert all(store.list(cfg.name, p) for p in range(PARTITIONS))
    committed_before = _committed(bootstrap, cfg.group_id)
    for p in range(PARTITIONS):  # what FLUSHALL does to this pipeline, without touching other tests' keys
        store._redis.delete(*store._redis.scan_iter(match=f"streamwise:{cfg.name}:{p}:*"))
    env["STREAMWISE_SNAPSHOT__ON_MISSING"] = policy
    if policy == "replay":
        final = _start(path, env, until_idle=2.0, log=log)
        assert final.wait(timeout=240) == 0, (tmp_path / "worker.log").read_text()[-3000:]
        text = (tmp_path / "worker.log").read_text()
        lost = set(re.findall(r"no snapshot of partition (\d+), .*the store lost data", text))
        assert lost == {str(p) for p in range(PARTITIONS)} and "snapshot.on_missing=replay" in text, text[-3000:]
        _assert_same_as_reference(bootstrap, cfg, reference, store)
    else:
        waiting = _start(path, env, log=log)
        def refused() -> set[str]:
            text = (tmp_path / "worker.log").read_text()
            return set(re.findall(r"partition (\d+) waits, paused: .*snapshot.on_missing=refuse", text))

        deadline = time.monotonic() + 60
        while len(refused()) < PARTITIONS:
            assert time.monotonic() < deadline and waiting.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
            time.sleep(0.2)
        time.sleep(3)
        assert waiting.poll() is None, "the worker must keep running, its partitions held"
        assert _committed(bootstrap, cfg.group_id) == committed_before, "a refused partition moved on"
        waiting.send_signal(signal.SIGTERM)
        assert waiting.wait(timeout=60) == 0


@pytest.mark.parametrize("pause_s", [5, 90])
def test_a_paused_broker_stops_no_worker_and_loses_nothing(bootstrap, credit_topic, unique, reference, tmp_path, pause_s):
    """SIGSTOP of the broker mid-run (a long GC pause, a network blip), then SIGCONT: the
    worker keeps running, and the output is exactly once and equal to the reference."""
    from streamwise.devservices import kafka_pid

    cfg = _config(f"{unique}-broker", credit_topic)
    path = _write(cfg, tmp_path / "pipeline.yaml")
    log = open(tmp_path / "worker.log", "wb")
    proc = _start(path, _worker_env(), until_idle=5.0, log=log)
    _wait_committed(bootstrap, cfg.group_id, 5000, proc)
    broker = kafka_pid()
    os.kill(broker, signal.SIGSTOP)
    try:
        time.sleep(pause_s)
        assert proc.poll() is None, "the worker exited while the broker was paused"
    finally:
        os.kill(broker, signal.SIGCONT)
    assert proc.wait(timeout=300) == 0, (tmp_path / "worker.log").read_text()[-3000:]
    _assert_same_as_reference(bootstrap, cfg, reference, reference["store"])


def test_a_broker_killed_and_restarted_stops_no_worker(bootstrap, credit_topic, unique, reference, tmp_path):
    """kill -9 of the broker mid-run, then dev/up starts it again on the same port and
    data: the worker rides it out, the output is exactly once and equal to the reference."""
    from streamwise.devservices import DEV_UP, kafka_pid

    cfg = _config(f"{unique}-restart", credit_topic)
    path = _write(cfg, tmp_path / "pipeline.yaml")
    log = open(tmp_path / "worker.log", "wb")
    proc = _start(path, _worker_env(), until_idle=5.0, log=log)
    _wait_committed(bootstrap, cfg.group_id, 5000, proc)
    os.kill(kafka_pid(), signal.SIGKILL)
    time.sleep(3)
    assert proc.poll() is None, "the worker exited when the broker died"
    restarted = subprocess.run([str(DEV_UP)], capture_output=True, text=True, timeout=180)
    assert restarted.returncode == 0, restarted.stderr
    assert proc.wait(timeout=300) == 0, (tmp_path / "worker.log").read_text()[-3000:]
    _assert_same_as_reference(bootstrap, cfg, reference, reference["store"])


def test_a_model_slower_than_the_poll_interval_still_makes_progress(settings, bootstrap, unique, caplog):
    """Each learn_one sleeps 10 ms and the group expects a poll every 6 s: a batch of a
    thousand records would outlast it, be fenced, rewound and fetched again forever.
    The runner shrinks its polls instead; every id comes out once."""
    import logging

    from support import phishing_pipeline

    n = 1250
    cfg = phishing_pipeline(unique, scope="partition")
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(cfg.input.topic, num_partitions=PARTITIONS, replication_factor=1)])
    admin.close()
    assert produce(bootstrap, cfg.input.topic, iter_events("Phishing", limit=n)) == n
    from streamwise.models.catalog import ModelSpec

    cfg.models = [
        ModelSpec(
            name="slow",
            steps=[{"streamwise.DelayedClassifier": {"classifier": {"naive_bayes.GaussianNB": {}}, "seconds": 0.01}}],
        )
    ]
    settings.kafka.max_poll_interval_ms = 6000
    settings.kafka.session_timeout_ms = 6000
    with caplog.at_level(logging.WARNING, logger="streamwise.runner"):
        summary = Runner(cfg, settings).run(until_idle_s=2.0)
    assert summary.predictions >= 1250
    assert any("polling at most" in r.getMessage() for r in caplog.records)
    ids = [json.loads(r.value)["id"] for r in consume(bootstrap, cfg.output.topic, 1250)]
    assert collections.Counter(ids) == collections.Counter(range(1250))


def _manifest_history(store: RedisStateStore, pipeline: str, partitions: int, stop) -> list[dict]:
    """Samples each partition's newest snapshot (owner claim, offsets) until ``stop`` is set."""
    seen: list[dict] = []
    while not stop.is_set():
        for p in range(partitions):
            try:
                infos = store.list(pipeline, p)
            except Exception:  # noqa: BLE001 - Redis may be paused by the test
                continue
            if infos:
                seen.append({"partition": p, "owner": infos[0].owner, "epoch": infos[0].epoch, "offsets": infos[0].offsets})
        time.sleep(0.2)
    return seen


def _never_goes_back(history: list[dict]) -> None:
    last: dict[int, dict] = {}
    for h in history:
        before = last.get(h["partition"])
        if before is not None:
            assert h["epoch"] >= before["epoch"] and h["owner"] >= before["owner"], (before, h)
            assert all(h["offsets"].get(k, 0) >= v for k, v in before["offsets"].items()), (before, h)
        last[h["partition"]] = h


def test_a_zombie_worker_is_fenced_in_kafka_and_in_redis(bootstrap, credit_topic, unique, reference, tmp_path):
    """One of two workers is paused (SIGSTOP) for three session timeouts, so Kafka gives
    its partitions to the other, then resumed: its transaction and its snapshots are
    refused, no id is lost or repeated, and no partition's snapshot history goes back."""
    import threading

    cfg = _config(f"{unique}-zombie", credit_topic)
    path = _write(cfg, tmp_path / "pipeline.yaml")
    env = _worker_env()
    log = open(tmp_path / "workers.log", "wb")
    survivor = _start(path, env, index=0, until_idle=10.0, log=log)
    zombie = _start(path, env, index=1, until_idle=10.0, log=log)
    stop = threading.Event()
    history: list[dict] = []
    sampler = threading.Thread(target=lambda: history.extend(_manifest_history(reference["store"], cfg.name, PARTITIONS, stop)))
    sampler.start()
    try:
        _wait_committed(bootstrap, cfg.group_id, 4000, survivor)
        zombie.send_signal(signal.SIGSTOP)
        time.sleep(3 * 6.0)  # three times STREAMWISE_KAFKA__SESSION_TIMEOUT_MS
        zombie.send_signal(signal.SIGCONT)
        assert survivor.wait(timeout=240) == 0, (tmp_path / "workers.log").read_text()[-3000:]
        assert zombie.wait(timeout=240) == 0, (tmp_path / "workers.log").read_text()[-3000:]
    finally:
        stop.set()
        sampler.join()
        for proc in (survivor, zombie):
            if proc.poll() is None:
                proc.kill()
    _assert_same_as_reference(bootstrap, cfg, reference, reference["store"])
    assert history, "no snapshot was seen"
    _never_goes_back(history)


def _publish_live(bootstrap: str, topic: str, partitions: int, n: int, seed: int):
    """Creates ``topic`` and publishes ``n`` Agrawal events into it, ~60 a second, from a
    thread (returned, started): events that keep arriving through the fault."""
    import threading

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    admin.close()
    events = list(iter_events("synth.Agrawal", {"seed": seed}, limit=n))

    def publish() -> None:
        for i in range(0, n, 60):
            produce(bootstrap, topic, events[i : i + 60])
            time.sleep(1.0)

    producer = threading.Thread(target=publish)
    producer.start()
    return producer


def test_redis_paused_for_two_minutes_with_a_worker_lost_meanwhile(settings, bootstrap, unique, private_redis, tmp_path):
    """12 partitions, two workers, events arriving live. Redis is paused (SIGSTOP) for
    120 s and one worker is killed during it: the other keeps serving the partitions it
    holds (no gap over 10 s in their output), holds the ones it takes over until Redis is
    back, then restores them; every id exactly once, and no orphan chunk is left."""
    import redis as _redis

    n, topic = 9000, f"{unique}.events"
    producer = _publish_live(bootstrap, topic, partitions=12, n=n, seed=7)  # 150 s
    cfg = _config(f"{unique}-outage", topic)
    path = _write(cfg, tmp_path / "pipeline.yaml")
    env = _worker_env(private_redis["url"])
    log = open(tmp_path / "workers.log", "wb")
    survivor = _start(path, env, index=0, until_idle=10.0, log=log)
    victim = _start(path, env, index=1, log=log)
    try:
        _wait_committed(bootstrap, cfg.group_id, 600, survivor)
        paused_at = time.time()
        private_redis["proc"].send_signal(signal.SIGSTOP)
        time.sleep(10)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        time.sleep(60)
        # Every thread's stack into the log mid-outage (streamwise run's SIGUSR1): if the
        # survivor ever stops serving here, the failure below shows where it waits.
        survivor.send_signal(signal.SIGUSR1)
        time.sleep(50)
        assert survivor.poll() is None, "the worker exited while Redis was paused"
        private_redis["proc"].send_signal(signal.SIGCONT)
        resumed_at = time.time()
        producer.join()
        assert survivor.wait(timeout=300) == 0, (tmp_path / "workers.log").read_text()[-3000:]
    finally:
        private_redis["proc"].send_signal(signal.SIGCONT)
        for proc in (survivor, victim):
            if proc.poll() is None:
                proc.kill()
    records = consume(bootstrap, cfg.output.topic, n, timeout_s=120)
    counts = collections.Counter(json.loads(r.value)["id"] for r in records)
    assert counts == collections.Counter(range(n)), f"{sum(c > 1 for c in counts.values())} repeated, {n - len(counts)} missing"
    # The outputs written while Redis was paused: the survivor's own partitions went on.
    during = sorted(r.timestamp / 1000.0 for r in records if paused_at + 2 < r.timestamp / 1000.0 < resumed_at)
    assert during, "nothing was served while Redis was paused"
    gaps = [b - a for a, b in zip([paused_at + 2, *during], [*during, resumed_at], strict=True)]
    if max(gaps) >= 10.0:
        import re

        text = (tmp_path / "workers.log").read_text()
        dumped = re.search(r"(Current thread|Thread) 0x", text)
        stacks = text[dumped.start():][:6000] if dumped else "(no stack dump in the log)"
        pytest.fail(f"longest gap in the output while Redis was paused: {max(gaps):.1f} s; the survivor's"
                    f" threads 60 s into the pause:\n{stacks}")
    r = _redis.Redis.from_url(private_redis["url"])
    orphans = [k for k in r.scan_iter(match=f"streamwise:{cfg.name}:*:blob:*") if r.ttl(k) != -1]
    assert not orphans, f"{len(orphans)} chunks no manifest adopted"


def test_partitions_given_back_while_redis_is_paused_are_served_from_memory(settings, bootstrap, unique, private_redis, tmp_path):
    """Worker a holds all 6 partitions (none snapshotted yet) when Redis is paused
    (SIGSTOP). Worker b joins, takes some of them, cannot restore them, and is killed:
    the group gives them back to a, which held them before and restores them from memory
    (re-learning from offset 0 up to what is committed), so every partition is served
    again while Redis is still paused. Before, they waited for Redis. Every id exactly once."""
    partitions, n, topic = 6, 4800, f"{unique}.events"
    producer = _publish_live(bootstrap, topic, partitions=partitions, n=n, seed=11)  # 80 s
    cfg = _config(f"{unique}-back", topic)
    path = _write(cfg, tmp_path / "pipeline.yaml")
    env = _worker_env(private_redis["url"])
    log = open(tmp_path / "workers.log", "wb")
    keeper = _start(path, env, index=0, until_idle=10.0, log=log)
    joiner = None
    try:
        _wait_committed(bootstrap, cfg.group_id, 300, keeper)
        private_redis["proc"].send_signal(signal.SIGSTOP)
        joiner = _start(path, env, index=1, log=log)
        time.sleep(12)  # b joins and is given its share, which it cannot restore
        joiner.send_signal(signal.SIGKILL)
        joiner.wait()
        killed_at = time.time()
        time.sleep(30)  # a session timeout (6 s), the rebalance, the restores from memory
        resumed_at = time.time()
        assert keeper.poll() is None, "the worker exited while Redis was paused"
        private_redis["proc"].send_signal(signal.SIGCONT)
        producer.join()
        assert keeper.wait(timeout=300) == 0, (tmp_path / "workers.log").read_text()[-3000:]
    finally:
        private_redis["proc"].send_signal(signal.SIGCONT)
        for proc in (keeper, joiner):
            if proc is not None and proc.poll() is None:
                proc.kill()
    records = consume(bootstrap, cfg.output.topic, n, timeout_s=120)
    counts = collections.Counter(json.loads(r.value)["id"] for r in records)
    assert counts == collections.Counter(range(n)), f"{sum(c > 1 for c in counts.values())} repeated, {n - len(counts)} missing"
    # Written in the last 10 s before Redis came back: every partition, b's share too.
    served = {json.loads(r.value)["source"]["partition"] for r in records if resumed_at - 10 < r.timestamp / 1000.0 < resumed_at}
    text = (tmp_path / "workers.log").read_text()
    assert served == set(range(partitions)), (
        f"partitions served in the 10 s before Redis came back: {sorted(served)} (b killed"
        f" {resumed_at - killed_at:.0f} s before); log tail:\n{text[-3000:]}"
    )
    assert "while the store is down" in text


def test_until_idle_ends_a_run_whose_redis_never_answers_and_a_plain_run_waits(bootstrap, unique, tmp_path):
    """Redis down from the start: the partitions wait, paused, for their state. With
    --until-idle the run ends once that has lasted as long, with exit 2 and one line
    naming Redis (before, it never ended, and dev/demo with it); without, the worker
    waits for Redis (README) until stopped."""
    import socket

    topic = f"{unique}.events"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
    admin.close()
    produce(bootstrap, topic, iter_events("synth.Agrawal", {"seed": 3}, limit=200))
    cfg = _config(f"{unique}-noredis", topic)
    path = _write(cfg, tmp_path / "pipeline.yaml")
    with socket.socket() as s:  # a port nothing listens on: Redis "down"
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = _worker_env(f"redis://127.0.0.1:{port}/0")
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        ended = _start(path, env, until_idle=1.5, log=out)
        try:
            assert ended.wait(timeout=60) == 2, log.read_text()[-3000:]
        finally:
            if ended.poll() is None:
                ended.kill()
    last = log.read_text().strip().splitlines()[-1]
    assert last.startswith(f"streamwise: Redis at 127.0.0.1:{port}/0 was unreachable for "), log.read_text()[-3000:]
    assert last.endswith("(--until-idle 1.5 s): partitions 0, 1 could not be restored or snapshotted"), last
    assert "Traceback" not in log.read_text()
    assert _committed(bootstrap, cfg.group_id) == 0
    with open(tmp_path / "plain.log", "wb") as out:
        waiting = _start(path, env, log=out)
        try:
            time.sleep(8)
            assert waiting.poll() is None, (tmp_path / "plain.log").read_text()[-3000:]
        finally:
            waiting.send_signal(signal.SIGTERM)
            try:
                assert waiting.wait(timeout=60) == 0, (tmp_path / "plain.log").read_text()[-3000:]
            finally:
                if waiting.poll() is None:
                    waiting.kill()
