"""Hyperparameter search and self-training, in memory: expansion, policies, guard, config errors."""

from __future__ import annotations

import itertools
import math

import pytest
from river import datasets, linear_model, model_selection, optim, preprocessing, tree
from streamwise.core.errors import ConfigError
from streamwise.models.catalog import ModelSpec
from streamwise.models.model_set import ModelSet
from streamwise.models.search import SearchConfig, build_search, expand_space
from streamwise.models.state import decode_state, encode_state, fingerprint

from streamwise.pipeline_config import parse_pipeline_config

LR = ["preprocessing.StandardScaler", "linear_model.LogisticRegression"]
LR_SPACE = {"LogisticRegression__optimizer__lr": [0.01, 0.1, 1.0], "LogisticRegression__l2": [0.0, 0.01]}


def _lr() -> object:
    return preprocessing.StandardScaler() | linear_model.LogisticRegression()


def test_the_space_expands_into_every_combination_with_the_parameters_set():
    search = build_search(_lr(), SearchConfig(space=LR_SPACE), "Accuracy")
    assert len(search.candidates) == 6
    got = [(c["LogisticRegression"].optimizer.lr.learning_rate, c["LogisticRegression"].l2) for c in search.candidates]
    assert got == list(itertools.product([0.01, 0.1, 1.0], [0.0, 0.01]))
    assert search.labels[0] == "lr=0.01,l2=0"
    # Nested mappings are the same space as __ paths.
    nested = {"LogisticRegression": {"optimizer": {"lr": [0.01, 0.1, 1.0]}, "l2": [0.0, 0.01]}}
    assert expand_space(nested) == expand_space(LR_SPACE)


def test_ranges_log_ranges_and_estimator_choices():
    steps = expand_space({"x": {"range": {"low": 0.1, "high": 0.3, "step": 0.1}}})
    assert [a[("x",)] for a in steps] == [0.1, 0.2, 0.3]
    logs = [a[("x",)] for a in expand_space({"x": {"log_range": {"low": 0.001, "high": 1, "num": 4}}})]
    assert logs == [0.001, 0.01, 0.1, 1.0]
    space = {"LogisticRegression__optimizer": [{"optim.SGD": {"lr": 0.1}}, {"optim.Adam": {"lr": 0.01}}]}
    search = build_search(_lr(), SearchConfig(space=space), "Accuracy")
    assert [type(c["LogisticRegression"].optimizer) for c in search.candidates] == [optim.SGD, optim.Adam]
    assert search.labels == ["optimizer=SGD(lr=0.1)", "optimizer=Adam(lr=0.01)"]


def test_the_configured_parameters_answer_first():
    search = build_search(_lr(), SearchConfig(space={"LogisticRegression__l2": [0.1, 0.0, 0.01]}), "Accuracy")
    assert search.best_label == "l2=0"  # LogisticRegression's own l2


@pytest.mark.parametrize(
    "search, message",
    [
        ({"space": {"LogisticRegression__lr": [0.1, 1]}},
         "search.space.LogisticRegression__lr: LogisticRegression has no parameter 'lr' (it has: clip_gradient"),
        ({"space": {"Logistic__l2": [0.1, 1]}}, "Pipeline has no parameter 'Logistic'"),
        ({"space": {"LogisticRegression__l2": [0.1]}}, "a search needs at least two candidates"),
        ({"space": {"LogisticRegression__l2": {"range": {"low": 1, "high": 0, "step": 1}}}},
         "needs numbers low < high"),
        ({"space": {"LogisticRegression__l2": [0.0, 0.1]}, "policy": "successive_halving"}, "search.budget"),
        ({"space": {"LogisticRegression__l2": [0.0, 0.1]}, "policy": "successive_halving", "budget": 1},
         "search.budget: 1 is too small for 2 candidates"),
        ({"space": {"LogisticRegression__l2": [0.0, 0.1]}, "policy": "bandit", "bandit": "Greedy"},
         "unknown river.bandit policy 'Greedy'"),
        ({"space": {"LogisticRegression__l2": [0.0, 0.1]}, "polcy": "bandit"}, "polcy"),
    ],
)
def test_a_bad_search_fails_at_start_naming_the_key(search, message):
    data = {
        "name": "p", "input": {"topic": "e"}, "output": {"topic": "o"},
        "schema": {"id": "id", "label": "label", "label_type": "bool", "features": {"a": "float"}},
        "models": [{"name": "lr", "steps": LR, "search": search}],
    }
    with pytest.raises(ConfigError) as e:
        parse_pipeline_config(data)
    assert "models[0]" in str(e.value) and message in str(e.value)


