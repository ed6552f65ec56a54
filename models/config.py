"""The learning blocks of a pipeline YAML: delayed labels, evaluation, drift, champion, explanations.

They live beside the code they configure; :mod:`streamwise.pipeline_config` puts them
into the pipeline file under the keys ``labels``, ``evaluation``, ``drift``,
``champion`` and ``explain``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from streamwise.models.drift import build_detector


class LabelsConfig(BaseModel):
    """How records on ``input.labels_topic`` are read and joined to predictions."""

    model_config = ConfigDict(extra="forbid")

    # Defaults to the schema's id field.
    id_field: str | None = None
    label_field: str = "label"
    # A label joins its event when its record is stamped at most ttl_s after the event's
    # and at most early_hold_s before it, whichever topic was read first (models/labels.py).
    # A prediction waits until the labels read have passed its time + ttl_s.
    ttl_s: float = Field(86_400.0, gt=0)
    max_pending: int = Field(100_000, ge=1)
    # A label read before its event waits until the events read have passed its time + early_hold_s.
    early_hold_s: float = Field(60.0, ge=0)
    max_early: int = Field(10_000, ge=0)


class EvaluationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Labels in the rolling window of every model's metrics.
    window: int = Field(1000, ge=1)
    # Metrics scored per model besides the pipeline's own ``metric``, each cumulatively
    # and over the rolling window: river.metrics class names, or "standard" for the
    # task's usual set (binary: Accuracy, F1, ROCAUC, LogLoss; multi-class: Accuracy,
    # MacroF1, CrossEntropy; regression: MAE, RMSE, R2). Off by default because they
    # are not free: the binary set costs about 50 µs per event per model (measured),
    # four times a LogisticRegression's predict and learn.
    metrics: list[str] | Literal["standard"] = Field(default_factory=list)

    @field_validator("metrics")
    @classmethod
    def _known(cls, names: list[str] | str) -> list[str] | str:
        from streamwise.models.prequential import make_metric

        for name in [] if isinstance(names, str) else names:
            make_metric(name)  # refuses an unknown one, a table, one that needs parameters
        return names


class DriftConfig(BaseModel):
    """A ``river.drift`` detector on each model's error stream, and what a detection does."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    detector: str | dict[str, Any] = "ADWIN"
    # none: alert only; reset: replace the model with a fresh one; challenger: train a
    # fresh one beside it, which replaces it if it does better over a full window.
    policy: Literal["none", "reset", "challenger"] = "none"
    # A challenger that has not beaten its model after this many labels is dropped.
    challenger_trial: int = Field(5000, ge=1)

    @field_validator("detector")
    @classmethod
    def _buildable(cls, detector: str | dict[str, Any]) -> str | dict[str, Any]:
        build_detector(detector)
        return detector


class ChampionConfig(BaseModel):
    """Which model's prediction is the record's ``prediction``."""

    model_config = ConfigDict(extra="forbid")

    # A river.metrics class scored over the rolling window; defaults to the pipeline's metric.
    metric: str | None = None
    # Labels in the champion's rolling window; defaults to evaluation.window.
    window: int | None = Field(None, ge=1)
    # Hysteresis: lead by more than ``margin`` on ``patience`` labels in a row, each with
    # at least ``min_samples`` labels in the window.
    margin: float = Field(0.01, ge=0)
    patience: int = Field(100, ge=1)
    min_samples: int = Field(200, ge=1)


class ExplainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Top feature contributions in each record; 0 turns explanations off.
    top_k: int = Field(0, ge=0)
