"""All the models of a pipeline, run side by side on every event, test-then-train.

:class:`ModelSet` is what the processor talks to, one poll batch at a time::

    models.on_event(id, x, y, t)      # every River model predicts now (and learns, if y)
    models.on_label(id, y, t)         # a delayed label: score the stored prediction, learn
    result = models.end_batch()       # a BatchResult: outcomes, alerts, labels learned, torch steps

River models predict and learn per event, in arrival order, which is what makes their
metrics equal ``river.evaluate.progressive_val_score``. A learner that
``predicts_in_batches`` (the torch MLP) predicts every event of the batch in one forward
pass at :meth:`ModelSet.end_batch`, with its weights as they were when the batch
started, and only then learns from the batch's labelled rows.

A delayed label is scored against the prediction made when its event arrived, then
learned, exactly as ``progressive_val_score(delay=...)`` does. Each scored prediction
also feeds the model's :class:`~streamwise.models.evaluation.Evaluation`, its drift
detector and the rolling metric on which the champion is chosen. Drift and champion
changes become alert dicts, which the processor writes to the alerts topic.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from river import metrics, utils
from streamwise.models.catalog import ModelSpec, build_estimator
from streamwise.models.champion import ChampionSelector
from streamwise.models.config import (
    ChampionConfig,
    DriftConfig,
    EvaluationConfig,
    ExplainConfig,
    LabelsConfig,
)
from streamwise.models.drift import DriftMonitor, prediction_error
from streamwise.models.evaluation import Evaluation, metric_names
from streamwise.models.labels import PendingLabels
from streamwise.models.prequential import Prediction, PrequentialModel, _final_step


@dataclass(slots=True)
class Outcome:
    """One event as the models saw it: every model's prediction and who answered."""

    id: Any
    x: dict[str, Any]
    t: float
    champion: str
    predictions: dict[str, Prediction] = field(default_factory=dict)
    explanation: dict[str, float] | None = None
    key: Any = None  # the entity whose history a sequence learner follows

    @property
    def prediction(self) -> Prediction:
        return self.predictions[self.champion]


@dataclass(slots=True)
class BatchResult:
    """What one batch did: its outcomes in arrival order, the alerts it raised, how many
    labels each model learned, the delay of each label joined, and each torch step as
    (model, seconds, rows, device)."""

    outcomes: list[Outcome]
    alerts: list[dict[str, Any]]
    learned: Counter[str]
    label_delays: list[float]
    torch_steps: list[tuple[str, float, int, str]]


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
    final = _final_step(estimator)
    weights = getattr(final, "weights", None)
    if not isinstance(weights, dict):
        return None
    if final is not estimator:
        for step in list(estimator.steps.values())[:-1]:
            x = step.transform_one(x)
    terms = [(name, weights.get(name, 0.0) * value) for name, value in x.items() if isinstance(value, (int, float))]
    terms.sort(key=lambda t: -abs(t[1]))
    return {name: float(v) for name, v in terms[:k] if v != 0.0}


