"""ModelSet on lists of dicts: delayed labels, drift policies, champion hysteresis."""

from __future__ import annotations

import itertools
import pickle

import pytest

from river import datasets
from river.datasets import synth

from streamwise.models.catalog import ModelSpec
from streamwise.models.champion import ChampionSelector
from streamwise.models.config import ChampionConfig, DriftConfig, ExplainConfig, LabelsConfig
from streamwise.models.model_set import ModelSet

TREE = ModelSpec(name="tree", steps=[{"tree.HoeffdingTreeClassifier": {"grace_period": 50}}])
LOGREG = ModelSpec(name="logreg", steps=["preprocessing.StandardScaler", "linear_model.LogisticRegression"])


def _drifting(n: int = 4000, position: int = 2000):
    """Agrawal's function 0, then abruptly (width 1 would overflow River's sigmoid) function 4."""
    return itertools.islice(
        synth.ConceptDriftStream(
            stream=synth.Agrawal(classification_function=0, seed=42),
            drift_stream=synth.Agrawal(classification_function=4, seed=43),
            position=position, width=50, seed=1,
        ),
        n,
    )


def _run(models: ModelSet, stream) -> list[dict]:
    alerts = []
    for i, (x, y) in enumerate(stream):
        models.on_event(i, x, y, float(i))
        alerts += models.end_batch().alerts
    return alerts


def test_drift_is_detected_soon_after_the_change_and_policy_none_only_alerts():
    models = ModelSet([TREE], task="classification", metric="Accuracy", drift=DriftConfig(policy="none"))
    alerts = _run(models, _drifting())
    drifts = [a for a in alerts if a["type"] == "drift"]
    assert drifts and all(a["action"] == "none" for a in drifts)
    first_after = min(a["event_id"] for a in drifts if a["event_id"] >= 2000)
    assert first_after - 2000 < 1000
    # Improvements while the tree learns (ADWIN sees those too) raise no alert.
    assert all(a["event_id"] >= 2000 for a in drifts)
    assert [m.name for m in models.models] == ["tree"]


def test_reset_policy_replaces_the_model_with_a_fresh_one():
    models = ModelSet([TREE], task="classification", metric="Accuracy", drift=DriftConfig(policy="reset"))
    stream = list(_drifting())
    _run(models, stream[:2000])
    grown = models.models[0].estimator
    assert grown.n_nodes > 1
    alerts = _run(models, stream[2000:2200])
    assert any(a["type"] == "drift" and a["action"] == "reset" for a in alerts)
    assert models.models[0].estimator is not grown
    assert models.models[0].n_learned == 2200  # the slot's counters and metric carry on


def test_challenger_policy_trains_a_fresh_model_beside_and_promotes_it_when_better():
    models = ModelSet(
        [TREE], task="classification", metric="Accuracy",
        drift=DriftConfig(policy="challenger"), champion=ChampionConfig(window=300, patience=20, min_samples=100),
    )
    alerts = _run(models, _drifting())
    started = [a for a in alerts if a["type"] == "drift" and a["action"].startswith("started")]
    assert started, alerts
    outcome = [a for a in alerts if a["type"] == "challenger"]
    assert outcome and outcome[0]["action"] in {"promoted", "retired"}
    # Once judged, the challenger is gone and the model keeps its name.
    assert [m.name for m in models.models] == ["tree"]
    pickle.loads(pickle.dumps(models))


def test_champion_needs_a_lead_beyond_the_margin_for_patience_labels():
    sel = ChampionSelector("a", bigger_is_better=True, margin=0.02, patience=5, min_samples=10)
    flapping = [{"a": (0.80, 50), "b": (0.83, 50)}, {"a": (0.82, 50), "b": (0.81, 50)}] * 20
    assert all(sel.update(s) is None for s in flapping) and sel.champion == "a"
    assert sel.update({"a": (0.5, 50), "b": (0.9, 5)}) is None  # b has too few labels
    changes = [sel.update({"a": (0.80, 50), "b": (0.85, 50)}) for _ in range(5)]
    assert changes[:4] == [None] * 4 and changes[4].champion == "b" and sel.champion == "b"
    lower = ChampionSelector("a", bigger_is_better=False, margin=0.1, patience=1, min_samples=1)
    assert lower.update({"a": (1.0, 5), "b": (0.5, 5)}).champion == "b"  # MAE: smaller wins


