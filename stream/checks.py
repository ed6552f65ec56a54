"""The contract every cleaner and feature extractor keeps, in the spirit of ``river/checks``.

:func:`yield_checks` pairs every shipped component (from :func:`yield_components`)
with every check; the test suite parametrises over them with ids like
``"WindowedAggregates:check_pickle_round_trip"``. A check drives a fresh component
prequentially (transform with the state before the event, then learn) over a seeded
stream from :func:`sample_rows` and raises ``AssertionError`` saying what broke.
"""

from __future__ import annotations

import copy
import math
import pickle
import random
from collections.abc import Callable, Iterator
from typing import Any

from streamwise.stream.base import StreamComponent
from streamwise.stream.pipeline import STEPS, _meta_fields
from streamwise.stream.schema import EventSchema, RejectedEvent

__all__ = ["sample_rows", "yield_components", "yield_checks", "run_prequential", "CHECKS"]

_CITIES = ("Lyon", "Oslo", "Lima", "Pune")
_WORDS = ("rent", "gift", "card", "crypto", "coffee", "refund", "wire", "urgent", "fee", "book")


def sample_rows(n: int, seed: int = 0, distinct_keys: bool = False, extremes: bool = False) -> Iterator[dict[str, Any]]:
    """A seeded stream of event rows with every field the shipped components read.

    ``distinct_keys`` gives each row its own card, merchant and word (the worst case for
    state that grows with keys); ``extremes`` mixes in values near float64's limits.
    Optional fields are sometimes absent, and now and then a new field appears.

    Examples
    --------
    >>> rows = list(sample_rows(3, seed=1))
    >>> sorted(rows[0])
    ['amount', 'card', 'city', 'extra_1', 'id', 'memo', 'merchant', 'online', 'price', 'ts']
    >>> rows == list(sample_rows(3, seed=1))
    True
    """
    rng = random.Random(seed)
    t = 1_700_000_000.0
    for i in range(n):
        t += rng.expovariate(1 / 90.0)
        jitter = -rng.uniform(0, 600) if rng.random() < 0.05 else 0.0  # some events arrive late
        row: dict[str, Any] = {
            "id": i,
            "ts": t + jitter,
            "card": f"c{i}" if distinct_keys else f"c{rng.randrange(50)}",
            "amount": round(rng.lognormvariate(3, 1), 2),
            "price": round(rng.uniform(0, 100), 2),
            "n": rng.randrange(10),
            "online": rng.random() < 0.3,
            "city": rng.choice(_CITIES),
            "merchant": f"m{i}" if distinct_keys else f"m{rng.randrange(200)}",
            "memo": " ".join(rng.choice(_WORDS) for _ in range(rng.randrange(1, 6)))
            + (f" w{i}" if distinct_keys else ""),
        }
        if extremes and rng.random() < 0.2:
            row["amount"] = rng.choice([1e300, -1e300, 1e-300, 0.0, 9e307])
            row["price"] = rng.choice([1e300, 0.0, -9e307])
        for name in ("amount", "city", "memo", "price", "n"):
            if rng.random() < 0.1:
                del row[name]
        if rng.random() < 0.05:
            row[f"extra_{rng.randrange(3)}"] = rng.random()
        yield row


# The fields of sample_rows as a pipeline schema, for building components the way the
# service does.
SAMPLE_SCHEMA = EventSchema(
    id="id",
    key="card",
    event_time="ts",
    features={
        "amount": {"type": "float", "required": False},
        "price": {"type": "float", "required": False},
        "n": {"type": "int", "required": False},
        "online": "bool",
        "city": {"type": "category", "required": False},
        "merchant": "category",
        "memo": {"type": "text", "required": False},
    },
)


def yield_components() -> Iterator[tuple[str, StreamComponent]]:
    """``(label, fresh component)`` for every step kind of the pipeline registry
    (:data:`streamwise.stream.pipeline.STEPS`), built from each of its ``examples`` the
    way the service builds it, so that a new kind is checked as soon as it is registered.

    Examples
    --------
    >>> labels = [label for label, _ in yield_components()]
    >>> labels[:3]
    ['TypeCoercer', 'RunningImputer(mean)', 'RunningImputer(median)']
    """
    meta = _meta_fields(SAMPLE_SCHEMA)
    for step in STEPS.values():
        for variant, params in step.examples.items():
            for component in step(**params).build(SAMPLE_SCHEMA, meta):
                yield type(component).__name__ + (f"({variant})" if variant else ""), component


