"""The contract suite (streamwise.stream.checks) over every cleaner and extractor shipped."""

from __future__ import annotations

import inspect

import pytest

from streamwise.stream import cleaners, features
from streamwise.stream.base import StreamComponent
from streamwise.stream.checks import yield_checks, yield_components

CASES = list(yield_checks())


@pytest.mark.parametrize(("component", "check"), [(c, k) for _, c, k in CASES], ids=[i for i, _, _ in CASES])
def test_contract(component: StreamComponent, check) -> None:
    check(component)


def test_every_shipped_component_is_checked() -> None:
    shipped = {
        cls
        for module in (cleaners, features)
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if issubclass(cls, StreamComponent) and not cls.__name__.startswith("_") and cls.__module__ == module.__name__
    }
    checked = {type(component) for _, component in yield_components()}
    assert shipped - checked == set()
    assert len(shipped) == 14


class _Mutating(StreamComponent):
    def transform_one(self, x):
        x["touched"] = 1.0
        return x


class _Forgetful(StreamComponent):
    """Loses its state on pickling, as a component holding a lambda-free cache might."""

    def __init__(self) -> None:
        self.n = 0

    def transform_one(self, x):
        return {**x, "n_seen": float(self.n)}

    def learn_one(self, x):
        self.n += 1

    def __getstate__(self):
        return {"n": 0}


def test_the_checks_catch_broken_components() -> None:
    from streamwise.stream import checks
    from streamwise.stream.cleaners import Deduplicator

    with pytest.raises(AssertionError, match="was changed"):
        checks.check_does_not_mutate_input(_Mutating())
    with pytest.raises(AssertionError):
        checks.check_pickle_round_trip(_Forgetful())
    with pytest.raises(AssertionError, match="grew"):
        checks.check_state_is_bounded(Deduplicator("id", window=10**9), n=5000)
