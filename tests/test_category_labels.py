"""Category labels whose producers disagree on a class's JSON type: 1, "1" and true.

River keys classes by Python equality (True is 1) and a prediction record's
probabilities by JSON key ("1" for both 1 and "1"). Before, both forms were learned: a
tree raised on every event comparing str with int, and records repeated the key "1".
Now the first label of a class fixes how it is written and a later other form is a
bad input (stage label), on every path a label takes and across a snapshot."""

from __future__ import annotations

import json
import time
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


def _verdicts(processor: PipelineProcessor, records: list[ConsumedRecord], cut: int) -> list[tuple[str, Any]]:
    out = []
    for start in range(0, len(records), cut):
        out += processor.process(records[start : start + cut])
    return sorted((r.topic, json.loads(r.value)["id"]) for r in out)


def test_which_form_is_refused_does_not_depend_on_how_polls_cut_the_stream():
    """The forms were recorded while a poll's events were decoded, before the labels topic's
    records of that poll were read: one poll, or one record at a time, refused different
    records. Each source now keeps its own forms, in its own order."""
    cfg = _config(input={"labels_topic": "c.labels"}, labels={"ttl_s": 3600})
    records = []
    for i in range(12):
        y = [1, "1", 2, True][i % 4]
        records.append(ConsumedRecord("c.events", 0, i, None, json.dumps({"id": i, "a": 1.0, "label": y}).encode(),
                                      T0 + 2 * i))
        records.append(ConsumedRecord("c.labels", 0, i, None, json.dumps({"id": 100 + i, "label": [2, "2"][i % 2]})
                                      .encode(), T0 + 2 * i + 1))
    outcomes = {cut: _verdicts(PipelineProcessor(cfg), records, cut) for cut in (1, 3, 7, len(records))}
    assert len({tuple(v) for v in outcomes.values()}) == 1
    refused = [i for topic, i in outcomes[1] if topic.endswith(".dlq")]
    assert refused == [1, 3, 5, 7, 9, 11, 101, 103, 105, 107, 109, 111]
    # The smallest case: a labels-topic "1" between two events, the second labelled 1.
    mini = [ConsumedRecord("c.events", 0, 0, None, b'{"id": 0, "a": 1.0}', T0),
            ConsumedRecord("c.labels", 0, 0, None, b'{"id": 0, "label": "1"}', T0 + 1),
            ConsumedRecord("c.events", 0, 1, None, b'{"id": 1, "a": 1.0, "label": 1}', T0 + 2)]
    for cut in (1, 2, 3):
        assert _verdicts(PipelineProcessor(cfg), mini, cut) == [("c.out", 0), ("c.out", 1)], cut


def test_a_refused_record_fixes_no_form():
    """An event refused after validation (from the future), or a label record refused by
    its time, used to fix its class's form: the next valid label of the other form was
    then refused."""
    cfg = _config(input={"labels_topic": "c.labels"}, labels={"ttl_s": 3600})
    processor = PipelineProcessor(cfg)
    ahead = int(time.time() * 1000) + 86_400_000  # past max_future (1h)
    first = processor.process([
        ConsumedRecord("c.events", 0, 0, None, b'{"id": 0, "a": 1.0, "label": 1}', ahead),
        ConsumedRecord("c.labels", 0, 0, None, b'{"id": 5, "label": 1}', ahead),
    ])
    reasons = sorted(dict(r.headers)["streamwise.error.message"].decode() for r in first)
    assert len(reasons) == 2 and all("ahead of the clock" in r for r in reasons), reasons
    then = processor.process([
        ConsumedRecord("c.events", 0, 1, None, b'{"id": 1, "a": 1.0, "label": "1"}', T0 + 1),
        ConsumedRecord("c.labels", 0, 1, None, b'{"id": 6, "label": "1"}', T0 + 2),
    ])
    assert [r.topic for r in then] == ["c.out"]  # neither "1" is refused
    assert [m.n_learned for m in processor.models] == [1, 1]


def test_with_scope_global_a_partition_may_send_the_form_the_learner_took_first():
    """Each partition stage used to fix forms of its own: a partition that sent "1" then
    1 had its 1 refused by its stage and its "1" by the learner, which had seen 1 first."""
    cfg = _config(scope="global")
    learn = PartitionStageProcessor(cfg).process(_records("c.events", [{"id": 0, "a": 1.0, "label": 1}]))
    learn += PartitionStageProcessor(cfg).process(
        _records("c.events", [{"id": 1, "a": 2.0, "label": "1"}, {"id": 2, "a": 2.0, "label": 1}], partition=1))
    assert len(learn) == 3
    consumed = [ConsumedRecord(cfg.learn_topic, 0, i, r.key, r.value, T0 + i) for i, r in enumerate(learn)]
    out = PipelineProcessor(cfg, stage="learn").process(consumed)
    assert sorted(json.loads(r.value)["id"] for r in out if r.topic == "c.out") == [0, 2]


def test_river_s_check_and_the_report_read_the_learn_topic_as_the_learner_does():
    """learn_order (River's parity check, the report) used to join every learn record,
    also the ones the learner now refuses for their label's form."""
    from streamwise.processor import learn_order

    cfg = _config(scope="global")
    learn = PartitionStageProcessor(cfg).process(_records("c.events", [{"id": 0, "a": 1.0, "label": 1}]))
    learn += PartitionStageProcessor(cfg).process(
        _records("c.events", [{"id": 1, "a": 2.0, "label": "1"}, {"id": 2, "a": 2.0, "label": 1}], partition=1))
    consumed = [ConsumedRecord(cfg.learn_topic, 0, i, r.key, r.value, T0 + i) for i, r in enumerate(learn)]
    assert [e.event.id for e in learn_order(consumed, cfg.labels, schema=cfg.event_schema)] == [0, 2]
    assert [e.event.id for e in learn_order(consumed, cfg.labels)] == [0, 1, 2]
