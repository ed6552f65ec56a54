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

    # The sum and the count of the errors in ADWIN's window, kept here as ADWIN keeps them
    # (see update); None for another detector, or for a monitor restored from a snapshot
    # written before they were kept (read from ADWIN at its first update then).
    _total: float | None = None
    _width = 0

    def __init__(self, spec: str | dict[str, Any]) -> None:
        self.spec = spec
        self.detector = build_detector(spec)
        self.n_updates = 0
        self.n_detections = 0
        self.n_improvements = 0
        self._total = 0.0 if _is_adwin(self.detector) else None
        self._width = 0

    def update(self, error: float) -> bool:
        """Feeds one error; True when the detector flags a drift that made errors worse.

        ADWIN flags any change of the mean, including a model getting better as it
        learns. Where the detector exposes its ``estimation`` (ADWIN does), a change to a
        lower error is counted as an improvement and not reported: resetting a model
        because it improved would throw its learning away.
        """
        self.n_updates += 1
        detector = self.detector
        total = self._total
        if total is not None:
            width = self._width
        elif _is_adwin(detector):
            total, width = _window(detector)
        else:
            before = getattr(detector, "estimation", None)
            detector.update(error)
            return detector.drift_detected and self._judge(before, getattr(detector, "estimation", None))
        # ADWIN's mean error, without asking it: its window only grows between two drifts
        # (it cuts the window when it detects one, and starts a new one at the update
        # after), and it sums the errors in arrival order as done here, so the two are
        # the same floats (tests/models/test_drift.py). Asking its Rust window before
        # every update made each label 0.40 µs instead of 0.34 (measured).
        before = total / width if width else 0.0
        if detector.drift_detected:
            total, width = 0.0, 0
        detector.update(error)
        if not detector.drift_detected:
            self._total, self._width = total + error, width + 1
            return False
        # What is left of the window after the cut: read from ADWIN itself.
        total, width = self._total, self._width = _window(detector)
        return self._judge(before, total / width if width else 0.0)

    def _judge(self, before: float | None, after: float | None) -> bool:
        """A detected drift: True when it made errors worse (counted as a detection)."""
        if before is not None and after is not None and after <= before:
            self.n_improvements += 1
            return False
        self.n_detections += 1
        return True

    def reset(self) -> None:
        self.detector = build_detector(self.spec)
        self._total = 0.0 if _is_adwin(self.detector) else None
        self._width = 0

    @property
    def name(self) -> str:
        return type(self.detector).__name__


def _is_adwin(detector: Any) -> bool:
    """River's ADWIN, whose window (a Rust object) answers its sum and width directly."""
    helper = getattr(detector, "_helper", None)
    return helper is not None and hasattr(helper, "get_width") and hasattr(helper, "get_total")


def _window(detector: Any) -> tuple[float, int]:
    """ADWIN's sum of errors and number of errors in its window now."""
    helper = detector._helper
    return helper.get_total(), int(helper.get_width())


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
