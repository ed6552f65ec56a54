"""The one place where a labelled prediction is scored.

For every labelled prediction the :class:`Scoreboard` applies the scoring rule once and
updates that model's :class:`ModelScores`: the pipeline's ``metric`` over the whole
stream, with the exact semantics of ``river.evaluate.progressive_val_score`` (the
integration tests check equality with River), the extra metrics configured, each
metric over a rolling window of the last ``window`` labels, and the rolling metric the
champion is chosen on. The evaluation report, the champion and Prometheus all read
from here; nothing else scores.

The rule
    A prediction that is an error, or that was NaN or infinite, is counted and scored
    by no metric (one NaN would stay in a cumulative metric forever). Otherwise a
    metric that scores probabilities (``ROCAUC``, ``LogLoss``...) gets a classifier's
    probabilities and every other metric gets the predicted value, each only when it
    is neither ``None`` nor ``{}``, as River does.

The extra metrics, by task ("standard"):

- binary classification: Accuracy, F1, ROCAUC, LogLoss;
- multi-class classification: Accuracy, MacroF1, CrossEntropy;
- regression: MAE, RMSE, R2.
"""

from __future__ import annotations

import math
import sys
from collections import deque
from dataclasses import dataclass
from typing import Any

from river import metrics, utils
from streamwise.models.learner import is_batch_learner
from streamwise.models.model import Model
from streamwise.models.prequential import Prediction, make_metric, peek

__all__ = ["MetricPlan", "ModelScores", "Scoreboard", "metric_names"]

BINARY = ("Accuracy", "F1", "ROCAUC", "LogLoss")
MULTICLASS = ("Accuracy", "MacroF1", "CrossEntropy")
REGRESSION = ("MAE", "RMSE", "R2")


def metric_names(task: str, binary: bool) -> tuple[str, ...]:
    """The standard extra metrics of a task."""
    if task == "regression":
        return REGRESSION
    if task == "classification":
        return BINARY if binary else MULTICLASS
    return ()


def _takes_proba(name: str) -> bool:
    return not getattr(make_metric(name), "requires_labels", True)


def _rolling(name: str, window: int) -> Any:
    return utils.Rolling(getattr(metrics, name), window_size=window)


@dataclass(frozen=True)
class MetricPlan:
    """Which metrics every model gets besides the pipeline's ``metric`` (cumulative): the
    extra cumulative ones, the rolling ones over ``window`` labels, and the rolling metric
    the champion is chosen on over ``champion_window`` labels."""

    cumulative: tuple[str, ...] = ()
    rolling: tuple[str, ...] = ()
    window: int | None = None
    champion_metric: str | None = None
    champion_window: int | None = None
    # Also keep running rolling metrics (ModelScores.rolling_metrics), updated on every
    # label: for a reader that wants every point of the rolling curve (the learning report).
    rolling_per_label: bool = False


# An error at least this large (the square root of the largest double) is not scored:
# squared by MSE, RMSE or R2 it would overflow.
LARGEST_SCORED_ERROR = math.sqrt(sys.float_info.max)


