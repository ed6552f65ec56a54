"""Warm starts: a model that begins from what another pipeline's model learned (``init_from``).

.. code-block:: yaml

    models:
      - name: logreg
        steps: [preprocessing.StandardScaler, linear_model.LogisticRegression]
        init_from: {pipeline: credit-north, model: logreg}

At start, :func:`resolve_transfers` reads the source pipeline's snapshots from the state
store (signed and verified like any restore, and decoded by the same allow-listing
codec), picks one, and checks that it fits. :meth:`Transfer.estimator` then gives each
partition of this pipeline a fresh copy of the source model's estimator (River state,
or a torch learner with its weights and optimiser state).

Which snapshot
    A pipeline keeps one snapshot series per input partition, each with its own replica
    of every model (``scope: partition``), or one series for its learner
    (``<name>.learn``, ``scope: global``), whose one replica learns from every event. The
    source is the newest valid snapshot of the series whose replica of the model has
    learned the most labels (ties: the lowest partition): the replica
    that has seen the most of the world. Replicas are not averaged: River's
    estimators have no merge.

When
    Only for a partition of this pipeline that has never had a snapshot of its own (no
    snapshot, and no snapshot epoch in Kafka's committed offsets). A restart restores its
    own state and never re-initialises; a partition whose store lost its snapshots
    re-learns as ``snapshot.on_missing`` says, from zero. A crash before this pipeline's
    first snapshot starts from the source again and re-learns its own events from the
    start, as any restart without a snapshot does: the same state as before the crash,
    unless the source has written a newer snapshot meanwhile.

What moves
    The estimator alone, with everything inside its steps (a ``StandardScaler`` step's
    running statistics come with it). The metrics, the drift detector, the label buffer and
    the pipeline's own cleaners and feature extractors start fresh: they describe this
    stream, not the source's.

Compatibility
    The source model must have the same steps, parameters included, and the source
    pipeline the same features with the same types, the same label type and the same
    cleaners and feature extractors (written into every snapshot's signed metadata as
    its *signature*). Anything else stops the start with one line that says which
    pipeline, which model and what differs. A source pipeline without any snapshot also
    stops the start, unless this pipeline already has snapshots of its own (then it is
    one warning line: nothing would be initialised anyway).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from streamwise.connectors.base import StateStore
from streamwise.connectors.redis_state import SnapshotUnavailableError
from streamwise.core.errors import ConfigError, ServiceUnavailableError
from streamwise.models.state import SnapshotFormatError, decode_state, encode_state, fingerprint
from streamwise.pipeline_config import PipelineConfig

log = logging.getLogger(__name__)

__all__ = ["Transfer", "pipeline_signature", "resolve_transfers", "steps_key"]


def pipeline_signature(config: PipelineConfig) -> dict[str, Any]:
    """What a model's input depends on besides its own steps: the features and their types,
    the label type, and the cleaners and feature extractors. Written into each snapshot's
    metadata, so that a model taken from it can be checked against another pipeline."""
    schema = config.event_schema
    return {
        "features": {name: f.type for name, f in schema.features.items()},
        "label_type": schema.label_type,
        "task": config.task,
        "stream_steps": [s.model_dump(mode="json") for s in [*config.cleaners, *config.features]],
    }


def steps_key(steps: list[Any] | None) -> str:
    """A model's steps in one canonical form: ``"a.B"`` and ``{"a.B": {}}`` read the same.

    Examples
    --------
    >>> steps_key(["preprocessing.StandardScaler"]) == steps_key([{"preprocessing.StandardScaler": None}])
    True
    >>> steps_key([{"linear_model.LogisticRegression": {"l2": 0.1}}]) == steps_key(["linear_model.LogisticRegression"])
    False
    """
    out = []
    for step in steps or []:
        if isinstance(step, str):
            out.append({step: {}})
        elif isinstance(step, dict):
            out.append({name: params or {} for name, params in step.items()})
        else:
            out.append(step)
    return json.dumps(out, sort_keys=True, default=str)


def _differences(name: str, mine: dict[str, Any], theirs: dict[str, Any]) -> list[str]:
    """What differs between two pipeline signatures, said briefly."""
    out = []
    a, b = theirs.get("features", {}), mine.get("features", {})
    only_source, only_here = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    if only_source:
        out.append(f"features only in {name}: {', '.join(only_source)}")
    if only_here:
        out.append(f"features only here: {', '.join(only_here)}")
    typed = [f"{k} {a[k]} there, {b[k]} here" for k in sorted(set(a) & set(b)) if a[k] != b[k]]
    if typed:
        out.append(f"feature types differ: {'; '.join(typed)}")
    for key, what in (("label_type", "label type"), ("task", "task")):
        if theirs.get(key) != mine.get(key):
            out.append(f"{what} {theirs.get(key)} there, {mine.get(key)} here")
    if theirs.get("stream_steps") != mine.get("stream_steps"):
        out.append("cleaners or feature extractors differ")
    return out


@dataclass
class Transfer:
    """The chosen source of one model's first state."""

    model: str  # the model of this pipeline
    pipeline: str
    source_model: str
    partition: int
    epoch: int
    learned: int
    payload: bytes  # the source estimator alone, encoded once; decoded afresh per partition
    fingerprint: str  # of the source estimator, as the snapshot holds it

    def estimator(self) -> Any:
        """A fresh copy of the source model's estimator."""
        return decode_state(self.payload)

    def describe(self) -> str:
        return (
            f"pipeline {self.pipeline!r} model {self.source_model!r} (partition {self.partition}, snapshot epoch"
            f" {self.epoch}, {self.learned} labels learned)"
        )


