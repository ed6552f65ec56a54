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
        # Per-partition replicas, each compared with River on its own partition's events.
        "scope": "partition",
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


def _seen_by_service(runner: Runner) -> tuple[int, int]:
    """(events, labels) the service has taken in so far. Nothing is evicted in these
    runs, so every event taken in is either joined or still waiting for its label."""
    events = labels = 0
    for processor in runner.partitions.all_processors().values():
        pending = processor.learners.pending
        events += pending.stats.joined + len(pending)
        labels += pending.stats.joined
    return events, labels


def _send_and_wait(
    runner: Runner, producer: KafkaProducer, record: tuple[str, Any, bytes, int], count: int, side: int
) -> None:
    topic, key, value, timestamp_ms = record
    producer.send(topic, key=key, value=value, timestamp_ms=timestamp_ms).get(30)
    deadline = time.monotonic() + 60
    while _seen_by_service(runner)[side] < count:
        assert time.monotonic() < deadline, f"the service did not take in record {count} of {topic} within 60 s"
        time.sleep(0.0005)


def _produce_labels_late(runner: Runner, bootstrap: str, cfg: Any, dataset: str, delay: int, limit: int | None) -> int:
    """Publishes each label ``delay`` events after its event, in lock step with the service:
    the next record goes out only once the service has taken in the last one. Acknowledged
    publishing alone is not enough: one fetch reads the labels partition and the events
    partition at slightly different moments, so a record can reach the service a poll
    ahead of one acknowledged before it (seen once in CI on Bananas). The lock step pins
    River's ``delay=N`` order (label i is learned after event i + N - 1 is predicted and
    before event i + N is) whatever the fetches and polls do."""
    events = list(iter_events(dataset, limit=limit))
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    base = int(time.time() * 1000)
    n = len(events)
    for p in range(n + delay):
        if p >= delay:
            i = p - delay
            label = json.dumps({"id": i, "label": json.loads(events[i][1])["label"]}).encode()
            _send_and_wait(runner, producer, (cfg.input.labels_topic, events[i][0], label, base + 2 * p), i + 1, side=1)
        if p < n:
            key, value = events[p]
            unlabelled = json.dumps({k: v for k, v in json.loads(value).items() if k != "label"}).encode()
            _send_and_wait(runner, producer, (cfg.input.topic, key, unlabelled, base + 2 * p + 1), p + 1, side=0)
    producer.close()
    return n


# The service's own order is "as polled"; the lock step above pins it, on either client.
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
        n = _produce_labels_late(runner, bootstrap, cfg, dataset, delay, limit)
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


def test_a_labels_topic_gets_the_events_topics_partitions_or_the_run_refuses_to_start(settings, bootstrap, unique):
    from kafka.admin import KafkaAdminClient, NewTopic

    from streamwise.core.errors import ConfigError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        mismatched = _config(f"{unique}-a", CASES["Phishing"], labels_topic=f"{unique}-a.labels")
        admin.create_topics([NewTopic(mismatched.input.topic, 3, 1), NewTopic(mismatched.input.labels_topic, 2, 1)])
        with pytest.raises(ConfigError, match=r"^input\.labels_topic: \S+ has 2 partition\(s\) but input\.topic \S+ has 3"):
            Runner(mismatched, settings).run(until_idle_s=0.5)

        missing = _config(f"{unique}-b", CASES["Phishing"], labels_topic=f"{unique}-b.labels")
        admin.create_topics([NewTopic(missing.input.topic, 3, 1)])
        Runner(missing, settings).run(until_idle_s=0.5)
        (described,) = admin.describe_topics([missing.input.labels_topic])
        assert len(described["partitions"]) == 3
    finally:
        admin.close()


@pytest.mark.parametrize("scope,partitions", [("partition", 1), ("global", 3)])
def test_a_backlog_read_one_topic_ahead_still_joins_every_label_in_its_window(
    scope, partitions, settings, bootstrap, unique
):
    # The service was down while 5,000 events and then their labels (every 4th, one
    # second after its event) were published: whichever topic the client reads ahead,
    # every label joins its prediction, because the join is decided by the two record
    # times (models/labels.py). Every 20th label is stamped outside the window (two
    # days late, or two minutes before its event) and must be refused, counted.
    from kafka.admin import KafkaAdminClient, NewTopic

    case = CASES["Phishing"]
    cfg = _config(unique, case, labels_topic=f"{unique}.labels", scope=scope)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(t, partitions, 1) for t in (cfg.input.topic, cfg.input.labels_topic)])
    admin.close()
    rows = list(datasets.Phishing())
    n, base = 5000, int(time.time() * 1000) - 3 * 86_400_000  # the broker refuses stamps from the future
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20)
    for i in range(n):
        x = rows[i % len(rows)][0]
        producer.send(cfg.input.topic, key=str(i).encode(), value=json.dumps({"id": i, **x}).encode(),
                      timestamp_ms=base + 100 * i)
    producer.flush()
    labels = []
    for i in range(0, n, 4):
        shift = {0: 2 * 86_400_000, 20: -120_000}.get(i % 80, 1000)
        labels.append((base + 100 * i + shift, i))
    expected = sum(1 for t, i in labels if t == base + 100 * i + 1000)
    for t, i in sorted(labels):  # a labels partition is in time order: a late label is published late
        label = json.dumps({"id": i, "label": rows[i % len(rows)][1]}).encode()
        producer.send(cfg.input.labels_topic, key=str(i).encode(), value=label, timestamp_ms=t)
    producer.close()
    runner = Runner(cfg, settings)
    summary = runner.run(until_idle_s=3.0)
    assert summary.events_in == n + n // 4 and summary.dead_letters == {}
    joined = late = early = 0
    learned: dict[str, int] = {}
    for processor in runner.partitions.all_processors().values():
        labels = processor.learners.report()["labels"]
        joined, late, early = joined + labels["joined"], late + labels["late"], early + labels["early_expired"]
        for m in processor.models:
            learned[m.name] = learned.get(m.name, 0) + m.n_learned
    assert joined == expected == 1124 and late == early == 63, (joined, late, early)
    assert learned == {name: expected for name in case["models"]}
    assert len(values(consume(bootstrap, cfg.output.topic, n))) == n
