"""Concept-drift detection on a model's error stream, with ``river.drift`` detectors.

The error of one labelled prediction is ``0``/``1`` (wrong class) for a classifier and
the absolute error for a regressor. A detection is reported to the caller, which writes
the alert and applies the pipeline's policy (see :mod:`streamwise.models.model_set`).
"""

from __future__ import annotations

import importlib
from typing import Any

from streamwise.models.prequential import Prediction


def build_detector(spec: str | dict[str, Any]) -> Any:
    """A detector from ``"ADWIN"`` or ``{"ADWIN": {"delta": 0.001}}`` (names in ``river.drift``;
    ``"binary.DDM"`` and the like for ``river.drift.binary``).

    Examples
    --------
    >>> build_detector({"ADWIN": {"delta": 0.01}}).delta
    0.01
    >>> build_detector("Nope")
    Traceback (most recent call last):
    ...
    ValueError: unknown river.drift detector 'Nope'
    """
    if isinstance(spec, dict):
        if len(spec) != 1:
            raise ValueError("a drift detector is a name or a one-key mapping to its parameters")
        ((name, params),) = spec.items()
    else:
        name, params = spec, {}
    module_name, _, attr = f"river.drift.{name}".rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), attr, None)
    except ImportError:
        cls = None
    if not isinstance(cls, type) or not hasattr(cls, "drift_detected"):
        raise ValueError(f"unknown river.drift detector {name!r}")
    try:
        return cls(**(params or {}))
    except TypeError as e:
        raise ValueError(f"drift detector {name}: {e}") from None


def prediction_error(y: Any, prediction: Prediction, is_classifier: bool) -> float | None:
    """The error fed to the detector, or None when the model made no prediction.

    Examples
    --------
    >>> prediction_error(True, Prediction(False), is_classifier=True)
    1.0
    >>> prediction_error(3.0, Prediction(2.5), is_classifier=False)
    0.5
    """
    if prediction.value is None:
        return None
    if is_classifier:
        return 0.0 if prediction.value == y else 1.0
    return abs(float(y) - float(prediction.value))


class DriftMonitor:
    """One model's detector and how many drifts it has seen.

    Examples
    --------
    >>> monitor = DriftMonitor("ADWIN")
    >>> hits = [i for i in range(2000) if monitor.update(0.0 if i < 1000 else 1.0)]
    >>> 1000 < hits[0] < 1100
    True
    """

    def __init__(self, spec: str | dict[str, Any]) -> None:
        self.spec = spec
        self.detector = build_detector(spec)
        self.n_updates = 0
        self.n_detections = 0
        self.n_improvements = 0

    def update(self, error: float) -> bool:
        """Feeds one error; True when the detector flags a drift that made errors worse.

        ADWIN flags any change of the mean, including a model getting better as it
        learns. Where the detector exposes its ``estimation`` (ADWIN does), a change to a
        lower error is counted as an improvement and not reported: resetting a model
        because it improved would throw its learning away.
        """
        self.n_updates += 1
        before = self._estimation()
        self.detector.update(error)
        if not self.detector.drift_detected:
            return False
        after = self._estimation()
        if before is not None and after is not None and after <= before:
            self.n_improvements += 1
            return False
        self.n_detections += 1
        return True

    def _estimation(self) -> float | None:
        """The detector's current mean error, or None when it does not say."""
        # River's ADWIN computes its estimation through three Python properties; its Rust
        # window answers the same two numbers directly, at a fifth of the cost per label.
        helper = getattr(self.detector, "_helper", None)
        if helper is not None and hasattr(helper, "get_width") and hasattr(helper, "get_total"):
            width = helper.get_width()
            return helper.get_total() / width if width else 0.0
        return getattr(self.detector, "estimation", None)

    def reset(self) -> None:
        self.detector = build_detector(self.spec)

    @property
    def name(self) -> str:
        return type(self.detector).__name__


def recovery_events(
    correct: list[bool],
    change: int,
    *,
    transition: int = 0,
    window: int = 500,
    baseline: int = 1000,
    tolerance: float = 0.02,
) -> tuple[float, int | None]:
    """How long accuracy takes to come back after a concept drift, from the record of
    which predictions were right.

    The pre-drift level is the accuracy over the ``baseline`` events before the
    transition starts (``change - transition // 2``). Recovery is the number of events
    from ``change`` to the end of the first ``window`` of events, all after the
    transition, whose accuracy is within ``tolerance`` of that level; None if none is.
    Windows straddling the change are not counted, so ``window + (transition + 1) // 2``
    is the quickest recovery there can be: it means "as good as before at once".

    Examples
    --------
    >>> correct = [True] * 1000 + [False] * 300 + [True] * 1000
    >>> recovery_events(correct, change=1000, window=100, baseline=500, tolerance=0.0)
    (1.0, 400)
    >>> recovery_events(correct, change=1000, window=100, baseline=500)  # 98 right of 100 will do
    (1.0, 398)
    >>> recovery_events([True] * 1000 + [False] * 500, change=1000, window=100, baseline=500)
    (1.0, None)
    """
    start = change - transition // 2
    if start < baseline:
        raise ValueError(f"need {baseline} events before the transition starts at {start}")
    pre = sum(correct[start - baseline : start]) / baseline
    in_window = 0
    first = change + (transition + 1) // 2
    for end in range(first, len(correct)):
        in_window += correct[end]
        if end - window >= first:
            in_window -= correct[end - window]
        if end - first + 1 >= window and in_window / window >= pre - tolerance:
            return pre, end + 1 - change
    return pre, None
