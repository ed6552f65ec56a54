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
