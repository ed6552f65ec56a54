"""Which group metadata a transaction's offsets may go with (streamwise/checkpoint.py).

kafka-python resets a member's generation to -1 when the coordinator no longer knows it
(a worker paused past its session), and the broker checks no generation for -1: offsets
sent with it would commit a zombie's work (tests/integration/test_recovery.py, zombie
test, which emitted 689 ids twice before). confluent-kafka's metadata is opaque.
"""

from __future__ import annotations

from kafka.structs import ConsumerGroupMetadata, MemberState
from streamwise.checkpoint import _joined


def test_a_reset_kafka_python_member_is_not_joined() -> None:
    reset = ConsumerGroupMetadata("group", -1, "", None, MemberState.UNJOINED)
    assert not _joined(reset)


def test_a_kafka_python_member_of_a_generation_is_joined() -> None:
    assert _joined(ConsumerGroupMetadata("group", 4, "member-1", None, MemberState.STABLE))
    # Mid-rebalance it still names its generation: the broker decides about that one.
    assert _joined(ConsumerGroupMetadata("group", 3, "member-1", None, MemberState.REBALANCING))


def test_opaque_metadata_counts_as_joined() -> None:
    assert _joined(object())
