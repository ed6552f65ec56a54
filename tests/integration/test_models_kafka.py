"""The models through the service on the real broker: parity with River's
``progressive_val_score``, inline and with labels on a labels topic N events late."""

from __future__ import annotations

import itertools
import json
import math
import threading
import time
from typing import Any

import pytest
from kafka import KafkaProducer
from river import datasets, evaluate, metrics

from streamwise.models.catalog import build_estimator
from streamwise.pipeline_config import parse_pipeline_config
from streamwise.replay import iter_events
from streamwise.runner import Runner
from support import consume, produce, values

PHISHING_FEATURES = {
    name: {"type": "int" if name in ("age_of_domain", "ip_in_url") else "float"}
    for name in next(iter(datasets.Phishing()))[0]
}

CASES: dict[str, dict[str, Any]] = {
    "Phishing": {
        "dataset": datasets.Phishing,
        "label_type": "bool",
        "features": PHISHING_FEATURES,
        "metric": "Accuracy",
        "models": {
            "logreg": ["preprocessing.StandardScaler", "linear_model.LogisticRegression"],
            "tree": [{"tree.HoeffdingTreeClassifier": {"grace_period": 50}}],
        },
    },
    "Bananas": {
        "dataset": datasets.Bananas,
        "label_type": "bool",
        "features": {"1": "float", "2": "float"},
        # LogLoss scores probabilities: River calls predict_proba_one, so must we.
        "metric": "LogLoss",
        "models": {
            "logreg": ["preprocessing.StandardScaler", "linear_model.LogisticRegression"],
            "tree": [{"tree.HoeffdingTreeClassifier": {"grace_period": 100}}],
        },
    },
    "TrumpApproval": {
        "dataset": datasets.TrumpApproval,
        "label_type": "float",
        "features": {
            k: "float" for k in ("ordinal_date", "gallup", "ipsos", "morning_consult", "rasmussen", "you_gov")
        },
        "metric": "MAE",
        "models": {
            "linreg": ["preprocessing.StandardScaler", "linear_model.LinearRegression"],
            # The default E-BST splitter grows a chain as deep as the stream on the
            # monotone ordinal_date, too deep for pickle (and so for snapshots).
            "tree": [{"tree.HoeffdingTreeRegressor": {"grace_period": 50, "splitter": {"tree.splitter.QOSplitter": {}}}}],
        },
    },
}


def _config(prefix: str, case: dict[str, Any], labels_topic: str | None = None, **extra: Any) -> Any:
    data = {
        "name": prefix,
        "input": {"topic": f"{prefix}.events", **({"labels_topic": labels_topic} if labels_topic else {})},
        "output": {"topic": f"{prefix}.predictions"},
        "schema": {"id": "id", "label": "label", "label_type": case["label_type"], "features": case["features"]},
        "task": "regression" if case["label_type"] == "float" else "classification",
        "metric": case["metric"],
        "models": [{"name": n, "steps": s} for n, s in case["models"].items()],
        **extra,
    }
    return parse_pipeline_config(data)


def _river_scores(case: dict[str, Any], delay: int | None = None, limit: int | None = None) -> dict[str, float]:
    return {
        name: evaluate.progressive_val_score(
            itertools.islice(case["dataset"](), limit),
            build_estimator(steps),
            getattr(metrics, case["metric"])(),
            delay=delay,
        ).get()
        for name, steps in case["models"].items()
    }


def _assert_parity(summary: Any, expected: dict[str, float]) -> None:
    for name, value in expected.items():
        got = summary.metrics[name]["value"]
        assert math.isclose(got, value, rel_tol=0, abs_tol=1e-12), (name, got, value)


@pytest.mark.parametrize("dataset", list(CASES))
def test_inline_labels_match_progressive_val_score(dataset, settings, bootstrap, unique):
    case = CASES[dataset]
    cfg = _config(unique, case)
    n = produce(bootstrap, cfg.input.topic, iter_events(dataset))
    summary = Runner(cfg, settings).run(until_idle_s=1.0)
    assert summary.events_in == n == case["dataset"]().n_samples
    _assert_parity(summary, _river_scores(case))
    out = values(consume(bootstrap, cfg.output.topic, n))
    assert sorted(r["id"] for r in out) == list(range(n))
    assert all(set(r["models"]) == set(case["models"]) for r in out)


def _produce_labels_late(bootstrap: str, cfg: Any, dataset: str, delay: int, limit: int | None) -> int:
    """Publishes each label ``delay`` events after its event, in lock step: every record
    is acknowledged before the next is sent, so the service cannot see an event before
    the label that precedes it. Timestamps are explicit and strictly increasing, which
    is the arrival order the processor merges a poll by."""
    events = list(iter_events(dataset, limit=limit))
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    base = int(time.time() * 1000)
    n = len(events)
    for p in range(n + delay):
        if p >= delay:
            i = p - delay
            label = json.loads(events[i][1])["label"]
            value = json.dumps({"id": i, "label": label}).encode()
            producer.send(cfg.input.labels_topic, key=events[i][0], value=value, timestamp_ms=base + 2 * p).get(30)
        if p < n:
            key, value = events[p]
            without_label = json.dumps({k: v for k, v in json.loads(value).items() if k != "label"}).encode()
            producer.send(cfg.input.topic, key=key, value=without_label, timestamp_ms=base + 2 * p + 1).get(30)
    producer.close()
    return n


# Lock-step publishing fixes the arrival order only while the consumer hands over whole
# fetches; kafka-python does (up to max_poll_records), so these run on it alone.
@pytest.mark.parametrize("kafka_client", ["kafka-python"], indirect=True)
@pytest.mark.parametrize("dataset,delay,limit", [("Phishing", 25, None), ("TrumpApproval", 7, None), ("Bananas", 100, 1500)])
def test_labels_topic_n_events_late_match_progressive_val_score_with_delay(
    dataset, delay, limit, settings, bootstrap, unique
):
    case = CASES[dataset]
    cfg = _config(unique, case, labels_topic=f"{unique}.labels")
    runner = Runner(cfg, settings)
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(summary=runner.run(until_idle_s=3.0)))
    thread.start()
    try:
        n = _produce_labels_late(bootstrap, cfg, dataset, delay, limit)
    finally:
        thread.join(180)
    assert not thread.is_alive()
    summary = result["summary"]
    assert summary.events_in == 2 * n and summary.dead_letters == {}
    _assert_parity(summary, _river_scores(case, delay=delay, limit=limit))
    (processor,) = runner.partitions.all_processors().values()
    labels = processor.learners.report()["labels"]
    assert labels["joined"] == n and labels["pending"] == 0 and labels["duplicates"] == 0
    out = values(consume(bootstrap, cfg.output.topic, n))
    assert sorted(r["id"] for r in out) == list(range(n))