def _run(spec: ModelSpec, events: list, other: ModelSpec | None = None) -> ModelSet:
    models = ModelSet([spec] + ([other] if other else []), task="classification", metric="Accuracy")
    for i, (x, y) in enumerate(events):
        models.on_event(i, x, y, float(i))
    models.end_batch()
    return models


def test_halving_keeps_rivers_schedule_and_survivors():
    """The rungs and survivors of River's SuccessiveHalvingClassifier, with the candidates
    scored by the same predictions (ours are scored before learning, as River's)."""
    events = list(datasets.Phishing())
    budget = 4000
    space = {"LogisticRegression__optimizer__lr": [0.005, 0.05, 0.5, 2.0], "LogisticRegression__l2": [0.0, 0.01]}
    spec = ModelSpec(name="lr", steps=LR, search={"space": space, "policy": "successive_halving", "budget": budget})
    ours = _run(spec, events).model("lr").estimator
    river_sh = model_selection.SuccessiveHalvingClassifier(
        [c.clone() for c in ours.candidates], metric=ours.metrics[0].clone(), budget=budget, eta=2
    )
    for x, y in events:
        river_sh.learn_one(x, y)
    # The same rungs and rankings, except that ours never drops the answering candidate.
    assert ours.running == river_sh._rankings[:1] or ours.running == [ours.best]
    same = [a.get() == b.get() for a, b in zip(ours.metrics, river_sh._metrics, strict=True)]
    assert sum(same) >= len(same) - 2
    # River's schedule: rungs at cumulative iteration floor(budget / (s * rungs)) for s = 8, 4, 2,
    # then the survivor alone.
    rungs = [math.floor(budget / (s * 3)) for s in (8, 4, 2)]
    expected = 8 * rungs[0] + 4 * (rungs[1] - rungs[0]) + 2 * (rungs[2] - rungs[1]) + (len(events) - rungs[2])
    assert ours.spent == expected


def test_halving_never_drops_the_answering_candidate():
    # lr=0.005 is configured (so it answers first) and, with margin 1, keeps answering; it
    # learns slowest at first, so River's first rung drops it.
    events = list(datasets.Phishing())
    steps = ["preprocessing.StandardScaler",
             {"linear_model.LogisticRegression": {"optimizer": {"optim.SGD": {"lr": 0.005}}}}]
    space = {"LogisticRegression__optimizer__lr": [0.005, 0.1, 0.5, 1.0]}
    search = {"space": space, "policy": "successive_halving", "budget": 2000, "margin": 1.0}
    ours = _run(ModelSpec(name="lr", steps=steps, search=search), events).model("lr").estimator
    river_sh = model_selection.SuccessiveHalvingClassifier(
        [c.clone() for c in ours.candidates], metric=ours.metrics[0].clone(), budget=2000, eta=2
    )
    for x, y in events[:300]:
        river_sh.learn_one(x, y)
    assert 0 not in river_sh._rankings[: river_sh._s]
    assert ours.running == [0] and ours.best == 0


def test_bandit_follows_rivers_bandit_classifier():
    events = list(datasets.Phishing().take(600))
    space = {"LogisticRegression__optimizer__lr": [0.01, 0.1, 1.0]}
    cfg = {"space": space, "policy": "bandit", "bandit": {"EpsilonGreedy": {"epsilon": 0.2, "seed": 3}}, "burn_in": 20}
    ours = _run(ModelSpec(name="lr", steps=LR, search=cfg), events).model("lr").estimator
    from river import bandit, metrics

    river_b = model_selection.BanditClassifier(
        [c.clone() for c in ours.candidates], metric=metrics.Accuracy(),
        policy=bandit.EpsilonGreedy(0.2, burn_in=20, seed=3),
    )
    for x, y in events:
        river_b.learn_one(x, y)
    assert dict(ours.bandit._counts) == dict(river_b.policy._counts)
    assert ours.candidates[ours.best]["LogisticRegression"].optimizer.lr.learning_rate == (
        river_b.best_model["LogisticRegression"].optimizer.lr.learning_rate)


