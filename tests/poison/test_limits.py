"""Every input path has limits: events and label records alike, in process (no Kafka).

The processor is driven with plain records; each poison must become exactly one dead
letter with its stage and leave the good records' predictions in place.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from streamwise.connectors.records import ConsumedRecord
from streamwise.core.stages import DeadLetterStage
from streamwise.stream.schema import EventDecoder, EventSchema, RejectedEvent

from streamwise.pipeline_config import parse_pipeline_config
from streamwise.processor import H_STAGE, PipelineProcessor

NOW_MS = int(time.time() * 1000)


def _config(cleaners: list[Any] | None = None, **schema: Any) -> Any:
    return parse_pipeline_config(
        {
            "name": "limits",
            "input": {"topic": "ev", "labels_topic": "lab"},
            "output": {"topic": "out"},
            "schema": {
                "id": "id",
                "label_type": "category",
                "classes": ["a", "b"],
                "features": {"x": "float", "city": {"type": "category", "required": False}},
                **schema,
            },
            "task": "classification",
            "metric": "Accuracy",
            "models": [{"name": "tree", "steps": ["tree.HoeffdingTreeClassifier"]}],
            "cleaners": cleaners or [],
        }
    )


def _rec(topic: str, offset: int, value: bytes | None, ts_ms: int = NOW_MS) -> ConsumedRecord:
    return ConsumedRecord(topic, 0, offset, None, value, ts_ms)


def _stages(out: list[Any]) -> list[str]:
    return [dict(r.headers)[H_STAGE].decode() for r in out if r.topic.endswith(".dlq")]


LABEL_POISONS = {
    "deep JSON": b"[" * 100_000 + b"]" * 100_000,
    "oversized": json.dumps({"id": 1, "label": "a", "pad": "x" * 2_000_000}).encode(),
    "unseen class": b'{"id": 1, "label": "c"}',
    "id too long": json.dumps({"id": "i" * 5000, "label": "a"}).encode(),
    "id beyond int64": b'{"id": 99999999999999999999999, "label": "a"}',
}


@pytest.mark.parametrize("poison", LABEL_POISONS.values(), ids=LABEL_POISONS.keys())
def test_a_poisoned_label_record_is_one_label_dead_letter(poison: bytes) -> None:
    processor = PipelineProcessor(_config())
    records = [
        _rec("ev", 0, b'{"id": 1, "x": 0.5}'),
        _rec("lab", 0, poison, NOW_MS + 1),
        _rec("lab", 1, b'{"id": 1, "label": "b"}', NOW_MS + 2),
    ]
    out = processor.process(records)
    assert _stages(out) == [DeadLetterStage.LABEL]
    assert sum(r.topic == "out" for r in out) == 1
    assert processor.learners.pending.stats.joined == 1  # the good label was learned


EVENT_POISONS = {
    "unseen inline class": (b'{"id": 1, "x": 0.5, "label": "zebra"}', DeadLetterStage.LABEL),
    "id too long": (json.dumps({"id": "i" * 1025, "x": 1.0}).encode(), DeadLetterStage.VALIDATE),
    "category too long": (json.dumps({"id": 1, "x": 1.0, "city": "c" * 1025}).encode(), DeadLetterStage.VALIDATE),
    "id beyond int64": (b'{"id": 9223372036854775808, "x": 1.0}', DeadLetterStage.VALIDATE),
    "deep JSON": (b"[" * 100_000 + b"]" * 100_000, DeadLetterStage.DECODE),
}


@pytest.mark.parametrize("poison,stage", EVENT_POISONS.values(), ids=EVENT_POISONS.keys())
def test_a_poisoned_event_is_one_dead_letter_with_its_stage(poison: bytes, stage: str) -> None:
    processor = PipelineProcessor(_config(label="label"))
    out = processor.process([_rec("ev", 0, poison), _rec("ev", 1, b'{"id": 2, "x": 0.5, "label": "a"}')])
    assert _stages(out) == [stage]
    assert sum(r.topic == "out" for r in out) == 1


def test_string_bounds_are_overridable_per_field_and_for_ids() -> None:
    schema = EventSchema(max_id_length=4, features={"memo": {"type": "text", "max_length": 3}})
    decoder = EventDecoder(schema)
    assert decoder.decode(b'{"id": "abcd", "memo": "abc"}').x == {"memo": "abc"}
    for bad in (b'{"id": "abcde", "memo": "abc"}', b'{"id": "abcd", "memo": "abcd"}'):
        with pytest.raises(RejectedEvent) as e:
            decoder.decode(bad)
        assert e.value.stage == DeadLetterStage.VALIDATE


def test_an_int_feature_beyond_int64_is_refused_before_any_model() -> None:
    decoder = EventDecoder(EventSchema(features={"n": "int"}))
    assert decoder.decode(b'{"id": 1, "n": 9223372036854775807}').x == {"n": 2**63 - 1}
    with pytest.raises(RejectedEvent, match="less than or equal"):
        decoder.decode(b'{"id": 1, "n": 9223372036854775808}')


def test_declared_classes_must_match_the_label_type() -> None:
    with pytest.raises(ValueError, match="not a bool label"):
        EventSchema(label_type="bool", classes=[True, "yes"], features={"x": "float"})


def _timed_config() -> Any:
    return _config(event_time="ts", max_future="5m", label="label", cleaners=[{"kind": "lateness", "allowed": "1m"}])


def _lateness(processor: PipelineProcessor) -> Any:
    return next(s for s in processor.events.steps if type(s).__name__ == "LatenessPolicy")


@pytest.mark.parametrize(
    "poison",
    [
        _rec("ev", 0, b'{"id": 0, "x": 1.0, "ts": "9999-12-31T23:59:59Z"}'),
        _rec("ev", 0, json.dumps({"id": 0, "x": 1.0, "ts": NOW_MS / 1000}).encode(), NOW_MS + 86_400_000),
    ],
    ids=["future event time", "future record timestamp"],
)
def test_a_future_event_is_a_clean_dead_letter_and_moves_no_clock(poison: ConsumedRecord) -> None:
    processor = PipelineProcessor(_timed_config())
    good = [
        _rec("ev", i, json.dumps({"id": i, "x": 1.0, "ts": NOW_MS / 1000 + i, "label": "a"}).encode(), NOW_MS + i)
        for i in range(1, 50)
    ]
    out = processor.process([poison, *good])
    assert _stages(out) == [DeadLetterStage.CLEAN]
    assert sum(r.topic == "out" for r in out) == 49
    assert _lateness(processor).watermark == NOW_MS / 1000 + 49
    assert processor.learners.now == (NOW_MS + 49) / 1000


@pytest.mark.parametrize("ahead_s", [3605.0, 86_400.0])
def test_a_future_record_timestamp_without_event_time_or_steps_is_a_clean_dead_letter(ahead_s: float) -> None:
    # No event time and no cleaners: the decoder's short path, which holds only record
    # timestamps to the clock, exactly as the full rule does (max_future 1 h); a record
    # just short of the limit is kept.
    processor = PipelineProcessor(_config(max_future="1h"))
    now_ms = int(time.time() * 1000)
    good = [_rec("ev", i, json.dumps({"id": i, "x": 1.0}).encode(), now_ms + i) for i in range(1, 20)]
    poison = _rec("ev", 0, b'{"id": 0, "x": 1.0}', now_ms + int(ahead_s * 1000))
    almost = _rec("ev", 20, b'{"id": 20, "x": 1.0}', now_ms + 3_599_500)
    out = processor.process([poison, *good, almost])
    assert _stages(out) == [DeadLetterStage.CLEAN]
    assert sum(r.topic == "out" for r in out) == 20


def test_a_future_label_record_is_a_label_dead_letter_and_moves_no_join_clock() -> None:
    processor = PipelineProcessor(_config())
    out = processor.process(
        [_rec("ev", 0, b'{"id": 1, "x": 0.5}'), _rec("lab", 0, b'{"id": 1, "label": "a"}', NOW_MS + 86_400_000)]
    )
    assert _stages(out) == [DeadLetterStage.LABEL]
    assert processor.learners.now == NOW_MS / 1000
    assert len(processor.learners.pending) == 1  # still waiting for its label


def test_the_deduplicator_window_costs_the_same_bytes_for_long_and_short_ids() -> None:
    """State bounded in bytes, not only entries: ids are kept as fixed-size digests."""
    import pickle

    from streamwise.stream.cleaners import Deduplicator

    sizes = {}
    for length in (8, 1024):
        dedup = Deduplicator("id", window=2000)
        for i in range(5000):
            dedup.learn_one({"id": f"{i:08d}".ljust(length, "x")})
        sizes[length] = len(pickle.dumps(dedup))
    assert sizes[1024] == sizes[8] < 2000 * 40
    with pytest.raises(RejectedEvent, match="duplicate"):
        dedup.transform_one({"id": "00004999".ljust(1024, "x")})
