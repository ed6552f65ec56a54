"""A snapshot restored under a config that changed since it was written.

A snapshot holds what the pipeline learned, and also the objects that learned it, built
from the config of the worker that wrote it: the schema, the steps, the models and the
model set's settings. Taken as they are, a config edited between two runs changed
nothing for a restored partition: a model added to the YAML never appeared, a raised
bound still refused its events, a new drift policy never acted, and nothing said so.

So after a restore, the config wins for everything it says, and the snapshot keeps what
was learned wherever the config that learned it is unchanged:

- the schema (bounds, limits, classes, time checks) is always the config's;
- the cleaners and feature extractors keep their statistics when they are built exactly
  as before (same kinds and parameters, which the schema's fields feed); otherwise all
  of them start afresh;
- each configured model keeps its estimator, metrics and counters when its name, steps,
  search and self-training are unchanged (and, for a batch learner, its input features);
  a new model or one whose steps changed starts untrained; a model no longer configured
  is dropped, and its challengers with it; a kept model's challengers stay;
- the model set's settings (labels, evaluation, drift, champion, explain) are the
  config's; the metrics restart when what they measure changed (metric, windows), the
  champion choice when the champion settings changed or the champion is gone, a drift
  detector when its kind changed. Waiting labels stay, under the new limits;
- a change of task, label type or label topics starts every model afresh.

Each change is one line in the log. When nothing changed, the snapshot's objects are
kept as they are, so a restore and a replay still end in the state of a worker that
never stopped.
"""

from __future__ import annotations

from typing import Any

from streamwise.models.drift import DriftMonitor
from streamwise.models.forecast import ForecastSet
from streamwise.models.model import Model
from streamwise.models.model_set import ModelSet
from streamwise.stream.pipeline import EventPipeline

__all__ = ["reconcile"]


def reconcile(processor: Any, fresh: dict[str, Any]) -> list[str]:
    """Brings ``processor``'s state, just taken from a snapshot, in line with the config
    it was built from; ``fresh`` is its state before the restore (built from that
    config, or learned under it). Returns one line per change made."""
    notes: list[str] = []
    if isinstance(fresh.get("events"), EventPipeline):
        notes += _events(processor, fresh["events"])
    if "learners" in fresh:
        notes += _learners(processor, fresh["learners"])
    return notes


# -- cleaners and feature extractors ---------------------------------------------------

def _same_components(a: list[Any], b: list[Any]) -> bool:
    return len(a) == len(b) and all(
        type(x) is type(y) and x._get_params() == y._get_params() for x, y in zip(a, b, strict=True)
    )


def _events(processor: Any, new: EventPipeline) -> list[str]:
    old: EventPipeline = processor.events
    same_steps = _same_components(old.coercers, new.coercers) and _same_components(old.steps, new.steps)
    if same_steps and old.schema == new.schema:
        return []
    forms = old.decoder.label_forms if old.schema.label_type == new.schema.label_type else {}
    if same_steps:
        # The steps are built as before: their statistics stay, the schema checks anew.
        kept = EventPipeline(new.schema, old.coercers, old.steps)
        kept.decoder.label_forms = forms
        kept.clock = old.clock
        processor.events = kept
        return ["the schema changed: events are checked against the config's, the steps keep their statistics"]
    new.decoder.label_forms = forms
    processor.events = new
    return ["the cleaners or feature extractors changed: their statistics start afresh"]


# -- models ----------------------------------------------------------------------------

def _identity(m: Model) -> tuple[Any, ...]:
    """What must be unchanged for a model to keep what it learned. A search ranks its
    candidates, and self-training guards itself, with the pipeline's metric."""
    st = m.self_training.config if m.self_training is not None else None
    inputs = tuple(m.numeric_features) if m.predicts_in_batches else ()
    scored_with = m.metric_name if m.search is not None or st is not None else None
    return (m.name, m.steps, m.search, st, m.restore_when_not_finite, inputs, scored_with)


