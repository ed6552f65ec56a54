"""No single record stops the service: one poison among 999 good events, real broker, both clients.

For each poison, 999 good events (and their labels, for the labels-topic pipeline) go
to a 3-partition topic with the poison in partition 2. The service runs in process
until the input is drained, then must show: exactly one dead letter, with the poison's
stage; a prediction for each of the 999 good events; and partitions 0 and 1 in exactly
the state of a poison-free run of the same stream (one baseline per client and
pipeline, shared by the cases).

Two pipelines, because a labels topic makes the moment a label is learned depend on
how the two topics' fetches interleave: the events pipeline (inline labels, a River
and a torch model) compares whole partition states; the labels pipeline (River only)
compares its estimators, whose final state does not depend on that interleaving.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic
from streamwise.models.state import fingerprint
from support import consume

from streamwise.pipeline_config import parse_pipeline_config
from streamwise.processor import H_STAGE
from streamwise.runner import Runner

N_GOOD = 999
POISON_PARTITION = 2
MARK = 666.0  # a feature value that makes the patched models raise
BASE_S = time.time() - 7200  # event times: two hours ago, one second apart
BIG = 16 * 1024 * 1024


def _config(prefix: str, labels_topic: bool) -> Any:
    torch_model = {
        "name": "mlp",
        "steps": [{"streamwise.TorchMiniBatchClassifier": {"classes": ["no", "yes"], "hidden_layers": [8]}}],
    }
    return parse_pipeline_config(
        {
            "name": prefix,
            # Each partition's replica is compared with its own reference run.
            "scope": "partition",
            "input": {"topic": f"{prefix}.events", **({"labels_topic": f"{prefix}.labels"} if labels_topic else {})},
            "output": {"topic": f"{prefix}.predictions"},
            "schema": {
                "id": "id",
                **({} if labels_topic else {"label": "y"}),
                "label_type": "category",
                "classes": ["no", "yes"],
                "event_time": "ts",
                "max_future": "5m",
                "features": {"a": "float", "b": "float", "n": "int", "memo": {"type": "text", "required": False}},
            },
            "task": "classification",
            "metric": "Accuracy",
            "models": [{"name": "tree", "steps": ["tree.HoeffdingTreeClassifier"]}]
            + ([] if labels_topic else [torch_model]),
            # The labels topic may be fetched far ahead of the events: hold early labels.
            "labels": {"label_field": "label", "early_hold_s": 10**6},
        }
    )


def _good(i: int) -> dict[str, Any]:
    a, b = float(i % 7), float(i % 5)
    return {"id": i, "a": a, "b": b, "n": i % 11, "ts": BASE_S + i, "y": "yes" if (i % 7 + i % 5) % 3 else "no"}


def _stream(
    poison: str | None, labels_topic: bool
) -> tuple[list[tuple[int, int, bytes]], list[tuple[int, int, bytes]]]:
    """(events, labels) as (partition, timestamp ms, value); the poison goes to the middle of partition 2."""
    events, labels = [], []
    for i in range(N_GOOD):
        event = _good(i)
        if poison == "on_label raises" and i == 500:
            event["a"] = MARK  # its label's learning raises
        t_ms = int((BASE_S + i) * 1000)
        if labels_topic:  # the label goes to the labels topic, half a second after its event
            labels.append((i % 3, t_ms + 500, json.dumps({"id": i, "label": event.pop("y")}).encode()))
        events.append((i % 3, t_ms, json.dumps(event).encode()))
    if poison is None or poison == "on_label raises":
        return events, labels
    t_ms = int((BASE_S + N_GOOD / 2) * 1000)
    bad = {**_good(-1), "id": "poison", "ts": BASE_S + N_GOOD / 2}
    record: tuple[str, int, bytes]
    match poison:
        case "deep label JSON":
            record = ("labels", t_ms, b"[" * 100_000 + b"]" * 100_000)
        case "oversized label":
            record = ("labels", t_ms, json.dumps({"id": 500, "label": "yes", "pad": "x" * 2_000_000}).encode())
        case "unseen label (labels topic)":
            record = ("labels", t_ms, b'{"id": 500, "label": "maybe"}')
        case "unseen label (inline)":
            record = ("events", t_ms, json.dumps({**bad, "y": "maybe"}).encode())
        case "huge int into torch":
            record = ("events", t_ms, json.dumps({**bad, "n": 10**30}).encode())
        case "future event time":
            record = ("events", t_ms, json.dumps({**bad, "ts": "9999-12-31T23:59:59Z"}).encode())
        case "future record timestamp":
            record = ("events", int((time.time() + 1800) * 1000), json.dumps(bad).encode())
        case "10 MB string field":
            record = ("events", t_ms, json.dumps({**bad, "memo": "x" * 10_000_000}).encode())
        case "end_batch raises":
            record = ("events", t_ms, json.dumps({**bad, "b": MARK}).encode())
        case _:
            raise AssertionError(poison)
    target = events if record[0] == "events" else labels
    middle = next(k for k, (p, t, _v) in enumerate(target) if p == POISON_PARTITION and t >= t_ms)
    target.insert(middle, (POISON_PARTITION, record[1], record[2]))
    return events, labels


def _produce(bootstrap: str, cfg: Any, events: list[Any], labels: list[Any]) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        topics = [NewTopic(cfg.input.topic, 3, 1, topic_configs={"max.message.bytes": str(BIG)})]
        if cfg.input.labels_topic:
            topics.append(NewTopic(cfg.input.labels_topic, 3, 1))
        admin.create_topics(topics)
    finally:
        admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap, max_request_size=BIG, linger_ms=5)
    for topic, records in ((cfg.input.topic, events), (cfg.input.labels_topic, labels)):
        for partition, t_ms, value in records:
            producer.send(topic, value=value, partition=partition, timestamp_ms=t_ms)
    producer.flush()
    producer.close()


def _patch_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """A River model that raises while learning from a marked event, a torch model that
    raises while predicting one: bugs that only the last-resort guard can catch."""
    from river.tree import HoeffdingTreeClassifier
    from streamwise.models.torch_learner import TorchMiniBatchClassifier

    learn, predict = HoeffdingTreeClassifier.learn_one, TorchMiniBatchClassifier.predict_proba_many

    def learn_one(self: Any, x: dict[str, Any], y: Any, **kwargs: Any) -> None:
        if x.get("a") == MARK:
            raise RuntimeError("learn_one: a bug triggered by one event")
        learn(self, x, y, **kwargs)

    def predict_proba_many(self: Any, X: list[dict[str, Any]]) -> Any:
        if any(x.get("b") == MARK for x in X):
            raise RuntimeError("predict_proba_many: a bug triggered by one event")
        return predict(self, X)

    monkeypatch.setattr(HoeffdingTreeClassifier, "learn_one", learn_one)
    monkeypatch.setattr(TorchMiniBatchClassifier, "predict_proba_many", predict_proba_many)


def _partition_states(runner: Runner, labels_topic: bool) -> dict[int, str]:
    out = {}
    for p, processor in runner.partitions.all_processors().items():
        state = processor.snapshot_state()
        out[p] = fingerprint([m.estimator for m in processor.models] if labels_topic else state)
    return out


def _run(settings: Any, unique: str, poison: str | None, labels_topic: bool) -> dict[str, Any]:
    cfg = _config(unique, labels_topic)
    events, labels = _stream(poison, labels_topic)
    _produce(settings.kafka.bootstrap_servers, cfg, events, labels)
    runner = Runner(cfg, settings)
    summary = runner.run(until_idle_s=1.0)
    return {"cfg": cfg, "summary": summary, "states": _partition_states(runner, labels_topic)}


_BASELINES: dict[tuple[str, bool], dict[int, str]] = {}

POISONS = {
    # poison: (pipeline with a labels topic?, dead-letter stage)
    "deep label JSON": (True, "label"),
    "oversized label": (True, "label"),
    "unseen label (labels topic)": (True, "label"),
    # A model that raises is contained by its own error boundary (issue 16): it does not
    # learn from that event, the record says so, and no event is dead-lettered.
    "on_label raises": (True, None),
    "unseen label (inline)": (False, "label"),
    "huge int into torch": (False, "validate"),
    "future event time": (False, "clean"),
    "future record timestamp": (False, "clean"),
    "10 MB string field": (False, "decode"),
    "end_batch raises": (False, None),
}


@pytest.mark.parametrize("poison", list(POISONS))
def test_one_poison_costs_one_dead_letter_and_nothing_else(
    poison: str, settings: Any, unique: str, kafka_client: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    labels_topic, stage = POISONS[poison]
    settings.snapshot.enabled = False  # state is compared in memory; Redis adds nothing here
    _patch_models(monkeypatch)
    key = (kafka_client, labels_topic)
    if key not in _BASELINES:
        baseline = _run(settings, f"{unique}-base", None, labels_topic)
        assert baseline["summary"].dead_letters == {}
        _BASELINES[key] = baseline["states"]

    run = _run(settings, unique, poison, labels_topic)
    summary, cfg = run["summary"], run["cfg"]
    bootstrap = settings.kafka.bootstrap_servers
    if stage is None:
        # Contained by the failing model: every event predicted (the poison event too),
        # nothing dead-lettered, the other partitions as in the poison-free run.
        assert summary.dead_letters == {}
        extra = 0 if poison == "on_label raises" else 1
        assert summary.predictions == N_GOOD + extra
        out = [json.loads(r.value) for r in consume(bootstrap, cfg.output.topic, N_GOOD + extra, timeout_s=30)]
        if poison == "end_batch raises":
            (flagged,) = [r for r in out if r["id"] == "poison"]
            assert "error" in flagged["models"]["mlp"], flagged
        for p in (0, 1):
            assert run["states"][p] == _BASELINES[key][p], f"partition {p} differs from the poison-free run"
        return
    assert summary.dead_letters == {stage: 1}
    assert summary.predictions == N_GOOD
    (dead,) = consume(bootstrap, cfg.dead_letter_topic, 1, timeout_s=20)
    assert dict(dead.headers)[H_STAGE].decode() == stage
    assert int(dict(dead.headers)["streamwise.source.partition"]) == POISON_PARTITION
    assert len(dead.value) <= cfg.event_schema.max_event_bytes
    assert len(consume(bootstrap, cfg.output.topic, N_GOOD, timeout_s=30)) == N_GOOD
    for p in (0, 1):
        assert run["states"][p] == _BASELINES[key][p], f"partition {p} differs from the poison-free run"
