"""Self-training: a model learns from its own confident predictions of unlabelled events.

Which events are unlabelled
    With inline labels, an event that arrives without one: nothing else will ever label
    it. With a labels topic the label of any event may still come, so self-training is
    refused there at start (``input.labels_topic``): learning a pseudo-label and then the
    real label of the same event would count it twice, and waiting for the label's
    ``ttl_s`` to pass would learn pseudo-labels a day late.

What is learned
    The predicted class, when its probability reaches ``threshold`` (or the class's own
    entry in ``thresholds``, keyed by the class as text: ``"true"``, ``"3"``, ``"churn"``),
    with sample weight ``weight`` when the estimator's ``learn_one`` takes one (``w``),
    otherwise learned once at full weight when ``weight >= 0.5`` (a config with a smaller
    weight for such an estimator is refused). Pseudo-labels are capped: they stay at most
    ``max_share`` of all the labels the model learned (pseudo and real). They never reach a
    metric, a drift detector or a search's candidate scores; they are counted on their own.

The guard
    A shadow copy of the model learns only the real labels. On every real label both are
    scored, before learning, with the pipeline's metric over the last ``guard_window``
    labels. Once ``guard_min_labels`` labels are in, if the self-trained model is behind
    the shadow by more than ``guard_margin`` and the gap is real (a paired test on the two
    models' 0/1 errors on the same labels puts it more than ``guard_z`` standard errors
    above zero: over 50 labels a gap of 2 points is mostly luck, and a guard that fires on
    luck turns off self-training that helps), self-training switches off for good and the
    model is replaced by the shadow: what the pseudo-labels taught it is dropped, and it
    goes on as if self-training had never been on. The shadow costs one prediction and one
    update per real label (not per event), which with few labels is little.
"""

from __future__ import annotations

import copy
import math
from collections import deque
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from river import utils
from streamwise.models.prequential import Prediction, make_metric
from streamwise.models.search import accepts_weight

__all__ = ["SelfTrainingConfig", "SelfTraining"]


class SelfTrainingConfig(BaseModel):
    """A model's ``self_training:`` block."""

    model_config = ConfigDict(extra="forbid")

    # The probability the predicted class must reach to be learned as a label.
    threshold: float = Field(0.9, gt=0, le=1)
    # Per class, by the class as text; the classes not named use ``threshold``.
    thresholds: dict[str, float] = Field(default_factory=dict)
    weight: float = Field(0.5, gt=0, le=1)
    # Pseudo-labels stay at most this share of every label learned.
    max_share: float = Field(0.8, gt=0, lt=1)
    guard_window: int = Field(200, ge=2)
    guard_min_labels: int = Field(50, ge=2)
    guard_margin: float = Field(0.0, ge=0)
    guard_z: float = Field(2.0, ge=0)


def _class(y_pred: Any) -> Any:
    return max(y_pred, key=y_pred.get) if isinstance(y_pred, dict) and y_pred else y_pred


def _wrong(y_pred: Any, y: Any) -> float:
    return 0.0 if y_pred == y else 1.0


def _text(label: Any) -> str:
    return str(label).lower() if isinstance(label, bool) else str(label)


