"""The scoreboard: one scoring rule, lazy rolling figures equal to River's Rolling, and a
state that depends only on the labels scored."""

from __future__ import annotations

import pickle
import random

import pytest

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


REGRESSION = MetricPlan(rolling=("MAE", "RMSE"), window=200, champion_metric="MAE", champion_window=100,
                        rolling_per_label=True)


def _regression_scores(errors: list[float]):
    board = Scoreboard("MAE", REGRESSION)
    scores = board.add(Model("lr", linear_model.LinearRegression()))
    scores.track_champion(True)
    rebuilds = 0
    rebuild = scores._rebuild_running

    def counted() -> None:
        nonlocal rebuilds
        rebuilds += 1
        rebuild()

    scores._rebuild_running = counted
    for i, e in enumerate(errors):
        board.score(scores, float(i % 7), Prediction(float(i % 7) + e))
    return scores, rebuilds


def _replayed(scores, name: str, window: int) -> float:
    return scores._replay(utils.Rolling(getattr(metrics, name), window_size=window), name, window).get()


def test_a_huge_error_leaves_the_running_window_metrics_exact() -> None:
    """One label with an error of 1e100: once it leaves the window, subtracting it back
    would cancel every other error (one of 1e300 left a window MAE of -8e8, for good,
    which made the model that erred champion). The running metrics are rebuilt from the
    window then."""
    rng = random.Random(3)
    errors = [rng.gauss(0, 0.1) for _ in range(1000)]
    errors[400] = 1e100
    scores, rebuilds = _regression_scores(errors)
    # as a replay of the window, but for the rounding of the running updates since
    assert scores.window_score() == (pytest.approx(_replayed(scores, "MAE", 100), rel=1e-12), 100)
    assert 0.0 < scores.window_score()[0] < 1.0
    assert scores.rolling_metrics["RMSE"].get() == pytest.approx(_replayed(scores, "RMSE", 200), rel=1e-12)
    assert rebuilds == 2  # once as it leaves each window


def test_a_change_of_scale_is_rebuilt_around_only_as_it_leaves() -> None:
    """The errors grow a hundred-million-fold for good: nothing is rebuilt (a large
    error entering a window costs nothing). They shrink back: the running metrics are
    rebuilt while the large ones leave, at most once per label of the larger window, and
    are exact after."""
    rng = random.Random(4)
    small = [rng.gauss(0, 0.1) for _ in range(500)]
    large = [rng.gauss(0, 1e7) for _ in range(1000)]
    scores, rebuilds = _regression_scores(small + large)
    assert rebuilds == 0
    scores, rebuilds = _regression_scores(small + large + small)
    assert 0 < rebuilds <= 200
    assert scores.window_score() == (pytest.approx(_replayed(scores, "MAE", 100), rel=1e-12), 100)
    assert scores.rolling_metrics["RMSE"].get() == pytest.approx(_replayed(scores, "RMSE", 200), rel=1e-12)


def test_an_error_whose_square_overflows_is_flagged_not_scored() -> None:
    """River's MSE raises OverflowError on an error of 1e300 (its square), and the
    record's event was dead-lettered for it; such a prediction is counted as not finite
    and scored by no metric, like a NaN."""
    errors = [0.1] * 50 + [1e300, -2e154, float("inf")] + [0.2] * 50
    scores, _ = _regression_scores(errors)
    assert (scores.n, scores.n_not_finite) == (100, 3)
    assert scores.window_score() == (pytest.approx(_replayed(scores, "MAE", 100), rel=1e-12), 100)
    assert 0.1 <= scores.metric.get() <= 0.2