class ModelSet:
    """Examples
    --------
    >>> from river import datasets, evaluate, linear_model, metrics
    >>> spec = ModelSpec(name="lr", steps=["preprocessing.StandardScaler", "linear_model.LogisticRegression"])
    >>> models = ModelSet([spec], task="classification", metric="Accuracy", delayed_labels=True)
    >>> events = list(datasets.Phishing())
    >>> for i, (x, y) in enumerate(events):
    ...     if i >= 10:  # each label arrives ten events after its event
    ...         models.on_label(i - 10, events[i - 10][1], t=float(i))
    ...     _ = models.on_event(i, x, None, t=float(i))
    >>> for i in range(len(events) - 10, len(events)):
    ...     models.on_label(i, events[i][1], t=float(len(events)))
    >>> result = models.end_batch()
    >>> len(result.outcomes), result.alerts, len(result.label_delays)
    (1250, [], 1250)
    >>> models.models[0].metric.get() == evaluate.progressive_val_score(
    ...     datasets.Phishing(), build_estimator(spec.steps), metrics.Accuracy(), delay=10).get()
    True
    """

    def __init__(
        self,
        specs: list[ModelSpec],
        task: str,
        metric: str,
        *,
        label_type: str = "bool",
        numeric_features: list[str] | None = None,
        delayed_labels: bool = False,
        labels: LabelsConfig | None = None,
        evaluation: EvaluationConfig | None = None,
        drift: DriftConfig | None = None,
        champion: ChampionConfig | None = None,
        explain: ExplainConfig | None = None,
    ) -> None:
        self.task = task
        self.metric_name = metric
        self.binary = label_type == "bool"
        self.numeric_features = list(numeric_features or [])
        self.delayed_labels = delayed_labels
        self.labels_config = labels or LabelsConfig()
        self.evaluation_config = evaluation or EvaluationConfig()
        self.drift_config = drift or DriftConfig()
        self.champion_config = champion or ChampionConfig()
        self.top_k = (explain or ExplainConfig()).top_k
        self._steps: dict[str, list[Any]] = {}
        self.models: list[PrequentialModel] = []
        self.evaluations: dict[str, Evaluation] = {}
        self.drift: dict[str, DriftMonitor] = {}
        self._champion_metric: dict[str, Any] = {}
        champion_metric = metrics.__dict__[self.champion_config.metric or metric]
        self._champion_metric_cls = champion_metric
        self._champion_takes_proba = not getattr(champion_metric(), "requires_labels", True)
        for spec in specs:
            self._add(spec.name, spec.steps)
        self.selector = ChampionSelector(
            self.models[0].name,
            bigger_is_better=champion_metric().bigger_is_better,
            margin=self.champion_config.margin,
            patience=self.champion_config.patience,
            min_samples=min(self.champion_config.min_samples, self._champion_window),
        )
        lc = self.labels_config
        self.pending = PendingLabels(lc.max_pending, lc.ttl_s, lc.early_hold_s, lc.max_early)
        # challenger name -> (parent name, labels scored by the challenger so far)
        self.challengers: dict[str, str] = {}
        self._n_challengers = 0
        self.now = float("-inf")
        self._batch: list[Outcome] = []
        self._deferred: list[tuple[PrequentialModel, Outcome, Any, float]] = []
        self._alerts: list[dict[str, Any]] = []
        self._learned: Counter[str] = Counter()
        self._delays: list[float] = []

    # -- membership -------------------------------------------------------------------

    def _fresh(self, steps: list[Any]) -> Any:
        estimator = build_estimator(steps)
        if getattr(estimator, "predicts_in_batches", False) and self.numeric_features:
            estimator.declare_features(self.numeric_features)
        return estimator

    def _add(self, name: str, steps: list[Any]) -> PrequentialModel:
        model = PrequentialModel(name, self._fresh(steps), self.metric_name)
        self._steps[name] = steps
        self.models.append(model)
        evaluation = Evaluation(
            self.task,
            self.binary,
            self.evaluation_config.window,
            self._evaluation_metrics(),
            cumulative_elsewhere=self.metric_name,
        )
        self.evaluations[name] = evaluation
        self.drift[name] = DriftMonitor(self.drift_config.detector)
        shared = evaluation.rolling.get(self._champion_metric_cls.__name__)
        if shared is not None and shared.window_size == self._champion_window:
            self._champion_metric[name] = shared  # updated by the evaluation
        else:
            self._champion_metric[name] = utils.Rolling(self._champion_metric_cls, window_size=self._champion_window)
        return model

    @property
    def _champion_window(self) -> int:
        return self.champion_config.window or self.evaluation_config.window

    def _shares_champion_metric(self, name: str) -> bool:
        rolling = self.evaluations[name].rolling.get(self._champion_metric_cls.__name__)
        return rolling is not None and rolling is self._champion_metric.get(name)

    def _evaluation_metrics(self) -> tuple[str, ...]:
        """The pipeline's metric first, then the configured extra ones."""
        extra = self.evaluation_config.metrics
        if extra == "standard":
            extra = list(metric_names(self.task, self.binary))
        if self.task == "anomaly":
            return tuple(extra)
        return tuple(dict.fromkeys([self.metric_name, *extra]))

    def _remove(self, name: str) -> None:
        self.models = [m for m in self.models if m.name != name]
        for d in (self.evaluations, self.drift, self._champion_metric, self._steps):
            d.pop(name, None)
        self.challengers.pop(name, None)

    def model(self, name: str) -> PrequentialModel:
        return next(m for m in self.models if m.name == name)

    @property
    def champion(self) -> str:
        return self.selector.champion

    # -- the per-batch protocol -------------------------------------------------------

    def on_event(self, event_id: Any, x: dict[str, Any], y: Any | None, t: float, key: Any = None) -> Outcome:
        """Predicts ``x`` with every River model now; learns at once from an inline ``y``,
        else waits for the label (when labels are delayed). ``key`` is the event's entity,
        for sequence learners."""
        self.now = max(self.now, t)
        outcome = Outcome(event_id, x, t, self.selector.champion, key=key)
        for m in self.models:
            if not m.predicts_in_batches:
                outcome.predictions[m.name] = m.predict_one(x)
        if self.top_k and outcome.champion in outcome.predictions:
            outcome.explanation = linear_contributions(self.model(outcome.champion).estimator, x, self.top_k)
        self._batch.append(outcome)
        if y is not None:
            self._learn(outcome, y, t)
        elif self.delayed_labels:
            if self.pending.already_learned(event_id):
                return outcome
            early = self.pending.take_early_label(event_id)
            if early is not None:
                self.pending.stats.joined_early += 1
                self._learn(outcome, early[1], t)
            else:
                self.pending.add_event(event_id, outcome, t)
        return outcome

    def on_label(self, event_id: Any, y: Any, t: float) -> None:
        """A label from the labels topic: scores the prediction made when its event arrived,
        then learns. A label for an unknown event is held for ``early_hold_s``."""
        self.now = max(self.now, t)
        if self.pending.already_learned(event_id):
            self.pending.stats.duplicates += 1
            return
        outcome = self.pending.pop_event(event_id)
        if outcome is None:
            self.pending.hold_label(event_id, y, t)
            return
        self._learn(outcome, y, t)

    def end_batch(self) -> BatchResult:
        """Batch learners predict the batch block by block, learning from each block's
        labelled rows before predicting the next; returns what the batch did."""
        batch, self._batch = self._batch, []
        order = [m.name for m in self.models]
        deferred, self._deferred = self._deferred, []
        steps_before = {m.name: m.estimator.n_steps for m in self.models if m.predicts_in_batches}
        position = {id(o): i for i, o in enumerate(batch)}
        started = time.perf_counter()
        for m in [m for m in self.models if m.predicts_in_batches]:
            mine = [entry for entry in deferred if entry[0] is m]
            # Labels of this batch's events, in event order; labels of earlier events
            # (from the labels topic) are learned after the batch, never before it.
            current = [e for e in mine if id(e[1]) in position]
            older = [e for e in mine if id(e[1]) not in position]
            start, j = 0, 0
            while start < len(batch):
                # Blocks end where the learner will step, so a poll's size changes nothing.
                block = batch[start : start + m.estimator.rows_until_step]
                self._predict_block(m, block)
                start += len(block)
                while j < len(current) and position[id(current[j][1])] < start:
                    self._learn_deferred(*current[j])
                    j += 1
            for entry in current[j:] + older:
                self._learn_deferred(*entry)
        for outcome in batch:
            if list(outcome.predictions) != order:
                # Config order first; a model retired during the batch keeps its prediction.
                ordered = {n: outcome.predictions[n] for n in order if n in outcome.predictions}
                ordered.update(outcome.predictions)
                outcome.predictions = ordered
        for m in self.models:
            if m.predicts_in_batches:
                m.estimator.flush(self.now)
        torch_steps: list[tuple[str, float, int, str]] = []
        done = {m.name: m.estimator.n_steps - steps_before.get(m.name, 0) for m in self.models if m.predicts_in_batches}
        if sum(done.values()):
            # One timing for all the batch's steps: per-step timing would need a GPU sync each.
            per_step = (time.perf_counter() - started) / sum(done.values())
            for m in self.models:
                if done.get(m.name):
                    est = m.estimator
                    torch_steps += [(m.name, per_step, est.batch_size, est.device_name)] * done[m.name]
        if self.delayed_labels:
            self.pending.expire(self.now)
        result = BatchResult(batch, self._alerts, self._learned, self._delays, torch_steps)
        self._alerts, self._learned, self._delays = [], Counter(), []
        return result

    # -- learning, scoring, drift, champion -------------------------------------------

    def _predict_block(self, m: PrequentialModel, block: list[Outcome]) -> None:
        if not block:
            return
        keys = [o.key for o in block] if m.uses_keys else None
        ids = [o.id for o in block] if m.uses_keys else None
        for outcome, p in zip(block, m.predict_many([o.x for o in block], keys, ids), strict=True):
            outcome.predictions[m.name] = p
        if self.top_k:
            rows = [o for o in block if o.champion == m.name]
            context = {"keys": [o.key for o in rows], "ids": [o.id for o in rows]} if m.uses_keys else {}
            explanations = m.estimator.explain_many([o.x for o in rows], self.top_k, **context)
            for outcome, ex in zip(rows, explanations, strict=True):
                outcome.explanation = ex

    def _learn_deferred(self, m: PrequentialModel, outcome: Outcome, y: Any, t: float) -> None:
        if m.name not in self._steps:
            return  # retired while the batch ran
        prediction = outcome.predictions.get(m.name)
        m.learn_one(outcome.x, y, prediction, t, key=outcome.key, event_id=outcome.id)
        self._learned[m.name] += 1
        if prediction is not None:
            self._scored(m, y, prediction, outcome.id)

    def _learn(self, outcome: Outcome, y: Any, t: float) -> None:
        if self.delayed_labels:
            self.pending.mark_learned(outcome.id)
            self.pending.stats.record_delay(t - outcome.t)
            self._delays.append(t - outcome.t)
        for m in list(self.models):
            if m.predicts_in_batches:
                self._deferred.append((m, outcome, y, t))
                continue
            prediction = outcome.predictions.get(m.name)
            m.learn_one(outcome.x, y, prediction)
            self._learned[m.name] += 1
            if prediction is not None:
                self._scored(m, y, prediction, outcome.id)

    def _scored(self, m: PrequentialModel, y: Any, prediction: Prediction, event_id: Any) -> None:
        if m.name not in self._steps:
            return
        self.evaluations[m.name].update(y, prediction)
        y_pred = prediction.proba if self._champion_takes_proba else prediction.value
        champion_metric = self._champion_metric[m.name]
        if y_pred is not None and y_pred != {} and not self._shares_champion_metric(m.name):
            champion_metric.update(y, y_pred)
        if self.drift_config.enabled:
            error = prediction_error(y, prediction, m.is_classifier)
            if error is not None and self.drift[m.name].update(error):
                self._on_drift(m, event_id)
        if m.name in self.challengers:
            self._judge_challenger(m, event_id)
        self._update_champion(event_id)

    def _window_score(self, name: str) -> tuple[float, int]:
        rolling = self._champion_metric[name]
        n = min(self.evaluations[name].n, rolling.window_size)
        return rolling.get(), n

    def _update_champion(self, event_id: Any) -> None:
        if len(self.models) < 2:
            return
        change = self.selector.update({m.name: self._window_score(m.name) for m in self.models})
        if change is not None:
            self._alerts.append(
                {
                    "type": "champion",
                    "event_id": event_id,
                    "previous": change.previous,
                    "champion": change.champion,
                    "metric": self._champion_metric_cls.__name__,
                    "window": self._champion_window,
                    "previous_score": change.previous_score,
                    "champion_score": change.champion_score,
                }
            )

    def _on_drift(self, m: PrequentialModel, event_id: Any) -> None:
        policy = self.drift_config.policy
        action = "none"
        if policy == "reset" or (policy == "challenger" and m.name in self.challengers):
            m.estimator = self._fresh(self._steps[m.name])
            self.drift[m.name].reset()
            action = "reset"
        elif policy == "challenger":
            if m.name in self.challengers.values():
                action = "challenger already running"
            else:
                self._n_challengers += 1
                name = f"{m.name}.challenger{self._n_challengers}"
                self._add(name, self._steps[m.name])
                self.challengers[name] = m.name
                action = f"started {name}"
        self._alerts.append(
            {
                "type": "drift",
                "model": m.name,
                "detector": self.drift[m.name].name if m.name in self.drift else None,
                "event_id": event_id,
                "labels_seen": self.evaluations[m.name].n,
                "policy": policy,
                "action": action,
            }
        )

    def _judge_challenger(self, challenger: PrequentialModel, event_id: Any) -> None:
        """Promotes a challenger that beats its model over a full window; drops one that
        has not done so within ``challenger_trial`` labels."""
        parent_name = self.challengers[challenger.name]
        score, n = self._window_score(challenger.name)
        window = self._champion_window
        if n >= window:
            parent_score, _ = self._window_score(parent_name)
            if self.selector._better(score, parent_score):
                parent = self.model(parent_name)
                parent.estimator = challenger.estimator
                self._champion_metric[parent_name] = self._champion_metric[challenger.name]
                self.drift[parent_name].reset()
                if self.selector.champion == challenger.name:
                    self.selector.champion = parent_name
                self._remove(challenger.name)
                self._alerts.append(
                    {"type": "challenger", "model": parent_name, "challenger": challenger.name, "event_id": event_id,
                     "action": "promoted", "score": score, "replaced_score": parent_score}
                )
                return
        if self.evaluations[challenger.name].n >= self.drift_config.challenger_trial:
            self._remove(challenger.name)
            if self.selector.champion == challenger.name:
                self.selector.champion = parent_name
            self._alerts.append(
                {"type": "challenger", "model": parent_name, "challenger": challenger.name, "event_id": event_id,
                 "action": "retired"}
            )

    # -- reporting --------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        stats = self.pending.stats
        return {
            "champion": self.selector.champion,
            "models": {
                m.name: {
                    "metric": type(m.metric).__name__,
                    "value": m.metric.get(),
                    "learned": m.n_learned,
                    "drifts": self.drift[m.name].n_detections,
                    **self.evaluations[m.name].report(),
                }
                for m in self.models
            },
            "labels": {
                "pending": len(self.pending),
                "held_early": self.pending.n_early,
                "joined": stats.joined,
                "joined_early": stats.joined_early,
                "evicted_ttl": stats.evicted_ttl,
                "evicted_capacity": stats.evicted_capacity,
                "early_expired": stats.early_expired,
                "duplicates": stats.duplicates,
                "delay_mean_s": stats.delay_mean_s,
                "delay_max_s": stats.delay_max_s,
            },
        }
