"""scope: global on the real broker and Redis: one model learns from every partition,
and its metric equals ``river.evaluate.progressive_val_score`` on the order the service
wrote to its learn topic; the worker holding the learner is killed and another takes
the learner over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from streamwise.connectors.redis_state import RedisStateStore
from support import consume, consume_to_end, phishing_pipeline

from streamwise.pipeline_config import parse_pipeline_config
from streamwise.processor import PipelineProcessor
from streamwise.replay import iter_events
from streamwise.runner import Runner
from streamwise.testing import river_on_learn_order

AGRAWAL_FEATURES = {
    "salary": "float", "commission": "float", "age": "int", "elevel": "int", "car": "int", "zipcode": "int",
    "hvalue": "float", "hyears": "int", "loan": "float",
}


def _agrawal_config(prefix: str, labels_topic: bool) -> Any:
    return parse_pipeline_config({
        "name": prefix,
        "input": {"topic": f"{prefix}.events", **({"labels_topic": f"{prefix}.labels"} if labels_topic else {})},
        "output": {"topic": f"{prefix}.predictions"},
        "schema": {"id": "id", **({} if labels_topic else {"label": "label"}), "label_type": "int",
                   "features": AGRAWAL_FEATURES},
        "metric": "Accuracy",
        "labels": {"label_field": "label"},
        "models": [
            {"name": "tree", "steps": [{"tree.HoeffdingTreeClassifier": {"grace_period": 100}}]},
            {"name": "logreg", "steps": ["preprocessing.StandardScaler", "linear_model.LogisticRegression"]},
        ],
    })


def _topics(bootstrap: str, partitions: int, *names: str) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(n, num_partitions=partitions, replication_factor=1) for n in names])
    finally:
        admin.close()


def _publish_qa(bootstrap: str, cfg: Any, events: list[tuple[bytes | None, bytes]], delay: int) -> None:
    """One producer, as fast as it goes: River's simulate_qa order, the label of event
    j - delay just before event j, then the last labels; labels keyed like their events."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    bodies = [json.loads(v) for _, v in events]

    def label(j: int) -> None:
        body = json.dumps({"id": bodies[j]["id"], "label": bodies[j]["label"]}).encode()
        producer.send(cfg.input.labels_topic, key=events[j][0], value=body)

    for j, (key, _) in enumerate(events):
        if j >= delay:
            label(j - delay)
        event = {k: v for k, v in bodies[j].items() if k != "label"}
        producer.send(cfg.input.topic, key=key, value=json.dumps(event).encode())
    for j in range(max(0, len(events) - delay), len(events)):
        label(j)
    producer.flush()
    producer.close()


CASES = {
    # Inline labels, published before the run.
    "phishing-3": {"partitions": 3, "n": 1250, "delay": None},
    # Labels on their own topic, published by one producer while the service runs.
    "agrawal-12-delayed": {"partitions": 12, "n": 3000, "delay": 50},
    # One partition of each: the merge of events and labels is written down too.
    "agrawal-1-delayed": {"partitions": 1, "n": 2000, "delay": 50},
}


@pytest.mark.parametrize("case", list(CASES))
def test_one_model_learns_every_partition_and_equals_river_on_the_learn_order(case, settings, bootstrap, unique):
    spec = CASES[case]
    n, partitions, delay = spec["n"], spec["partitions"], spec["delay"]
    if case.startswith("phishing"):
        cfg = phishing_pipeline(unique)
        events = list(iter_events("Phishing"))
    else:
        cfg = _agrawal_config(unique, labels_topic=True)
        events = list(iter_events("synth.Agrawal", {"seed": 7, "classification_function": 1}, limit=n))
    assert cfg.scope == "global"  # the default
    topics = [cfg.input.topic, *([cfg.input.labels_topic] if cfg.input.labels_topic else [])]
    _topics(bootstrap, partitions, *topics)
    runner = Runner(cfg, settings)
    if delay is None:
        producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
        for key, value in events:
            producer.send(cfg.input.topic, key=key, value=value)
        producer.close()
        publisher = None
    else:
        publisher = threading.Thread(target=_publish_qa, args=(bootstrap, cfg, events, delay))
        publisher.start()
    summary = runner.run(until_idle_s=2.0)
    if publisher is not None:
        publisher.join()
    assert runner.global_scope
    out = [json.loads(r.value) for r in consume(bootstrap, cfg.output.topic, n)]
    assert Counter(r["id"] for r in out) == Counter(json.loads(v)["id"] for _, v in events), "every id once"
    assert {r["source"]["partition"] for r in out} == set(range(partitions))
    learn = consume_to_end(bootstrap, cfg.learn_topic)
    assert len(learn) == n * (1 if delay is None else 2)
    (processor,) = runner.partitions.all_processors().values()
    # ONE model per name, which learned from every event of every partition...
    assert {m.name: m.n_learned for m in processor.models} == {m.name: n for m in cfg.models}
    # ...and whose metric is River's on the order the service wrote down.
    river = river_on_learn_order(cfg, learn)
    for name, value in river.items():
        assert summary.metrics[name]["value"] == pytest.approx(value, abs=1e-12), name