class SelfTraining:
    """One model's self-training state: its counters, its guard and the shadow copy.

    Examples
    --------
    >>> from river import linear_model
    >>> config = SelfTrainingConfig(threshold=0.8, max_share=0.5)
    >>> st = SelfTraining(config, linear_model.LogisticRegression(), "Accuracy")
    >>> st.pseudo_label(Prediction(True, {True: 0.7, False: 0.3}))  # not confident enough
    >>> st.pseudo_label(Prediction(True, {True: 0.9, False: 0.1}))  # confident, but no real label yet: capped
    >>> st.on_label({"a": 1.0}, True, Prediction(True, {True: 0.6, False: 0.4}))
    False
    >>> st.pseudo_label(Prediction(True, {True: 0.9, False: 0.1}))
    True
    >>> st.n_pseudo, st.n_labelled, st.n_below_threshold, st.n_capped
    (1, 1, 1, 1)
    """

    def __init__(self, config: SelfTrainingConfig, estimator: Any, metric: str) -> None:
        self.config = config
        self.active = True
        self.shadow: Any = copy.deepcopy(estimator)
        self.weighted = accepts_weight(estimator)
        self.metric_name = metric
        self._proba = not make_metric(metric).requires_labels
        self.main_recent = utils.Rolling(type(make_metric(metric)), window_size=config.guard_window)
        self.shadow_recent = utils.Rolling(type(make_metric(metric)), window_size=config.guard_window)
        # (self-trained error - shadow error) per real label, 0/1 each, for the paired test.
        self.diffs: deque[float] = deque(maxlen=config.guard_window)
        self.n_pseudo = 0
        self.n_labelled = 0
        self.n_below_threshold = 0
        self.n_capped = 0
        # Real labels seen when the guard switched self-training off, and the two scores then.
        self.switched_off: dict[str, Any] | None = None

    def pseudo_label(self, prediction: Prediction | None) -> Any | None:
        """The class to learn from an unlabelled event's prediction, or None."""
        if not self.active or prediction is None or not prediction.scorable or not prediction.proba:
            return None
        proba = prediction.proba
        label = max(proba, key=proba.get)  # type: ignore[arg-type]
        cfg = self.config
        if proba[label] < cfg.thresholds.get(_text(label), cfg.threshold):
            self.n_below_threshold += 1
            return None
        if self.n_pseudo + 1 > cfg.max_share * (self.n_pseudo + 1 + self.n_labelled):
            self.n_capped += 1
            return None
        self.n_pseudo += 1
        return label

    def on_label(self, x: dict[str, Any], y: Any, prediction: Prediction | None) -> bool:
        """A real label, before the model learns it: scores the model's ``prediction`` and
        the shadow's, lets the shadow learn, and returns True when the guard switches
        self-training off (the caller then puts :attr:`shadow` in the model's place)."""
        if not self.active:
            return False
        self.n_labelled += 1
        shadow_pred = self.shadow.predict_proba_one(x) if self._proba else self.shadow.predict_one(x)
        if shadow_pred is not None and shadow_pred != {}:
            self.shadow_recent.update(y, shadow_pred)
        if prediction is not None and prediction.scorable:
            main_pred = prediction.proba if self._proba else prediction.value
            if main_pred is not None and main_pred != {}:
                self.main_recent.update(y, main_pred)
            self.diffs.append(_wrong(prediction.value, y) - _wrong(_class(shadow_pred), y))
        self.shadow.learn_one(x, y)
        cfg = self.config
        if self.n_labelled < cfg.guard_min_labels:
            return False
        main, shadow = self.main_recent.get(), self.shadow_recent.get()
        behind = shadow - main if self.main_recent.bigger_is_better else main - shadow
        if behind > cfg.guard_margin and self._real_gap():
            self.active = False
            self.switched_off = {"labels": self.n_labelled, "self_trained": main, "shadow": shadow}
            return True
        return False

    def _real_gap(self) -> bool:
        """The paired test: the self-trained model's extra errors average more than
        ``guard_z`` standard errors above zero over the window."""
        n = len(self.diffs)
        if n < 2:
            return False
        mean = sum(self.diffs) / n
        var = sum((d - mean) ** 2 for d in self.diffs) / (n - 1)
        return mean > 0.0 if var == 0.0 else mean > self.config.guard_z * math.sqrt(var / n)

    def reset(self, estimator: Any) -> None:
        """Starts again beside a fresh estimator (a drift reset), counters kept."""
        self.shadow = copy.deepcopy(estimator)
        self.main_recent = utils.Rolling(type(make_metric(self.metric_name)), window_size=self.config.guard_window)
        self.shadow_recent = utils.Rolling(type(make_metric(self.metric_name)), window_size=self.config.guard_window)
        self.diffs = deque(maxlen=self.config.guard_window)
