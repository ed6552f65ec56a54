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
        before = getattr(self.detector, "estimation", None)
        self.detector.update(error)
        if not self.detector.drift_detected:
            return False
        after = getattr(self.detector, "estimation", None)
        if before is not None and after is not None and after <= before:
            self.n_improvements += 1
            return False
        self.n_detections += 1
        return True

    def reset(self) -> None:
        self.detector = build_detector(self.spec)

    @property
    def name(self) -> str:
        return type(self.detector).__name__