def _scrape_learn(port: int) -> float | None:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("streamwise_stage_partitions{") and 'stage="learn"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.mark.parametrize("kafka_client", ["kafka-python"], indirect=True)
def test_kill_9_of_the_worker_holding_the_learner_another_takes_over(settings, bootstrap, unique, services, tmp_path):
    n, partitions = 6000, 3
    cfg = _agrawal_config(unique, labels_topic=False)
    _topics(bootstrap, partitions, cfg.input.topic)
    # Half the stream before the kill, half after: predictions and learning must go on
    # after it (the first half alone may be predicted in full before a holder is seen).
    events = list(iter_events("synth.Agrawal", {"seed": 3}, limit=n))
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    for key, value in events[: n // 2]:
        producer.send(cfg.input.topic, key=key, value=value)
    producer.flush()
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(by_alias=True, exclude_none=True), sort_keys=False))
    ports = [_free_port(), _free_port()]
    log = open(tmp_path / "workers.log", "wb")
    procs = []
    for i, port in enumerate(ports):
        env = dict(os.environ, STREAMWISE_METRICS__PORT=str(port), STREAMWISE_METRICS__HOST="127.0.0.1",
                   STREAMWISE_KAFKA__SESSION_TIMEOUT_MS="6000", STREAMWISE_KAFKA__TRANSACTION_TIMEOUT_MS="6000",
                   STREAMWISE_KAFKA__MAX_POLL_RECORDS="200", STREAMWISE_SNAPSHOT__EVERY_EVENTS="500",
                   PYTHONUNBUFFERED="1")
        cmd = [sys.executable, "-m", "streamwise", "run", "--config", str(path), "--worker-index", str(i)]
        # Idle for 20 s, past the 6 s session timeout: a worker holding no input partition
        # yet must still be there to take the killed one's.
        procs.append(subprocess.Popen([*cmd, "--until-idle", "20"], env=env, stdout=log, stderr=subprocess.STDOUT))
        time.sleep(1.0)
    try:
        # Kill whichever worker holds the learner, once it has predicted part of the stream.
        deadline = time.monotonic() + 120
        holder = None
        while holder is None:
            assert time.monotonic() < deadline, "no worker took the learner"
            assert all(p.poll() is None for p in procs), (tmp_path / "workers.log").read_text()[-3000:]
            held = [_scrape_learn(port) for port in ports]
            if 1.0 in held and len(consume_to_end(bootstrap, cfg.output.topic)) >= n // 5:
                holder = held.index(1.0)
            time.sleep(0.2)
        killed_at = time.time()
        procs[holder].send_signal(signal.SIGKILL)
        procs[holder].wait()
        for key, value in events[n // 2 :]:
            producer.send(cfg.input.topic, key=key, value=value)
        producer.close()
        survivor = procs[1 - holder]
        assert survivor.wait(timeout=240) == 0, (tmp_path / "workers.log").read_text()[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    out = consume(bootstrap, cfg.output.topic, n, timeout_s=60)
    ids = Counter(json.loads(r.value)["id"] for r in out)
    assert sorted(ids) == list(range(n)) and max(ids.values()) == 1, "every id exactly once"
    # The first prediction the survivor wrote after the kill: the takeover time.
    after = [r.timestamp / 1000.0 for r in out if r.timestamp / 1000.0 > killed_at]
    assert after, "nothing was predicted after the kill"
    takeover_s = min(after) - killed_at
    print(f"kill -9 of the learner's worker -> first new prediction: {takeover_s:.1f} s")
    assert takeover_s < 60
    # The learner's final state is the one an uncrashed learner builds from the same order.
    learn = consume_to_end(bootstrap, cfg.learn_topic)
    assert len(learn) == n
    key = settings.snapshot.signing_key.get_secret_value().encode()
    store = RedisStateStore(services["STREAMWISE_REDIS__URL"], key)
    (final,) = store.list(f"{cfg.name}.learn", 0)[:1]
    uncrashed = PipelineProcessor(cfg, stage="learn")
    uncrashed.process(_as_consumed(learn))
    from streamwise.models.state import fingerprint

    assert final.meta["fingerprint"] == fingerprint(uncrashed.snapshot_state())


def _as_consumed(records: list[Any]) -> list[Any]:
    from streamwise.connectors.records import ConsumedRecord

    return [ConsumedRecord(r.topic, r.partition, r.offset, r.key, r.value, r.timestamp) for r in records]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]



@pytest.mark.parametrize("kafka_client", ["kafka-python"], indirect=True)
def test_fraud_example_on_six_partitions_keeps_per_card_windows_and_the_one_partition_auc(
    settings, bootstrap, unique
):
    from streamwise.models.state import fingerprint
    from streamwise.stream.datasets import CardTransactions
    from streamwise.stream.pipeline import build_event_pipeline, split_steps

    from streamwise.pipeline_config import load_pipeline_config
    from streamwise.processor import decode_learn_record

    root = Path(__file__).resolve().parents[2]
    events = list(CardTransactions(n_events=3000, seed=7))
    records = [(e["card_id"].encode(), json.dumps(e).encode()) for e in events]
    runs = {}
    for partitions in (6, 1):
        cfg = load_pipeline_config(root / "examples" / "fraud.yaml")
        cfg.name = f"{unique}-p{partitions}"
        cfg.input.topic = f"{cfg.name}.transactions"
        cfg.output.topic = f"{cfg.name}.scores"
        _topics(bootstrap, partitions, cfg.input.topic)
        producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
        for key, value in records:
            producer.send(cfg.input.topic, key=key, value=value)
        producer.close()
        runner = Runner(cfg, settings)
        summary = runner.run(until_idle_s=2.0)
        out = [json.loads(r.value) for r in consume(bootstrap, cfg.output.topic, len(events))]
        assert sorted(r["id"] for r in out) == sorted(e["id"] for e in events), "every transaction scored once"
        runs[partitions] = (cfg, runner, summary)
    cfg, runner, summary = runs[6]
    assert runner.global_scope
    learn = _as_consumed(consume_to_end(bootstrap, cfg.learn_topic))
    # Exact on its own order: the learner is what one learner builds from the learn topic.
    (processor,) = runner.partitions.all_processors().values()
    uncrashed = PipelineProcessor(cfg, stage="learn")
    uncrashed.process(learn)
    assert fingerprint(processor.snapshot_state()) == fingerprint(uncrashed.snapshot_state())
    # Per-card (and per card-and-merchant) windows ran on the partitions, per card: each
    # event's window features equal those of the same steps over the whole stream in order.
    route, _ = split_steps(cfg.cleaners, cfg.features, cfg.event_schema)
    assert "window_aggregates" in [s.kind for s in route]
    whole = build_event_pipeline(cfg.event_schema, route)
    expected = {e.id: e.x for e in whole.decode_many([v for _, v in records]) if hasattr(e, "x")}
    written = {item.id: item.x for _, item in map(decode_learn_record, learn)}
    assert written == expected
    # The order is the only difference from the one-partition run: the same learner fed
    # these very learn records in the input's order gives the one-partition run's ROC AUC.
    auc = {p: s.metrics["logreg"]["value"] for p, (_, _, s) in runs.items()}
    position = {json.loads(v)["id"]: i for i, (_, v) in enumerate(records)}
    in_input_order = sorted(learn, key=lambda r: position[decode_learn_record(r)[1].id])
    reordered = PipelineProcessor(cfg, stage="learn")
    reordered.process(in_input_order)
    (model,) = reordered.models
    print(f"fraud.yaml ROC AUC: 6 partitions, global {auc[6]:.4f}; 1 partition {auc[1]:.4f}")
    assert model.metric.get() == pytest.approx(auc[1], abs=1e-12)
