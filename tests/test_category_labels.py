"""Category labels whose producers disagree on a class's JSON type: 1, "1" and true.

River keys classes by Python equality (True is 1) and a prediction record's
probabilities by JSON key ("1" for both 1 and "1"). Before, both forms were learned: a
tree raised on every event comparing str with int, and records repeated the key "1".
Now the first label of a class fixes how it is written and a later other form is a
bad input (stage label), on every path a label takes and across a snapshot."""

from __future__ import annotations

import json
from typing import Any

from streamwise.connectors.records import ConsumedRecord
from streamwise.models.state import decode_state, encode_state
from streamwise.pipeline_config import parse_pipeline_config
from streamwise.processor import PartitionStageProcessor, PipelineProcessor

T0 = 1_700_000_000_000


def _config(**extra: Any) -> Any:
    data: dict[str, Any] = {
        "name": "c",
        "input": {"topic": "c.events"},
        "output": {"topic": "c.out"},
        "schema": {"id": "id", "label": "label", "label_type": "category", "features": {"a": "float"}},
        "models": [{"name": "nb", "steps": ["naive_bayes.GaussianNB"]},
                   {"name": "tree", "steps": [{"tree.HoeffdingTreeClassifier": {"grace_period": 5}}]}],
    }
    for key, value in extra.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return parse_pipeline_config(data)


def _records(topic: str, bodies: list[dict[str, Any]], partition: int = 0) -> list[ConsumedRecord]:
    return [ConsumedRecord(topic, partition, i, None, json.dumps(b).encode(), T0 + i) for i, b in enumerate(bodies)]


def _no_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    assert len(keys) == len(set(keys)), keys
    return dict(pairs)


def _split(out: list[Any], output_topic: str) -> tuple[list[dict[str, Any]], list[tuple[int, str]]]:
    predictions = [json.loads(r.value, object_pairs_hook=_no_repeated_keys) for r in out if r.topic == output_topic]
    letters = [(json.loads(r.value)["id"], dict(r.headers)["streamwise.error.message"].decode())
               for r in out if r.topic.endswith(".dlq")]
    return predictions, letters


def test_a_class_written_as_another_json_type_inline_is_dead_lettered_and_survives_a_snapshot():
    labels = [1, 2, 1, "1", True, 2, 1, "2", 3, "3"]
    events = [{"id": i, "a": float(i % 3), "label": y} for i, y in enumerate(labels)]
    processor = PipelineProcessor(_config())
    predictions, letters = _split(processor.process(_records("c.events", events)), "c.out")
    assert [i for i, _ in letters] == [3, 4, 7, 9]
    assert letters[0][1] == "label '1' (str) is the class 1 (int) seen before, written as another JSON type"
    assert letters[1][1] == "label True (bool) is the class 1 (int) seen before, written as another JSON type"
    assert [p["id"] for p in predictions] == [0, 1, 2, 5, 6, 8]
    for m in processor.models:
        assert m.n_learned == 6 and not m.faults, (m.name, m.last_error, m.faults)
        assert sorted(m.estimator.predict_proba_one({"a": 1.0})) == [1, 2, 3]

    # The classes seen are learned state: a restored processor still knows 1 came first.
    restored = PipelineProcessor(_config())
    restored.restore_state(decode_state(encode_state(processor.snapshot_state())))
    more = [{"id": 20, "a": 1.0, "label": "1"}, {"id": 21, "a": 1.0, "label": 1}]
    predictions, letters = _split(restored.process(_records("c.events", more)), "c.out")
    assert [i for i, _ in letters] == [20] and [p["id"] for p in predictions] == [21]


def test_a_label_record_of_another_json_type_is_dead_lettered():
    cfg = _config(input={"labels_topic": "c.labels"}, labels={"ttl_s": 3600})
    processor = PipelineProcessor(cfg)
    events = _records("c.events", [{"id": i, "a": 1.0} for i in range(3)])
    labels = [ConsumedRecord("c.labels", 0, i, None, json.dumps({"id": i, "label": y}).encode(), T0 + 10 + i)
              for i, y in enumerate([7, "7", 7])]
    out = processor.process(events + labels)
    letters = [json.loads(r.value) for r in out if r.topic.endswith(".dlq")]
    assert letters == [{"id": 1, "label": "7"}]
    assert [m.n_learned for m in processor.models] == [2, 2]


def test_with_scope_global_the_learner_refuses_a_form_two_partitions_disagree_on():
    cfg = _config(scope="global")
    stage0, stage1 = PartitionStageProcessor(cfg), PartitionStageProcessor(cfg)
    learn = stage0.process(_records("c.events", [{"id": 0, "a": 1.0, "label": 1}]))
    learn += stage1.process(_records("c.events", [{"id": 1, "a": 2.0, "label": "1"}], partition=1))
    assert len(learn) == 2  # each stage saw one form only
    learner = PipelineProcessor(cfg, stage="learn")
    consumed = [ConsumedRecord(cfg.learn_topic, 0, i, r.key, r.value, T0 + i) for i, r in enumerate(learn)]
    out = learner.process(consumed)
    predictions = [json.loads(r.value) for r in out if r.topic == "c.out"]
    letters = [r for r in out if r.topic.endswith(".dlq")]
    assert [p["id"] for p in predictions] == [0] and len(letters) == 1
    assert b"is the class 1 (int) seen before" in dict(letters[0].headers)["streamwise.error.message"]
