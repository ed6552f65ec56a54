"""A model whose answers turn NaN or infinite for good is put back to a copy of itself
that still answered finite numbers.

One event can poison an online learner for ever: a value within the schema's bounds but
large enough that its square overflows (1e160 through a StandardScaler) makes a running
variance infinite, then every weight NaN and every later answer NaN. The model never
learns its way out, and its drift detector, which only sees finite errors, never fires.

So the model set keeps up to two copies of each model, taken at the end of a batch in
which the model's last answer was finite, at most every ``COPY_EVERY_LABELS`` labels and
for at most ``COPY_SHARE`` of the wall time (copying an adaptive random forest takes tens
of milliseconds). After ``NOT_FINITE_RUN`` answers in a row that are not finite, the
newest copy that answers its *witness* (the last event the model answered with a finite
number before that copy was taken) with a finite number takes the model's place; a copy
taken after the poison answers it NaN and is passed over, and one whose poison had not
yet shown (an infinite variance that a later step turns into NaN weights) is dropped
when the model it was put back to turns NaN again before the next copy. With no such
copy, the model starts afresh (as the drift policy ``reset`` does). What it learned since the copy is
lost; its metrics and counters carry on. Each time counts as the model fault
``restored`` and goes to the alerts topic.

The copies live beside the learning state, never in it: snapshots do not grow with them,
and a restored worker takes its first copies again as it goes. Which copy a model goes
back to depends on when copies were taken, so after a poisoning a replay may not end in
exactly the model the first run had (the records stay exactly once).
"""

from __future__ import annotations

import math
import time
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from streamwise.core.stages import ModelFault
from streamwise.models.state import decode_state, encode_state

if TYPE_CHECKING:
    from streamwise.models.model import Model

NOT_FINITE_RUN = 3
COPY_EVERY_LABELS = 1000
COPY_SHARE = 0.002


@dataclass
class _Copy:
    payload: bytes
    n_learned: int
    witness: dict[str, Any]
    taken_at: float
    cost_s: float


@dataclass
class _Watch:
    copies: list[_Copy] = field(default_factory=list)
    run: int = 0  # answers in a row that were not finite
    copyable: bool = True
    restored_from: _Copy | None = None
    # The estimator the copies are of: one put in its place otherwise (a promoted
    # challenger, a drift reset, self-training's shadow) makes them another model's.
    estimator_id: int | None = None


# Keyed by the model object, so the copies vanish with it and never enter its pickle.
_WATCHES: weakref.WeakKeyDictionary[Model, _Watch] = weakref.WeakKeyDictionary()


def after_batch(m: Model, outcomes: list[Any]) -> dict[str, Any] | None:
    """Called by the model set at the end of each batch, once the batch's answers and
    faults are in: takes a copy when one is due, or puts the model back when its answers
    stay not finite. Returns the alert when it did."""
    if not m.restore_when_not_finite:
        return None
    watch = _WATCHES.get(m)
    if watch is None:
        watch = _WATCHES[m] = _Watch()
    if watch.estimator_id != id(m.estimator):
        watch.copies, watch.restored_from, watch.estimator_id = [], None, id(m.estimator)
    if not m.new_faults.get(ModelFault.NOT_FINITE.value):
        # Only an answer ends a run: a batch the model answered nothing in (a poll of
        # dead letters, or of labels only, between two NaN answers) leaves it as it was.
        if any((p := o.predictions.get(m.name)) is not None and p.error is None for o in reversed(outcomes)):
            watch.run = 0
            _copy_if_due(m, watch, outcomes)
        return None
    trailing = 0
    for outcome in reversed(outcomes):
        p = outcome.predictions.get(m.name)
        if p is None or p.error is not None:
            continue
        if p.finite:
            break
        trailing += 1
    else:  # no finite answer in the whole batch: the run goes on from the last one
        trailing += watch.run
    watch.run = trailing
    if trailing < NOT_FINITE_RUN:
        return None
    return _restore(m, watch, trailing)


def _copy_if_due(m: Model, watch: _Watch, outcomes: list[Any]) -> None:
    if not watch.copyable or m.n_learned == 0:
        return
    newest = watch.copies[-1] if watch.copies else None
    now = time.monotonic()
    if newest is not None and (
        m.n_learned - newest.n_learned < COPY_EVERY_LABELS or now - newest.taken_at < newest.cost_s / COPY_SHARE
    ):
        return
    witness = next(
        (o.x for o in reversed(outcomes)
         if (p := o.predictions.get(m.name)) is not None and p.error is None and p.finite),
        None,
    )
    if witness is None:
        return
    started = time.perf_counter()
    try:
        payload = encode_state(m.estimator)
        # Encoding undid the estimator's inline attribute storage, which slows a tree by
        # a quarter for the rest of its life (models/state.py): it goes on as its decoded
        # copy, the same learned state.
        m.estimator = decode_state(payload)
        watch.estimator_id = id(m.estimator)
    except Exception:  # an estimator that cannot be copied is only not guarded
        watch.copyable = False
        return
    copy = _Copy(payload, m.n_learned, witness, now, time.perf_counter() - started)
    watch.copies = [*watch.copies[-1:], copy]


def _restore(m: Model, watch: _Watch, run: int) -> dict[str, Any]:
    if watch.copies and watch.copies[-1] is watch.restored_from:
        # Back to NaN from the copy it was last put back to, with no copy since: that
        # copy was poisoned too, only not yet answering NaN (an infinite variance that a
        # later step turns into NaN weights). The one before it is tried.
        watch.copies.pop()
    chosen = None
    for i in range(len(watch.copies) - 1, -1, -1):
        copy = watch.copies[i]
        try:
            candidate = decode_state(copy.payload)
            healthy = m.predicts_in_batches or _answers_finite(m, candidate, copy.witness)
        except Exception:
            healthy = False
        if healthy:
            chosen, watch.copies = copy, watch.copies[: i + 1]
            break
    if chosen is None:
        watch.copies = []
        m.reset()
    else:
        m.estimator = candidate
        if m.self_training is not None and m.self_training.active:
            m.self_training.reset(m.estimator)
        m.drift.reset()  # its errors so far were the poisoned model's
    watch.estimator_id = id(m.estimator)
    watch.run = 0
    watch.restored_from = chosen
    m._fault(ModelFault.RESTORED)
    to = "a fresh estimator" if chosen is None else f"its copy from {m.n_learned - chosen.n_learned} labels ago"
    m.last_error = f"{run} answers in a row were NaN or infinite: put back to {to}"
    return {
        "type": "model_restored", "model": m.name, "not_finite_in_a_row": run,
        "to": "fresh" if chosen is None else "copy",
        "labels_lost": m.n_learned if chosen is None else m.n_learned - chosen.n_learned,
    }


def _answers_finite(m: Model, estimator: Any, x: dict[str, Any]) -> bool:
    if m.is_anomaly_detector:
        values = [estimator.score_one(x)]
    elif m.is_classifier:
        values = list(estimator.predict_proba_one(x).values())
    else:
        values = [estimator.predict_one(x)]
    return all(not isinstance(v, float) or math.isfinite(v) for v in values)