REJECTED = "<rejected>"


def run_prequential(component: StreamComponent, rows: Iterator[dict[str, Any]] | list[dict[str, Any]]) -> list[Any]:
    """Transform each row with the state before it, then learn from it, as the service does.
    A refused row gives :data:`REJECTED` and teaches nothing."""
    out: list[Any] = []
    for row in rows:
        try:
            y = component.transform_one(row)
        except RejectedEvent:
            out.append(REJECTED)
            continue
        component.learn_one(row)
        out.append(y)
    return out


def check_does_not_mutate_input(component: StreamComponent) -> None:
    rows = list(sample_rows(300, seed=1))
    before = copy.deepcopy(rows)
    run_prequential(component, rows)
    for i, (row, original) in enumerate(zip(rows, before, strict=True)):
        assert row == original, f"row {i} was changed: {original} became {row}"


def check_tolerates_features_that_appear_or_vanish(component: StreamComponent) -> None:
    rng = random.Random(2)
    rows = []
    for row in sample_rows(400, seed=2):
        for name in list(row):
            if name not in ("id", "ts") and rng.random() < 0.3:
                del row[name]
        if rng.random() < 0.3:
            row[f"new_{rng.randrange(10)}"] = rng.uniform(-5, 5)
        rows.append(row)
    rows.append({})  # nothing at all
    outputs = run_prequential(component, rows)
    assert outputs[-1] == REJECTED or isinstance(outputs[-1], dict)


def _numbers(output: Any) -> Iterator[tuple[str, float]]:
    if isinstance(output, dict):
        for k, v in output.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                yield k, v


def check_outputs_only_finite_numbers(component: StreamComponent) -> None:
    rows = list(sample_rows(400, seed=3, extremes=True))
    outputs = run_prequential(component, rows)
    for i, output in enumerate(outputs):
        for name, value in _numbers(output):
            if name in rows[i] and rows[i][name] == value:
                continue  # passed through untouched: not this component's number
            try:
                finite = math.isfinite(value)
            except OverflowError:
                finite = False
            assert finite, f"row {i}: {name} = {value!r}"


def check_pickle_round_trip(component: StreamComponent) -> None:
    rows = list(sample_rows(600, seed=4))
    run_prequential(component, rows[:300])
    restored = pickle.loads(pickle.dumps(component))
    assert run_prequential(restored, rows[300:]) == run_prequential(component, rows[300:])


def check_same_stream_same_outputs(component: StreamComponent) -> None:
    rows = list(sample_rows(400, seed=5))
    first = run_prequential(component.clone(), rows)
    second = run_prequential(component.clone(), rows)
    assert first == second
    assert any(o != REJECTED for o in first), "every row was rejected"


def check_state_is_bounded(component: StreamComponent, n: int = 100_000) -> None:
    """Learns from ``n`` rows whose keys, ids, merchants and words are all distinct; the
    pickled state after ``n`` rows must not outgrow the state after ``n // 5`` rows."""
    checkpoint = n // 5
    size_at_checkpoint = 0
    for i, row in enumerate(sample_rows(n, seed=6, distinct_keys=True)):
        component.learn_one(row)
        if i + 1 == checkpoint:
            size_at_checkpoint = len(pickle.dumps(component))
    size = len(pickle.dumps(component))
    # Slack for counters whose digits grow, not for anything per key.
    assert size <= size_at_checkpoint * 1.1 + 1024, (
        f"pickled state grew from {size_at_checkpoint} bytes after {checkpoint} rows to {size} after {n}"
    )


CHECKS: tuple[Callable[[StreamComponent], None], ...] = (
    check_does_not_mutate_input,
    check_tolerates_features_that_appear_or_vanish,
    check_outputs_only_finite_numbers,
    check_pickle_round_trip,
    check_same_stream_same_outputs,
    check_state_is_bounded,
)


def yield_checks() -> Iterator[tuple[str, StreamComponent, Callable[[StreamComponent], None]]]:
    """``(id, fresh component, check)`` for every component and every check.

    Examples
    --------
    >>> ids = [test_id for test_id, _, _ in yield_checks()]
    >>> "WindowedAggregates:check_pickle_round_trip" in ids, len(ids) == len(set(ids))
    (True, True)
    """
    for check in CHECKS:
        for label, component in yield_components():
            yield f"{label}:{check.__name__}", component, check
