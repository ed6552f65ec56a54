"""Hyperparameter search and self-training through the service: the records, the metrics,
and a restart from the Redis snapshot that changes no record and no model."""

from __future__ import annotations

import json

from streamwise.connectors.prometheus import PrometheusSensor
from streamwise.models.catalog import ModelSpec
from support import consume, phishing_pipeline, produce

from streamwise.replay import iter_events
from streamwise.runner import Runner

LR = ["preprocessing.StandardScaler", "linear_model.LogisticRegression"]


def _records(bootstrap: str, topic: str, n: int) -> dict[int, dict]:
    out = [json.loads(r.value) for r in consume(bootstrap, topic, n)]
    by_id = {r["id"]: r for r in out}
    assert len(out) == len(by_id) == n, "one record per event, none twice"
    return by_id


def _straight_and_restarted(settings, bootstrap, unique, models, label_share=1.0):
    """The same pipeline run once straight through, and once stopped after 500 events and
    restarted from its snapshot; the records of both, and the second run's sensor."""
    events = list(iter_events("Phishing", label_share=label_share))
    topic = f"{unique}.events"
    produce(bootstrap, topic, events)
    settings.kafka.max_poll_records = 100
    runs = {}
    for how in ("straight", "restarted"):
        cfg = phishing_pipeline(f"{unique}-{how}")
        cfg.input.topic = topic
        cfg.models = models
        prom = PrometheusSensor(cfg.name, [m.name for m in cfg.models], topic)
        if how == "restarted":
            first = Runner(cfg, settings).run(max_events=500)  # a graceful stop snapshots
            assert first.events_in >= 500
        summary = Runner(cfg, settings, sensors=[prom]).run(until_idle_s=1.0)
        runs[how] = (_records(bootstrap, cfg.output.topic, len(events)), summary, prom)
    return events, runs


def test_a_search_answers_with_its_best_candidate_and_restarts_exactly(settings, bootstrap, unique):
    space = {"LogisticRegression__optimizer__lr": [0.01, 0.1, 1.0], "LogisticRegression__l2": [0.0, 0.01]}
    searched = ModelSpec(name="search", steps=LR, search={"space": space, "policy": "keep_all"})
    events, runs = _straight_and_restarted(settings, bootstrap, unique, [searched])
    straight, summary, _ = runs["straight"]
    restarted, restarted_summary, prom = runs["restarted"]
    # The restart from the snapshot changes no record: answers, candidates' metrics, winner.
    assert restarted == {i: {**r, "epoch": restarted[i]["epoch"], "latency_s": restarted[i]["latency_s"],
                             "source": restarted[i]["source"], "event_timestamp_ms": restarted[i]["event_timestamp_ms"]}
                         for i, r in straight.items()}
    assert restarted_summary.metrics["search"]["value"] == summary.metrics["search"]["value"]
    first, last = straight[0]["search"]["search"], straight[len(events) - 1]["search"]["search"]
    assert first == {"best": "lr=0.01,l2=0", "metrics": [None] * 6}
    assert len(last["metrics"]) == 6 and all(0.5 < v < 1 for v in last["metrics"])
    # The record's prediction is the best candidate's, and the winner is in Prometheus.
    assert all(r["prediction"] == r["models"]["search"]["prediction"] for r in straight.values())
    best = [c for c in (f"lr={lr:g},l2={l2:g}" for lr in (0.01, 0.1, 1.0) for l2 in (0.0, 0.01))
            if prom.value("streamwise_search_best", model="search", partition="0", candidate=c) == 1.0]
    assert len(best) == 1
    assert prom.value("streamwise_search_running_candidates", model="search", partition="0") == 6


def test_self_training_learns_pseudo_labels_counts_them_apart_and_restarts_exactly(settings, bootstrap, unique):
    st = ModelSpec(name="st", steps=LR, self_training={"threshold": 0.8, "max_share": 0.8})
    events, runs = _straight_and_restarted(settings, bootstrap, unique, [st], label_share=0.1)
    labelled = sum(1 for _k, v in events if "label" in json.loads(v))
    straight, summary, _ = runs["straight"]
    restarted, restarted_summary, prom = runs["restarted"]
    pseudo = sorted(i for i, r in straight.items() if r.get("pseudo_labels") == ["st"])
    assert pseudo and pseudo == sorted(i for i, r in restarted.items() if r.get("pseudo_labels") == ["st"])
    assert all(r["models"] == restarted[i]["models"] for i, r in straight.items())
    assert restarted_summary.metrics["st"] == summary.metrics["st"]
    # Real labels only in the learned count and the metric; pseudo-labels in their own counter.
    straight_prom = runs["straight"][2]
    assert summary.metrics["st"]["learned"] == labelled
    assert straight_prom.value("streamwise_model_learned_total", model="st") == labelled
    assert straight_prom.value("streamwise_self_training_pseudo_labels_total", model="st") == len(pseudo)
    assert straight_prom.value("streamwise_self_training_active", model="st", partition="0") in (0.0, 1.0)
    assert prom.value("streamwise_self_training_pseudo_labels_total", model="st") == sum(
        1 for i in pseudo if restarted[i]["epoch"] != 0)