class ModelScores:
    """One model's metrics and counts; updated only by :meth:`Scoreboard.score`.

    The cumulative metrics are updated on every label. The rolling ones are not: the
    last labels scored are kept, as ``(y, value, probabilities)``, and a rolling figure
    is computed from them when it is read (a report, about once a second), which costs
    nothing per event. Only the champion's rolling metric must be current on every
    label, and only while there is a champion to choose; :meth:`track_champion` keeps
    it so from then on. A rolling window holds the last ``window`` labels that its
    metric could score (a prediction that is not None, probabilities that are not
    empty), as ``river.utils.Rolling`` does.
    """

    # A regression error this many times the usual size makes a running rolling metric
    # wrong as it leaves the window: subtracting it back cancels the digits of every other
    # error (the labels after one of 1e300 left a window MAE of -8e8 for good, and the
    # model that made it champion). Squared metrics square the ratio, hence a modest one.
    HUGE_ERROR_RATIO = 1e4
    # Not in snapshots written before these existed: read from the class then.
    _watch_errors = False
    _usual_error = 0.0

    def __init__(self, metric: str, plan: MetricPlan, *, is_classifier: bool) -> None:
        self.is_classifier = is_classifier
        self.plan = plan
        self.metric = make_metric(metric)
        self.cumulative: dict[str, Any] = {metric: self.metric}
        for name in plan.cumulative:
            self.cumulative.setdefault(name, make_metric(name))
        self.rolling_names = plan.rolling if plan.window else ()
        self.rolling_metrics: dict[str, Any] = (
            {n: _rolling(n, plan.window) for n in self.rolling_names} if plan.rolling_per_label and plan.window else {}
        )
        size = max(plan.window if self.rolling_names else 0, plan.champion_window or 0)
        self.recent: deque[tuple[Any, Any, Any]] | None = deque(maxlen=size) if size else None
        # Probabilities are kept only for a rolling metric that scores them: what is kept is
        # state, and a torch learner's probabilities differ in their last bits with the
        # size of the block they were predicted in, which must not make two states differ.
        windowed = [*self.rolling_names, *([plan.champion_metric] if plan.champion_metric else [])]
        self._keep_proba = any(self._takes_proba(name) for name in windowed)
        # The champion's rolling metric, kept current while track_champion(True).
        self.champion: Any = None
        # Labelled predictions scored (a None prediction counts: River scores nothing but
        # sees the label).
        self.n = 0
        # Labels scored since these recent labels began (a promoted challenger's carry over).
        self.n_recent = 0
        self.n_failed = 0
        self.n_not_finite = 0
        # Whether the newest labelled prediction could be scored: the champion's score is
        # NaN while the model keeps failing, so a broken champion loses its place.
        self.last_scorable = True
        self._rolling_cache: tuple[int, dict[str, float]] | None = None
        self._wire()

    def __getstate__(self) -> dict[str, Any]:
        # The cache of the rolling figures depends on when they were last read (a report
        # once a second), not on what was learned: two workers that learned the same
        # labels must snapshot the same state.
        state = dict(self.__dict__)
        state["_rolling_cache"] = None
        return state

    def _takes_proba(self, name: str) -> bool:
        return self.is_classifier and _takes_proba(name)

    def _wire(self) -> None:
        """Splits the metrics updated per label into those fed the class (or number) and
        those fed probabilities, once, so that scoring a label is two short loops."""
        objects = [*self.cumulative.items(), *self.rolling_metrics.items()]
        if self.champion is not None:
            objects.append((self.plan.champion_metric, self.champion))
        self._by_value = [m for name, m in objects if not self._takes_proba(name)]
        self._by_proba = [m for name, m in objects if self._takes_proba(name)]
        self._watch_errors = not self.is_classifier and bool(self.champion is not None or self.rolling_metrics)

    def _leaving_error(self) -> float:
        """The largest regression error among the labels that the running rolling metrics
        revert when the next label comes (their windows' oldest)."""
        recent = self.recent
        if recent is None:
            return 0.0
        plan = self.plan
        largest = 0.0
        for window, running in ((plan.champion_window, self.champion), (plan.window, self.rolling_metrics)):
            if running and window and len(recent) >= window:
                y, value, _ = recent[-window]
                try:
                    largest = max(largest, abs(y - value))
                except TypeError:
                    pass
        return largest

    def _watch(self, error: float, leaving: float) -> None:
        """After a regression label was fed to the running rolling metrics: when the error
        that just left a window was far beyond the usual size, the running metrics are
        rebuilt from the window's labels (exact, as a replay is), instead of keeping what
        the cancellation left."""
        usual = self._usual_error
        if usual > 0.0 and leaving > self.HUGE_ERROR_RATIO * usual:
            self._rebuild_running()
        # The usual size follows the last ten or so errors, each counted as at most ten
        # times the usual: one huge error barely moves it, a lasting change of scale
        # moves it within a few dozen labels, and it shrinks as fast as the errors do.
        if usual > 0.0:
            self._usual_error = usual + 0.1 * (min(error, 10.0 * usual) - usual)
        else:
            self._usual_error = error

    def _rebuild_running(self) -> None:
        plan = self.plan
        if self.champion is not None and plan.champion_metric and plan.champion_window:
            self.champion = self._replay(
                _rolling(plan.champion_metric, plan.champion_window), plan.champion_metric, plan.champion_window
            )
        if self.rolling_metrics and plan.window:
            self.rolling_metrics = {n: self._replay(_rolling(n, plan.window), n, plan.window) for n in self.rolling_metrics}
        self._wire()

    def _replay(self, metric: Any, name: str, window: int) -> Any:
        """Feeds ``metric`` the last ``window`` labels it can score, oldest first."""
        proba = self._takes_proba(name)
        picked: list[tuple[Any, Any]] = []
        for y, value, probabilities in reversed(self.recent or ()):
            y_pred = probabilities if proba else value
            if y_pred is not None and y_pred != {}:
                picked.append((y, y_pred))
                if len(picked) == window:
                    break
        for y, y_pred in reversed(picked):
            metric.update(y, y_pred)
        return metric

    def track_champion(self, on: bool) -> None:
        """Keeps the champion's rolling metric current on every label (on), or stops."""
        plan = self.plan
        if not on or plan.champion_metric is None or plan.champion_window is None:
            self.champion = None
        elif self.champion is None:
            self.champion = self._replay(
                _rolling(plan.champion_metric, plan.champion_window), plan.champion_metric, plan.champion_window
            )
        self._wire()

    def adopt_window(self, other: ModelScores) -> None:
        """Takes another model's recent labels and champion metric (a promoted challenger's,
        whose estimator this model now runs); the cumulative metrics carry on."""
        self.recent, self.champion, self.last_scorable = other.recent, other.champion, other.last_scorable
        self.n_recent = other.n_recent
        self._usual_error = other._usual_error
        self._rolling_cache = None
        self._wire()

    def window_score(self) -> tuple[float, int]:
        """(the champion metric over the window, labels in it); NaN while the model's newest
        labelled prediction was an error or not finite, or when the metric is NaN."""
        plan = self.plan
        if plan.champion_metric is None or plan.champion_window is None:
            return math.nan, 0
        n = min(self.n_recent, plan.champion_window)
        if not self.last_scorable:
            return math.nan, n
        if self.champion is not None:
            value = self.champion.get()
            if isinstance(value, complex):
                # What a running window left after rounding (a mean square of -1e-17 makes
                # River's RMSE a complex number): the window's labels replayed say it exactly.
                self._rebuild_running()
                value = self.champion.get()
            return (math.nan if isinstance(value, complex) else value), n
        metric = self._replay(make_metric(plan.champion_metric), plan.champion_metric, plan.champion_window)
        return metric.get(), n

    def report(self, with_metric: bool = False) -> dict[str, dict[str, float]]:
        """``{"cumulative": {metric: value}, "rolling": {metric: value}}``; the pipeline's own
        metric is among the cumulative ones only ``with_metric`` (it is :attr:`metric`)."""
        # Replayed even when rolling_per_label keeps running figures: a running rolling
        # metric reverts old labels, which leaves float rounding a replay does not have,
        # and every reader of a report must see the same figure.
        if self._rolling_cache is None or self._rolling_cache[0] != self.n:
            window = self.plan.window or 0
            rolling = {name: self._replay(make_metric(name), name, window).get() for name in self.rolling_names}
            self._rolling_cache = (self.n, rolling)
        return {
            "cumulative": {n: peek(m) for n, m in self.cumulative.items() if with_metric or m is not self.metric},
            "rolling": dict(self._rolling_cache[1]),
        }


