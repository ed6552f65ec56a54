"""The learner contract suite (streamwise.models.checks) over the torch learners and
sample River pipelines."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from streamwise.models import learner as learner_module
from streamwise.models import torch_learner
from streamwise.models.checks import LearnerCase, yield_checks, yield_learners
from streamwise.models.learner import BatchLearner

CASES = list(yield_checks())


@pytest.mark.parametrize(("case", "check"), [(c, k) for _, c, k in CASES], ids=[i for i, _, _ in CASES])
def test_contract(case: LearnerCase, check) -> None:
    check(case)


def test_every_shipped_batch_learner_is_checked_and_keeps_the_protocol() -> None:
    shipped = {
        cls
        for _, cls in inspect.getmembers(torch_learner, inspect.isclass)
        if cls.__module__ == torch_learner.__name__ and not cls.__name__.startswith("_")
    }
    checked = {type(case.build()) for case in yield_learners()}
    assert shipped - checked == set()
    for cls in shipped:
        assert isinstance(next(c.build() for c in yield_learners() if type(c.build()) is cls), BatchLearner)
    assert learner_module.is_batch_learner(next(iter(yield_learners())).build())


class _PollDependent(torch_learner.TorchMiniBatchClassifier):
    """Claims 64 rows before its next step while it steps every ``batch_size``: a block
    of predictions would then use weights a step behind for most of its rows."""

    @property
    def rows_until_step(self) -> int:
        return 64


class _Mutating(torch_learner.TorchMiniBatchClassifier):
    def predict_proba_many(self, X: Any) -> list[dict[Any, float]]:
        for x in X:
            x.pop("a", None)
        return super().predict_proba_many(X)


class _Forgetful(torch_learner.TorchMiniBatchClassifier):
    """Drops its buffered rows on pickling."""

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["buffer_x"], state["buffer_y"], state["buffer_t0"] = [], [], None
        return state


def test_the_checks_catch_broken_learners(monkeypatch: pytest.MonkeyPatch) -> None:
    from streamwise.models import catalog, checks

    for cls in (_PollDependent, _Mutating, _Forgetful):
        monkeypatch.setitem(catalog._STREAMWISE_LEARNERS, f"streamwise.{cls.__name__}", (__name__, cls.__name__))
    params = {"hidden_layers": [8], "hash_width": 4, "batch_size": 8, "lr": 0.05, "device": "cpu", "seed": 3}

    def case(name: str) -> LearnerCase:
        return LearnerCase(name, [{f"streamwise.{name}": params}], "classification")

    with pytest.raises(AssertionError, match="in a block"):
        checks.check_blocked_predictions_equal_one_at_a_time(case("_PollDependent"))
    with pytest.raises(AssertionError, match="was changed"):
        checks.check_does_not_mutate_input(case("_Mutating"))
    with pytest.raises(AssertionError):
        checks.check_pickle_round_trip(case("_Forgetful"))
