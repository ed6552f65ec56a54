"""Fixed vocabularies that travel between layers and end up as metric labels.

They are :class:`enum.StrEnum`, so a member is its own string: it can be written into a
Kafka header or a Prometheus label as is, and compared with a plain string.
"""

from __future__ import annotations

from enum import StrEnum


class DeadLetterStage(StrEnum):
    """Where a record was refused: the ``streamwise.error.stage`` header of its dead letter.

    Examples
    --------
    >>> DeadLetterStage("validate") is DeadLetterStage.VALIDATE
    True
    >>> [str(s) for s in DeadLetterStage][:3]
    ['decode', 'validate', 'clean']
    """

    # Not UTF-8, not JSON, too large, a tombstone (stream/schema.py).
    DECODE = "decode"
    # JSON, but not an event of the pipeline's schema (stream/schema.py).
    VALIDATE = "validate"
    # Refused by a cleaner: duplicate id, too late (stream/cleaners.py), or a time from
    # the future (the schema's max_future, stream/schema.py).
    CLEAN = "clean"
    # A feature extractor failed or produced a non-finite value (stream/pipeline.py).
    FEATURES = "features"
    # A model raised while predicting or learning from the event (streamwise/processor.py).
    PREDICT = "predict"
    # A record on the labels topic that is not a label for this pipeline (models/labels.py),
    # or a label outside the schema's declared classes (stream/schema.py).
    LABEL = "label"
    # Anything else that raised while its batch was processed, found by the last-resort
    # guard that retries the batch in parts (streamwise/processor.py).
    PROCESS = "process"


class CleanerAction(StrEnum):
    """What a cleaner did to an event it let through (or refused, for ``late``)."""

    IMPUTED = "imputed"
    CLIPPED = "clipped"
    DEDUPLICATED = "deduplicated"
    LATE = "late"


class ModelFault(StrEnum):
    """How one model failed on one event; the ``kind`` of :meth:`Sensor.on_model_fault`.

    A fault stays with its model: the other models of the pipeline predict and learn
    from the event as usual (models/model.py).
    """

    # predict_one / predict_many raised: the record carries {"error": ...} for the model,
    # which does not learn from that event.
    PREDICT = "predict"
    # learn_one / learn_many raised.
    LEARN = "learn"
    # The prediction was NaN or infinite: flagged in the record, kept out of the metrics.
    NOT_FINITE = "not_finite"
    # Its answers stayed NaN or infinite: put back to a copy of itself that answered
    # finite numbers, or rebuilt afresh (models/recovery.py).
    RESTORED = "restored"