def test_keep_all_answers_with_the_best_candidate_and_bounds_its_cost():
    events = list(datasets.Phishing())
    spec = ModelSpec(name="lr", steps=LR, search={"space": LR_SPACE, "budget": 3000})
    models = _run(spec, events)
    search = models.model("lr").estimator
    # Six candidates learn until 3,000 candidate-events are spent (label 500), then one.
    assert search.spent == 3000 + (len(events) - 500)
    assert len(search.running) == 1 and search.running == [search.best]
    report = models.report()["models"]["lr"]["search"]
    assert report["best"] == search.best_label and set(report["metrics"]) == set(search.labels)


def test_the_record_carries_the_best_candidate_as_it_was_when_the_event_was_predicted():
    events = list(datasets.Phishing().take(400))
    models = ModelSet([ModelSpec(name="lr", steps=LR, search={"space": LR_SPACE})], task="classification",
                      metric="Accuracy")
    seen = []
    for i, (x, y) in enumerate(events):
        outcome = models.on_event(i, x, y, float(i))
        seen.append(dict(outcome.search["lr"]))
    assert seen[0] == {"best": "lr=0.01,l2=0", "metrics": [None] * 6}
    assert all(len(s["metrics"]) == 6 for s in seen)
    # Event i was predicted after i labels: each candidate's metric over exactly those.
    assert seen[1]["metrics"][0] in (0.0, 1.0) and seen[-1]["metrics"] != seen[100]["metrics"]


@pytest.mark.parametrize("policy", ["keep_all", "successive_halving", "bandit"])
def test_a_search_snapshot_restores_bit_identical(policy):
    events = list(datasets.Phishing())
    spec = ModelSpec(name="t", steps=[{"tree.HoeffdingTreeClassifier": {}}],
                     search={"space": {"grace_period": [50, 200], "leaf_prediction": ["mc", "nba"]},
                             "policy": policy, "burn_in": 10, "budget": 2000})
    straight = _run(spec, events)
    half = _run(spec, events[:600])
    restored = decode_state(encode_state(half))
    for i, (x, y) in enumerate(events[600:], start=600):
        restored.on_event(i, x, y, float(i))
    restored.end_batch()
    assert fingerprint(restored.model("t").estimator) == fingerprint(straight.model("t").estimator)
    assert restored.model("t").metric.get() == straight.model("t").metric.get()
    assert isinstance(straight.model("t").estimator.candidates[0], tree.HoeffdingTreeClassifier)


# ---- self-training -------------------------------------------------------------------


def _sparse(events: list, every: int) -> list:
    return [(x, y if i % every == 0 else None) for i, (x, y) in enumerate(events)]


def test_pseudo_labels_are_learned_counted_apart_and_capped():
    events = _sparse(list(datasets.Phishing()), 10)
    st = {"threshold": 0.6, "max_share": 0.3, "guard_min_labels": 10**6}
    models = _run(ModelSpec(name="lr", steps=LR, self_training=st), events)
    m = models.model("lr")
    labelled = sum(1 for _, y in events if y is not None)
    assert m.scores.n == labelled and m.n_learned == labelled  # the metric sees real labels only
    assert 0 < m.n_pseudo <= 0.3 * (m.n_pseudo + labelled)
    assert m.self_training.n_capped > 0 and m.self_training.n_below_threshold > 0
    assert m.n_pseudo + m.self_training.n_capped + m.self_training.n_below_threshold == len(events) - labelled


