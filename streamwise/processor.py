"""The per-batch core of a pipeline: records in, prediction and dead-letter records out.

No I/O happens here; the runner feeds it what the source polled and hands what it
returns to the sink. Keeping it pure lets tests drive it with plain lists.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from streamwise.connectors.records import ConsumedRecord, OutgoingRecord
from streamwise.models.catalog import build_estimator
from streamwise.models.prequential import Prediction, PrequentialModel
from streamwise.pipeline_config import PipelineConfig
from streamwise.sensors import Sensor
from streamwise.stream.pipeline import build_event_pipeline
from streamwise.stream.schema import DecodedEvent, EventDecoder, RejectedEvent

# Header names follow Kafka Connect's dead-letter convention under our own prefix.
H_STAGE = "streamwise.error.stage"
H_CLASS = "streamwise.error.class"
H_MESSAGE = "streamwise.error.message"
H_TOPIC = "streamwise.source.topic"
H_PARTITION = "streamwise.source.partition"
H_OFFSET = "streamwise.source.offset"
_MAX_HEADER_MESSAGE = 1000


def dead_letter(
    record: ConsumedRecord, topic: str, stage: str, error_class: str, message: str
) -> OutgoingRecord:
    """The original bytes, untouched, with headers saying where they came from and why."""
    return OutgoingRecord(
        topic=topic,
        key=record.key,
        value=record.value if record.value is not None else b"",
        headers=[
            (H_STAGE, stage.encode()),
            (H_CLASS, error_class.encode()),
            (H_MESSAGE, message[:_MAX_HEADER_MESSAGE].encode("utf-8", "replace")),
            (H_TOPIC, record.topic.encode()),
            (H_PARTITION, str(record.partition).encode()),
            (H_OFFSET, str(record.offset).encode()),
        ],
    )


class PipelineProcessor:
    def __init__(self, config: PipelineConfig, sensor: Sensor | None = None) -> None:
        self.config = config
        self.sensor = sensor or Sensor()
        self.decoder = EventDecoder(config.event_schema)
        # Cleaners and feature extractors (stream/pipeline.py); they learn from every valid
        # event, labelled or not, and without any configured they return the decoded event as is.
        self.events = build_event_pipeline(config.event_schema, config.cleaners, config.features)
        self.models = [
            PrequentialModel(spec.name, build_estimator(spec.steps), config.metric)
            for spec in config.models
        ]
        # The first model answers for the pipeline until champion selection lands.
        self.champion = self.models[0].name
        self.epoch = 0

    # Rebuilt from the config, not learned: left out of snapshots.
    _NOT_STATE = frozenset({"config", "sensor", "decoder"})

    def snapshot_state(self) -> dict[str, Any]:
        """Everything this processor has learned, as a picklable dict. New learning
        attributes are included automatically; only what the config rebuilds is left out."""
        return {k: v for k, v in self.__dict__.items() if k not in self._NOT_STATE}

    def restore_state(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def process(self, records: Sequence[ConsumedRecord]) -> list[OutgoingRecord]:
        out: list[OutgoingRecord] = []
        sensor = self.sensor
        dlq = self.config.dead_letter_topic
        for record in records:
            sensor.on_event_in(record.topic, record.partition)
            try:
                event = self.events.decode(record.value)
            except RejectedEvent as e:
                out.append(dead_letter(record, dlq, e.stage, "RejectedEvent", e.reason))
                sensor.on_dead_letter(record.topic, e.stage)
                continue
            sensor.on_event_valid(record.topic, record.partition)
            try:
                predictions = {m.name: m.predict_one(event.x) for m in self.models}
            except Exception as e:  # a model bug must not stop the stream
                out.append(dead_letter(record, dlq, "predict", type(e).__name__, str(e)))
                sensor.on_dead_letter(record.topic, "predict")
                continue
            out.append(self._prediction_record(record, event, predictions))
            if event.y is not None:
                for m in self.models:
                    m.learn_one(event.x, event.y, predictions[m.name])
                    sensor.on_learn(m.name)
        for action, n in self.events.drain_activity().items():
            sensor.on_clean(action, n)
        return out

    def _prediction_record(
        self, record: ConsumedRecord, event: DecodedEvent, predictions: dict[str, Prediction]
    ) -> OutgoingRecord:
        now_ms = time.time() * 1000.0
        latency_s = max(0.0, (now_ms - record.timestamp_ms) / 1000.0)
        champion = predictions[self.champion]
        body: dict[str, Any] = {
            "id": event.id,
            "key": event.key if event.key is not None else _text(record.key),
            **champion.to_json(),
            "champion": self.champion,
            "models": {name: p.to_json() for name, p in predictions.items()},
            "epoch": self.epoch,
            "source": {"topic": record.topic, "partition": record.partition, "offset": record.offset},
            "event_timestamp_ms": record.timestamp_ms,
            "latency_s": round(latency_s, 6),
        }
        if event.event_time is not None:
            body["event_time"] = event.event_time
        self.sensor.on_prediction(latency_s)
        return OutgoingRecord(
            topic=self.config.output.topic,
            key=record.key,
            value=json.dumps(body, separators=(",", ":"), default=str).encode(),
        )


def _text(key: bytes | None) -> str | None:
    return None if key is None else key.decode("utf-8", "replace")