def _learners(processor: Any, new: Any) -> list[str]:
    old = processor.learners
    if isinstance(old, ForecastSet) or isinstance(new, ForecastSet):
        if type(old) is type(new) and old.config == new.config and [
            (m.name, m.steps) for m in old.models] == [(m.name, m.steps) for m in new.models]:
            return []
        processor.learners = new
        return ["the forecast or its models changed: every forecasting model starts afresh"]
    assert isinstance(old, ModelSet) and isinstance(new, ModelSet)
    if (old.task, old.binary, old.delayed_labels) != (new.task, new.binary, new.delayed_labels):
        processor.learners = new
        return ["the task, the label type or the labels topic changed: every model starts afresh"]
    notes: list[str] = []
    old_by_name = {m.name: m for m in old.models}
    models: list[Model] = []
    # The configured models only: ``new`` may be a running set (a roll-back of the
    # processor's guard restores its own checkpoint), whose challengers are not config.
    for m_new in (m for m in new.models if m.parent is None):
        m_old = old_by_name.get(m_new.name)
        if m_old is not None and m_old.parent is None and _identity(m_old) == _identity(m_new):
            models.append(m_old)
        elif m_old is None:
            models.append(m_new)
            notes.append(f"model {m_new.name!r} is new: it starts untrained")
        else:
            models.append(m_new)
            notes.append(f"model {m_new.name!r} changed (steps, search or self-training): it starts untrained")
    kept = {m.name for m in models if old_by_name.get(m.name) is m}
    models += [m for m in old.models if m.parent is not None and m.parent in kept]
    configured = {m.name for m in models}
    for m in old.models:
        if m.parent is None and m.name not in configured:
            notes.append(f"model {m.name!r} is no longer configured: dropped")
    if not notes and [m.name for m in old.models if m.parent is None] != [m.name for m in models if m.parent is None]:
        notes.append("the models' order changed: records list them in the config's order")
    changed = _settings_changed(old, new)
    if not notes and not changed and models == old.models:
        return []  # the same models in the same order (a reordered list is a change)

    # The old set carries on (waiting labels, clock, counters), with the config's settings.
    for attr in ("metric_name", "numeric_features", "labels_config", "evaluation_config", "drift_config",
                 "champion_config", "top_k", "champion_metric"):
        setattr(old, attr, getattr(new, attr))
    lc = new.labels_config
    pending = old.pending
    pending.max_pending, pending.ttl_s, pending.early_hold_s, pending.max_early = (
        lc.max_pending, lc.ttl_s, lc.early_hold_s, lc.max_early)
    if "metrics" in changed:
        old.scoreboard = new.scoreboard
        new.scoreboard.entries = {}
        for m in models:
            new.scoreboard.add(m)
        notes.append("the metrics changed: every model's metrics restart")
    else:
        old.scoreboard.entries = {m.name: m.scores for m in models}  # type: ignore[misc]
    detector = new.drift_config.detector
    for m in models:
        if m.drift.spec != detector:
            m.drift = DriftMonitor(detector)
        m.metric_name = new.metric_name  # what a drift reset rebuilds the model with
    if "drift detector" in changed:
        notes.append("the drift detector changed: every model's detector starts afresh")
    names = {m.name for m in models}
    if "champion" in changed or old.selector.champion not in names:
        old.selector = new.selector
        notes.append(f"the champion settings or models changed: the champion is {new.selector.champion!r} again")
    old.models = models
    old._route()
    for what in ("labels", "evaluation", "explain", "drift policy"):
        if what in changed:
            notes.append(f"the {what} settings changed: the config's apply from here")
    return notes


def _settings_changed(old: ModelSet, new: ModelSet) -> set[str]:
    changed = set()
    if (old.metric_name, old.scoreboard.plan) != (new.metric_name, new.scoreboard.plan):
        changed.add("metrics")
    # The champion window falls back to the evaluation window, and sets the selector's
    # minimum of labels: a change of either is a change of the champion's rule.
    if (old.champion_config, old.champion_metric, old.champion_window) != (
        new.champion_config, new.champion_metric, new.champion_window
    ):
        changed.add("champion")
    if old.drift_config.detector != new.drift_config.detector:
        changed.add("drift detector")
    if old.drift_config.model_copy(update={"detector": None}) != new.drift_config.model_copy(update={"detector": None}):
        changed.add("drift policy")
    if old.labels_config != new.labels_config:
        changed.add("labels")
    if old.evaluation_config != new.evaluation_config:
        changed.add("evaluation")
    if old.top_k != new.top_k:
        changed.add("explain")
    if old.numeric_features != new.numeric_features:
        changed.add("features")
    return changed
