"""Prequential (test-then-train) predictions, and the reference loop the tests compare with.

A :class:`Prediction` is what one model said about one event before it learned from it:
a value (class, number or anomaly score), a classifier's probabilities, or the error
the model raised, or a flag that it answered NaN or infinity.

:class:`PrequentialModel` is ``river.evaluate.progressive_val_score`` for one model,
event by event, built from the same parts as the service (a
:class:`~streamwise.models.model.Model` and the
:class:`~streamwise.models.scoreboard.Scoreboard`): predict with ``predict_proba_one``
for a classifier whose metric takes probabilities, else ``predict_one`` (``score_one``
for an anomaly detector); update the metric with that prediction only when it is
neither ``None`` nor ``{}``; then learn. The same steps in the same order give
bit-identical metrics, which the integration tests check against River itself.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from river import metrics
from river.compose import Pipeline


@dataclass(slots=True)
class Prediction:
    """What one model said about one event, before it learned from it.

    Examples
    --------
    >>> Prediction(True, {False: 0.2, True: 0.8}).to_json()
    {'prediction': True, 'probabilities': {'false': 0.2, 'true': 0.8}}
    >>> Prediction(None, error="ValueError: no weights").to_json()
    {'error': 'ValueError: no weights'}
    >>> Prediction(float("nan"), finite=False).to_json()
    {'prediction': None, 'not_finite': True}
    """

    value: Any  # class, number or anomaly score; None when the model has nothing yet
    proba: dict[Any, float] | None = None
    # "<class>: <message>" when the model raised instead of predicting.
    error: str | None = None
    # False when the value or a probability was NaN or infinite: flagged in the record,
    # kept out of every metric and of the drift detector.
    finite: bool = True

    @property
    def scorable(self) -> bool:
        """Neither an error nor a non-finite answer: the scoreboard may score it."""
        return self.error is None and self.finite

    def to_json(self) -> dict[str, Any]:
        if self.error is not None:
            return {"error": self.error}
        if not self.finite:
            return {"prediction": None, "not_finite": True}
        out: dict[str, Any] = {"prediction": self.value}
        if self.proba is not None:
            out["probabilities"] = {str(k).lower() if isinstance(k, bool) else str(k): v for k, v in self.proba.items()}
        return out


def peek(metric: Any) -> float:
    """A River metric's value, read from a copy: reading some metrics adds entries to
    their state (ROCAUC's confusion matrices are defaultdicts that a read fills with
    zeros), so a read at a reporting time would make a snapshot's bytes depend on when
    the figures were last reported, not only on what was learned. Readers outside the
    learning path (reports, metrics, summaries) use this.

    Examples
    --------
    >>> import pickle
    >>> from river import metrics
    >>> auc = metrics.ROCAUC()
    >>> for y, p in [(True, 0.9), (False, 0.2), (True, 0.4)]:
    ...     auc.update(y, {True: p, False: 1 - p})
    >>> state = pickle.dumps(auc)
    >>> value = peek(auc)
    >>> pickle.dumps(auc) == state, bool(value == auc.get()), pickle.dumps(auc) == state
    (True, True, False)
    """
    return copy.deepcopy(metric).get()


def make_metric(name: str) -> metrics.base.Metric:
    """A fresh ``river.metrics`` object from its class name (``"Accuracy"``, ``"MAE"``, ...).
    Only a metric that is one number can score a model: one that needs parameters
    (``FBeta``'s beta) or is a table (``ConfusionMatrix``, ``ClassificationReport``)
    is refused here, at start, not by a fault on every event.

    >>> make_metric("MAE").get()
    0.0
    >>> for name in ("FBeta", "ConfusionMatrix", "Acuracy"):
    ...     try:
    ...         make_metric(name)
    ...     except ValueError as e:
    ...         print(e)
    River metric 'FBeta' needs parameters, which a metric name cannot give: use one without (F1, MacroF1, ...)
    River metric 'ConfusionMatrix' is not one number a model can be scored by
    unknown River metric 'Acuracy'
    """
    cls = getattr(metrics, name, None)
    if not (isinstance(cls, type) and issubclass(cls, metrics.base.Metric)):
        raise ValueError(f"unknown River metric {name!r}")
    try:
        metric = cls()
    except TypeError:
        raise ValueError(
            f"River metric {name!r} needs parameters, which a metric name cannot give: use one without (F1, MacroF1, ...)"
        ) from None
    try:
        value = metric.get()
    except NotImplementedError:
        value = None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"River metric {name!r} is not one number a model can be scored by")
    return metric


def final_step(model: Any) -> Any:
    """The estimator at the end of a River pipeline, or the model itself."""
    return model._last_step if isinstance(model, Pipeline) else model


class PrequentialModel:
    """One named model and its prequential metric, as ``progressive_val_score`` runs it.

    Examples
    --------
    >>> from river import datasets, evaluate, linear_model, metrics, preprocessing
    >>> make = lambda: preprocessing.StandardScaler() | linear_model.LogisticRegression()
    >>> scored = PrequentialModel("lr", make(), "Accuracy")
    >>> for x, y in datasets.Phishing():
    ...     scored.learn_one(x, y, scored.predict_one(x))
    >>> scored.metric.get() == evaluate.progressive_val_score(
    ...     datasets.Phishing(), make(), metrics.Accuracy()).get()
    True
    """

    def __init__(self, name: str, estimator: Any, metric: str) -> None:
        # Imported here: model.py and scoreboard.py import Prediction from this module.
        from streamwise.models.model import Model
        from streamwise.models.scoreboard import Scoreboard

        self.model = Model(name, estimator)
        self.scoreboard = Scoreboard(metric)
        self.scores = self.scoreboard.add(self.model)

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def estimator(self) -> Any:
        return self.model.estimator

    @property
    def metric(self) -> metrics.base.Metric:
        return self.scores.metric

    @property
    def n_learned(self) -> int:
        return self.model.n_learned

    def predict_one(self, x: dict[str, Any]) -> Prediction:
        return self.model.predict_one(x)

    def learn_one(self, x: dict[str, Any], y: Any, prediction: Prediction | None, t: float | None = None) -> None:
        """Scores ``prediction`` (made when the event arrived) against ``y``, then learns,
        unless the prediction was an error: a model does not learn from an event it
        failed on."""
        if prediction is not None:
            self.scoreboard.score(self.scores, y, prediction)
            if prediction.error is not None:
                return
        self.model.learn_one(x, y, t)
