"""One model's metrics, cumulative and over a rolling window, all updated on every label.

The service keeps its models' metrics in the :class:`~streamwise.models.scoreboard.Scoreboard`.
:class:`Evaluation` is the same scoring (:meth:`Scoreboard.score`, the one rule) for a
reader that wants a figure after every label, such as the learning report
(streamwise/report.py), which replays a run's prediction records.
"""

from __future__ import annotations

import copy
from typing import Any

from streamwise.models.prequential import Prediction
from streamwise.models.scoreboard import (
    BINARY,
    MULTICLASS,
    REGRESSION,
    MetricPlan,
    ModelScores,
    Scoreboard,
    metric_names,
)

__all__ = ["Evaluation", "metric_names", "BINARY", "MULTICLASS", "REGRESSION"]


class Evaluation:
    """Examples
    --------
    >>> ev = Evaluation("classification", binary=True, window=2)
    >>> for y, p in [(True, 0.9), (False, 0.8), (True, 0.7)]:
    ...     ev.update(y, Prediction(p > 0.5, {True: p, False: 1 - p}))
    >>> report = ev.report()
    >>> round(report["cumulative"]["Accuracy"], 4), report["rolling"]["Accuracy"], ev.n
    (0.6667, 0.5, 3)
    """

    def __init__(
        self, task: str, binary: bool = True, window: int = 1000, names: tuple[str, ...] | list[str] | None = None
    ) -> None:
        names = metric_names(task, binary) if names is None else tuple(dict.fromkeys(names))
        self.window = window
        self.names = tuple(names)
        plan = MetricPlan(cumulative=self.names, rolling=self.names, window=window, rolling_per_label=True)
        # An anomaly detector may have no metric at all.
        self.scores = ModelScores(self.names[0], plan, is_classifier=task == "classification") if self.names else None

    @property
    def cumulative(self) -> dict[str, Any]:
        return {n: m for n, m in self.scores.cumulative.items() if n in self.names} if self.scores else {}

    @property
    def rolling(self) -> dict[str, Any]:
        return self.scores.rolling_metrics if self.scores else {}

    @property
    def n(self) -> int:
        return self.scores.n if self.scores else 0

    def update(self, y: Any, prediction: Prediction) -> None:
        if self.scores is not None:
            Scoreboard.score(self.scores, y, prediction)

    def adopt_window(self, other: Evaluation) -> None:
        """Takes a promoted challenger's rolling window, as the service's model does
        (:meth:`ModelScores.adopt_window`); the cumulative metrics carry on."""
        if self.scores is not None and other.scores is not None:
            # A copy: the challenger's own figures stay as they were when it was promoted.
            taken = copy.deepcopy(other.scores)
            self.scores.adopt_window(taken)
            self.scores.rolling_metrics = taken.rolling_metrics
            self.scores._wire()

    def report(self) -> dict[str, dict[str, float]]:
        return self.scores.report(with_metric=True) if self.scores else {"cumulative": {}, "rolling": {}}
