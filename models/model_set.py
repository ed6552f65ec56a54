"""All the models of a pipeline, run side by side on every event, test-then-train.

:class:`ModelSet` routes events and labels to the pipeline's
:class:`~streamwise.models.model.Model` objects (one per configured model: estimator,
error boundary, drift detector) and keeps the membership (challengers come and go) and
the champion. What the processor calls, one poll batch at a time::

    models.on_event(id, x, y, t)      # every River model predicts now (and learns, if y)
    models.on_label(id, y, t)         # a delayed label: score the stored prediction, learn
    result = models.end_batch()       # batch learners predict and learn; outcomes, alerts

River models predict and learn per event, in arrival order, which is what makes their
metrics equal ``river.evaluate.progressive_val_score``. A
:class:`~streamwise.models.learner.BatchLearner` (the torch MLP) predicts the batch's
events at :meth:`ModelSet.end_batch` in blocks that end where it will step, and learns
each block's labelled rows before predicting the next.

A delayed label is scored against the prediction made when its event arrived, then
learned, exactly as ``progressive_val_score(delay=...)`` does. Each labelled prediction
is scored once, by the :class:`~streamwise.models.scoreboard.Scoreboard`; its error
feeds the model's drift detector, and the scoreboard's rolling metric chooses the
champion. Drift and champion changes become alert dicts, which the processor writes
to the alerts topic.

A model that fails affects only itself (see :mod:`streamwise.models.model`): its
prediction is an error, it does not learn from that event, the fault is counted in
:attr:`BatchResult.faults`, and a champion that keeps failing loses its place after
``champion.patience`` labels.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from streamwise.models.catalog import ModelSpec
from streamwise.models.champion import ChampionSelector
from streamwise.models.config import (
    ChampionConfig,
    DriftConfig,
    EvaluationConfig,
    ExplainConfig,
    LabelsConfig,
)
from streamwise.models import recovery
from streamwise.models.labels import PendingLabels, join_id, label_delay
from streamwise.models.model import Model, linear_contributions
from streamwise.models.prequential import Prediction, make_metric, peek
from streamwise.models.scoreboard import MetricPlan, ModelScores, Scoreboard, metric_names

__all__ = ["ModelSet", "Outcome", "BatchResult", "linear_contributions"]


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
    # Each searched model's best candidate and candidates' metrics when it predicted.
    search: dict[str, dict[str, Any]] | None = None
    # The models that learned this unlabelled event from their own prediction (self-training).
    pseudo: list[str] | None = None

    @property
    def prediction(self) -> Prediction:
        return self.predictions[self.champion]


@dataclass(slots=True)
class BatchResult:
    """What one batch did: its outcomes in arrival order, the alerts it raised, how many
    labels each model learned, the delay of each label joined, each torch step as
    (model, seconds, rows, device), and each model's faults by kind."""

    outcomes: list[Outcome]
    alerts: list[dict[str, Any]]
    learned: Counter[str]
    label_delays: list[float]
    torch_steps: list[tuple[str, float, int, str]]
    faults: dict[str, Counter[str]] = field(default_factory=dict)
    # Pseudo-labels each model learned (self-training), never among ``learned``.
    pseudo_learned: Counter[str] = field(default_factory=Counter)
    # Delayed labels and events the join did not learn in this batch, by outcome.
    label_misses: dict[str, int] = field(default_factory=dict)


def _number(value: float) -> float | None:
    return None if value != value else value


