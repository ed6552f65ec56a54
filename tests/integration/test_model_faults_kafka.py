"""A failing model beside healthy ones, through the service on the real broker: the
healthy models answer every record exactly as they do alone, the failing one is
flagged in the records and counted in the Prometheus metric, no record is lost."""

from __future__ import annotations

import itertools
from typing import Any

from river import datasets
from streamwise.connectors.prometheus import PrometheusSensor
from support import consume, produce, reference_predictions, values

from streamwise.pipeline_config import parse_pipeline_config
from streamwise.replay import iter_events
from streamwise.runner import Runner

N = 600
FEATURES = {name: "float" for name in next(iter(datasets.Phishing()))[0]}
HEALTHY = {
    "logreg": ["preprocessing.StandardScaler", "linear_model.LogisticRegression"],
    "tree": [{"tree.HoeffdingTreeClassifier": {"grace_period": 50}}],
}
FLAKY = [
    {
        "streamwise.FaultyClassifier": {
            "model": {"linear_model.LogisticRegression": {}},
            "error_rate": 0.02,
            "nan_rate": 0.02,
            "seed": 5,
        }
    }
]


def _config(prefix: str, models: dict[str, Any]) -> Any:
    return parse_pipeline_config(
        {
            "name": prefix,
            "input": {"topic": f"{prefix}.events"},
            "output": {"topic": f"{prefix}.predictions"},
            "schema": {"id": "id", "label": "label", "label_type": "bool", "features": FEATURES},
            "models": [{"name": n, "steps": s} for n, s in models.items()],
        }
    )


def test_a_failing_model_affects_only_itself_on_the_broker(settings, bootstrap, unique):
    cfg = _config(unique, {"flaky": FLAKY, **HEALTHY})
    n = produce(bootstrap, cfg.input.topic, iter_events("Phishing", limit=N))
    prometheus = PrometheusSensor(cfg.name, [m.name for m in cfg.models], cfg.input.topic)
    summary = Runner(cfg, settings, sensors=[prometheus]).run(until_idle_s=1.0)
    assert summary.events_in == n == N and summary.dead_letters == {}
    out = sorted(values(consume(bootstrap, cfg.output.topic, n)), key=lambda r: r["id"])
    assert [r["id"] for r in out] == list(range(n))

    alone = reference_predictions(_config(unique, HEALTHY), itertools.islice(datasets.Phishing(), N))
    for name in HEALTHY:
        assert [r["models"][name]["prediction"] for r in out] == alone["predictions"][name], name
        assert summary.metrics[name]["value"] == alone["metrics"][name]

    flaky = [r["models"]["flaky"] for r in out]
    errors = sum("error" in p for p in flaky)
    not_finite = sum(p.get("not_finite", False) for p in flaky)
    assert 0 < errors < 0.05 * n and 0 < not_finite < 0.05 * n
    assert prometheus.value("streamwise_model_faults_total", model="flaky", kind="predict") == errors
    assert prometheus.value("streamwise_model_faults_total", model="flaky", kind="not_finite") == not_finite
    assert prometheus.value("streamwise_model_learned_total", model="flaky") == n - errors
    assert summary.metrics["flaky"]["value"] == summary.metrics["flaky"]["value"]  # not NaN
