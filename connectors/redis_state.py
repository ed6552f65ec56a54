"""Signed, versioned snapshots of a partition's learning state in Redis.

Layout for pipeline ``P`` and partition ``N`` (all keys under ``streamwise:P:N:``):

- ``blob:<epoch>-<nonce>:<i>``: the payload in chunks of at most ``chunk_bytes``. Chunks are
  written once under a new epoch and never modified, so a reader never sees half of a
  snapshot, and big values do not block the server in one command.
- ``manifest``: a JSON document listing the last ``keep`` snapshots, newest first,
  each with its epoch, offsets, size, chunk count and HMAC-SHA256, plus the owner
  generation that wrote last. It is replaced in one MULTI/EXEC under WATCH, so the
  switch to a new snapshot is atomic and two writers cannot interleave.

Fencing: the epoch only increases, and a writer passes the consumer-group generation
it owns the partition under. A manifest already written by a newer generation refuses
the write (:class:`FencedError`), so a zombie worker that lost the partition in a
rebalance cannot overwrite its successor's snapshot.

Integrity: the HMAC covers the header (format version, pipeline, partition, epoch,
offsets) and the payload. :meth:`RedisStateStore.load_latest` verifies it *before*
returning the payload, and falls back to the previous snapshot, with one log line,
when a snapshot fails its check: unchecked bytes are never unpickled.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from streamwise.core.errors import ServiceUnavailableError, StreamwiseError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


class FencedError(StreamwiseError):
    """A newer owner of the partition has written a snapshot; this writer must stop."""


class SnapshotUnavailableError(StreamwiseError):
    """Redis could not be reached or refused the write; the caller retries later."""


@dataclass
class SnapshotInfo:
    epoch: int
    offsets: dict[str, int]  # "topic:partition" -> next offset to read
    size: int
    chunks: int
    hmac: str
    created: float
    generation: int
    blob: str = ""  # "<epoch>-<nonce>": names this snapshot's chunks, unique per write
    meta: dict[str, Any] = field(default_factory=dict)

    def chunk_keys(self, prefix: str) -> list[str]:
        return [f"{prefix}blob:{self.blob}:{i}" for i in range(self.chunks)]

    def offsets_by_tp(self) -> dict[tuple[str, int], int]:
        out = {}
        for k, v in self.offsets.items():
            topic, _, part = k.rpartition(":")
            out[(topic, int(part))] = v
        return out


@dataclass
class Snapshot:
    info: SnapshotInfo
    payload: bytes


def _tp_key(topic: str, partition: int) -> str:
    return f"{topic}:{partition}"


class RedisStateStore:
    def __init__(
        self,
        url: str,
        signing_key: bytes,
        keep: int = 3,
        chunk_bytes: int = 4 * 1024 * 1024,
        socket_timeout_s: float = 5.0,
    ) -> None:
        if not signing_key:
            raise StreamwiseError("snapshot.signing_key is empty: snapshots must be signed")
        self._url = url
        self._key = signing_key
        self.keep = keep
        self.chunk_bytes = chunk_bytes
        self._redis = redis.Redis.from_url(
            url, socket_timeout=socket_timeout_s, socket_connect_timeout=socket_timeout_s
        )

    @property
    def where(self) -> str:
        # The URL without its password, for messages.
        pool = self._redis.connection_pool.connection_kwargs
        return f"{pool.get('host', '?')}:{pool.get('port', '?')}/{pool.get('db', 0)}"

    def ping(self) -> None:
        try:
            self._redis.ping()
        except redis.RedisError as e:
            raise ServiceUnavailableError(f"Redis: no answer at {self.where} ({type(e).__name__})") from None

    # ----- keys and signatures -------------------------------------------------

    @staticmethod
    def _prefix(pipeline: str, partition: int) -> str:
        return f"streamwise:{pipeline}:{partition}:"

    def _sign(self, pipeline: str, partition: int, info: SnapshotInfo, payload: bytes) -> str:
        header = json.dumps(
            {
                "v": FORMAT_VERSION,
                "pipeline": pipeline,
                "partition": partition,
                "epoch": info.epoch,
                "blob": info.blob,
                "offsets": info.offsets,
                "size": info.size,
            },
            sort_keys=True,
        ).encode()
        mac = hmac.new(self._key, header, hashlib.sha256)
        mac.update(payload)
        return mac.hexdigest()

    def _manifest(self, pipe: Any, pipeline: str, partition: int) -> dict[str, Any]:
        raw = pipe.get(self._prefix(pipeline, partition) + "manifest")
        if raw is None:
            return {"v": FORMAT_VERSION, "epoch": 0, "generation": -1, "snapshots": []}
        return json.loads(raw)

    # ----- writing --------------------------------------------------------------

    def save(
        self,
        pipeline: str,
        partition: int,
        payload: bytes,
        offsets: dict[tuple[str, int], int],
        generation: int | None,
        meta: dict[str, Any] | None = None,
    ) -> SnapshotInfo:
        """Writes a new snapshot and makes it the newest, atomically. Returns its info."""
        prefix = self._prefix(pipeline, partition)
        try:
            current = self._manifest(self._redis, pipeline, partition)
            self._check_fence(current, generation, pipeline, partition)
            # Chunks go under a name no other write uses (epoch plus a nonce); if two
            # writers race for the same epoch, the WATCH below lets only one manifest
            # point at its chunks, and the loser's chunks are deleted.
            epoch = current["epoch"] + 1
            info = SnapshotInfo(
                epoch=epoch,
                offsets={_tp_key(t, p): o for (t, p), o in sorted(offsets.items())},
                size=len(payload),
                chunks=max(1, -(-len(payload) // self.chunk_bytes)),
                hmac="",
                created=time.time(),
                generation=-1 if generation is None else generation,
                blob=f"{epoch}-{uuid.uuid4().hex[:12]}",
                meta=meta or {},
            )
            info.hmac = self._sign(pipeline, partition, info, payload)
            chunk_keys = info.chunk_keys(prefix)
            writer = self._redis.pipeline(transaction=False)
            for i, key in enumerate(chunk_keys):
                writer.set(key, payload[i * self.chunk_bytes : (i + 1) * self.chunk_bytes])
            writer.execute()
            try:
                dropped = self._flip_manifest(pipeline, partition, info, generation)
            except (redis.WatchError, FencedError):
                self._redis.delete(*chunk_keys)
                raise
            if dropped:
                self._redis.delete(*dropped)
            return info
        except redis.WatchError:
            raise FencedError(
                f"snapshot of {pipeline}/{partition}: another writer changed the manifest meanwhile"
            ) from None
        except redis.RedisError as e:
            raise SnapshotUnavailableError(f"Redis at {self.where}: {type(e).__name__}: {e}") from None

    def _check_fence(
        self, manifest: dict[str, Any], generation: int | None, pipeline: str, partition: int
    ) -> None:
        # A client that does not expose its group generation is fenced by epochs alone.
        if generation is not None and manifest.get("generation", -1) > generation:
            raise FencedError(
                f"snapshot of {pipeline}/{partition} refused: written by generation "
                f"{manifest['generation']}, this worker owns generation {generation}"
            )

    def _flip_manifest(
        self, pipeline: str, partition: int, info: SnapshotInfo, generation: int | None
    ) -> list[str]:
        key = self._prefix(pipeline, partition) + "manifest"
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.watch(key)
            manifest = self._manifest(pipe, pipeline, partition)
            self._check_fence(manifest, generation, pipeline, partition)
            if manifest["epoch"] >= info.epoch:
                raise redis.WatchError("epoch moved")
            snaps = [asdict(info)] + manifest["snapshots"]
            kept, gone = snaps[: self.keep], snaps[self.keep :]
            pipe.multi()
            pipe.set(
                key,
                json.dumps(
                    {
                        "v": FORMAT_VERSION,
                        "epoch": info.epoch,
                        "generation": manifest.get("generation", -1) if generation is None else generation,
                        "snapshots": kept,
                    }
                ),
            )
            pipe.execute()
        prefix = self._prefix(pipeline, partition)
        return [k for s in gone for k in SnapshotInfo(**s).chunk_keys(prefix)]

    # ----- reading --------------------------------------------------------------

    def list(self, pipeline: str, partition: int) -> list[SnapshotInfo]:
        """The kept snapshots, newest first."""
        try:
            manifest = self._manifest(self._redis, pipeline, partition)
        except redis.RedisError as e:
            raise SnapshotUnavailableError(f"Redis at {self.where}: {type(e).__name__}: {e}") from None
        return [SnapshotInfo(**s) for s in manifest["snapshots"]]

    def partitions(self, pipeline: str) -> list[int]:
        keys = self._redis.scan_iter(match=f"streamwise:{pipeline}:*:manifest", count=1000)
        return sorted(int(k.decode().split(":")[-2]) for k in keys)

    def load(self, pipeline: str, partition: int, info: SnapshotInfo) -> Snapshot | None:
        """The snapshot's verified payload, or None (logged once) if it fails its check."""
        prefix = self._prefix(pipeline, partition)
        parts = self._redis.mget(info.chunk_keys(prefix))
        if any(p is None for p in parts):
            log.error("snapshot %s/%s epoch %s refused: chunks missing", pipeline, partition, info.epoch)
            return None
        payload = b"".join(parts)
        expected = self._sign(pipeline, partition, info, payload)
        if len(payload) != info.size or not hmac.compare_digest(expected, info.hmac):
            log.error(
                "snapshot %s/%s epoch %s refused: HMAC check failed (wrong signing key or altered bytes)",
                pipeline, partition, info.epoch,
            )
            return None
        return Snapshot(info, payload)

    def load_latest(self, pipeline: str, partition: int) -> Snapshot | None:
        """The newest snapshot that passes its check, or None when there is none."""
        try:
            for info in self.list(pipeline, partition):
                snap = self.load(pipeline, partition, info)
                if snap is not None:
                    return snap
        except redis.RedisError as e:
            raise SnapshotUnavailableError(f"Redis at {self.where}: {type(e).__name__}: {e}") from None
        return None

    def rollback(self, pipeline: str, partition: int, epoch: int) -> SnapshotInfo:
        """Makes snapshot ``epoch`` the newest again by dropping the newer ones.

        Run it with the pipeline stopped: the next start restores this snapshot and
        re-learns from its offsets.
        """
        key = self._prefix(pipeline, partition) + "manifest"
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.watch(key)
            manifest = self._manifest(pipe, pipeline, partition)
            snaps = manifest["snapshots"]
            idx = next((i for i, s in enumerate(snaps) if s["epoch"] == epoch), None)
            if idx is None:
                raise StreamwiseError(
                    f"no kept snapshot with epoch {epoch} for {pipeline}/{partition} "
                    f"(kept: {', '.join(str(s['epoch']) for s in snaps) or 'none'})"
                )
            # The epoch counter stays where it is, so later snapshots still get new epochs.
            manifest["snapshots"] = snaps[idx:]
            pipe.multi()
            pipe.set(key, json.dumps(manifest))
            pipe.execute()
        return SnapshotInfo(**snaps[idx])

    def close(self) -> None:
        self._redis.close()
