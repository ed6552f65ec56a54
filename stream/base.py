"""What every cleaner and feature extractor shares: the River verbs, durations, event time.

A component is a River transformer: ``transform_one(x)`` returns a new dict and never
touches ``x``; ``learn_one(x)`` updates its running state. Because they inherit from
:class:`river.base.Transformer`, they compose with River's ``|`` and drop into River
pipelines unchanged. A component that refuses an event (a duplicate, a too-late event)
raises :class:`~streamwise.stream.schema.RejectedEvent` with its ``stage``; the runner
dead-letters it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, ClassVar

from river import base
from streamwise.core.stages import DeadLetterStage
from streamwise.stream.schema import (
    _UNIT_SECONDS,
    RejectedEvent,
    is_finite_number,
    parse_duration,
    to_epoch_seconds,
)

__all__ = [
    "StreamComponent",
    "RejectedEvent",
    "parse_duration",
    "format_duration",
    "to_epoch_seconds",
    "is_finite_number",
    "finite_or",
]

class StreamComponent(base.Transformer):
    """Base of every cleaner and feature extractor.

    ``stage`` names the dead-letter stage of the events the component rejects.
    Subclasses keep each constructor argument in an attribute of the same name, which
    is what River's ``clone`` and ``repr`` read.
    """

    stage: ClassVar[str] = DeadLetterStage.FEATURES
    # The cleaner action counted when this component refuses an event, if any.
    refused_action: ClassVar[str | None] = None

    def learn_one(self, x: dict[str, Any]) -> None:
        """Stateless components learn nothing."""

    def activity(self, before: dict[str, Any], after: dict[str, Any]) -> Iterator[tuple[str, int]]:
        """What this component did to an event it let through, as ``(action, count)``
        pairs for the sensors (a :class:`~streamwise.core.stages.CleanerAction`);
        ``before`` is its input and ``after`` its output. Most do nothing to report."""
        return iter(())

    def transform_one(self, x: dict[str, Any]) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError


def format_duration(seconds: float) -> str:
    """The shortest exact spelling of a duration, used in feature names.

    Examples
    --------
    >>> format_duration(3600), format_duration(86400), format_duration(90), format_duration(0.25)
    ('1h', '1d', '90s', '250ms')
    """
    for unit in ("w", "d", "h", "m", "s", "ms"):
        n = seconds / _UNIT_SECONDS[unit]
        if n >= 1 and abs(n - round(n)) < 1e-9:
            return f"{round(n)}{unit}"
    return f"{seconds:g}s"


def finite_or(value: float, default: float) -> float:
    """``value`` when it is a finite float, else ``default``; guards against float64 overflow."""
    return value if math.isfinite(value) else default