def metric_fits(metric_name: str, estimator: Any) -> bool:
    """Whether River's metric ``metric_name`` can score ``estimator``'s predictions (the
    config checks this at load, the scoreboard again when a model joins).

    Examples
    --------
    >>> from river import linear_model
    >>> metric_fits("Accuracy", linear_model.LogisticRegression())
    True
    >>> metric_fits("MAE", linear_model.LogisticRegression())
    False
    """
    metric = make_metric(metric_name)
    task = getattr(estimator, "task", None) if is_batch_learner(estimator) else None
    if task is not None:
        # Batch learners are not River estimators: their task says which metrics fit.
        kinds = {"classification": metrics.base.ClassificationMetric, "regression": metrics.base.RegressionMetric}
        return isinstance(metric, kinds[task])
    return bool(metric.works_with(estimator))


class Scoreboard:
    """Every model's metrics; :meth:`score` is the scoring rule, applied once per label.

    Examples
    --------
    >>> from river import linear_model
    >>> board = Scoreboard("Accuracy", MetricPlan(cumulative=("LogLoss",), rolling=("Accuracy",), window=2))
    >>> scores = board.add(Model("lr", linear_model.LogisticRegression()))
    >>> for y, p in [(True, 0.9), (False, 0.8), (True, 0.7)]:
    ...     _ = board.score(scores, y, Prediction(p > 0.5, {True: p, False: 1 - p}))
    >>> board.score(scores, True, Prediction(None, error="ValueError: boom"))
    False
    >>> report = scores.report(with_metric=True)
    >>> round(report["cumulative"]["Accuracy"], 4), report["rolling"]["Accuracy"], scores.n, scores.n_failed
    (0.6667, 0.5, 3, 1)
    """

    def __init__(self, metric: str, plan: MetricPlan | None = None) -> None:
        self.metric_name = metric
        self.plan = plan or MetricPlan()
        self.entries: dict[str, ModelScores] = {}

    def add(self, model: Model) -> ModelScores:
        """Fresh metrics for ``model``, which must be able to score the pipeline's metric."""
        if not metric_fits(self.metric_name, model.estimator):
            raise ValueError(f"metric {self.metric_name} does not work with model {model.name!r}")
        scores = ModelScores(self.metric_name, self.plan, is_classifier=model.is_classifier)
        model.scores = scores
        self.entries[model.name] = scores
        return scores

    def remove(self, name: str) -> None:
        self.entries.pop(name, None)

    @staticmethod
    def score(scores: ModelScores, y: Any, prediction: Prediction) -> bool:
        """Scores one labelled prediction; False when it was an error or not finite (then
        counted, and scored by nothing)."""
        if prediction.error is not None:
            scores.n_failed += 1
            scores.last_scorable = False
            return False
        if not prediction.finite:
            scores.n_not_finite += 1
            scores.last_scorable = False
            return False
        value = prediction.value
        error = None
        # Regression: a number for a number (np.float64 is a float; an anomaly score has
        # a bool label, left alone).
        if not scores.is_classifier and type(y) in (float, int) and isinstance(value, (float, int)):
            error = abs(y - value)
            if not error < LARGEST_SCORED_ERROR:
                # Squared, it would overflow (River's MSE raises OverflowError) or be
                # inf: a score no metric can hold, flagged like a NaN prediction.
                scores.n_not_finite += 1
                scores.last_scorable = False
                return False
        scores.last_scorable = True
        scores.n += 1
        scores.n_recent += 1
        proba = prediction.proba
        leaving = scores._leaving_error() if error is not None and scores._watch_errors else 0.0
        # Only what some metric can score is kept: a window holds the last labels scored.
        if scores.recent is not None:
            kept = proba if scores._keep_proba else None
            if value is not None or kept:
                scores.recent.append((y, value, kept))
        if value is not None:
            for m in scores._by_value:
                m.update(y, value)
            if scores._watch_errors and error is not None:
                scores._watch(error, leaving)
        if proba:
            for m in scores._by_proba:
                m.update(y, proba)
        return True

    def window_score(self, name: str) -> tuple[float, int]:
        return self.entries[name].window_score()
