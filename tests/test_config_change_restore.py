"""A snapshot restored under a config edited since it was written (streamwise/reconcile.py).

Before, the snapshot's objects replaced the config's whole: a model added to the YAML
never appeared, a raised bound still refused its events, a new drift policy never
acted. Now the config wins, and what was learned under an unchanged part is kept."""

from __future__ import annotations

import copy
import json
from typing import Any

from streamwise.connectors.records import ConsumedRecord
from streamwise.models.state import decode_state, encode_state, fingerprint
from streamwise.pipeline_config import parse_pipeline_config
from streamwise.processor import PipelineProcessor

BASE: dict[str, Any] = {
    "name": "c",
    "input": {"topic": "in"},
    "output": {"topic": "out"},
    "schema": {"id": "id", "label": "y", "features": {"a": {"type": "float", "max": 10}, "b": "float"}},
    "models": [{"name": "lr", "steps": ["preprocessing.StandardScaler", "linear_model.LogisticRegression"]},
               {"name": "tree", "steps": [{"tree.HoeffdingTreeClassifier": {"grace_period": 20}}]}],
    "features": [{"kind": "standard_scale", "fields": ["b"]}],
}


def _records(start: int, n: int) -> list[ConsumedRecord]:
    return [ConsumedRecord("in", 0, i, None, json.dumps({"id": i, "a": i % 7, "b": i % 3, "y": i % 2 == 0}).encode(),
                           1_700_000_000_000 + i) for i in range(start, start + n)]


def _restored(config: dict[str, Any], snapshot: bytes) -> PipelineProcessor:
    processor = PipelineProcessor(parse_pipeline_config(config))
    processor.restore_state(decode_state(snapshot))
    return processor


def test_an_unchanged_config_keeps_every_object_of_the_snapshot():
    first = PipelineProcessor(parse_pipeline_config(BASE))
    first.process(_records(0, 300))
    snapshot = encode_state(first.snapshot_state())
    again = _restored(copy.deepcopy(BASE), snapshot)
    assert fingerprint(again.snapshot_state()) == fingerprint(decode_state(snapshot))
    # and it goes on exactly as the processor that never stopped
    def bodies(out: list[Any]) -> list[dict[str, Any]]:
        return [{k: v for k, v in json.loads(r.value).items() if k != "latency_s"} for r in out]

    assert bodies(again.process(_records(300, 100))) == bodies(first.process(_records(300, 100)))


def test_the_config_wins_and_unchanged_models_and_steps_keep_what_they_learned(caplog):
    first = PipelineProcessor(parse_pipeline_config(BASE))
    first.process(_records(0, 300))
    snapshot = encode_state(first.snapshot_state())
    edited = copy.deepcopy(BASE)
    edited["schema"]["features"]["a"]["max"] = 100  # a bound raised
    edited["models"][1]["steps"] = [{"tree.HoeffdingTreeClassifier": {"grace_period": 50}}]  # changed
    edited["models"].append({"name": "nb", "steps": ["naive_bayes.GaussianNB"]})  # added
    edited["drift"] = {"policy": "reset"}
    with caplog.at_level("WARNING"):
        restored = _restored(edited, snapshot)
    lr, tree, nb = restored.models
    assert (lr.name, tree.name, nb.name) == ("lr", "tree", "nb")
    assert lr.n_learned == 300 and lr.estimator is not first.models[0].estimator
    assert fingerprint(lr.estimator) == fingerprint(first.models[0].estimator)  # kept as learned
    assert tree.n_learned == 0 and tree.estimator.grace_period == 50 and nb.n_learned == 0
    assert restored.learners.drift_config.policy == "reset"
    assert restored.events.schema.features["a"].max == 100
    scaler = restored.events.steps[0]
    assert fingerprint(scaler) == fingerprint(first.events.steps[0])  # the step kept its statistics
    notes = " | ".join(r.getMessage() for r in caplog.records)
    assert "model 'nb' is new" in notes and "model 'tree' changed" in notes and "the schema changed" in notes
    out = restored.process([ConsumedRecord("in", 0, 999, None, b'{"id": 999, "a": 50, "b": 1, "y": true}', 1)])
    (record,) = out
    assert record.topic == "out" and sorted(json.loads(record.value)["models"]) == ["lr", "nb", "tree"]


def test_a_model_removed_from_the_config_is_dropped_and_changed_steps_start_afresh():
    first = PipelineProcessor(parse_pipeline_config(BASE))
    first.process(_records(0, 200))
    snapshot = encode_state(first.snapshot_state())
    edited = copy.deepcopy(BASE)
    edited["models"] = edited["models"][1:]
    edited["features"] = [{"kind": "standard_scale", "fields": ["a", "b"]}]
    restored = _restored(edited, snapshot)
    assert [m.name for m in restored.models] == ["tree"] and restored.models[0].n_learned == 200
    assert restored.champion == "tree"
    assert restored.events.steps[0].fields == ["a", "b"]
    assert fingerprint(restored.events.steps[0]) != fingerprint(first.events.steps[0])
    (record,) = restored.process(_records(500, 1))
    assert list(json.loads(record.value)["models"]) == ["tree"]


def test_a_snapshot_whose_schema_predates_a_field_restores_with_its_default():
    """A snapshot written before schema.label_min existed was refused whole (the decoder
    read the missing field while unpickling): every partition lost what it learned."""
    first = PipelineProcessor(parse_pipeline_config(BASE))
    first.process(_records(0, 50))
    state = first.snapshot_state()
    for field in ("label_min", "label_max"):
        del state["events"].schema.__dict__[field]  # as an older streamwise pickled it
    restored = _restored(copy.deepcopy(BASE), encode_state(state))
    assert restored.models[0].n_learned == 50 and restored.events.schema.label_max is None


def test_a_reordered_model_list_and_a_new_evaluation_window_take_effect():
    """A reordered list was ignored (records kept the snapshot's order), and a smaller
    evaluation window left the champion's minimum of labels above what a window can hold:
    the champion could never change again."""
    first = PipelineProcessor(parse_pipeline_config(BASE))
    first.process(_records(0, 200))
    snapshot = encode_state(first.snapshot_state())
    edited = copy.deepcopy(BASE)
    edited["models"].reverse()
    edited["evaluation"] = {"window": 50}
    restored = _restored(edited, snapshot)
    assert [(m.name, m.n_learned) for m in restored.models] == [("tree", 200), ("lr", 200)]
    fresh = PipelineProcessor(parse_pipeline_config(edited))
    assert restored.learners.selector.min_samples == fresh.learners.selector.min_samples == 50
    (record,) = restored.process(_records(500, 1))
    assert list(json.loads(record.value)["models"]) == ["tree", "lr"]
