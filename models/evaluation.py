"""Cumulative and rolling prequential metrics of one model, from ``river.metrics``.

The pipeline's own ``metric`` is scored by :class:`~streamwise.models.prequential.PrequentialModel`
with River's exact semantics; :class:`Evaluation` adds the standard set for the task,
each both over the whole stream and over a rolling window of the last ``window`` labels:

- binary classification: Accuracy, F1, ROCAUC, LogLoss;
- multi-class classification: Accuracy, MacroF1, CrossEntropy;
- regression: MAE, RMSE, R2.
"""

from __future__ import annotations

from typing import Any

from river import metrics, utils
from streamwise.models.prequential import Prediction

BINARY = ("Accuracy", "F1", "ROCAUC", "LogLoss")
MULTICLASS = ("Accuracy", "MacroF1", "CrossEntropy")
REGRESSION = ("MAE", "RMSE", "R2")


def metric_names(task: str, binary: bool) -> tuple[str, ...]:
    if task == "regression":
        return REGRESSION
    if task == "classification":
        return BINARY if binary else MULTICLASS
    return ()


def rolling(name: str, window: int) -> Any:
    """A rolling-window version of the ``river.metrics`` class ``name``."""
    return utils.Rolling(getattr(metrics, name), window_size=window)


class Evaluation:
    """The task's metrics for one model, cumulative and over the last ``window`` labels.

    Examples
    --------
    >>> ev = Evaluation("classification", binary=True, window=2)
    >>> for y, p in [(True, 0.9), (False, 0.8), (True, 0.7)]:
    ...     ev.update(y, Prediction(p > 0.5, {True: p, False: 1 - p}))
    >>> report = ev.report()
    >>> round(report["cumulative"]["Accuracy"], 4), report["rolling"]["Accuracy"]
    (0.6667, 0.5)
    >>> ev.n
    3
    """

    def __init__(
        self,
        task: str,
        binary: bool = True,
        window: int = 1000,
        names: tuple[str, ...] | list[str] | None = None,
        cumulative_elsewhere: str | None = None,
    ) -> None:
        self.window = window
        names = metric_names(task, binary) if names is None else tuple(dict.fromkeys(names))
        # The pipeline's own metric is already kept cumulatively, with River's exact
        # semantics, by its PrequentialModel: not scored a second time here.
        self.cumulative = {n: getattr(metrics, n)() for n in names if n != cumulative_elsewhere}
        self.rolling = {n: rolling(n, window) for n in names}
        # Which metrics score a class and which score probabilities.
        self._takes_proba = {n: not getattr(getattr(metrics, n)(), "requires_labels", True) for n in names}
        self.n = 0

    def update(self, y: Any, prediction: Prediction) -> None:
        self.n += 1
        for group in (self.cumulative, self.rolling):
            for name, metric in group.items():
                y_pred = prediction.proba if self._takes_proba[name] else prediction.value
                if y_pred is not None and y_pred != {}:
                    metric.update(y, y_pred)

    def report(self) -> dict[str, dict[str, float]]:
        return {
            "cumulative": {n: m.get() for n, m in self.cumulative.items()},
            "rolling": {n: m.get() for n, m in self.rolling.items()},
        }