class ModelSet:
    """Examples
    --------
    >>> from river import datasets, evaluate, metrics
    >>> from streamwise.models.catalog import build_estimator
    >>> spec = ModelSpec(name="lr", steps=["preprocessing.StandardScaler", "linear_model.LogisticRegression"])
    >>> models = ModelSet([spec], task="classification", metric="Accuracy", delayed_labels=True)
    >>> events = list(datasets.Phishing())
    >>> for i, (x, y) in enumerate(events, start=1):  # record times from 1 s (0: none)
    ...     if i > 10:  # each label arrives ten events after its event
    ...         models.on_label(i - 11, events[i - 11][1], t=float(i))
    ...     _ = models.on_event(i - 1, x, None, t=float(i))
    >>> for i in range(len(events) - 10, len(events)):
    ...     models.on_label(i, events[i][1], t=float(len(events) + 1))
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
        self.champion_metric = self.champion_config.metric or metric
        self.scoreboard = Scoreboard(
            metric,
            MetricPlan(
                cumulative=self._extra_metrics(),
                rolling=self._rolling_metrics(),
                window=self.evaluation_config.window,
                champion_metric=self.champion_metric,
                champion_window=self.champion_window,
            ),
        )
        self.models: list[Model] = []
        self._by_name: dict[str, Model] = {}
        for spec in specs:
            self._add(
                Model.from_steps(
                    spec.name, spec.steps, search=spec.search, self_training=spec.self_training,
                    restore_when_not_finite=spec.restore_when_not_finite, **self._model_options(),
                )
            )
        self.selector = ChampionSelector(
            self.models[0].name,
            bigger_is_better=make_metric(self.champion_metric).bigger_is_better,
            margin=self.champion_config.margin,
            patience=self.champion_config.patience,
            min_samples=min(self.champion_config.min_samples, self.champion_window),
        )
        lc = self.labels_config
        self.pending = PendingLabels(lc.max_pending, lc.ttl_s, lc.early_hold_s, lc.max_early)
        self._n_challengers = 0
        self.now = float("-inf")
        self._batch: list[Outcome] = []
        self._deferred: list[tuple[Model, Outcome, Any, float]] = []
        self._alerts: list[dict[str, Any]] = []
        self._learned: Counter[str] = Counter()
        self._pseudo: Counter[str] = Counter()
        self._delays: list[float] = []

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        # Snapshots written before search and self-training (issue 18) lack these.
        self.__dict__.setdefault("_pseudo", Counter())
        self._searches = [m for m in self.models if m.search is not None]
        self._self_trained = [m for m in self.models if m.self_training is not None]

    # -- membership -------------------------------------------------------------------

    def _model_options(self) -> dict[str, Any]:
        return {
            "numeric_features": self.numeric_features,
            "drift_detector": self.drift_config.detector,
            "metric": self.metric_name,
        }

    def _add(self, model: Model) -> Model:
        self.scoreboard.add(model)
        self.models.append(model)
        self._route()
        return model

    def _remove(self, name: str) -> None:
        model = self._by_name[name]
        model.retired = True
        self.models.remove(model)
        self.scoreboard.remove(name)
        self._route()

    def _route(self) -> None:
        # Looked up on every event: kept as lists rather than filtered each time.
        self._by_name = {m.name: m for m in self.models}
        self._per_event = [m for m in self.models if not m.predicts_in_batches]
        self._batched = [m for m in self.models if m.predicts_in_batches]
        self._searches = [m for m in self.models if m.search is not None]
        self._self_trained = [m for m in self.models if m.self_training is not None]
        # A champion is chosen only between two models or more: only then must each
        # model's champion metric be current on every label.
        for m in self.models:
            m.scores.track_champion(len(self.models) > 1)  # type: ignore[union-attr]

    @property
    def champion_window(self) -> int:
        return self.champion_config.window or self.evaluation_config.window

    def _extra_metrics(self) -> tuple[str, ...]:
        extra = self.evaluation_config.metrics
        return tuple(metric_names(self.task, self.binary) if extra == "standard" else extra)

    def _rolling_metrics(self) -> tuple[str, ...]:
        """The pipeline's metric first, then the configured extra ones."""
        if self.task == "anomaly":
            return self._extra_metrics()
        return tuple(dict.fromkeys([self.metric_name, *self._extra_metrics()]))

    def model(self, name: str) -> Model:
        return self._by_name[name]

    @property
    def evaluations(self) -> dict[str, ModelScores]:
        """Each model's metrics, cumulative and rolling (``report()``), by model name."""
        return {m.name: m.scores for m in self.models if m.scores is not None}

    @property
    def champion(self) -> str:
        return self.selector.champion

    @property
    def challengers(self) -> dict[str, str]:
        """challenger name -> the model it was started beside."""
        return {m.name: m.parent for m in self.models if m.parent is not None}

    # -- the per-batch protocol -------------------------------------------------------

    def on_event(
        self, event_id: Any, x: dict[str, Any], y: Any | None, t: float, key: Any = None, partition: int = 0
    ) -> Outcome:
        """Predicts ``x`` with every River model now; learns at once from an inline ``y``,
        else waits for the label (when labels are delayed). ``key`` is the event's entity,
        for sequence learners; ``partition`` the input partition it was read from, whose
        progress ages the labels held for their events (models/labels.py)."""
        event_id = join_id(event_id)
        if t > self.now:
            self.now = t
        champion = self.selector.champion
        outcome = Outcome(event_id, x, t, champion, key=key)
        predictions = outcome.predictions
        for m in self._per_event:
            predictions[m.name] = m.predict_one(x)
        if self.top_k:
            answer = predictions.get(champion)
            if answer is not None and answer.error is None:
                outcome.explanation = self._by_name[champion].explain_one(x, self.top_k)
        if self._searches:
            # Shared dicts, rebuilt by a search only after a label: no cost per event.
            outcome.search = {m.name: m.estimator.summary() for m in self._searches}
        self._batch.append(outcome)
        if y is not None:
            if self.delayed_labels:
                self.pending.on_event(event_id, outcome, t, partition, labelled=True)
            self._learn(outcome, y, t)
        elif self._self_trained and not self.delayed_labels:
            # Inline labels: an event without one will never have one (self_training.py).
            for m in self._self_trained:
                if m.learn_pseudo(x, predictions.get(m.name)):
                    self._pseudo[m.name] += 1
                    if outcome.pseudo is None:
                        outcome.pseudo = []
                    outcome.pseudo.append(m.name)
        elif self.delayed_labels:
            early = self.pending.on_event(event_id, outcome, t, partition)
            if early is not None:
                label_t, label = early
                self._learn(outcome, label, max(t, label_t), delay=label_delay(t, label_t))
        return outcome

    def on_label(self, event_id: Any, y: Any, t: float, partition: int = 0) -> None:
        """A label from the labels topic (``partition``: the one it was read from): scores
        the prediction made when its event arrived, then learns. Whether a label joins is
        decided by the two record times alone (labels.ttl_s, labels.early_hold_s); a label
        read before its event waits for it (models/labels.py)."""
        event_id = join_id(event_id)
        if t > self.now:
            self.now = t
        waiting = self.pending.on_label(event_id, y, t, partition)
        if waiting is not None:
            event_t, outcome = waiting
            self._learn(outcome, y, max(t, event_t), delay=label_delay(event_t, t))

    def end_batch(self) -> BatchResult:
        """Batch learners predict the batch block by block, learning from each block's
        labelled rows before predicting the next; returns what the batch did."""
        batch, self._batch = self._batch, []
        deferred, self._deferred = self._deferred, []
        torch_steps: list[tuple[str, float, int, str]] = []
        if self._batched:
            torch_steps = self._run_batch_learners(batch, deferred)
        if len(self.models) > 1:
            order = [m.name for m in self.models]
            for outcome in batch:
                if len(outcome.predictions) != len(order) or list(outcome.predictions) != order:
                    # Config order first; a model retired during the batch keeps its prediction.
                    ordered = {n: outcome.predictions[n] for n in order if n in outcome.predictions}
                    ordered.update(outcome.predictions)
                    outcome.predictions = ordered
        for m in self.models:
            # After the batch learners answered: a model whose answers stay not finite is
            # put back to a healthy copy of itself (models/recovery.py).
            restored = recovery.after_batch(m, batch)
            if restored is not None:
                self._alerts.append(restored)
        misses = self.pending.new_misses() if self.delayed_labels else {}
        faults = {m.name: m.new_faults for m in self.models if m.new_faults}
        for m in self.models:
            if m.new_faults:
                m.new_faults = Counter()
        result = BatchResult(
            batch, self._alerts, self._learned, self._delays, torch_steps, faults, self._pseudo, misses
        )
        self._alerts, self._learned, self._delays, self._pseudo = [], Counter(), [], Counter()
        return result

    def _run_batch_learners(
        self, batch: list[Outcome], deferred: list[tuple[Model, Outcome, Any, float]]
    ) -> list[tuple[str, float, int, str]]:
        steps_before = {m.name: m.estimator.n_steps for m in self._batched}
        position = {id(o): i for i, o in enumerate(batch)}
        started = time.perf_counter()
        for m in list(self._batched):
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
                    self._learn_model(*current[j])
                    j += 1
            for entry in current[j:] + older:
                self._learn_model(*entry)
        for m in self._batched:
            m.flush(self.now)
        done = {m.name: m.estimator.n_steps - steps_before.get(m.name, 0) for m in self._batched}
        torch_steps: list[tuple[str, float, int, str]] = []
        if sum(done.values()):
            # One timing for all the batch's steps: per-step timing would need a GPU sync each.
            per_step = (time.perf_counter() - started) / sum(done.values())
            for m in self._batched:
                if done.get(m.name):
                    est = m.estimator
                    torch_steps += [(m.name, per_step, est.batch_size, est.device_name)] * done[m.name]
        return torch_steps

    # -- learning, scoring, drift, champion -------------------------------------------

    def _predict_block(self, m: Model, block: list[Outcome]) -> None:
        if not block:
            return
        keys = [o.key for o in block] if m.uses_keys else None
        ids = [o.id for o in block] if m.uses_keys else None
        for outcome, p in zip(block, m.predict_many([o.x for o in block], keys, ids), strict=True):
            outcome.predictions[m.name] = p
        if self.top_k:
            rows = [o for o in block if o.champion == m.name and o.predictions[m.name].error is None]
            if rows:
                row_keys = [o.key for o in rows] if m.uses_keys else None
                row_ids = [o.id for o in rows] if m.uses_keys else None
                explanations = m.explain_many([o.x for o in rows], self.top_k, row_keys, row_ids)
                for outcome, ex in zip(rows, explanations, strict=True):
                    outcome.explanation = ex

    def _learn(self, outcome: Outcome, y: Any, t: float, delay: float | None = None) -> None:
        if delay is not None:  # a label joined from the labels topic
            self._delays.append(delay)
        for m in list(self.models):
            if m.predicts_in_batches:
                self._deferred.append((m, outcome, y, t))
            else:
                self._learn_model(m, outcome, y, t)

    def _learn_model(self, m: Model, outcome: Outcome, y: Any, t: float) -> None:
        """Scores the model's prediction of the event, then lets it learn: unless the
        prediction was an error (a failing model does not learn from that event)."""
        if m.retired:
            return  # retired while the batch ran
        prediction = outcome.predictions.get(m.name)
        # None: a challenger started since the event was predicted learns without a score.
        if prediction is not None and prediction.error is not None:
            self.scoreboard.score(m.scores, y, prediction)  # type: ignore[arg-type]
            self._update_champion(outcome.id)
            return
        if m.self_training is not None and m.guard_self_training(outcome.x, y, prediction):
            self._alerts.append({"type": "self_training", "model": m.name, "event_id": outcome.id,
                                 "action": "switched off", **(m.self_training.switched_off or {})})
        if not m.learn_one(outcome.x, y, t, key=outcome.key, event_id=outcome.id):
            return
        self._learned[m.name] += 1
        if prediction is None:
            return
        scored = self.scoreboard.score(m.scores, y, prediction)  # type: ignore[arg-type]
        if scored and self.drift_config.enabled and m.drifted(y, prediction):
            self._on_drift(m, outcome.id)
        if m.parent is not None and not m.retired:
            self._judge_challenger(m, outcome.id)
        self._update_champion(outcome.id)

    def _update_champion(self, event_id: Any) -> None:
        if len(self.models) < 2:
            return
        change = self.selector.update({m.name: m.scores.window_score() for m in self.models})  # type: ignore[union-attr]
        if change is not None:
            self._alerts.append(
                {
                    "type": "champion",
                    "event_id": event_id,
                    "previous": change.previous,
                    "champion": change.champion,
                    "metric": self.champion_metric,
                    "window": self.champion_window,
                    # None for a NaN score (a failing champion): alerts are JSON.
                    "previous_score": _number(change.previous_score),
                    "champion_score": _number(change.champion_score),
                }
            )

    def _on_drift(self, m: Model, event_id: Any) -> None:
        policy = self.drift_config.policy
        action = "none"
        if policy == "reset" or (policy == "challenger" and m.parent is not None):
            m.reset()
            action = "reset"
        elif policy == "challenger":
            if any(c.parent == m.name for c in self.models):
                action = "challenger already running"
            else:
                self._n_challengers += 1
                name = f"{m.name}.challenger{self._n_challengers}"
                st = m.self_training.config if m.self_training is not None else None
                self._add(Model.from_steps(name, m.steps or [], parent=m.name, search=m.search, self_training=st,
                                           restore_when_not_finite=m.restore_when_not_finite,
                                           **self._model_options()))
                action = f"started {name}"
        self._alerts.append(
            {
                "type": "drift",
                "model": m.name,
                "detector": m.drift.name,
                "event_id": event_id,
                "labels_seen": m.scores.n if m.scores is not None else 0,
                "policy": policy,
                "action": action,
            }
        )

    def _judge_challenger(self, challenger: Model, event_id: Any) -> None:
        """Promotes a challenger that beats its model over a full window; drops one that
        has not done so within ``challenger_trial`` labels."""
        assert challenger.scores is not None and challenger.parent is not None
        parent = self._by_name[challenger.parent]
        score, n = challenger.scores.window_score()
        if n >= self.champion_window:
            parent_score, _ = parent.scores.window_score()  # type: ignore[union-attr]
            if self.selector._better(score, parent_score):
                # The model keeps its name, counters and cumulative metrics; it runs the
                # challenger's estimator and takes the window that judged it.
                parent.estimator = challenger.estimator
                parent.scores.adopt_window(challenger.scores)  # type: ignore[union-attr]
                parent.drift.reset()
                if self.selector.champion == challenger.name:
                    self.selector.champion = parent.name
                self._remove(challenger.name)
                self._alerts.append(
                    {"type": "challenger", "model": parent.name, "challenger": challenger.name, "event_id": event_id,
                     "action": "promoted", "score": _number(score), "replaced_score": _number(parent_score)}
                )
                return
        if challenger.scores.n >= self.drift_config.challenger_trial:
            self._remove(challenger.name)
            if self.selector.champion == challenger.name:
                self.selector.champion = parent.name
            self._alerts.append(
                {"type": "challenger", "model": parent.name, "challenger": challenger.name, "event_id": event_id,
                 "action": "retired"}
            )

    # -- reporting --------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        stats = self.pending.stats
        models = {}
        for m in self.models:
            scores = m.scores
            assert scores is not None
            models[m.name] = {
                "metric": type(scores.metric).__name__,
                "value": peek(scores.metric),
                "learned": m.n_learned,
                "drifts": m.drift.n_detections,
                "faults": dict(m.faults),
                "last_error": m.last_error,
                "failed_labels": scores.n_failed,
                "not_finite_labels": scores.n_not_finite,
                **scores.report(),
            }
            if m.search is not None:
                est = m.estimator
                models[m.name]["search"] = {
                    "policy": est.policy, "best": est.best_label, "spent": est.spent,
                    "running": [est.labels[i] for i in est.running],
                    "metrics": dict(zip(est.labels, est.summary()["metrics"], strict=True)),
                }
            st = m.self_training
            if st is not None:
                models[m.name]["self_training"] = {
                    "active": st.active, "pseudo_labels": st.n_pseudo, "real_labels": st.n_labelled,
                    "below_threshold": st.n_below_threshold, "capped": st.n_capped, "switched_off": st.switched_off,
                }
        return {
            "champion": self.selector.champion,
            "models": models,
            "labels": {
                "pending": len(self.pending),
                "held_early": self.pending.n_early,
                "joined": stats.joined,
                "joined_early": stats.joined_early,
                "evicted_ttl": stats.evicted_ttl,
                "evicted_capacity": stats.evicted_capacity,
                "early_expired": stats.early_expired,
                "duplicates": stats.duplicates,
                "late": stats.late,
                "duplicate_events": stats.duplicate_events,
                "delay_mean_s": stats.delay_mean_s,
                "delay_max_s": stats.delay_max_s,
            },
        }