def _series(store: StateStore, pipeline: str) -> list[tuple[str, int]]:
    """(name, partition) of every snapshot series that holds ``pipeline``'s models: its
    own name's (scope: partition, or one input partition) and its learner's
    (``<name>.learn``, scope: global)."""
    return [(name, p) for name in (pipeline, f"{pipeline}.learn") for p in store.partitions(name)]


def _source_models(store: StateStore, pipeline: str, model: str) -> list[tuple[int, Any, Any]]:
    """(partition, snapshot, that snapshot's model ``model`` or None) for every readable
    snapshot of ``pipeline``'s models, each series' newest valid one."""
    found = []
    for name, partition in _series(store, pipeline):
        snap = store.load_latest(name, partition)
        if snap is None:
            continue
        try:
            state = decode_state(snap.payload)
        except SnapshotFormatError as e:
            log.warning("init_from: snapshot %s/%s epoch %s skipped: %s", name, partition, snap.info.epoch, e)
            continue
        learners = state.get("learners") if isinstance(state, dict) else None
        models = {m.name: m for m in getattr(learners, "models", [])}
        found.append((partition, snap, models.get(model)))
    return found


def resolve_transfers(config: PipelineConfig, store: StateStore | None) -> dict[str, Transfer]:
    """The source of every model with ``init_from``, chosen and checked; a one-line
    :class:`ConfigError` when a source is missing or does not fit."""
    wanted = [(i, spec) for i, spec in enumerate(config.models) if spec.init_from is not None]
    if not wanted:
        return {}
    if store is None:
        raise ConfigError(f"models[{wanted[0][0]}].init_from: needs the snapshot store (snapshot.enabled is false)")
    signature = pipeline_signature(config)
    out: dict[str, Transfer] = {}
    for i, spec in wanted:
        source = spec.init_from
        assert source is not None
        where = f"models[{i}].init_from: model {spec.name!r} cannot start from pipeline {source.pipeline!r}"
        try:
            candidates = _source_models(store, source.pipeline, source.model)
            own = bool(_series(store, config.name))
        except SnapshotUnavailableError as e:
            raise ServiceUnavailableError(f"{where}: the state store cannot be read ({e})") from None
        if not candidates:
            if own:
                log.warning("%s: it has no snapshot; this pipeline restores its own snapshots", where)
                continue
            raise ConfigError(f"{where}: that pipeline has no snapshot in the state store")
        usable = [(p, snap, m) for p, snap, m in candidates if m is not None]
        if not usable:
            raise ConfigError(f"{where}: its snapshots hold no model {source.model!r}")
        partition, snap, model = max(usable, key=lambda c: (c[2].n_learned, -c[0]))
        problems = []
        if steps_key(model.steps) != steps_key(spec.steps):
            problems.append(f"steps differ: {steps_key(model.steps)} there, {steps_key(spec.steps)} here")
        theirs = snap.info.meta.get("signature")
        if theirs is None:
            problems.append("its snapshot predates pipeline signatures (take a new snapshot of it)")
        else:
            problems += _differences(repr(source.pipeline), signature, theirs)
        if problems:
            raise ConfigError(f"{where} model {source.model!r} (partition {partition}): {'; '.join(problems)}")
        out[spec.name] = Transfer(
            spec.name, source.pipeline, source.model, partition, snap.info.epoch, model.n_learned,
            encode_state(model.estimator), fingerprint(model.estimator),
        )
        log.info("model %r starts from %s where this pipeline has no state yet", spec.name, out[spec.name].describe())
    return out
