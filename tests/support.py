"""Helpers the tests share: read and write real Kafka topics with plain kafka-python.

These deliberately avoid streamwise's own connectors, so a test checks streamwise
against an independent client.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

from kafka import KafkaConsumer, KafkaProducer


def produce(bootstrap: str, topic: str, records: Iterable[tuple[bytes | None, bytes | None]]) -> int:
    producer = KafkaProducer(bootstrap_servers=bootstrap, max_request_size=8 * 1024 * 1024, linger_ms=5)
    n = 0
    for key, value in records:
        producer.send(topic, key=key, value=value)
        n += 1
    producer.flush()
    producer.close()
    return n


def consume(bootstrap: str, topic: str, expected: int, timeout_s: float = 60.0) -> list[Any]:
    """Reads a topic from the start, read_committed, until ``expected`` records or the timeout;
    then waits a little more to catch records beyond the expected count."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",
        max_partition_fetch_bytes=16 * 1024 * 1024,
        fetch_max_bytes=16 * 1024 * 1024,
        group_id=None,
    )
    out: list[Any] = []
    deadline = time.monotonic() + timeout_s
    extra_until = None
    while time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=300).values():
            out.extend(records)
        if len(out) >= expected and extra_until is None:
            extra_until = time.monotonic() + 1.0
        if extra_until is not None and time.monotonic() > extra_until:
            break
    consumer.close()
    return out


def consume_to_end(bootstrap: str, topic: str, timeout_s: float = 30.0) -> list[Any]:
    """Every committed record of a topic, read from the start up to its end offsets as
    they are now: for topics whose record count a test cannot know in advance."""
    from kafka import TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level="read_committed", group_id=None
    )
    deadline = time.monotonic() + timeout_s
    while not (partitions := consumer.partitions_for_topic(topic)):
        assert time.monotonic() < deadline, f"topic {topic} has no partitions"
        time.sleep(0.1)
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    end = consumer.end_offsets(tps)  # read_committed: the last stable offsets
    out: list[Any] = []
    while any(consumer.position(tp) < end[tp] for tp in tps):
        assert time.monotonic() < deadline, f"could not read {topic} to its end within {timeout_s} s"
        for records in consumer.poll(timeout_ms=200).values():
            out.extend(records)
    consumer.close()
    return out


def values(records: list[Any]) -> list[dict[str, Any]]:
    return [json.loads(r.value) for r in records]


def phishing_pipeline(prefix: str, **overrides: Any) -> Any:
    """The example Phishing pipeline, on this test's own topics and consumer group."""
    from pathlib import Path

    from streamwise.pipeline_config import load_pipeline_config

    cfg = load_pipeline_config(Path(__file__).resolve().parents[1] / "examples" / "phishing.yaml")
    cfg.name = prefix
    cfg.input.topic = f"{prefix}.events"
    cfg.output.topic = f"{prefix}.predictions"
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def reference_predictions(cfg: Any, events: Iterable[tuple[dict[str, Any], Any]]) -> dict[str, Any]:
    """Runs the pipeline's models in memory, test-then-train, with no Kafka at all.
    Returns each model's predictions in order and its final metric value."""
    from streamwise.models.catalog import build_estimator
    from streamwise.models.prequential import PrequentialModel

    models = [PrequentialModel(s.name, build_estimator(s.steps), cfg.metric) for s in cfg.models]
    preds: dict[str, list[Any]] = {m.name: [] for m in models}
    for x, y in events:
        for m in models:
            p = m.predict_one(x)
            preds[m.name].append(p.value)
            m.learn_one(x, y, p)
    return {"predictions": preds, "metrics": {m.name: m.metric.get() for m in models}}


# The stream of examples/credit_drift.yaml: the lending rule changes from Agrawal
# function 0 to function 7 at event 5,000, over a 100-event transition.
DRIFT_CHANGE, DRIFT_TRANSITION, DRIFT_EVENTS = 5000, 100, 15000
DRIFT_SOURCE = "synth.ConceptDriftStream"
DRIFT_PARAMS: dict[str, Any] = {
    "stream": "synth.Agrawal",
    "stream.classification_function": 0,
    "stream.seed": 42,
    "drift_stream": "synth.Agrawal",
    "drift_stream.classification_function": 7,
    "drift_stream.seed": 42,
    "position": DRIFT_CHANGE,
    "width": DRIFT_TRANSITION,
    "seed": 42,
}


def run_drift_example(settings: Any, events_topic: str, prefix: str, policy: str) -> dict[str, Any]:
    """Runs examples/credit_drift.yaml with ``drift.policy`` set to ``policy`` over the
    events already in ``events_topic``, on its own consumer group and output topics.
    Returns, from what the service wrote to Kafka, which predictions were right (the
    record's ``prediction`` under ``"pipeline"``, and each configured model's) in event
    order, and the alert records."""
    from pathlib import Path

    from streamwise.pipeline_config import load_pipeline_config
    from streamwise.replay import iter_events
    from streamwise.runner import Runner

    cfg = load_pipeline_config(Path(__file__).resolve().parents[1] / "examples" / "credit_drift.yaml")
    cfg.name = f"{prefix}-{policy}"
    cfg.input.topic = events_topic
    cfg.output.topic = f"{cfg.name}.predictions"
    cfg.output.alerts_topic = f"{cfg.name}.alerts"
    cfg.drift.policy = policy
    summary = Runner(cfg, settings).run(until_idle_s=2.0)
    bootstrap = settings.kafka.bootstrap_servers
    records = sorted(values(consume(bootstrap, cfg.output.topic, summary.events_in)), key=lambda r: r["id"])
    labels = [json.loads(v)["label"] for _k, v in iter_events(DRIFT_SOURCE, DRIFT_PARAMS, limit=summary.events_in)]
    assert [r["id"] for r in records] == list(range(len(labels))), "one prediction per event, none twice"
    correct = {"pipeline": [r["prediction"] == y for r, y in zip(records, labels, strict=True)]}
    for spec in cfg.models:
        correct[spec.name] = [r["models"][spec.name]["prediction"] == y for r, y in zip(records, labels, strict=True)]
    alerts = values(consume_to_end(bootstrap, cfg.alerts_topic))
    return {"correct": correct, "alerts": alerts, "events": summary.events_in}


def config_refusal(base: dict[str, Any], changes: dict[str, Any]) -> str:
    """The one-line ConfigError that ``base`` with ``changes`` (dotted keys, list indexes
    as numbers) gets from parse_pipeline_config, read as from "p.yaml"."""
    import copy

    import pytest
    from streamwise.core.errors import ConfigError
    from streamwise.pipeline_config import parse_pipeline_config

    data = copy.deepcopy(base)
    for dotted, value in changes.items():
        *path, last = dotted.split(".")
        node = data
        for part in path:
            node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
        node[last] = value
    with pytest.raises(ConfigError) as caught:
        parse_pipeline_config(data, "p.yaml")
    message = str(caught.value)
    assert "<root>" not in message and "Traceback" not in message
    return message


def pipeline_dict(features: dict[str, Any]) -> dict[str, Any]:
    """The smallest pipeline config as the YAML would give it: one bool-labelled
    StandardScaler | LogisticRegression model over ``features``."""
    return {
        "name": "p",
        "input": {"topic": "events"},
        "output": {"topic": "predictions"},
        "schema": {"id": "id", "label": "label", "label_type": "bool", "features": dict(features)},
        "models": [{"name": "lr", "steps": ["preprocessing.StandardScaler", "linear_model.LogisticRegression"]}],
    }
