"""Prequential (test-then-train) scoring of the models of a pipeline.

Each :class:`PrequentialModel` reproduces ``river.evaluate.progressive_val_score``
exactly, event by event: predict with ``predict_proba_one`` for a classifier whose
metric takes probabilities, else ``predict_one`` (``score_one`` for an anomaly
detector); update the metric with that prediction only when it is neither ``None``
nor ``{}``; then learn. The same steps in the same order give bit-identical metrics,
which the integration tests check against River itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from river import base, metrics
from river.compose import Pipeline
from streamwise.models.learner import is_batch_learner


@dataclass(slots=True)
class Prediction:
    """What one model said about one event, before it learned from it."""

    value: Any  # class, number or anomaly score; None when the model has nothing yet
    proba: dict[Any, float] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"prediction": self.value}
        if self.proba is not None:
            out["probabilities"] = {str(k).lower() if isinstance(k, bool) else str(k): v for k, v in self.proba.items()}
        return out


def make_metric(name: str) -> metrics.base.Metric:
    """A fresh ``river.metrics`` object from its class name (``"Accuracy"``, ``"MAE"``, ...)."""
    cls = getattr(metrics, name, None)
    if not (isinstance(cls, type) and issubclass(cls, metrics.base.Metric)):
        raise ValueError(f"unknown River metric {name!r}")
    return cls()


def _final_step(model: Any) -> Any:
    return model._last_step if isinstance(model, Pipeline) else model


class PrequentialModel:
    """One named model and its prequential metric.

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
        self.name = name
        self.estimator = estimator
        self.metric = make_metric(metric)
        # Batch learners are not River estimators (the torch modules must not import
        # River): they say what they are with ``task`` (models/learner.py).
        self.predicts_in_batches = is_batch_learner(estimator)
        if self.predicts_in_batches:
            wanted = metrics.base.ClassificationMetric if estimator.task == "classification" else metrics.base.RegressionMetric
            if not isinstance(self.metric, wanted):
                raise ValueError(f"metric {metric} does not work with model {name!r}")
        elif not self.metric.works_with(estimator):
            raise ValueError(f"metric {metric} does not work with model {name!r}")
        self.is_classifier = (
            isinstance(estimator, base.Classifier)
            or isinstance(_final_step(estimator), base.Classifier)
            or getattr(estimator, "task", None) == "classification"
        )
        self.is_anomaly_detector = isinstance(_final_step(estimator), base.AnomalyDetector)
        self._metric_takes_proba = self.is_classifier and not self.metric.requires_labels
        # When the classifier keeps River's default predict_one (argmax of the
        # probabilities), one predict_proba_one call yields both; otherwise call both.
        self._class_from_proba = (
            self.is_classifier and type(_final_step(estimator)).predict_one is base.Classifier.predict_one
        )
        # Only learning is counted: a restored worker predicts the replayed events again
        # and must still end in the same state as one that never stopped.
        self.n_learned = 0

    def predict_one(self, x: dict[str, Any]) -> Prediction:
        est = self.estimator
        if self.is_anomaly_detector:
            return Prediction(est.score_one(x))
        if not self.is_classifier:
            return Prediction(est.predict_one(x))
        proba = est.predict_proba_one(x)
        if self._class_from_proba:
            value = max(proba, key=proba.get) if proba else None
        else:
            value = est.predict_one(x)
        return Prediction(value, proba)

    def predict_many(self, xs: list[dict[str, Any]]) -> list[Prediction]:
        """One vectorised pass for a learner that ``predicts_in_batches``; a loop otherwise."""
        if not self.predicts_in_batches:
            return [self.predict_one(x) for x in xs]
        if not self.is_classifier:
            return [Prediction(v) for v in self.estimator.predict_many(xs)]
        return [Prediction(max(p, key=p.get) if p else None, p) for p in self.estimator.predict_proba_many(xs)]

    def score(self, y: Any, prediction: Prediction) -> None:
        """Updates the metric with a prediction unless it is None or ``{}``, as River does."""
        y_pred = prediction.proba if self._metric_takes_proba else prediction.value
        if y_pred is not None and y_pred != {}:
            self.metric.update(y_true=y, y_pred=y_pred)

    def learn_one(self, x: dict[str, Any], y: Any, prediction: Prediction | None, t: float | None = None) -> None:
        """Scores ``prediction`` (made when the event arrived) against ``y``, then learns.

        ``prediction`` is None for a model that did not exist when the event was predicted
        (a challenger started since): it learns without being scored. ``t`` is the stream
        time, which a mini-batch learner uses to bound how long a partial batch waits.
        """
        if prediction is not None:
            self.score(y, prediction)
        if self.is_anomaly_detector:
            self.estimator.learn_one(x)
        elif self.predicts_in_batches:
            self.estimator.learn_one(x, y, t)
        else:
            self.estimator.learn_one(x, y)
        self.n_learned += 1
