"""The rules step in the processor: it reads the features as the event declared them
(not as a scaler left them), writes its verdict into each record, keeps the champion's
answer beside an override, and reports firings once per poll."""

from __future__ import annotations

import json
from collections import Counter

from streamwise.connectors.records import ConsumedRecord
from streamwise.core.sensors import Sensor

from streamwise.pipeline_config import parse_pipeline_config
from streamwise.processor import PipelineProcessor


class Fired(Sensor):
    def __init__(self) -> None:
        self.fired: Counter[tuple[str, str]] = Counter()
        self.decided: Counter[tuple[str, str]] = Counter()
        self.calls = 0

    def on_rule_fired(self, rule: str, outcome: str, n: int = 1) -> None:
        self.fired[rule, outcome] += n
        self.calls += 1

    def on_rule_decided(self, rule: str, decision: str, n: int = 1) -> None:
        self.decided[rule, decision] += n


def _config(**extra):
    return parse_pipeline_config({
        "name": "r",
        "input": {"topic": "r.events"},
        "output": {"topic": "r.out"},
        "schema": {"id": "id", "label": "label", "label_type": "int",
                   "features": {"age": {"type": "int", "required": False}, "loan": "float"}},
        "models": [{"name": "lr", "steps": ["linear_model.LogisticRegression"]}],
        # The scaler rewrites age in place: a rule must still read the declared age.
        "features": [{"kind": "standard_scale", "fields": ["age", "loan"]}],
        "rules": [
            {"name": "minor", "when": "age < 18", "decision": "refuse", "prediction": 0},
            {"name": "big", "when": "loan > 1000", "decision": "review"},
            {"name": "sure", "when": "probability >= 0", "prediction": 1},
        ],
        **extra,
    })


def _records(events):
    return [ConsumedRecord("r.events", 0, i, None, json.dumps(e).encode(), 1_700_000_000_000 + i)
            for i, e in enumerate(events)]


def test_the_verdict_is_in_each_record_and_the_sensor_hears_it_once_per_poll():
    sensor = Fired()
    processor = PipelineProcessor(_config(), sensor)
    events = [
        {"id": 0, "age": 16, "loan": 5000.0, "label": 1},
        {"id": 1, "age": 40, "loan": 5000.0, "label": 1},
        {"id": 2, "age": 40, "loan": 10.0, "label": 0},
        {"id": 3, "loan": 10.0, "label": 0},  # age missing: unknown, the minor rule does not fire
    ]
    out = [json.loads(r.value) for r in processor.process(_records(events))]
    assert [(r["decision"], r["rule"], r["fired"]) for r in out] == [
        ("refuse", "minor", ["minor", "big", "sure"]),
        ("review", "big", ["big", "sure"]),
        (None, "sure", ["sure"]),
        (None, "sure", ["sure"]),
    ]
    assert out[0]["prediction"] == 0 and out[0]["model_prediction"] == out[0]["models"]["lr"]
    assert out[2]["prediction"] == 1 and out[2]["reason"] == "when: probability >= 0"
    assert "model_prediction" not in out[1] and out[1]["prediction"] == out[1]["models"]["lr"]["prediction"]
    assert sensor.fired == Counter({("minor", "refuse"): 1, ("big", "review"): 2, ("sure", "override"): 4})
    assert sensor.decided == Counter({("minor", "refuse"): 1, ("big", "review"): 1, ("sure", "override"): 2})
    assert sensor.calls == 3  # one call per rule for the whole poll


def test_without_rules_nothing_changes_and_the_decision_field_can_be_left_out():
    processor = PipelineProcessor(_config(rules=[]))
    (record,) = [json.loads(r.value) for r in processor.process(_records([{"id": 0, "age": 16, "loan": 1.0}]))]
    assert "decision" not in record and "fired" not in record
    fields = ["id", "prediction"]
    processor = PipelineProcessor(_config(output={"topic": "r.out", "fields": fields}))
    (record,) = [json.loads(r.value) for r in processor.process(_records([{"id": 0, "age": 16, "loan": 1.0}]))]
    # The override goes with the prediction; the verdict's fields with "decision".
    assert set(record) == {"id", "prediction", "model_prediction"} and record["prediction"] == 0


def test_with_scope_global_the_learner_reads_the_declared_features_through_the_learn_topic():
    """One-hot on the partitions replaces city with indicator columns; the learn record
    carries the declared city, so a rule on it still fires in the learner."""
    from streamwise.processor import PartitionStageProcessor

    cfg = parse_pipeline_config({
        "name": "g", "scope": "global",
        "input": {"topic": "g.events"}, "output": {"topic": "g.out"},
        "schema": {"id": "id", "label": "label", "label_type": "int",
                   "features": {"city": {"type": "category", "categories": ["Oslo", "Lyon"]}, "loan": "float"}},
        "models": [{"name": "lr", "steps": ["linear_model.LogisticRegression"]}],
        "features": [{"kind": "one_hot", "fields": ["city"]}],
        "rules": [{"name": "oslo", "when": "city == 'Oslo'", "decision": "review"}],
    })
    events = [{"id": 0, "city": "Oslo", "loan": 1.0, "label": 1}, {"id": 1, "city": "Lyon", "loan": 1.0, "label": 0}]
    learn = PartitionStageProcessor(cfg).process(_records(events))
    assert all("city" not in json.loads(r.value)["e"][1] for r in learn)  # the models see indicators only
    learner = PipelineProcessor(cfg, stage="learn")
    t0 = 1_700_000_000_000
    consumed = [ConsumedRecord(cfg.learn_topic, 0, i, r.key, r.value, t0 + i) for i, r in enumerate(learn)]
    out = [json.loads(r.value) for r in learner.process(consumed)]
    assert [(r["id"], r["decision"], r["fired"]) for r in out] == [(0, "review", ["oslo"]), (1, None, [])]
