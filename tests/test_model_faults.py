"""A failing model affects only itself: on PipelineProcessor, in memory, with no Kafka.

A model that raises on 1% of events and answers NaN on another 1% runs beside two
healthy River models and a torch model. The healthy models answer on every record,
exactly as they do in a run without the faulty one; the faulty one is flagged in the
record and counted in a Prometheus metric; a champion whose score goes NaN loses its
place within ``patience`` labels.
"""

from __future__ import annotations

from typing import Any

import orjson
from river import datasets
from streamwise.connectors.prometheus import PrometheusSensor
from streamwise.connectors.records import ConsumedRecord

from streamwise.pipeline_config import parse_pipeline_config
from streamwise.processor import PipelineProcessor

FEATURES = {name: "float" for name in next(iter(datasets.Phishing()))[0]}
HEALTHY = {
    "logreg": ["preprocessing.StandardScaler", "linear_model.LogisticRegression"],
    "tree": [{"tree.HoeffdingTreeClassifier": {"grace_period": 50}}],
    "mlp": [
        {"streamwise.TorchMiniBatchClassifier": {"hidden_layers": [8], "batch_size": 16, "device": "cpu", "seed": 1}}
    ],
}


def _flaky(**faults: Any) -> list[Any]:
    """logreg's steps inside a FaultyClassifier."""
    steps = [{"preprocessing.StandardScaler": {}}, {"linear_model.LogisticRegression": {}}]
    return [{"streamwise.FaultyClassifier": {"model": steps, "seed": 7, **faults}}]


def _config(models: dict[str, list[Any]], restore: bool = True, **extra: Any) -> Any:
    return parse_pipeline_config(
        {
            "name": "faults",
            "input": {"topic": "faults.events"},
            "output": {"topic": "faults.predictions"},
            "schema": {"id": "id", "label": "label", "label_type": "bool", "features": FEATURES},
            "models": [{"name": n, "steps": s, "restore_when_not_finite": restore} for n, s in models.items()],
            **extra,
        }
    )


def _records() -> list[ConsumedRecord]:
    return [
        ConsumedRecord("faults.events", 0, i, str(i).encode(), orjson.dumps({"id": i, **x, "label": y}), 1_000 * i)
        for i, (x, y) in enumerate(datasets.Phishing())
    ]


def _run(config: Any, poll: int = 50) -> tuple[list[dict[str, Any]], list[dict[str, Any]], PrometheusSensor]:
    sensor = PrometheusSensor(config.name, [m.name for m in config.models], config.input.topic)
    processor = PipelineProcessor(config, sensor)
    records = _records()
    predictions, alerts = [], []
    for start in range(0, len(records), poll):
        for out in processor.process(records[start : start + poll]):
            (predictions if out.topic == config.output.topic else alerts).append(orjson.loads(out.value))
    return predictions, alerts, sensor


def test_a_failing_model_affects_only_itself() -> None:
    with_flaky, _, sensor = _run(_config({**HEALTHY, "flaky": _flaky(error_rate=0.01, nan_rate=0.01)}))
    without, _, _ = _run(_config(HEALTHY))
    n = len(without)
    assert len(with_flaky) == n == 1250  # no record was dead-lettered
    for name in HEALTHY:
        healthy = [r["models"][name] for r in with_flaky]
        assert all("prediction" in p and "error" not in p and "not_finite" not in p for p in healthy), name
        assert healthy == [r["models"][name] for r in without], name

    flaky = [r["models"]["flaky"] for r in with_flaky]
    errors = [p for p in flaky if "error" in p]
    not_finite = [p for p in flaky if p.get("not_finite")]
    assert 0 < len(errors) < 0.03 * n and 0 < len(not_finite) < 0.03 * n
    assert all(p["error"].startswith("InjectedFault: injected fault on prediction") for p in errors)
    assert sensor.value("streamwise_model_faults_total", model="flaky", kind="predict") == len(errors)
    assert sensor.value("streamwise_model_faults_total", model="flaky", kind="not_finite") == len(not_finite)
    assert sensor.value("streamwise_model_faults_total", model="logreg", kind="predict") == 0.0
    # The flaky model learned from every event but those it failed on.
    assert sensor.value("streamwise_model_learned_total", model="flaky") == n - len(errors)
    assert sensor.value("streamwise_model_learned_total", model="logreg") == n


def test_the_scores_keep_nan_out_and_count_the_faults() -> None:
    config = _config({"logreg": HEALTHY["logreg"], "flaky": _flaky(error_rate=0.01, nan_rate=0.01)})
    processor = PipelineProcessor(config)
    records = _records()
    for start in range(0, len(records), 50):
        processor.process(records[start : start + 50])
    report = processor.learners.report()["models"]["flaky"]
    assert report["value"] == report["value"] and 0.5 < report["value"] <= 1.0  # not NaN
    assert report["rolling"]["Accuracy"] == report["rolling"]["Accuracy"]
    assert report["failed_labels"] == report["faults"]["predict"] > 0
    assert report["not_finite_labels"] == report["faults"]["not_finite"] > 0
    assert report["last_error"].startswith("InjectedFault")


def test_a_champion_whose_score_goes_nan_loses_its_place_within_patience_labels() -> None:
    patience, bad_from = 20, 600
    config = _config(
        # The flaky model answers first (it is the initial champion, and the margin keeps
        # it there while it is healthy) and, from its 600th prediction on, answers NaN.
        {"flaky": _flaky(nan_from=bad_from), **HEALTHY},
        # Put back to a copy of itself, the flaky model would answer finite numbers again
        # (models/recovery.py, tests/models/test_recovery.py): here it stays NaN.
        restore=False,
        champion={"window": 100, "patience": patience, "min_samples": 50, "margin": 0.2},
    )
    predictions, alerts, _ = _run(config)
    first_nan = bad_from - 1  # the n-th prediction is of event n - 1
    assert all(r["champion"] == "flaky" for r in predictions[:first_nan])
    assert all(r["models"]["flaky"] == {"prediction": None, "not_finite": True} for r in predictions[first_nan:])
    assert all(r["champion"] != "flaky" for r in predictions[first_nan + patience :])
    changes = [a for a in alerts if a["type"] == "champion"]
    # None: the NaN score, in a JSON alert.
    assert changes[0]["previous"] == "flaky" and changes[0]["previous_score"] is None, changes
