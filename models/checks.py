"""The contract every learner keeps, in the spirit of ``river/checks``.

:func:`yield_checks` pairs every learner of :func:`yield_learners` (the torch learners
and sample River pipelines) with every check that applies to it; the test suite
parametrises over them with ids like ``"TorchMiniBatchClassifier:check_pickle_round_trip"``.
A check drives a fresh learner prequentially (predict with the state before the
event, then learn, as the model set does) over a seeded stream from :func:`sample_stream`
and raises ``AssertionError`` saying what broke.

The checks that only a :class:`~streamwise.models.learner.BatchLearner` can fail
(blocked prediction, stream-time flushing) are paired with batch learners only.
"""

from __future__ import annotations

import copy
import math
import pickle
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from streamwise.models.catalog import build_estimator
from streamwise.models.learner import BatchClassifier, BatchLearner, is_batch_learner

__all__ = ["LearnerCase", "sample_stream", "yield_learners", "yield_checks", "run_prequential", "CHECKS"]

_COLOURS = ("red", "green", "blue")


@dataclass(frozen=True, slots=True)
class Row:
    """One event of a sample stream: features, label and stream time in seconds."""

    x: dict[str, Any]
    y: Any
    t: float


@dataclass(frozen=True, slots=True)
class LearnerCase:
    """A learner to check: a label for test ids, its model steps (as a pipeline config
    gives them), its task, and whether it accepts string features."""

    label: str
    steps: list[Any]
    task: str
    text_features: bool = True

    def build(self) -> Any:
        return build_estimator(self.steps)


def sample_stream(n: int, task: str, seed: int = 0, text: bool = True) -> list[Row]:
    """A seeded stream of labelled rows that a small model can learn.

    Optional features are sometimes absent and now and then a new one appears; with
    ``text`` a categorical string feature rides along.

    Examples
    --------
    >>> rows = sample_stream(3, "classification", seed=1)
    >>> sorted(rows[0].x), rows[0].y, rows == sample_stream(3, "classification", seed=1)
    (['a', 'b', 'c', 'colour'], True, True)
    """
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b, c = rng.gauss(0, 1), rng.gauss(0, 1), rng.uniform(-2, 2)
        x: dict[str, Any] = {"a": a, "b": b, "c": c}
        if text:
            x["colour"] = rng.choice(_COLOURS)
        if rng.random() < 0.1:
            del x["c"]
        if rng.random() < 0.05:
            x[f"extra_{rng.randrange(3)}"] = rng.random()
        score = 1.5 * a - b + 0.5 * x.get("c", 0.0)
        y: Any = score + rng.gauss(0, 0.1) if task == "regression" else score > 0
        rows.append(Row(x, y, 1_700_000_000.0 + 2.0 * i))
    return rows


# The torch learners are small and on the CPU so the whole suite runs in seconds.
_TORCH = {"hidden_layers": [8], "hash_width": 4, "batch_size": 8, "lr": 0.05, "device": "cpu", "seed": 3}


def yield_learners() -> Iterator[LearnerCase]:
    """Every batch learner streamwise ships, in the configurations that change its code
    paths, and River pipelines like those the examples configure."""
    yield LearnerCase("TorchMiniBatchClassifier", [{"streamwise.TorchMiniBatchClassifier": _TORCH}], "classification")
    yield LearnerCase(
        "TorchMiniBatchClassifier(dropout)",
        [{"streamwise.TorchMiniBatchClassifier": {**_TORCH, "dropout": 0.2, "max_wait_s": 10.0}}],
        "classification",
    )
    yield LearnerCase(
        "TorchMiniBatchClassifier(features)",
        [{"streamwise.TorchMiniBatchClassifier": {**_TORCH, "features": ["a", "b"], "standardize": False}}],
        "classification",
    )
    yield LearnerCase("TorchMiniBatchRegressor", [{"streamwise.TorchMiniBatchRegressor": _TORCH}], "regression")
    sequence = {**_TORCH, "sequence_length": 4, "hidden_size": 8}
    yield LearnerCase("TorchSequenceClassifier", [{"streamwise.TorchSequenceClassifier": sequence}], "classification")
    yield LearnerCase(
        "TorchSequenceClassifier(lstm)",
        [{"streamwise.TorchSequenceClassifier": {**sequence, "cell": "lstm", "dropout": 0.2}}],
        "classification",
    )
    yield LearnerCase("TorchSequenceRegressor", [{"streamwise.TorchSequenceRegressor": sequence}], "regression")
    yield LearnerCase(
        "StandardScaler|LogisticRegression",
        ["preprocessing.StandardScaler", "linear_model.LogisticRegression"],
        "classification",
        text_features=False,
    )
    yield LearnerCase("HoeffdingTreeClassifier", ["tree.HoeffdingTreeClassifier"], "classification")
    yield LearnerCase(
        "ARFClassifier", [{"forest.ARFClassifier": {"n_models": 3, "seed": 1}}], "classification"
    )
    yield LearnerCase(
        "StandardScaler|LinearRegression",
        ["preprocessing.StandardScaler", "linear_model.LinearRegression"],
        "regression",
        text_features=False,
    )


