"""The seam between streamwise and a Kafka client library.

Everything above ``connectors/`` talks to these protocols only, so a second client
(confluent-kafka) can be added without touching the runner, the stream or the models.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from .records import ConsumedRecord, OutgoingRecord

TopicPartition = tuple[str, int]
# Called with the partitions gained or lost in a rebalance.
RebalanceCallback = Callable[[list[TopicPartition]], None]


class Source(Protocol):
    def subscribe(
        self,
        topics: Sequence[str],
        on_assigned: RebalanceCallback | None = None,
        on_revoked: RebalanceCallback | None = None,
    ) -> None: ...

    def poll(self, timeout_ms: int, max_records: int) -> list[ConsumedRecord]:
        """Records in offset order within each partition; empty on timeout."""

    def commit(self, offsets: dict[TopicPartition, int], markers: Mapping[TopicPartition, str] | None = None) -> None:
        """Commits, for each partition, the offset of the *next* record to read, with an
        optional short marker string stored beside it (Kafka's offset metadata)."""

    def assignment(self) -> list[TopicPartition]: ...

    def lag(self) -> dict[TopicPartition, int]:
        """Records between the consumer's position and the end, per assigned partition."""

    def group_metadata(self) -> object:
        """The consumer's group metadata (generation, member id), opaque to callers; a
        transactional sink sends it with the offsets so a zombie worker is fenced (KIP-447)."""

    def in_group(self, metadata: object = None) -> bool:
        """Whether ``metadata`` (default: the consumer's current group metadata) is that of
        a member in a generation. False once the consumer knows it fell out of its group
        but has not been told which partitions it lost yet (kafka-python: a heartbeat or
        SyncGroup answered "unknown member" resets the generation to -1 at once, on its
        network thread, and the loss reaches the callbacks at a later poll). Its
        partitions may be another member's by then: nothing may commit or be restored,
        and the broker does not check a transaction's offsets sent with such metadata,
        so the worker must: on the very metadata it sends, as the generation can be reset
        between two reads."""

    def rejoin(self, why: str) -> None:
        """Joins the group again as a new member, giving up every partition (through the
        revocation callback): for a consumer the broker no longer counts as a member
        while the consumer itself never learns it (see Checkpoint._failed)."""

    def seek(self, offsets: dict[TopicPartition, int]) -> None:
        """Moves the position of assigned partitions: the next poll starts at these offsets."""

    def committed(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int | None]:
        """The group's committed offsets for these partitions (None where nothing is committed)."""

    def committed_markers(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, str]:
        """The marker committed with each partition's offset ('' where none)."""

    def pause(self, partitions: Sequence[TopicPartition]) -> None:
        """Stops fetching these partitions; polls go on, so the group membership stays alive."""

    def resume(self, partitions: Sequence[TopicPartition]) -> None: ...

    def close(self) -> None: ...


class Sink(Protocol):
    """Writes records. A transactional sink (made with a transactional id) also commits the
    consumer's offsets inside its transaction: outputs and progress land together or not at all."""

    transactional: bool
    # Optional (default False): True when commit_transaction may run on another thread
    # while the worker processes the next batch, because its wait for the broker does
    # not hold the interpreter (see streamwise/checkpoint.py, kafka.commit_in_background).

    def send(self, record: OutgoingRecord) -> None: ...

    def begin_transaction(self) -> None: ...

    def commit_transaction(
        self,
        offsets: dict[TopicPartition, int],
        group_metadata: object,
        markers: Mapping[TopicPartition, str] | None = None,
    ) -> None:
        """Adds the offsets (with their markers) to the open transaction and commits it;
        raises DeliveryError if it fails."""

    def abort_transaction(self) -> None: ...

    def flush(self) -> None:
        """Blocks until every record sent is acknowledged; raises DeliveryError otherwise."""

    def close(self) -> None: ...


class StateStore(Protocol):
    """Where each partition's learning state is snapshotted (:class:`RedisStateStore`;
    :mod:`streamwise.testing` has one in memory). Failures raise
    ``SnapshotUnavailableError`` (retry later) or ``FencedError`` (another owner)."""

    def claim(self, pipeline: str, partition: int) -> int: ...

    def save(
        self,
        pipeline: str,
        partition: int,
        payload: bytes,
        offsets: dict[TopicPartition, int],
        owner: int | None,
        meta: dict[str, Any] | None = None,
    ) -> Any: ...

    def load_latest(self, pipeline: str, partition: int) -> Any:
        """The newest snapshot that passes its check (``.info``, ``.payload``), or None."""

    def partitions(self, pipeline: str) -> list[int]:
        """The partitions of ``pipeline`` that have snapshots (a model's ``init_from`` reads them)."""

    def close(self) -> None: ...


class Admin(Protocol):
    def ensure_topics(self, topics: Sequence[str], partitions: int = 1) -> None: ...

    def partition_counts(self, topics: Sequence[str]) -> dict[str, int]:
        """Partitions per topic, for the topics that exist."""

    def max_message_bytes(self, topic: str) -> int | None:
        """The largest record batch ``topic`` accepts (its effective ``max.message.bytes``);
        None where the cluster does not say (no DescribeConfigs permission, no topic)."""

    def close(self) -> None: ...
