"""Reads a whole topic, or the part of it inside a time range, outside any consumer group.

For tools that look back at what a pipeline wrote (``streamwise report``): no group, no
committed offsets, ``read_committed`` so that only what the service committed is seen
(aborted transactions and open ones are skipped), and every partition read from its
start (or from the first offset at or after ``since_ms``) up to its end as it was when
the read began.
"""

from __future__ import annotations

import time

from kafka import KafkaConsumer
from kafka.structs import TopicPartition as KTopicPartition
from streamwise.core.errors import ServiceUnavailableError
from streamwise.core.settings import KafkaSettings

from . import kafka_config
from .kafka_python import _connect
from .records import ConsumedRecord


def read_topic(
    settings: KafkaSettings,
    topic: str,
    since_ms: int | None = None,
    until_ms: int | None = None,
    timeout_s: float = 120.0,
) -> list[ConsumedRecord]:
    """Every committed record of ``topic`` with ``since_ms <= timestamp < until_ms`` (either
    bound may be None), in offset order within each partition, partitions in turn. A topic
    that does not exist reads as empty: a pipeline that never dead-lettered anything has
    no dead-letter topic."""
    config = kafka_config.kafka_python_reader(settings)
    consumer = _connect(settings, lambda: KafkaConsumer(**config))
    try:
        # Listing topics, not asking for one's partitions: that request could create it.
        if topic not in consumer.topics():
            return []
        tps = [KTopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        # read_committed: the last stable offsets, so an open transaction is not waited for.
        end = consumer.end_offsets(tps)
        start = {tp: 0 for tp in tps}
        if since_ms is not None:
            found = consumer.offsets_for_times({tp: since_ms for tp in tps})
            start = {tp: (found[tp].offset if found.get(tp) is not None else end[tp]) for tp in tps}
        for tp in tps:
            consumer.seek(tp, start[tp])
        out: dict[int, list[ConsumedRecord]] = {tp.partition: [] for tp in tps}
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < end[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise ServiceUnavailableError(f"Kafka: could not read {topic} to its end within {timeout_s:.0f} s")
            for tp, records in consumer.poll(timeout_ms=500).items():
                for r in records:
                    if r.offset >= end[tp] or (until_ms is not None and r.timestamp >= until_ms):
                        continue
                    out[tp.partition].append(ConsumedRecord(
                        topic=tp.topic, partition=tp.partition, offset=r.offset, key=r.key, value=r.value,
                        timestamp_ms=r.timestamp, headers=tuple((k, v) for k, v in (r.headers or ())),
                    ))
        return [r for p in sorted(out) for r in out[p]]
    finally:
        consumer.close()