def test_champion_changes_are_alerted_and_answer_for_the_record():
    weak = ModelSpec(name="prior", steps=["dummy.PriorClassifier"])
    models = ModelSet(
        [weak, LOGREG], task="classification", metric="Accuracy",
        champion=ChampionConfig(window=100, patience=10, min_samples=50, margin=0.01),
    )
    alerts = _run(models, datasets.Phishing())
    changes = [a for a in alerts if a["type"] == "champion"]
    assert len(changes) == 1 and changes[0]["previous"] == "prior" and changes[0]["champion"] == "logreg"
    outcome = models.on_event("x", next(iter(datasets.Phishing()))[0], None, 0.0)
    assert outcome.champion == "logreg" and set(outcome.predictions) == {"prior", "logreg"}


def test_labels_join_by_id_once_early_labels_wait_and_old_predictions_expire():
    # Record times from 1,000 s: 0 and below are records without one (models/labels.py).
    models = ModelSet(
        [LOGREG], task="classification", metric="Accuracy", delayed_labels=True,
        labels=LabelsConfig(ttl_s=100.0, early_hold_s=5.0, max_pending=1000),
    )
    x = next(iter(datasets.Phishing()))[0]
    models.on_event(1, x, None, t=1000.0)
    models.on_label(1, True, t=1003.0)
    models.on_label(1, True, t=1004.0)  # a repeat is never learned twice
    models.on_label(2, False, t=1005.0)  # before its event: held
    models.on_event(2, x, None, t=1006.0)
    models.on_event(3, x, None, t=1007.0)
    models.on_label(9, True, t=1008.0)  # its event never comes
    models.on_event(3, x, None, t=1007.5)  # a repeated event: predicted, the first one keeps waiting
    assert models.end_batch().label_misses == {"label_repeated": 1, "event_repeated": 1}
    models.on_event(4, x, None, t=1200.0)  # the events read pass 1008 + 5 s: the label of 9 expires
    models.on_label(4, True, t=1201.0)  # the labels read pass 1007 + 100 s: 3 can no longer be labelled
    models.on_label(3, True, t=1202.0)  # too late: counted, not learned
    result = models.end_batch()
    report = models.report()
    assert models.models[0].n_learned == 3
    labels = report["labels"]
    assert labels["joined"] == 3 and labels["joined_early"] == 1 and labels["duplicates"] == 1
    assert labels["evicted_ttl"] == 1 and labels["early_expired"] == 1 and labels["pending"] == 0
    assert labels["late"] == 1 and labels["duplicate_events"] == 1 and labels["held_early"] == 0
    assert result.label_delays == [1.0]
    assert result.label_misses == {"prediction_expired": 1, "label_late": 1, "label_expired": 1}
    assert labels["delay_max_s"] == 3.0 and labels["delay_mean_s"] == 4.0 / 3


def test_explanations_are_off_by_default_and_give_top_k_linear_contributions():
    x, y = next(iter(datasets.Phishing()))
    quiet = ModelSet([LOGREG], task="classification", metric="Accuracy")
    assert quiet.on_event(0, x, y, 0.0).explanation is None
    models = ModelSet([LOGREG], task="classification", metric="Accuracy", explain=ExplainConfig(top_k=2))
    for i, (x, y) in enumerate(itertools.islice(datasets.Phishing(), 50)):
        outcome = models.on_event(i, x, y, float(i))
    assert outcome.explanation is not None and len(outcome.explanation) == 2


MLP = ModelSpec(
    name="mlp",
    steps=[{"streamwise.TorchMiniBatchClassifier": {"hidden_layers": [8], "batch_size": 16, "seed": 3, "max_wait_s": None}}],
)


def _torch_predictions(poll_size: int) -> list:
    models = ModelSet([MLP], task="classification", metric="Accuracy", drift=DriftConfig(enabled=False))
    preds = []
    stream = list(datasets.Phishing().take(300))
    for start in range(0, len(stream), poll_size):
        for i, (x, y) in enumerate(stream[start : start + poll_size], start):
            models.on_event(i, x, y, float(i))
        preds += [o.predictions["mlp"].proba for o in models.end_batch().outcomes]
    return preds


def test_torch_predictions_do_not_depend_on_how_the_stream_was_polled():
    """Each event is predicted with the weights of every step taken before it: polls of
    1, 37 or 300 events give the same predictions (up to float32 rounding, which
    depends on how many rows one matrix product holds)."""
    one = [p[True] for p in _torch_predictions(1)]
    for poll_size in (37, 300):
        assert [p[True] for p in _torch_predictions(poll_size)] == pytest.approx(one, abs=1e-5)
