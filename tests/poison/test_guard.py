"""The last-resort guard: whatever escapes per-event handling costs one dead letter, never the stream.

In process, no Kafka: a model is made to raise on one marked record (the class is
patched, so its instances still pickle as River's or ours), and the processor must
dead-letter exactly that record with stage ``process``, predict every other one, and
end with the state of a run that never saw the marked record.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from streamwise.connectors.records import ConsumedRecord
from streamwise.core.sensors import Sensor
from streamwise.core.stages import DeadLetterStage
from streamwise.models.state import fingerprint

from streamwise.pipeline_config import parse_pipeline_config
from streamwise.processor import H_STAGE, PipelineProcessor, RollbackPoint

NOW_MS = int(time.time() * 1000)
MARK = 666.0


def _config(model: str, labels_topic: bool) -> Any:
    return parse_pipeline_config(
        {
            "name": "guard",
            "input": {"topic": "ev", **({"labels_topic": "lab"} if labels_topic else {})},
            "output": {"topic": "out"},
            "schema": {"id": "id", "label": "y", "features": {"a": "float", "b": "float"}},
            "task": "classification",
            "metric": "Accuracy",
            "models": [{"name": "m", "steps": [model]}],
        }
    )


def _records(n: int, labels_topic: bool, poison_at: int | None) -> list[ConsumedRecord]:
    out = []
    for i in range(n):
        a = MARK if i == poison_at else float(i % 7)
        event: dict[str, Any] = {"id": i, "a": a, "b": float(i % 3)}
        if not labels_topic:
            event["y"] = i % 2 == 0
        out.append(ConsumedRecord("ev", 0, i, None, json.dumps(event).encode(), NOW_MS + 2 * i))
        if labels_topic:
            label = json.dumps({"id": i, "label": i % 2 == 0}).encode()
            out.append(ConsumedRecord("lab", 0, i, None, label, NOW_MS + 2 * i + 1))
    return out


def _raise_on_mark(x: Any) -> None:
    rows = x if isinstance(x, list) else [x]
    if any(row.get("a") == MARK for row in rows):
        raise RuntimeError("a model bug, triggered by one record")


# A model's own exception stays with the model (models/model.py: its prediction is an
# error, it does not learn); what the guard is for is an exception that escapes the
# model set, so the trigger is patched on the model set's per-model wrapper.
CASES = {
    # River learns from a delayed label in on_label.
    "river on_label": ("tree.HoeffdingTreeClassifier", True, "streamwise.models.model.Model", "learn_one"),
    # Torch predicts and learns the whole batch in end_batch.
    "torch end_batch": (
        "streamwise.TorchMiniBatchClassifier",
        False,
        "streamwise.models.model.Model",
        "predict_many",
    ),
}


class _Counting(Sensor):
    """Counts what the sensors hear: a roll-back's replay must not be heard twice."""

    def __init__(self) -> None:
        self.events_in = 0
        self.predictions = 0

    def on_events_in(self, topic: str, partition: int, n: int) -> None:
        self.events_in += n

    def on_predictions(self, latencies_s: Any) -> None:
        self.predictions += len(latencies_s)


# How often the guard's checkpoint is taken (RollbackPoint.WORK_RATIO): before every
# batch, or only before the first, so that going back replays every batch before the
# one that raised.
CADENCES = {"checkpoint every batch": 0.0, "replay since the first batch": float("inf")}


