"""One event that poisons a model (its answers NaN for ever after) costs that model the
labels since its last healthy copy, not the rest of the stream (models/recovery.py)."""

from __future__ import annotations

import itertools
import math

import pytest
from river import datasets
from streamwise.models import recovery
from streamwise.models.catalog import ModelSpec
from streamwise.models.model_set import ModelSet

LOGREG = ModelSpec(name="logreg", steps=["preprocessing.StandardScaler", "linear_model.LogisticRegression"])
TREE = ModelSpec(name="tree", steps=[{"tree.HoeffdingTreeClassifier": {"grace_period": 50}}])
ROWS = list(itertools.islice(datasets.Phishing(), 1250))


def _run(poison_at: int, batch: int = 25, empty_between: bool = False) -> tuple[ModelSet, list, list]:
    """``empty_between``: a batch with no event after each one (a poll of labels or dead
    letters only)."""
    models = ModelSet([LOGREG, TREE], task="classification", metric="Accuracy")
    answers, alerts = [], []
    for start in range(0, len(ROWS), batch):
        if empty_between:
            alerts += models.end_batch().alerts
        for i in range(start, min(start + batch, len(ROWS))):
            x, y = ROWS[i]
            if i == poison_at:
                # Within any schema without a max, and its square overflows: the scaler's
                # variance turns infinite and every weight NaN after it is learned.
                x = {**x, "empty_server_form_handler": 1e160}
            answers.append(models.on_event(i, x, y, float(i)))
        alerts += models.end_batch().alerts
    return models, answers, alerts


def _finite(outcome, name: str) -> bool:
    p = outcome.predictions[name]
    return p.error is None and p.finite and all(math.isfinite(v) for v in (p.proba or {}).values())


@pytest.fixture
def copies_whenever_due(monkeypatch):
    # Copies follow the label count alone here, not the wall time this machine takes.
    monkeypatch.setattr(recovery, "COPY_SHARE", 1e12)


def test_a_poisoned_model_goes_back_to_its_healthy_copy_and_the_others_carry_on(copies_whenever_due, monkeypatch):
    models, answers, alerts = _run(poison_at=1010)
    # NaN from the poison to the end of its batch (1000 to 1024), then healthy again.
    sick = [i for i, o in enumerate(answers) if not _finite(o, "logreg")]
    assert len(sick) >= recovery.NOT_FINITE_RUN and 1010 < min(sick) and max(sick) < 1025
    after = answers[1025:]
    assert all(_finite(o, "tree") for o in answers)
    (restored,) = [a for a in alerts if a["type"] == "model_restored"]
    assert restored["model"] == "logreg" and restored["to"] == "copy" and 0 < restored["labels_lost"] <= 1000
    logreg = models.models[0]
    assert logreg.faults["restored"] == 1 and "put back to its copy" in logreg.last_error
    assert sum(o.predictions["logreg"].value == y for o, (_x, y) in zip(after, ROWS[1025:], strict=True)) > 0.8 * len(after)
    # Without the copies, the model answers NaN for the rest of the stream.
    monkeypatch.setattr(recovery, "NOT_FINITE_RUN", 10**9)
    _, unguarded, _ = _run(poison_at=1010)
    assert not any(_finite(o, "logreg") for o in unguarded[1012:])


def test_polls_without_an_answer_between_nan_answers_do_not_restart_the_count(copies_whenever_due):
    # One event per poll, each followed by a poll the model answers nothing in.
    models, answers, alerts = _run(poison_at=1010, batch=1, empty_between=True)
    sick = [i for i, o in enumerate(answers) if not _finite(o, "logreg")]
    assert sick and min(sick) > 1010 and max(sick) < 1011 + 2 * recovery.NOT_FINITE_RUN
    assert [a["model"] for a in alerts if a["type"] == "model_restored"] == ["logreg"]
    assert all(_finite(o, "logreg") for o in answers[max(sick) + 1:])


def test_a_copy_taken_after_the_poison_is_dropped_when_its_model_turns_nan_again(copies_whenever_due):
    # The poison is the last event of a batch, learned after its own (finite) answer:
    # the copy taken at the end of that batch holds it, not yet answering NaN (an
    # infinite variance; the next steps make the weights NaN). Put back to it, the model
    # turns NaN again; that copy is then dropped for the one before it.
    models, answers, alerts = _run(poison_at=1024)
    restored = [a for a in alerts if a["type"] == "model_restored"]
    assert [a["to"] for a in restored] == ["copy", "copy"] and restored[1]["labels_lost"] >= 1000
    assert all(_finite(o, "logreg") for o in answers[1075:])


def test_with_no_healthy_copy_the_model_starts_afresh():
    models, answers, alerts = _run(poison_at=10, batch=5)
    (restored,) = [a for a in alerts if a["type"] == "model_restored"]
    assert restored["to"] in ("copy", "fresh")
    assert all(_finite(o, "logreg") for o in answers[40:])


def test_copies_of_an_estimator_replaced_since_are_never_put_back(copies_whenever_due):
    # A promoted challenger, a drift reset or self-training's shadow takes the model's
    # place: the copies were of the model it replaced, which must not come back.
    models = ModelSet([LOGREG], task="classification", metric="Accuracy")
    for i, (x, y) in enumerate(ROWS[:600]):
        models.on_event(i, x, y, float(i))
        if i % 25 == 24:
            models.end_batch()
    logreg = models.models[0]
    logreg.reset()  # as the drift policy would: a fresh estimator in its place
    alerts = []
    for i, (x, y) in enumerate(ROWS[600:700], start=600):
        models.on_event(i, {**x, "empty_server_form_handler": 1e160} if i == 610 else x, y, float(i))
        if i % 25 == 24:
            alerts += models.end_batch().alerts
    # Poisoned in its first batch after the reset, before any copy of the new estimator:
    # it starts afresh (before the fix it went back to the copy of the model reset away).
    (restored,) = [a for a in alerts if a["type"] == "model_restored"]
    assert restored["to"] == "fresh"
