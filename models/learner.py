"""The learner contract: what a model of a pipeline must provide, besides River's verbs.

A River estimator predicts and learns one event at a time (``predict_one``,
``predict_proba_one``, ``learn_one``) and the model set drives it exactly as
``river.evaluate.progressive_val_score`` does. A :class:`BatchLearner` is the other
kind: it predicts a whole block of events in one vectorised pass and learns in
mini-batches (the torch MLP, sequence models). The model set relies on each attribute
below, so a new batch learner that provides them drops in without touching it.

The promise that makes blocked prediction exact is :attr:`BatchLearner.rows_until_step`:
the learner's weights change only when an optimizer step runs, so every event of a
block of at most ``rows_until_step`` rows, predicted together *before* the block's
labelled rows are learned, gets the prediction it would have had alone. Hence a
stream's predictions do not depend on how it was polled.
:func:`streamwise.models.checks.check_blocked_predictions_equal_one_at_a_time`
holds every batch learner to it.

Batch learners do not import River (torch modules are checked alone on GPU machines),
so they say what they are with :attr:`BatchLearner.task` instead of River's base classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

__all__ = ["BatchLearner", "BatchClassifier", "is_batch_learner"]


@runtime_checkable
class BatchLearner(Protocol):
    """A learner that predicts blocks of events at once and learns in mini-batches.

    Rows are feature dicts, as River's; ``t`` is the *stream* time in seconds (the
    record timestamp) of the newest row, never the wall clock, so that replaying a
    stream repeats every optimizer step. Pickling must capture the whole learning
    state (weights, optimizer, running statistics, buffered rows) so that a restored
    learner predicts and learns exactly as the original would have.

    Examples
    --------
    >>> from streamwise.models.torch_learner import TorchMiniBatchRegressor
    >>> isinstance(TorchMiniBatchRegressor(features=["x"], device="cpu"), BatchLearner)
    True
    >>> from river import linear_model
    >>> isinstance(linear_model.LinearRegression(), BatchLearner)
    False
    """

    #: Always True: the model set predicts this learner's events in blocks.
    predicts_in_batches: bool
    #: ``"classification"`` or ``"regression"``.
    task: str
    #: Rows per optimizer step.
    batch_size: int
    #: Optimizer steps taken so far (the model set times and counts them per batch).
    n_steps: int
    #: Labelled rows learned so far (buffered rows not included).
    n_learned: int

    @property
    def rows_until_step(self) -> int:
        """Labelled rows still to come before the next optimizer step (at least 1)."""
        ...

    @property
    def device_name(self) -> str:
        """Where it computes, as torch names it (``cpu``, ``cuda:0``)."""
        ...

    def declare_features(self, names: Sequence[str]) -> None:
        """Fixes the input features (the schema's numeric fields) unless already fixed."""
        ...

    def predict_many(self, X: Sequence[dict[str, Any]]) -> list[Any]:
        """One prediction per row, with the current weights; learns nothing."""
        ...

    def predict_one(self, x: dict[str, Any]) -> Any: ...

    def learn_many(self, X: Sequence[dict[str, Any]], ys: Sequence[Any], t: float | None = None) -> None:
        """Buffers labelled rows and steps on every full mini-batch."""
        ...

    def learn_one(self, x: dict[str, Any], y: Any, t: float | None = None) -> None: ...

    def flush(self, t: float | None = None) -> bool:
        """Steps on a partial mini-batch whose oldest row has waited long enough by stream
        time ``t`` (at once when ``t`` is None); returns whether it stepped."""
        ...

    def explain_many(self, X: Sequence[dict[str, Any]], k: int = 3) -> list[dict[str, float]]:
        """The top ``k`` feature contributions of each row's score."""
        ...

    def clone(self) -> Any:
        """A fresh, untrained learner with the same parameters (and seed)."""
        ...


@runtime_checkable
class BatchClassifier(BatchLearner, Protocol):
    """A :class:`BatchLearner` whose ``task`` is ``"classification"``.

    Examples
    --------
    >>> from streamwise.models.torch_learner import TorchMiniBatchClassifier, TorchMiniBatchRegressor
    >>> isinstance(TorchMiniBatchClassifier(features=["x"], device="cpu"), BatchClassifier)
    True
    >>> isinstance(TorchMiniBatchRegressor(features=["x"], device="cpu"), BatchClassifier)
    False
    """

    #: The labels it predicts, in the order of its outputs.
    classes: list[Any]

    def predict_proba_many(self, X: Sequence[dict[str, Any]]) -> list[dict[Any, float]]:
        """One ``{class: probability}`` per row, with the current weights."""
        ...

    def predict_proba_one(self, x: dict[str, Any]) -> dict[Any, float]: ...


def is_batch_learner(estimator: Any) -> bool:
    """Whether the model set should predict ``estimator`` in blocks.

    The flag, not the Protocol, decides: ``isinstance`` against a Protocol inspects
    every member, and this is asked for every model on every batch.

    Examples
    --------
    >>> from river import linear_model
    >>> is_batch_learner(linear_model.LogisticRegression())
    False
    """
    return bool(getattr(estimator, "predicts_in_batches", False))
