"""The end of a batch, in one place: every delivery guarantee rests on its order.

:class:`Checkpoint` owns what happens between "the processor returned its outputs" and
"the next poll", and every path that ends work on a partition (a poll's batch, a
revocation, a rewind after a failed commit, a fenced snapshot, the graceful stop) goes
through it. The steps, in order:

1. **Produce.** Each batch's predictions, dead letters and alerts are sent as soon as
   they exist; with ``exactly_once`` into a Kafka transaction, begun by the first batch
   after a commit. Several polls may share one transaction (``kafka.commit_interval_ms``).
2. **Offsets.** ``exactly_once``: the consumed offsets, with the consumer's group
   metadata (as it was when the transaction began if a partition was revoked or lost
   since: the broker then refuses work another worker may have redone) and a marker
   naming each partition's snapshot epoch, are added to the transaction.
   ``at_least_once``: the producer is flushed, so every output is acknowledged before
   any offset moves.
3. **Commit.** The transaction commits (outputs and offsets become visible to
   ``read_committed`` readers together, or not at all), or the offsets are committed.
   A transaction may commit in the background (``kafka.commit_in_background``) while
   the next batch is polled and processed; that batch's outputs are sent only once the
   commit has succeeded, and every path above waits for it first (:meth:`_settle`), so
   the steps keep their order. A commit with a snapshot due after it is waited for.
4. **Progress.** Only now is the work counted as committed, per partition.
5. **Snapshot.** Partitions that are due, and whose every processed record is
   committed, are snapshotted. A snapshot is therefore never ahead of Kafka: its
   offsets are at most the committed ones, which the recovery rule needs.

A failure at 1–3 (a broker restart, a timeout, the broker fencing this producer)
aborts the transaction and rewinds every ready partition to its snapshot, as a restart
would; nothing past the last commit is ever committed. A producer left in a fatal state
is closed and built again. None of this stops the worker.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from streamwise.connectors.base import Sink, Source
from streamwise.connectors.records import OutgoingRecord
from streamwise.core.errors import DeliveryError, GroupMetadataRefused, ServiceUnavailableError
from streamwise.core.sensors import Sensor
from streamwise.partitions import PartitionStates

log = logging.getLogger(__name__)

TopicPartition = tuple[str, int]


class Checkpoint:
    def __init__(
        self,
        source: Source,
        make_sink: Callable[[], Sink],
        partitions: PartitionStates,
        sensor: Sensor,
        commit_interval_s: float,
        retry_backoff_max_s: float = 5.0,
        stale_member_after_s: float = 45.0,  # Kafka's default session.timeout.ms; the runner passes ours
        commit_in_background: bool = False,
    ) -> None:
        self.source = source
        self.partitions = partitions
        self.sensor = sensor
        self.commit_interval_s = commit_interval_s
        self.commit_in_background = commit_in_background
        # The transaction committing on its own thread, if one is (see commit()).
        self._in_flight: _CommitInFlight | None = None
        self.retry_backoff_max_s = retry_backoff_max_s
        self._make_sink = make_sink
        self.sink: Sink | None = make_sink()
        # What the open unit of work holds: begun (records sent), offsets to commit.
        self._open = False
        self._opened_at = 0.0
        self._offsets: dict[TopicPartition, int] = {}
        # The consumer's group metadata, and the count of revocations, when the open
        # unit of work began (see commit()).
        self._group_metadata: object = None
        self._revocations = 0
        self._sink_retry_at = 0.0
        self._sink_backoff_s = 0.1
        # The consumer's current metadata, and since when, while the broker keeps
        # refusing it (see _refused); past stale_member_after_s the consumer joins again.
        self.stale_member_after_s = stale_member_after_s
        self._refused_since: tuple[object, float] | None = None

    # ----- step 1 ----------------------------------------------------------------

    def add(self, outputs: list[OutgoingRecord], offsets: dict[TopicPartition, int]) -> bool:
        """Step 1 for one batch: its outputs go out now, its offsets wait for step 2.
        False when the batch could not be sent (then everything uncommitted was rewound)."""
        if not outputs and not offsets:
            return True
        # Nothing is sent while the previous transaction commits; should it fail, this
        # batch's state was rewound with every other, and its outputs are dropped.
        if not self._settle():
            return False
        sink = self._sink()
        if sink is None:
            self._rewind("no producer")
            return False
        try:
            if not self._open:
                if sink.transactional:
                    sink.begin_transaction()
                self._open = True
                self._opened_at = time.monotonic()
                self._group_metadata = self.source.group_metadata()
                self._revocations = self.partitions.revocations
            for record in outputs:
                sink.send(record)
        except DeliveryError as e:
            self._failed(e)
            return False
        self._offsets.update(offsets)
        return True

    def due(self) -> bool:
        """Whether the open unit of work should commit now (its interval has passed)."""
        if not self._open:
            return False
        # A partition past snapshot.every_events commits now, so that its snapshot
        # (which waits for the commit) is not held back by the commit interval.
        return time.monotonic() - self._opened_at >= self.commit_interval_s or self.partitions.snapshot_wanted()

    # ----- steps 2 to 5 ------------------------------------------------------------

    def commit(self, wait: bool = True) -> bool:
        """Steps 2–5. True when everything processed so far is committed. ``wait=False``
        (the worker's loop, after a batch): the transaction may commit on a thread of its
        own (``commit_in_background``), and True then says that it is under way; its
        outcome is taken before anything else happens here (:meth:`_settle`)."""
        if not self._settle():
            return False
        if self.sink is None:
            # A producer closed after a fatal error is built again now rather than at
            # the next batch: its init_transactions aborts the transaction the broken
            # one left open, whose pending offsets otherwise hold every partition's
            # restore back (Kafka answers UNSTABLE_OFFSET_COMMIT) until it times out,
            # and with every partition waiting no batch comes to build it.
            self._sink()
        if self._open:
            sink = self.sink
            assert sink is not None
            offsets, self._offsets = self._offsets, {}
            markers = self.partitions.markers(offsets)
            metadata = None
            background = (
                not wait
                and self.commit_in_background
                and getattr(sink, "commits_in_background", False)
                and not self.partitions.snapshot_pending()
            )
            # Ended now, whatever the outcome: committed, under way, or failed and rewound.
            self._open = False
            try:
                if sink.transactional:
                    # 2 + 3: offsets into the transaction, fenced by group metadata; commit.
                    metadata = self._fencing_metadata()
                    self._require_member(metadata)

                    def finish() -> None:
                        sink.commit_transaction(offsets, metadata, markers)
                else:
                    self._require_member(None)

                    def finish() -> None:
                        # 2: every output acknowledged; 3: only then the offsets move.
                        sink.flush()
                        self.source.commit(offsets, markers)

                if background:
                    self._in_flight = _CommitInFlight(finish, offsets, metadata)
                    return True
                finish()
            except DeliveryError as e:
                self._commit_failed(e, metadata)
                return False
            self._committed(offsets)
        # 5: snapshots of what is due and committed.
        self.partitions.snapshot_due()
        self._commit_markers()
        return True

    def _committed(self, offsets: dict[TopicPartition, int]) -> None:
        """Step 4: the work up to these offsets is committed."""
        self._refused_since = None
        self.partitions.committed(offsets)
        self.sensor.on_commit(len(offsets))

    def _commit_failed(self, error: DeliveryError, metadata: object) -> None:
        """Steps 2-3 failed: abort and rewind; a refusal of the group metadata also
        counts toward joining the group again (see _refused)."""
        self._failed(error)
        if isinstance(error, GroupMetadataRefused):
            self._refused(metadata, str(error))

    def _settle(self) -> bool:
        """Waits for the transaction committing in the background, if any, and takes its
        outcome as commit() takes a commit's: steps 4 and 5, or the abort and rewind of
        every partition. False when it failed. Step 5 snapshots only partitions whose
        every processed record is committed, so none that the batch processed meanwhile."""
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is None:
            return True
        try:
            in_flight.wait()
        except DeliveryError as e:
            self._commit_failed(e, in_flight.metadata)
            return False
        self._committed(in_flight.offsets)
        self.partitions.snapshot_due()
        self._commit_markers()
        return True

    def _refused(self, sent: object, why: str) -> None:
        """The broker refused the offsets for their group metadata. Usually the consumer
        learns of the rebalance at its next polls and the next commit goes with new
        metadata. But kafka-python was seen (after a two-minute Redis pause with a
        member lost meanwhile) to keep metadata the broker answered "unknown member" for
        minutes, neither heartbeating that news nor joining again: every commit refused,
        every partition rewound, for ever. A consumer still sending the same refused
        metadata a session timeout later joins the group again as a new member."""
        current = self.source.group_metadata()
        if sent is None or sent != current:
            self._refused_since = None
            return
        now = time.monotonic()
        if self._refused_since is None or self._refused_since[0] != current:
            self._refused_since = (current, now)
        elif now - self._refused_since[1] >= self.stale_member_after_s:
            try:
                self.source.rejoin(why)
            except ServiceUnavailableError as e:
                # Kept stale: the next refused commit tries again.
                log.warning("could not join the group again (%s); trying again at the next refused commit", e)
                self.sensor.on_fault("kafka")
                return
            self._refused_since = None

    def _require_member(self, metadata: object) -> None:
        """Refuses to commit as a worker out of its group, not yet told what it lost
        (Source.in_group): the work may be another member's, and with that metadata the
        broker would not check it."""
        if not self.source.in_group(metadata):
            raise DeliveryError("this worker fell out of its consumer group; its open work is not committed")

    def _commit_markers(self) -> None:
        """After step 5: the same committed offsets again, carrying the new snapshot
        epochs, so that Kafka knows a snapshot exists (see partitions.MARKER_PREFIX). No
        output is involved: a failure is logged and retried at the next commit."""
        offsets = self.partitions.stale_markers()
        sink = self.sink
        metadata = self.source.group_metadata()
        if not offsets or sink is None or self._open or not self.source.in_group(metadata):
            return
        markers = self.partitions.markers(offsets)
        try:
            if sink.transactional:
                sink.begin_transaction()
                try:
                    sink.commit_transaction(offsets, metadata, markers)
                except DeliveryError:
                    # A producer that cannot abort either (kafka-python raises its own
                    # KafkaError from a fatal state) is rebuilt, as after a batch.
                    self._abort(sink)
                    raise
            else:
                self.source.commit(offsets, markers)
        except DeliveryError as e:
            log.warning("snapshot epochs not recorded in Kafka (%s); retrying at the next commit", e)
            for tp in offsets:
                st = self.partitions.states.get(tp[1])
                if st is not None:
                    st.marked_epoch = 0
            if isinstance(e, GroupMetadataRefused):
                # The same sign of a member the group dropped as a refused batch: an idle
                # worker (its partitions read to the end) commits nothing else, and would
                # otherwise never join again.
                self._refused(metadata, str(e))

    def _fencing_metadata(self) -> object:
        """The group metadata the transaction's offsets are sent with.

        The current one, unless a partition was revoked or lost since the work began:
        then the one from when it began, so that the broker refuses the commit if the
        group has moved on. Otherwise a worker dropped as a zombie, back in the group
        under a new generation, or one whose revoked partition another worker already
        restored from the older committed offset, would commit work that the other
        worker also emits, and move that partition's offset back. Measured in the
        harness (test_checkpoint_faults.py, zombie test): 25-48 of 400 ids twice.

        Not always the old one: kafka-python's group often rebalances once more just
        after a worker starts, without moving a partition, and every first transaction
        would be refused and redone. A partition moves to another member only in a
        generation in which this worker was told of its revocation (or in which this
        worker's metadata is already stale, which the broker refuses anyway), and the
        count is read after the metadata: a revocation reported in between is seen.
        """
        current = self.source.group_metadata()
        return current if self.partitions.revocations == self._revocations else self._group_metadata

    # ----- the paths that end work on a partition ------------------------------------

    def apply_rebalance(self) -> set[int]:
        """Applies what the rebalance callbacks noted. Revoked partitions: the open work
        is committed first, then a final snapshot if it was. New partitions: restored and
        seeked. Returns the partitions whose position was reset: records already polled
        for them are stale."""
        if self._in_flight is not None and (
            self.partitions.rebalance_noted() or self.partitions.waiting or not self.source.in_group()
        ):
            # Partitions change hands, or restore from what Kafka has committed: only
            # once the commit under way has ended, one way or the other.
            self._settle()
        if self.partitions.states and not self.source.in_group():
            self._fell_out()
        assigned, revoked = self.partitions.take_rebalance()
        if revoked:
            committed = self.commit()
            self.partitions.release(revoked, snapshot=committed)
        reset = {p for _, p in assigned}
        if assigned:
            self.partitions.take_on(assigned)
        before = set(self.partitions.states)
        self.partitions.retry_waiting()
        return reset | (set(self.partitions.states) - before)

    def close(self) -> None:
        """The graceful stop: commit what is open, then a final snapshot of every
        partition, then close the producer."""
        if self.commit():
            self.partitions.close()
            self._commit_markers()
        if self.sink is not None:
            self._close_sink()

    # ----- failures ---------------------------------------------------------------

    def _failed(self, error: DeliveryError) -> None:
        log.warning("batch not committed (%s); restoring partitions from their snapshots", error)
        self.sensor.on_fault("commit")
        sink = self.sink
        if sink is not None and sink.transactional:
            self._abort(sink)
        self._rewind(str(error))

    def _abort(self, sink: Sink) -> None:
        """Aborts the open transaction; a producer that cannot is closed, to be built
        again under the same transactional id (which aborts it then)."""
        try:
            sink.abort_transaction()
        except Exception as e:  # noqa: BLE001 - any failure here means: a new producer
            log.warning("transaction not aborted (%s: %s); building a new producer", type(e).__name__, e)
            self.sensor.on_fault("producer")
            self._close_sink()

    def _fell_out(self) -> None:
        """The consumer knows it fell out of its group (Source.in_group): every partition's
        state is given up, the open work aborted, and each partition waits until the
        worker is back in the group, then restores from the store and Kafka as they are
        then. kafka-python's cooperative protocol keeps such partitions as "owned" when it
        joins again and reports no new assignment for them: seen after a SIGSTOP, the
        worker went on from its state of before the stop, wrote 500 outputs a second time
        and moved the group's offset back, while another worker had taken the partition
        to its end meanwhile. (Its in-memory snapshot copies stay usable while the store
        is down: restored with Kafka's committed offsets read afresh, an older snapshot
        re-learns up to them and writes nothing before them, as any restore.)"""
        log.warning("this worker fell out of its consumer group; its partitions wait until it is back")
        sink = self.sink
        if self._open and sink is not None and sink.transactional:
            self._abort(sink)
        self._open = False
        self._offsets = {}
        self.partitions.rewind(list(self.partitions.states))

    def _rewind(self, why: str) -> None:
        self._open = False
        self._offsets = {}
        self.partitions.rewind(list(self.partitions.states))

    def _sink(self) -> Sink | None:
        """The producer, built again (with backoff) after it was closed on a fatal error.
        Its transactional id is the same, so the broker aborts whatever the old one left open."""
        if self.sink is not None:
            return self.sink
        if time.monotonic() < self._sink_retry_at:
            return None
        try:
            self.sink = self._make_sink()
        except ServiceUnavailableError as e:
            log.warning("producer not rebuilt (%s); retrying in %.1f s", e, self._sink_backoff_s)
            self._sink_retry_at = time.monotonic() + self._sink_backoff_s
            self._sink_backoff_s = min(self._sink_backoff_s * 2, self.retry_backoff_max_s)
            return None
        self._sink_backoff_s = 0.1
        return self.sink

    def _close_sink(self) -> None:
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is not None and not in_flight.finished(self.retry_backoff_max_s):
            # Still inside a call on the producer (a worker stopping on an error): closing
            # it under that call is not safe; the next producer with the same
            # transactional id fences it.
            log.warning("producer abandoned with a commit still under way")
            self.sink = None
            return
        sink, self.sink = self.sink, None
        try:
            if sink is not None:
                sink.close()
        except Exception as e:  # noqa: BLE001 - a broken producer may fail to close
            log.debug("producer close failed: %s", e)


class _CommitInFlight:
    """Steps 2 and 3 (``commit``: the transaction's commit, or at least once the flush
    and the offset commit) on a thread of its own. Nothing else uses the producer, nor
    commits offsets, until :meth:`wait` has returned: the checkpoint settles it first."""

    def __init__(self, commit: Callable[[], object], offsets: dict[TopicPartition, int], metadata: object) -> None:
        self.offsets = offsets
        self.metadata = metadata
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(commit,), name="streamwise-commit", daemon=True)
        self._thread.start()

    def _run(self, commit: Callable[[], object]) -> None:
        try:
            commit()
        except BaseException as e:  # noqa: BLE001 - raised again on the worker's thread
            self._error = e

    def wait(self) -> None:
        """Returns when the commit succeeded; raises what it raised otherwise."""
        self._thread.join()
        if self._error is not None:
            raise self._error

    def finished(self, within_s: float) -> bool:
        self._thread.join(within_s)
        return not self._thread.is_alive()