def _predict(learner: Any, x: dict[str, Any], task: str) -> Any:
    if task == "classification":
        return learner.predict_proba_one(x)
    return learner.predict_one(x)


def _learn(learner: Any, row: Row) -> None:
    if is_batch_learner(learner):
        learner.learn_one(row.x, row.y, row.t)
    else:
        learner.learn_one(row.x, row.y)


def run_prequential(learner: Any, rows: Sequence[Row], task: str) -> list[Any]:
    """Predict each row with the state before it, then learn from it; the predictions
    (probabilities for a classifier)."""
    out = []
    for row in rows:
        out.append(_predict(learner, row.x, task))
        _learn(learner, row)
    return out


def _rows(case: LearnerCase, n: int, seed: int) -> list[Row]:
    return sample_stream(n, case.task, seed=seed, text=case.text_features)


def _close(a: Any, b: Any, rel: float) -> bool:
    """Equal, or (for numbers and probability dicts) within ``rel``, relatively."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], rel) for k in a)
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=rel, abs_tol=rel)
    return bool(a == b)


def check_does_not_mutate_input(case: LearnerCase) -> None:
    learner = case.build()
    rows = _rows(case, 200, seed=1)
    before = copy.deepcopy([r.x for r in rows])
    run_prequential(learner, rows, case.task)
    if is_batch_learner(learner):
        learner.predict_many([r.x for r in rows])
        learner.learn_many([r.x for r in rows], [r.y for r in rows], rows[-1].t)
        learner.explain_many([r.x for r in rows[:5]], k=2)
    for i, (row, original) in enumerate(zip(rows, before, strict=True)):
        assert row.x == original, f"row {i} was changed: {original} became {row.x}"


def check_tolerates_features_that_appear_or_vanish(case: LearnerCase) -> None:
    rng = random.Random(2)
    rows = []
    for row in _rows(case, 300, seed=2):
        x = {k: v for k, v in row.x.items() if rng.random() >= 0.3}
        if rng.random() < 0.3:
            x[f"new_{rng.randrange(10)}"] = rng.uniform(-5, 5)
        rows.append(Row(x, row.y, row.t))
    rows.append(Row({}, rows[-1].y, rows[-1].t + 1.0))  # nothing at all
    outputs = run_prequential(case.build(), rows, case.task)
    assert len(outputs) == len(rows)


def check_predictions_are_finite(case: LearnerCase) -> None:
    learner = case.build()
    for i, p in enumerate(run_prequential(learner, _rows(case, 300, seed=3), case.task)):
        values = list(p.values()) if isinstance(p, dict) else [p]
        for v in values:
            assert isinstance(v, (int, float)) and math.isfinite(v), f"row {i}: prediction {p!r}"


def check_pickle_round_trip(case: LearnerCase) -> None:
    learner = case.build()
    rows = _rows(case, 400, seed=4)
    run_prequential(learner, rows[:203], case.task)  # 203: a batch learner has rows buffered
    restored = pickle.loads(pickle.dumps(learner))
    assert run_prequential(restored, rows[203:], case.task) == run_prequential(learner, rows[203:], case.task)


def check_seeded_clones_agree(case: LearnerCase) -> None:
    learner = case.build()
    rows = _rows(case, 300, seed=5)
    run_prequential(learner, rows[:50], case.task)
    # clone() is fresh and untrained, however much the original has learned.
    first = run_prequential(learner.clone(), rows, case.task)
    second = run_prequential(learner.clone(), rows, case.task)
    assert first == second
    assert first == run_prequential(case.build(), rows, case.task)


def check_learning_changes_predictions(case: LearnerCase) -> None:
    learner = case.build()
    rows = _rows(case, 400, seed=6)
    outputs = run_prequential(learner, rows, case.task)
    assert outputs[-1] != outputs[0], "400 labelled rows changed nothing"


def check_blocked_predictions_equal_one_at_a_time(case: LearnerCase) -> None:
    """The ``rows_until_step`` promise: predict a block of at most that many rows at once,
    then learn them, and every prediction equals the one made row by row.

    Equal up to float32 rounding: a matrix product over a block may sum in another order
    than over one row. The predicted classes must match exactly.
    """
    rows = _rows(case, 200, seed=7)
    alone = case.build()
    single = run_prequential(alone, rows, case.task)
    blocked_learner: BatchLearner = case.build()
    blocked: list[Any] = []
    start = 0
    while start < len(rows):
        block = rows[start : start + blocked_learner.rows_until_step]
        X = [r.x for r in block]
        if isinstance(blocked_learner, BatchClassifier):
            blocked += blocked_learner.predict_proba_many(X)
        else:
            blocked += blocked_learner.predict_many(X)
        blocked_learner.learn_many(X, [r.y for r in block], block[-1].t)
        start += len(block)
    assert blocked_learner.n_steps == alone.n_steps
    for i, (a, b) in enumerate(zip(single, blocked, strict=True)):
        assert _close(a, b, rel=1e-5), f"row {i}: {a} one at a time, {b} in a block"
    if isinstance(blocked_learner, BatchClassifier):
        X = [r.x for r in rows]
        if getattr(blocked_learner, "uses_keys", False):
            # A sequence learner reads the rows of one call as consecutive events of their
            # key: a key per row makes them as independent as predict_one's.
            classes = blocked_learner.predict_many(X, keys=list(range(len(X))))
            assert classes == [alone.predict_one(x, key=i) for i, x in enumerate(X)]
        else:
            assert blocked_learner.predict_many(X) == [alone.predict_one(x) for x in X]


def check_flushes_by_stream_time(case: LearnerCase) -> None:
    """A partial mini-batch steps once its oldest row has waited ``max_wait_s`` of stream
    time, never earlier, and ``flush(None)`` steps at once."""
    learner: BatchLearner = case.build()
    rows = _rows(case, learner.batch_size - 1, seed=8)
    learner.learn_many([r.x for r in rows], [r.y for r in rows], rows[0].t)
    assert learner.n_steps == 0 and learner.rows_until_step == 1
    wait = getattr(learner, "max_wait_s", None)
    if wait is not None:
        assert not learner.flush(rows[0].t + wait / 2), "stepped before max_wait_s"
        assert learner.flush(rows[0].t + wait), "did not step after max_wait_s"
    else:
        assert learner.flush(None)
    assert learner.n_steps >= 1 and learner.n_learned == len(rows)
    assert not learner.flush(None), "stepped on an empty buffer"


def check_declared_features_are_kept(case: LearnerCase) -> None:
    """``declare_features`` fixes the inputs of a learner that has none yet and changes
    nothing once they are fixed, so the schema cannot reshape a trained network."""
    learner: BatchLearner = case.build()
    rows = _rows(case, 100, seed=9)
    learner.declare_features(["a", "b", "c"])
    run_prequential(learner, rows[:60], case.task)
    X = [r.x for r in rows[60:]]
    before = learner.predict_many(X)
    learner.declare_features(["zzz"])
    assert learner.predict_many(X) == before, "declaring features again changed the predictions"


Check = Callable[[LearnerCase], None]

#: Checks every learner keeps.
CHECKS: tuple[Check, ...] = (
    check_does_not_mutate_input,
    check_tolerates_features_that_appear_or_vanish,
    check_predictions_are_finite,
    check_pickle_round_trip,
    check_seeded_clones_agree,
    check_learning_changes_predictions,
)
#: Checks only a batch learner can fail.
BATCH_CHECKS: tuple[Check, ...] = (
    check_blocked_predictions_equal_one_at_a_time,
    check_flushes_by_stream_time,
    check_declared_features_are_kept,
)


def yield_checks() -> Iterator[tuple[str, LearnerCase, Check]]:
    """``(id, learner case, check)`` for every learner and every check that applies.

    Examples
    --------
    >>> ids = [test_id for test_id, _, _ in yield_checks()]
    >>> "TorchMiniBatchClassifier:check_blocked_predictions_equal_one_at_a_time" in ids
    True
    >>> "HoeffdingTreeClassifier:check_flushes_by_stream_time" in ids, len(ids) == len(set(ids))
    (False, True)
    """
    for case in yield_learners():
        batch = is_batch_learner(case.build())
        for check in CHECKS + (BATCH_CHECKS if batch else ()):
            yield f"{case.label}:{check.__name__}", case, check
