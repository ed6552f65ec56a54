"""The scoreboard: one scoring rule, lazy rolling figures equal to River's Rolling, and a
state that depends only on the labels scored."""

from __future__ import annotations

import pickle
import random

from river import linear_model, metrics, utils
from streamwise.models.model import Model
from streamwise.models.prequential import Prediction
from streamwise.models.scoreboard import MetricPlan, Scoreboard
from streamwise.models.state import fingerprint

PLAN = MetricPlan(cumulative=("LogLoss",), rolling=("Accuracy", "LogLoss"), window=50, champion_metric="Accuracy",
                  champion_window=30)


def _labels(n: int, seed: int = 0) -> list[tuple[bool, Prediction]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        p = rng.random()
        prediction = Prediction(p > 0.5, {True: p, False: 1 - p}) if i % 17 else Prediction(None, {})
        out.append((rng.random() < 0.6, prediction))
    return out


def _scores(labels: list[tuple[bool, Prediction]]):
    board = Scoreboard("Accuracy", PLAN)
    scores = board.add(Model("lr", linear_model.LogisticRegression()))
    for y, p in labels:
        board.score(scores, y, p)
    return scores


def test_rolling_figures_read_when_asked_equal_rivers_rolling_metrics() -> None:
    labels = _labels(400)
    scores = _scores(labels)
    rolling = {name: utils.Rolling(getattr(metrics, name), window_size=50) for name in ("Accuracy", "LogLoss")}
    for y, p in labels:
        if p.value is not None:
            rolling["Accuracy"].update(y, p.value)
        if p.proba:
            rolling["LogLoss"].update(y, p.proba)
    report = scores.report()
    assert report["rolling"]["Accuracy"] == rolling["Accuracy"].get()
    assert abs(report["rolling"]["LogLoss"] - rolling["LogLoss"].get()) < 1e-12
    assert "Accuracy" not in report["cumulative"] and report["cumulative"]["LogLoss"] > 0


def test_the_state_does_not_depend_on_when_the_figures_were_read() -> None:
    labels = _labels(300, seed=1)
    read, unread = _scores(labels[:150]), _scores(labels[:150])
    read.report()
    assert fingerprint(pickle.loads(pickle.dumps(read))) == fingerprint(pickle.loads(pickle.dumps(unread)))


def test_the_champion_metric_tracked_from_the_recent_labels_equals_one_kept_all_along() -> None:
    labels = _labels(200, seed=2)
    late = _scores(labels)
    late.track_champion(True)
    along = Scoreboard("Accuracy", PLAN)
    scores = along.add(Model("lr", linear_model.LogisticRegression()))
    scores.track_champion(True)
    for y, p in labels:
        along.score(scores, y, p)
    assert late.window_score() == scores.window_score()
    assert late.window_score()[1] == 30