@pytest.mark.parametrize("work_ratio", CADENCES.values(), ids=CADENCES.keys())
@pytest.mark.parametrize("model,labels_topic,cls,method", CASES.values(), ids=CASES.keys())
def test_one_raising_record_is_one_process_dead_letter_and_learns_nothing(
    model: str, labels_topic: bool, cls: str, method: str, work_ratio: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    module, _, name = cls.rpartition(".")
    target = getattr(importlib.import_module(module), name)
    original = getattr(target, method)

    def exploding(self: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
        _raise_on_mark(x)
        return original(self, x, *args, **kwargs)

    monkeypatch.setattr(target, method, exploding)
    monkeypatch.setattr(RollbackPoint, "WORK_RATIO", work_ratio)
    n, poison_at = 300, 237
    sensor = _Counting()
    poisoned = PipelineProcessor(_config(model, labels_topic), sensor)
    records = _records(n, labels_topic, poison_at)
    out = [r for i in range(0, len(records), 100) for r in poisoned.process(records[i : i + 100])]

    dead = [r for r in out if r.topic.endswith(".dlq")]
    assert [dict(r.headers)[H_STAGE].decode() for r in dead] == [DeadLetterStage.PROCESS]
    predicted = [json.loads(r.value)["id"] for r in out if r.topic == "out"]
    assert len(predicted) == n - (0 if labels_topic else 1)
    assert sorted(predicted) == sorted(set(predicted))
    # Every record was heard of once and every prediction counted once, replay or not.
    assert sensor.events_in == len(records)
    assert sensor.predictions == len(predicted)
    # The state is exactly that of a run without the record that raised.
    clean = PipelineProcessor(_config(model, labels_topic))
    bad = dict(dead[0].headers)
    skip = (bad["streamwise.source.topic"].decode(), int(bad["streamwise.source.offset"]))
    kept = [r for r in records if (r.topic, r.offset) != skip]
    for i in range(0, len(kept), 100):
        clean.process(kept[i : i + 100])
    assert fingerprint(clean.snapshot_state()["learners"]) == fingerprint(poisoned.snapshot_state()["learners"])


def test_an_undeclared_label_that_a_torch_model_cannot_learn_stays_with_the_model() -> None:
    """Without schema classes, a label the torch classifier does not know makes it raise
    while learning; that is the model's fault alone (models/model.py): every event is
    predicted, nothing is dead-lettered, the fault is counted; with schema classes the
    label never gets there (tests/poison/test_limits.py)."""
    cfg = _config("streamwise.TorchMiniBatchClassifier", labels_topic=False)
    cfg.event_schema.label_type = "category"
    processor = PipelineProcessor(cfg)
    records = [
        ConsumedRecord("ev", 0, i, None, json.dumps({"id": i, "a": 1.0, "b": 2.0, "y": y}).encode(), NOW_MS + i)
        for i, y in enumerate([False, True, "maybe", True])
    ]
    out = processor.process(records)
    assert not [r for r in out if r.topic.endswith(".dlq")]
    assert sum(r.topic == "out" for r in out) == 4
    (model,) = processor.models
    assert model.faults == {"learn": 1} and model.last_error.startswith("ValueError: label 'maybe'")

@pytest.mark.parametrize("labels_topic", [False, True], ids=["inline labels", "labels topic"])
def test_a_poll_longer_than_a_chunk_gives_what_small_polls_give(
    labels_topic: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long poll is processed CHUNK records at a time (for the CPU cache); what comes
    out, what is learned and what the guard dead-letters are those of the same records
    in polls of 37, a raising record included."""
    original = PipelineProcessor.__dict__["_process_batch"]
    sizes: list[int] = []

    def counted(self: Any, records: Any) -> Any:
        sizes.append(len(records))
        if any(json.loads(r.value).get("a") == MARK for r in records if r.topic == "ev"):
            raise RuntimeError("a bug, triggered by one record")
        return original(self, records)

    monkeypatch.setattr(PipelineProcessor, "_process_batch", counted)
    records = _records(1000, labels_topic, poison_at=701)
    whole = PipelineProcessor(_config("linear_model.LogisticRegression", labels_topic))
    one_poll = whole.process(records)
    # Cut into CHUNK-sized pieces, then halves around the record that raised.
    assert max(sizes) == PipelineProcessor.CHUNK < len(records)
    small = PipelineProcessor(_config("linear_model.LogisticRegression", labels_topic))
    polls = [r for i in range(0, len(records), 37) for r in small.process(records[i : i + 37])]

    def body(r: Any) -> Any:
        d = json.loads(r.value) if r.topic == "out" else r.value
        if isinstance(d, dict):
            d.pop("latency_s", None)
        return r.topic, r.key, d

    assert [body(r) for r in one_poll] == [body(r) for r in polls]
    assert sum(r.topic.endswith(".dlq") for r in one_poll) == 1
    assert sum(r.topic == "out" for r in one_poll) == 999
    assert fingerprint(whole.snapshot_state()["learners"]) == fingerprint(small.snapshot_state()["learners"])