def test_the_guard_switches_self_training_off_and_falls_back_on_the_shadow():
    # A threshold of 0.5 learns every prediction; with inverted real labels the self-trained
    # model drifts away from them, and the shadow that learned only real labels wins.
    events = [(x, (not y) if y is not None else None) for x, y in _sparse(list(datasets.Phishing()), 4)]
    st = {"threshold": 0.5, "max_share": 0.75, "guard_window": 50, "guard_min_labels": 30}
    models = ModelSet([ModelSpec(name="lr", steps=LR, self_training=st)], task="classification", metric="Accuracy")
    alerts = []
    for i, (x, y) in enumerate(events):
        models.on_event(i, x, y, float(i))
        alerts += models.end_batch().alerts
    m = models.model("lr")
    off = [a for a in alerts if a["type"] == "self_training"]
    assert not m.self_training.active
    assert len(off) == 1 and off[0]["self_trained"] < off[0]["shadow"] and off[0]["labels"] >= 30
    assert m.self_training.shadow is None
    n_pseudo = m.n_pseudo
    models.on_event(10**6, events[1][0], None, 1e6)
    assert m.n_pseudo == n_pseudo, "no pseudo-label once switched off"


def test_the_guard_compares_the_self_trained_model_with_its_shadow():
    from streamwise.models.prequential import Prediction
    from streamwise.models.self_training import SelfTraining, SelfTrainingConfig

    cfg = SelfTrainingConfig(guard_min_labels=5, guard_window=10)
    st = SelfTraining(cfg, linear_model.LogisticRegression(), "Accuracy")
    x = {"a": 1.0}
    for _ in range(4):
        st.shadow.learn_one(x, True)
    fired = [st.on_label(x, True, Prediction(False, {False: 0.9, True: 0.1})) for _ in range(6)]
    assert fired == [False] * 4 + [True, False] and not st.active
    assert st.switched_off == {"labels": 5, "self_trained": 0.0, "shadow": 1.0}


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"input": {"topic": "e", "labels_topic": "l"}}, "models[0].self_training: needs inline labels"),
        ({"models": [{"name": "t", "steps": ["naive_bayes.GaussianNB"], "self_training": {"weight": 0.3}}]},
         "self_training.weight: 0.3 is below 0.5"),
        ({"task": "regression",
          "schema": {"id": "id", "label": "label", "label_type": "float", "features": {"a": "float"}},
          "metric": "MAE", "models": [{"name": "r", "steps": ["linear_model.LinearRegression"], "self_training": {}}]},
         "self_training: needs a River classifier"),
        ({"models": [{"name": "lr", "steps": LR, "self_training": {"threshold": 1.5}}]}, "threshold"),
    ],
)
def test_a_bad_self_training_fails_at_start(extra, message):
    data = {
        "name": "p", "input": {"topic": "e"}, "output": {"topic": "o"},
        "schema": {"id": "id", "label": "label", "label_type": "bool", "features": {"a": "float"}},
        "models": [{"name": "lr", "steps": LR, "self_training": {}}],
        **extra,
    }
    with pytest.raises(ConfigError) as e:
        parse_pipeline_config(data)
    assert message in str(e.value)


def test_a_regression_search_answers_with_its_best_candidate_by_mae():
    events = list(datasets.TrumpApproval())
    space = {"LinearRegression__optimizer__lr": [0.001, 0.01, 0.1]}
    steps = ["preprocessing.StandardScaler", "linear_model.LinearRegression"]
    models = ModelSet([ModelSpec(name="s", steps=steps, search={"space": space}),
                       ModelSpec(name="d", steps=steps)], task="regression", metric="MAE")
    for i, (x, y) in enumerate(events):
        models.on_event(i, x, y, float(i))
    models.end_batch()
    search = models.model("s").estimator
    assert search.labels == ["lr=0.001", "lr=0.01", "lr=0.1"] and search.summary()["best"] == search.best_label
    # The configured lr (0.01) scores as the plain model does; MAE: smaller is better.
    assert search.metrics[1].get() == pytest.approx(models.model("d").metric.get())
    # lr=0.1 diverges (an MAE in the billions): the search never answered with it.
    assert search.metrics[2].get() > 1e6 and search.best_label == "lr=0.01"
    assert models.model("s").metric.get() == min(m.get() for m in search.metrics)
