"""One model of a pipeline: its estimator, how it predicts, its error boundary, its drift detector.

A :class:`Model` is everything that belongs to one configured model and to nothing
else: the estimator (a River estimator or a
:class:`~streamwise.models.learner.BatchLearner`), which verbs answer for it, the
faults it had, its drift detector and what a detection does to it. Its metrics are
its :class:`~streamwise.models.scoreboard.ModelScores`, which the one
:class:`~streamwise.models.scoreboard.Scoreboard` updates.

The error boundary
    A model that raises while predicting answers ``Prediction(error="<class>: <message>")``
    for that event and does not learn from it; one that raises while learning has not
    learned. One that answers NaN or infinity is flagged (``finite=False``) and kept out
    of its metrics and its drift detector. Every fault is counted by kind
    (:class:`~streamwise.core.stages.ModelFault`). None of this touches the other models
    of the pipeline: they predict and learn from the event as usual.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from river import base
from streamwise.core.stages import ModelFault
from streamwise.models.catalog import build_estimator
from streamwise.models.drift import DriftMonitor, prediction_error
from streamwise.models.learner import is_batch_learner
from streamwise.models.prequential import Prediction, final_step
from streamwise.models.search import SearchConfig, build_search
from streamwise.models.self_training import SelfTraining, SelfTrainingConfig

if TYPE_CHECKING:
    from streamwise.models.scoreboard import ModelScores

__all__ = ["Model", "describe_error", "linear_contributions"]

# An error message longer than this is cut: it is written into every record the model fails on.
_MAX_ERROR = 300


def describe_error(e: BaseException) -> str:
    """``"<class>: <message>"``, cut to a length a record can carry.

    Examples
    --------
    >>> describe_error(ValueError("no weights yet"))
    'ValueError: no weights yet'
    """
    return f"{type(e).__name__}: {e}"[:_MAX_ERROR]


def linear_contributions(estimator: Any, x: dict[str, Any], k: int) -> dict[str, float] | None:
    """Top ``k`` weight × value terms of a linear model's score, on the features its last
    step sees (after the pipeline's transformers); None for a non-linear model.

    Examples
    --------
    >>> from river import linear_model
    >>> model = linear_model.LinearRegression()
    >>> model.learn_one({"a": 1.0, "b": -2.0}, 3.0)
    >>> model.weights
    {'a': 0.06, 'b': -0.12}
    >>> linear_contributions(model, {"a": 1.0, "b": 4.0, "c": 1.0}, k=2)
    {'b': -0.48, 'a': 0.06}
    """
    final = final_step(estimator)
    weights = getattr(final, "weights", None)
    if not isinstance(weights, dict):
        return None
    if final is not estimator:
        for step in list(estimator.steps.values())[:-1]:
            x = step.transform_one(x)
    terms = [(name, weights.get(name, 0.0) * value) for name, value in x.items() if isinstance(value, (int, float))]
    terms.sort(key=lambda t: -abs(t[1]))
    return {name: float(v) for name, v in terms[:k] if v != 0.0}


def _finite_proba(proba: dict[Any, float]) -> bool:
    for v in proba.values():
        # v - v is 0.0 for every finite number and NaN for NaN and both infinities.
        if v - v != 0.0:
            return False
    return True


class Model:
    """One named model; built from a pipeline's steps, or around an estimator.

    ``steps`` rebuild a fresh estimator on a drift reset (without them, the estimator's
    ``clone()`` does); ``numeric_features`` are declared to a batch learner;
    ``parent`` names the model a challenger was started beside.

    Examples
    --------
    >>> from river import linear_model
    >>> m = Model("lr", linear_model.LogisticRegression())
    >>> m.predict_one({"a": 1.0})
    Prediction(value=False, proba={False: 0.5, True: 0.5}, error=None, finite=True)
    >>> m.learn_one({"a": 1.0}, True), m.n_learned
    (True, 1)
    >>> m.predict_one({"a": "oops"}).error
    'TypeError: ...'
    >>> dict(m.faults)
    {'predict': 1}
    """

    # Defaults for models unpickled from snapshots written before search and
    # self-training existed (issue 18): such a model has neither.
    search: SearchConfig | None = None
    self_training: SelfTraining | None = None
    metric_name = "Accuracy"
    n_pseudo = 0
    restore_when_not_finite = True
    # Whether the estimator learns with learn_one(x, y) alone (neither an anomaly detector
    # nor a batch or sequence learner); worked out at the first label.
    _plain: bool | None = None

    def __init__(
        self,
        name: str,
        estimator: Any,
        *,
        steps: list[Any] | None = None,
        numeric_features: Sequence[str] = (),
        drift_detector: str | dict[str, Any] = "ADWIN",
        parent: str | None = None,
        search: SearchConfig | None = None,
        self_training: SelfTrainingConfig | None = None,
        metric: str = "Accuracy",
        restore_when_not_finite: bool = True,
    ) -> None:
        self.name = name
        # Put back to a healthy copy when its answers stay NaN (models/recovery.py).
        self.restore_when_not_finite = restore_when_not_finite
        self.steps = steps
        self.numeric_features = list(numeric_features)
        self.estimator = estimator
        self.parent = parent
        # The search config (the estimator is then a SearchClassifier/Regressor), and the
        # metric it and self-training score with: kept to rebuild the model on a drift reset.
        self.search = search
        self.metric_name = metric
        self.self_training = SelfTraining(self_training, estimator, metric) if self_training is not None else None
        # Pseudo-labels learned (self-training), since the start and since the last batch.
        self.n_pseudo = 0
        # Set by the scoreboard the model is added to.
        self.scores: ModelScores | None = None
        self.drift = DriftMonitor(drift_detector)
        # Only learning is counted: a restored worker predicts the replayed events again
        # and must still end in the same state as one that never stopped.
        self.n_learned = 0
        # Faults by ModelFault, since the start and since the model set last drained them.
        self.faults: Counter[str] = Counter()
        self.new_faults: Counter[str] = Counter()
        self.last_error: str | None = None
        # Retired (a challenger judged, a model removed): queued work for it is dropped.
        self.retired = False
        self.predicts_in_batches = is_batch_learner(estimator)
        # Sequence learners (torch_sequence.py) also need each event's key and id.
        self.uses_keys = bool(getattr(estimator, "uses_keys", False))
        final = final_step(estimator)
        self.is_classifier = (
            isinstance(estimator, base.Classifier)
            or isinstance(final, base.Classifier)
            or getattr(estimator, "task", None) == "classification"
        )
        self.is_anomaly_detector = isinstance(final, base.AnomalyDetector)
        # When the classifier keeps River's default predict_one (argmax of the
        # probabilities), one predict_proba_one call yields both; otherwise call both.
        self._class_from_proba = self.is_classifier and type(final).predict_one is base.Classifier.predict_one

    @classmethod
    def from_steps(
        cls,
        name: str,
        steps: list[Any],
        *,
        numeric_features: Sequence[str] = (),
        drift_detector: str | dict[str, Any] = "ADWIN",
        parent: str | None = None,
        search: SearchConfig | None = None,
        self_training: SelfTrainingConfig | None = None,
        metric: str = "Accuracy",
        restore_when_not_finite: bool = True,
    ) -> Model:
        """A model with a fresh estimator built from a pipeline config's steps (a search
        over clones of them when ``search`` is given)."""
        return cls(
            name,
            _build(steps, numeric_features, search, metric),
            steps=steps,
            numeric_features=numeric_features,
            drift_detector=drift_detector,
            parent=parent,
            search=search,
            self_training=self_training,
            metric=metric,
            restore_when_not_finite=restore_when_not_finite,
        )

    @property
    def metric(self) -> Any:
        """The pipeline's metric for this model, over the whole stream (River's semantics)."""
        assert self.scores is not None, f"model {self.name!r} was not added to a scoreboard"
        return self.scores.metric

    # -- predicting, inside the error boundary ------------------------------------------

    def _fault(self, kind: ModelFault, n: int = 1) -> None:
        # Plain strings as keys: they go into reports and snapshots.
        self.faults[kind.value] += n
        self.new_faults[kind.value] += n

    def _failed(self, e: Exception, n: int = 1) -> Prediction:
        self.last_error = describe_error(e)
        self._fault(ModelFault.PREDICT, n)
        return Prediction(None, error=self.last_error)

    def predict_one(self, x: dict[str, Any]) -> Prediction:
        """What the model says about ``x`` now; an error or a flag instead of raising."""
        est = self.estimator
        proba = None
        try:
            if self.is_anomaly_detector:
                value = est.score_one(x)
            elif not self.is_classifier:
                value = est.predict_one(x)
            else:
                proba = est.predict_proba_one(x)
                if self._class_from_proba:
                    value = max(proba, key=proba.get) if proba else None
                else:
                    value = est.predict_one(x)
        except Exception as e:  # the boundary: a model's bug stays with the model
            return self._failed(e)
        if proba is not None:
            if not _finite_proba(proba):
                self._fault(ModelFault.NOT_FINITE)
                return Prediction(value, proba, finite=False)
        elif isinstance(value, float) and value - value != 0.0:
            self._fault(ModelFault.NOT_FINITE)
            return Prediction(value, finite=False)
        return Prediction(value, proba)

    def predict_many(
        self, xs: list[dict[str, Any]], keys: list[Any] | None = None, ids: list[Any] | None = None
    ) -> list[Prediction]:
        """One vectorised pass for a batch learner; :meth:`predict_one` per row otherwise.
        When the pass raises, every row of it answers the error. ``keys`` and ``ids`` reach
        only a learner that ``uses_keys``."""
        if not self.predicts_in_batches:
            return [self.predict_one(x) for x in xs]
        context = {"keys": keys, "ids": ids} if self.uses_keys else {}
        try:
            if self.is_classifier:
                probas = self.estimator.predict_proba_many(xs, **context)
                out = [Prediction(max(p, key=p.get) if p else None, p) for p in probas]
            else:
                out = [Prediction(v) for v in self.estimator.predict_many(xs, **context)]
        except Exception as e:
            failed = self._failed(e, len(xs))
            return [failed] * len(xs)
        for p in out:
            if (p.proba is not None and not _finite_proba(p.proba)) or (
                p.proba is None and isinstance(p.value, float) and not math.isfinite(p.value)
            ):
                p.finite = False
                self._fault(ModelFault.NOT_FINITE)
        return out

    def explain_one(self, x: dict[str, Any], k: int) -> dict[str, float] | None:
        # A search explains with the candidate that answered.
        return linear_contributions(getattr(self.estimator, "answering", self.estimator), x, k)

    def explain_many(
        self, xs: list[dict[str, Any]], k: int, keys: list[Any] | None = None, ids: list[Any] | None = None
    ) -> list[dict[str, float] | None]:
        """A batch learner's top ``k`` contributions per row; None for each row when it raises
        (the predictions themselves stand: an explanation is extra)."""
        context = {"keys": keys, "ids": ids} if self.uses_keys else {}
        try:
            return list(self.estimator.explain_many(xs, k, **context))
        except Exception as e:
            self.last_error = describe_error(e)
            return [None] * len(xs)

    # -- learning ---------------------------------------------------------------------

    def learn_one(
        self, x: dict[str, Any], y: Any, t: float | None = None, key: Any = None, event_id: Any = None
    ) -> bool:
        """Learns one labelled event (``t``: its stream time, which bounds how long a
        mini-batch waits; ``key`` and ``event_id`` reach only a learner that ``uses_keys``);
        False when the estimator raised."""
        est = self.estimator
        plain = self._plain
        if plain is None:
            plain = self._plain = not (self.is_anomaly_detector or self.predicts_in_batches or self.uses_keys)
        if plain:
            # A River classifier or regressor, the common case: no argument packing.
            try:
                est.learn_one(x, y)
            except Exception as e:
                self._learn_failed(e)
                return False
            self.n_learned += 1
            return True
        if self.is_anomaly_detector:
            learned = self._guarded_learn(est.learn_one, x)
        elif self.uses_keys:
            learned = self._guarded_learn(est.learn_one, x, y, t, key=key, event_id=event_id)
        elif self.predicts_in_batches:
            learned = self._guarded_learn(est.learn_one, x, y, t)
        else:
            learned = self._guarded_learn(est.learn_one, x, y)
        self.n_learned += learned
        return learned

    def _guarded_learn(self, learn: Any, *args: Any, **kwargs: Any) -> bool:
        """The error boundary of learning: a raising estimator is a LEARN fault of this
        model only (the others learn as usual); False then."""
        try:
            learn(*args, **kwargs)
        except Exception as e:
            self._learn_failed(e)
            return False
        return True

    def _learn_failed(self, e: Exception) -> None:
        self.last_error = describe_error(e)
        self._fault(ModelFault.LEARN)

    def learn_pseudo(self, x: dict[str, Any], prediction: Prediction | None) -> bool:
        """Learns an unlabelled event from its own confident ``prediction`` (self-training,
        models/self_training.py); True when it did. A search's candidates learn it without
        scoring it."""
        st = self.self_training
        if st is None:
            return False
        label = st.pseudo_label(prediction)
        if label is None:
            return False
        est = self.estimator
        learn = getattr(est, "learn_unscored", est.learn_one)
        if st.weighted:
            learned = self._guarded_learn(learn, x, label, w=st.config.weight)
        else:  # weight >= 0.5 here (checked at start): learned once
            learned = self._guarded_learn(learn, x, label)
        self.n_pseudo += learned
        return learned

    def guard_self_training(self, x: dict[str, Any], y: Any, prediction: Prediction | None) -> bool:
        """Feeds a real label to the self-training guard before the model learns it; True
        when the guard switched self-training off, and then the shadow copy, which learned
        only real labels, takes the estimator's place."""
        st = self.self_training
        if st is None or not st.active:
            return False
        try:
            off = st.on_label(x, y, prediction)
        except Exception as e:
            self.last_error = describe_error(e)
            self._fault(ModelFault.LEARN)
            return False
        if off:
            self.estimator, st.shadow = st.shadow, None
        return off

    def flush(self, t: float) -> None:
        """Lets a batch learner step on a partial mini-batch that has waited long enough."""
        if self.predicts_in_batches:
            try:
                self.estimator.flush(t)
            except Exception as e:
                self.last_error = describe_error(e)
                self._fault(ModelFault.LEARN)

    # -- drift ------------------------------------------------------------------------

    def drifted(self, y: Any, prediction: Prediction) -> bool:
        """Feeds the error of one scored prediction to the detector; True on a drift that
        made errors worse."""
        error = prediction_error(y, prediction, self.is_classifier)
        return error is not None and self.drift.update(error)

    def reset(self) -> None:
        """A fresh, untrained estimator in this model's place (the drift policy ``reset``);
        its metrics and counters carry on."""
        if self.steps is not None:
            self.estimator = _build(self.steps, self.numeric_features, self.search, self.metric_name)
        else:
            self.estimator = self.estimator.clone()
        if self.self_training is not None and self.self_training.active:
            self.self_training.reset(self.estimator)
        self.drift.reset()

    def __repr__(self) -> str:
        return f"Model({self.name!r}, {self.estimator!r})"


def _build(steps: list[Any], numeric_features: Sequence[str], search: SearchConfig | None, metric: str) -> Any:
    estimator = build_estimator(steps)
    if search is not None:
        return build_search(estimator, search, metric)
    if is_batch_learner(estimator) and numeric_features:
        estimator.declare_features(numeric_features)
    return estimator
