"""The fraud example end to end on the real broker: cleaners and per-card windowed features
in the service, dirty records dead-lettered with their stage, one prediction per valid event."""

from __future__ import annotations

import datetime as dt
import json
import math
import random
from pathlib import Path
from typing import Any

from river import linear_model, metrics, preprocessing

from streamwise.pipeline_config import load_pipeline_config
from streamwise.runner import Runner
from streamwise.stream.datasets import CardTransactions
from streamwise.stream.pipeline import build_event_pipeline
from streamwise.stream.schema import RejectedEvent
from support import consume, produce, values

ROOT = Path(__file__).resolve().parents[2]
N = 3000


def _fraud_pipeline(prefix: str) -> Any:
    cfg = load_pipeline_config(ROOT / "examples" / "fraud.yaml")
    cfg.name = prefix
    cfg.input.topic = f"{prefix}.transactions"
    cfg.output.topic = f"{prefix}.scores"
    return cfg


def _dirty_stream(events: list[dict[str, Any]]) -> tuple[list[bytes], dict[bytes, str], int]:
    """The clean events with dirt mixed in: the stream's bytes in order, the stage each
    dirty record must be dead-lettered at, and how many coerced records stay valid."""
    rng = random.Random(11)
    stream = [json.dumps(e).encode() for e in events]
    expected: dict[bytes, str] = {}
    positions = sorted(rng.sample(range(100, N), 60))
    inserts: list[tuple[int, bytes, str | None]] = []
    for k, pos in enumerate(positions):
        e = dict(events[pos])
        kind = k % 6
        if kind == 0:  # a retried producer: the same event again, shortly after
            value, stage = json.dumps(events[pos - 1]).encode() + b" " * (k + 1), "clean"
        elif kind == 1:  # two hours behind the newest event time; 10 minutes are allowed
            newest = dt.datetime.fromisoformat(events[pos - 1]["ts"])
            e.update(id=f"late-{k}", ts=(newest - dt.timedelta(hours=2)).isoformat())
            value, stage = json.dumps(e).encode(), "clean"
        elif kind == 2:
            e.update(id=f"bad-amount-{k}", amount=rng.choice(["lots", -5, [1]]))
            value, stage = json.dumps(e).encode(), "validate"
        elif kind == 3:
            e.update(id=f"bad-time-{k}", ts="the day after tomorrow")
            value, stage = json.dumps(e).encode(), "validate"
        elif kind == 4:
            e.update(id=f"no-card-{k}")
            del e["card_id"]
            value, stage = json.dumps(e).encode(), "validate"
        else:  # written by hand: text numbers and booleans, coerced and kept
            e.update(id=f"coerced-{k}", amount=f"{e['amount']:.2f}", is_fraud=str(e["is_fraud"]).lower(),
                     ts=events[pos - 1]["ts"])
            value, stage = json.dumps(e).encode(), None
        inserts.append((pos, value, stage))
    n_coerced = 0
    for pos, value, stage in reversed(inserts):
        stream.insert(pos, value)
        if stage is None:
            n_coerced += 1
        else:
            expected[value] = stage
    return stream, expected, n_coerced


def _in_memory(cfg: Any, stream: list[bytes]) -> tuple[float, int]:
    """The same steps and model, test-then-train, with no Kafka: ROC AUC and events scored."""
    pipeline = build_event_pipeline(cfg.event_schema, cfg.cleaners, cfg.features)
    model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    auc, n = metrics.ROCAUC(), 0
    for value in stream:
        try:
            event = pipeline.decode(value)
        except RejectedEvent:
            continue
        auc.update(event.y, model.predict_proba_one(event.x))
        model.learn_one(event.x, event.y)
        n += 1
    return auc.get(), n


def test_fraud_example_through_the_service(settings, bootstrap, unique):
    cfg = _fraud_pipeline(unique)
    events = list(CardTransactions(n_events=N, seed=7))
    stream, expected_dlq, n_coerced = _dirty_stream(events)
    keys = [json.loads(v).get("card_id", "none").encode() for v in stream]
    produce(bootstrap, cfg.input.topic, zip(keys, stream, strict=True))

    summary = Runner(cfg, settings).run(until_idle_s=1.0)

    n_valid = N + n_coerced
    assert summary.events_in == len(stream)
    out = values(consume(bootstrap, cfg.output.topic, n_valid))
    assert len(out) == n_valid
    assert sorted(str(r["id"]) for r in out) == sorted(
        [str(e["id"]) for e in events] + [f"coerced-{k}" for k in range(5, 60, 6)]
    )
    dlq = consume(bootstrap, cfg.dead_letter_topic, len(expected_dlq))
    got = {r.value: dict(r.headers)["streamwise.error.stage"].decode() for r in dlq}
    assert got == expected_dlq
    assert {s for s in got.values()} == {"clean", "validate"}
    reasons = {dict(r.headers)["streamwise.error.message"].decode().split(":")[0] for r in dlq}
    assert {"duplicate event", "late event"} <= reasons

    # The service's prequential ROC AUC is exactly the in-memory one over the same stream...
    reference_auc, n_scored = _in_memory(cfg, stream)
    assert n_scored == n_valid
    assert math.isclose(summary.metrics["logreg"]["value"], reference_auc, rel_tol=0, abs_tol=1e-12)
    # ...and clearly above the same model without the per-card windowed features.
    without = cfg.model_copy(update={"features": [f for f in cfg.features if f.kind not in ("window_aggregates", "ratio")]})
    baseline_auc, _ = _in_memory(without, stream)
    print(f"fraud ROC AUC through the service {reference_auc:.4f}; without windowed features {baseline_auc:.4f}")
    assert reference_auc > baseline_auc + 0.05
