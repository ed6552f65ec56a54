"""Signed, versioned snapshots of a partition's learning state in Redis.

Layout for pipeline ``P`` and partition ``N`` (all keys under ``streamwise:P:N:``):

- ``blob:<epoch>-<nonce>:<i>``: the payload in chunks of at most ``chunk_bytes``. Chunks are
  written once under a new epoch and never modified, so a reader never sees half of a
  snapshot, and big values do not block the server in one command.
- ``manifest``: a JSON document listing the last ``keep`` snapshots, newest first,
  each with its epoch, offsets, size, chunk count, HMAC-SHA256 and the claim of the
  worker that wrote it. It is replaced in one MULTI/EXEC under WATCH, so the
  switch to a new snapshot is atomic and two writers cannot interleave.

- ``owner``: the claim number of the worker that owns the partition now. A worker takes
  a new claim (``INCR claims``, then ``SET owner``) each time Kafka assigns it the
  partition, and every write checks, inside the same WATCH/MULTI as the manifest switch,
  that ``owner`` is still its claim.

Fencing: a zombie (a worker paused past its session timeout, whose partition was given
to another) holds an older claim, so its next write is refused with
:class:`FencedError`. This works the same on both Kafka clients: it needs no consumer
group generation, which confluent-kafka does not expose. The epoch only increases.

Orphans: chunks are written with a time to live and made permanent in the transaction
that switches the manifest, so the chunks of a write that never completed (Redis went
away between the two steps, or the writer died) expire by themselves; the next
successful write of the partition deletes them at once.

Integrity: the HMAC covers every field of the snapshot's manifest entry that decides
what a restore does (format version, pipeline, partition, epoch, offsets, size, chunk
names and count, the writer's claim, meta, the signing key's id) and the payload.
:meth:`RedisStateStore.load_latest` verifies it *before* returning the payload, and
falls back to the previous snapshot, with one log line, when a snapshot fails its
check: unchecked bytes are never unpickled (and checked ones only by the
allow-listing codec of :mod:`streamwise.models.state`).

Keys: several may be configured, newest first. A snapshot is signed with the first and
names its key by id (a digest, never the key), so after a rotation
(``STREAMWISE_SNAPSHOT__SIGNING_KEYS=new,old``) old snapshots still restore, and every
new one is signed with the new key. Format 1 entries (before key ids) are verified with
their narrower header against every configured key. docs/snapshots.md has the rules.

Connection: :func:`open_state_store` builds the store from the settings (plain or TLS
``rediss://``, an ACL user, client certificates, Sentinel); the runner and the CLI both
use it. Redis Cluster is not supported: a snapshot write touches several keys of one
partition in one transaction, and the client is a single-node (or Sentinel) one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import redis
from streamwise.core.errors import ConfigError, ServiceUnavailableError, StreamwiseError
from streamwise.core.settings import RedisSettings, SnapshotSettings

log = logging.getLogger(__name__)

# 1: the HMAC covered the header without chunks, owner, meta or a key id;
# 2: it covers every entry field, and the entry names its key.
FORMAT_VERSION = 2


def key_id(key: bytes) -> str:
    """A short public name of a signing key: 8 bytes of a keyed-purpose digest, hex.

    Examples
    --------
    >>> key_id(b"k" * 32) == key_id(b"k" * 32) != key_id(b"j" * 32), len(key_id(b"k" * 32))
    (True, 16)
    """
    return hashlib.sha256(b"streamwise snapshot key id\0" + key).hexdigest()[:16]


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
    generation: int = -1  # read from manifests written before owner claims; not used
    blob: str = ""  # "<epoch>-<nonce>": names this snapshot's chunks, unique per write
    meta: dict[str, Any] = field(default_factory=dict)
    owner: int = -1  # the claim of the worker that wrote it
    v: int = 1  # the entry's format (FORMAT_VERSION when written); entries without one are 1
    key_id: str = ""  # which configured key signed it (format 2)

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> SnapshotInfo:
        """An entry as read from a manifest; fields a newer streamwise added are dropped
        here, and its newer ``v`` makes the signature check refuse it with a reason."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in entry.items() if k in known})

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
        signing_key: bytes | Sequence[bytes],
        keep: int = 3,
        chunk_bytes: int = 4 * 1024 * 1024,
        socket_timeout_s: float = 2.0,
        orphan_ttl_s: int = 600,
        client: redis.Redis | None = None,
    ) -> None:
        # The first key signs; every key verifies (see key rotation in the module doc).
        keys = [signing_key] if isinstance(signing_key, bytes) else list(signing_key)
        if not keys or not all(keys):
            raise StreamwiseError("snapshot.signing_key is empty: snapshots must be signed")
        self._url = url
        self._keys = {key_id(k): k for k in reversed(keys)}
        self._signing_id = key_id(keys[0])
        self.keep = keep
        self.chunk_bytes = chunk_bytes
        # Long enough for the slowest complete write; an unfinished one's chunks expire.
        self.orphan_ttl_s = orphan_ttl_s
        self._redis = client or redis.Redis.from_url(
            url, socket_timeout=socket_timeout_s, socket_connect_timeout=socket_timeout_s
        )

    @property
    def where(self) -> str:
        # The URL without its password, for messages.
        pool = self._redis.connection_pool
        kwargs = pool.connection_kwargs
        if getattr(pool, "service_name", None):  # Sentinel: the master moves, its name does not
            return f"sentinel master {pool.service_name}/{kwargs.get('db', 0)}"
        return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"

    def ping(self) -> None:
        """Checks the connection and the credentials, with one line on failure that
        names the cause and never the password."""
        try:
            self._redis.ping()
        except redis.AuthenticationError:
            user = self._redis.connection_pool.connection_kwargs.get("username") or "default"
            raise ConfigError(
                f"Redis at {self.where}: authentication failed for user {user!r}: check redis.username and"
                " redis.password (or the credentials in redis.url)"
            ) from None
        except redis.ResponseError as e:
            # NOAUTH: the server wants a password and none was given.
            if "NOAUTH" in str(e) or "WRONGPASS" in str(e):
                raise ConfigError(f"Redis at {self.where}: authentication required: set redis.password") from None
            raise ServiceUnavailableError(f"Redis at {self.where}: {e}") from None
        except redis.RedisError as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            if "certificate" in reason.lower() or "ssl" in reason.lower():
                raise ConfigError(f"Redis at {self.where}: TLS failed ({reason}): check redis.ssl_ca_file") from None
            raise ServiceUnavailableError(f"Redis: no answer at {self.where} ({type(e).__name__})") from None

    # ----- keys and signatures -------------------------------------------------

    @staticmethod
    def _prefix(pipeline: str, partition: int) -> str:
        return f"streamwise:{pipeline}:{partition}:"

    @staticmethod
    def _signed_header(pipeline: str, partition: int, info: SnapshotInfo) -> bytes:
        fields: dict[str, Any] = {
            "v": info.v,
            "pipeline": pipeline,
            "partition": partition,
            "epoch": info.epoch,
            "blob": info.blob,
            "offsets": info.offsets,
            "size": info.size,
        }
        if info.v >= 2:
            fields.update(
                chunks=info.chunks,
                generation=info.generation,
                owner=info.owner,
                created=info.created,
                meta=info.meta,
                key_id=info.key_id,
            )
        return json.dumps(fields, sort_keys=True).encode()

    def _sign(self, key: bytes, pipeline: str, partition: int, info: SnapshotInfo, payload: bytes) -> str:
        mac = hmac.new(key, self._signed_header(pipeline, partition, info), hashlib.sha256)
        mac.update(payload)
        return mac.hexdigest()

    def _verify(self, pipeline: str, partition: int, info: SnapshotInfo, payload: bytes) -> str | None:
        """None when ``payload`` and ``info`` carry a valid signature, else why not."""
        if info.v > FORMAT_VERSION:
            return f"format {info.v} was written by a newer streamwise (this one reads 1 to {FORMAT_VERSION})"
        if info.v >= 2:
            key = self._keys.get(info.key_id)
            if key is None:
                return f"signed with key id {info.key_id}, which is not among the configured keys"
            candidates = [key]
        else:
            candidates = list(self._keys.values())
        if len(payload) == info.size and any(
            hmac.compare_digest(self._sign(k, pipeline, partition, info, payload), info.hmac) for k in candidates
        ):
            return None
        return "HMAC check failed (wrong signing key or altered bytes)"

    def _manifest(self, pipe: Any, pipeline: str, partition: int) -> dict[str, Any]:
        raw = pipe.get(self._prefix(pipeline, partition) + "manifest")
        if raw is None:
            return {"v": FORMAT_VERSION, "epoch": 0, "snapshots": []}
        return json.loads(raw)

    # ----- writing --------------------------------------------------------------

    def claim(self, pipeline: str, partition: int) -> int:
        """Takes ownership of a partition's snapshots: a claim number larger than every
        earlier one, which each later :meth:`save` must present. Call on assignment."""
        prefix = self._prefix(pipeline, partition)
        try:
            claim = int(self._redis.incr(prefix + "claims"))
            self._redis.set(prefix + "owner", claim)
        except redis.RedisError as e:
            raise SnapshotUnavailableError(f"Redis at {self.where}: {type(e).__name__}: {e}") from None
        return claim

    def save(
        self,
        pipeline: str,
        partition: int,
        payload: bytes,
        offsets: dict[tuple[str, int], int],
        owner: int | None,
        meta: dict[str, Any] | None = None,
    ) -> SnapshotInfo:
        """Writes a new snapshot and makes it the newest, atomically. Returns its info.

        ``owner`` is the claim from :meth:`claim` (None: unfenced, for tools). Raises
        :class:`FencedError` when another worker claimed the partition since, and
        :class:`SnapshotUnavailableError` when Redis fails; either way nothing changed.
        """
        prefix = self._prefix(pipeline, partition)
        chunk_keys: list[str] = []
        try:
            current = self._manifest(self._redis, pipeline, partition)
            self._check_owner(self._redis, owner, pipeline, partition)
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
                blob=f"{epoch}-{uuid.uuid4().hex[:12]}",
                meta=meta or {},
                owner=-1 if owner is None else owner,
                v=FORMAT_VERSION,
                key_id=self._signing_id,
            )
            # Through JSON and back, as a reader will see it, so that both sign the same values.
            info = SnapshotInfo.from_json(json.loads(json.dumps(asdict(info))))
            info.hmac = self._sign(self._keys[self._signing_id], pipeline, partition, info, payload)
            chunk_keys = info.chunk_keys(prefix)
            writer = self._redis.pipeline(transaction=False)
            for i, key in enumerate(chunk_keys):
                writer.set(key, payload[i * self.chunk_bytes : (i + 1) * self.chunk_bytes], ex=self.orphan_ttl_s)
            writer.execute()
            try:
                dropped = self._flip_manifest(pipeline, partition, info, owner)
            except (redis.WatchError, FencedError):
                self._redis.delete(*chunk_keys)
                raise
            if dropped:
                self._redis.delete(*dropped)
            self._delete_orphans(pipeline, partition, info.epoch)
            return info
        except redis.WatchError:
            raise FencedError(
                f"snapshot of {pipeline}/{partition}: another writer changed the manifest meanwhile"
            ) from None
        except redis.RedisError as e:
            self._forget(chunk_keys)
            raise SnapshotUnavailableError(f"Redis at {self.where}: {type(e).__name__}: {e}") from None

    def _forget(self, keys: list[str]) -> None:
        """Best effort: deletes a failed write's chunks now (they expire anyway)."""
        if keys:
            try:
                self._redis.delete(*keys)
            except redis.RedisError:
                pass

    def _delete_orphans(self, pipeline: str, partition: int, epoch: int) -> None:
        """Deletes the chunks no kept snapshot names, up to ``epoch`` (the one just
        written). A chunk of a later epoch may be a write in progress by a worker that
        claimed the partition since; it is left alone (its manifest switch decides)."""
        prefix = self._prefix(pipeline, partition)
        manifest = self._manifest(self._redis, pipeline, partition)
        live = {k for s in manifest["snapshots"] for k in SnapshotInfo.from_json(s).chunk_keys(prefix)}
        stale = []
        for key in self._redis.scan_iter(match=prefix + "blob:*", count=1000):
            name = key.decode()
            written = name[len(prefix) + len("blob:") :].split("-", 1)[0]
            if name not in live and written.isdigit() and int(written) <= epoch:
                stale.append(name)
        if stale:
            self._redis.delete(*stale)

    def _check_owner(self, conn: Any, owner: int | None, pipeline: str, partition: int) -> None:
        if owner is None:
            return
        current = conn.get(self._prefix(pipeline, partition) + "owner")
        if current is None or int(current) != owner:
            raise FencedError(
                f"snapshot of {pipeline}/{partition} refused: the partition is claimed by "
                f"{'nobody' if current is None else int(current)}, this worker holds claim {owner}"
            )

    def _flip_manifest(self, pipeline: str, partition: int, info: SnapshotInfo, owner: int | None) -> list[str]:
        prefix = self._prefix(pipeline, partition)
        key = prefix + "manifest"
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.watch(key, prefix + "owner")
            manifest = self._manifest(pipe, pipeline, partition)
            self._check_owner(pipe, owner, pipeline, partition)
            if manifest["epoch"] >= info.epoch:
                raise redis.WatchError("epoch moved")
            snaps = [asdict(info)] + manifest["snapshots"]
            kept, gone = snaps[: self.keep], snaps[self.keep :]
            pipe.multi()
            for chunk in info.chunk_keys(prefix):
                pipe.persist(chunk)
            pipe.set(key, json.dumps({"v": FORMAT_VERSION, "epoch": info.epoch, "snapshots": kept}))
            pipe.execute()
        return [k for s in gone for k in SnapshotInfo.from_json(s).chunk_keys(prefix)]

    # ----- reading --------------------------------------------------------------

    def list(self, pipeline: str, partition: int) -> list[SnapshotInfo]:
        """The kept snapshots, newest first."""
        try:
            manifest = self._manifest(self._redis, pipeline, partition)
        except redis.RedisError as e:
            raise SnapshotUnavailableError(f"Redis at {self.where}: {type(e).__name__}: {e}") from None
        return [SnapshotInfo.from_json(s) for s in manifest["snapshots"]]

    def partitions(self, pipeline: str) -> list[int]:
        try:
            keys = list(self._redis.scan_iter(match=f"streamwise:{pipeline}:*:manifest", count=1000))
        except redis.RedisError as e:
            raise SnapshotUnavailableError(f"Redis at {self.where}: {type(e).__name__}: {e}") from None
        return sorted(int(k.decode().split(":")[-2]) for k in keys)

    def load(self, pipeline: str, partition: int, info: SnapshotInfo) -> Snapshot | None:
        """The snapshot's verified payload, or None (logged once) if it fails its check."""
        prefix = self._prefix(pipeline, partition)
        parts = self._redis.mget(info.chunk_keys(prefix))
        if any(p is None for p in parts):
            log.error("snapshot %s/%s epoch %s refused: chunks missing", pipeline, partition, info.epoch)
            return None
        payload = b"".join(parts)
        problem = self._verify(pipeline, partition, info, payload)
        if problem is not None:
            log.error("snapshot %s/%s epoch %s refused: %s", pipeline, partition, info.epoch, problem)
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
        return SnapshotInfo.from_json(snaps[idx])

    def close(self) -> None:
        self._redis.close()


def redis_client(settings: RedisSettings) -> redis.Redis:
    """A redis-py client for ``settings``: plain or TLS (``rediss://``), an ACL user,
    client certificates, or the master that Sentinel names."""
    from urllib.parse import urlparse

    url = settings.url.get_secret_value()
    tls = urlparse(url).scheme == "rediss"
    kwargs: dict[str, Any] = {
        "socket_timeout": settings.socket_timeout_s,
        "socket_connect_timeout": settings.socket_timeout_s,
    }
    if settings.username is not None:
        kwargs["username"] = settings.username
    if settings.password is not None:
        kwargs["password"] = settings.password.get_secret_value()
    files = {"ssl_ca_certs": settings.ssl_ca_file, "ssl_certfile": settings.ssl_cert_file,
             "ssl_keyfile": settings.ssl_key_file}
    given = {k: str(v) for k, v in files.items() if v is not None}
    if given and not tls:
        raise ConfigError("redis.ssl_ca_file, redis.ssl_cert_file, redis.ssl_key_file: set, but redis.url is not rediss://")
    if tls:
        kwargs.update(given, ssl_check_hostname=settings.ssl_check_hostname)
    if not settings.sentinels:
        return redis.Redis.from_url(url, **kwargs)
    from redis.sentinel import Sentinel

    db = int(urlparse(url).path.lstrip("/") or 0)
    sentinel_kwargs: dict[str, Any] = {"socket_timeout": settings.socket_timeout_s}
    if settings.sentinel_password is not None:
        sentinel_kwargs["password"] = settings.sentinel_password.get_secret_value()
    if tls:
        sentinel_kwargs.update({k: v for k, v in kwargs.items() if k.startswith("ssl_")}, ssl=True)
    hosts = [(h, int(p)) for h, _, p in (s.rpartition(":") for s in settings.sentinels)]
    sentinel = Sentinel(hosts, sentinel_kwargs=sentinel_kwargs, db=db, ssl=tls, **kwargs)
    return sentinel.master_for(str(settings.sentinel_master))


def open_state_store(
    redis_settings: RedisSettings, snapshot: SnapshotSettings, ping: bool = True
) -> RedisStateStore | None:
    """The one factory of the snapshot store (the runner and the CLI use it): None when
    snapshots are off; a :class:`ConfigError` without a usable signing key. With ``ping``, it
    is checked at once: wrong credentials or certificates raise a :class:`ConfigError`,
    an unreachable server a :class:`ServiceUnavailableError`, each one line."""
    if not snapshot.enabled:
        return None
    store = RedisStateStore(
        redis_settings.url.get_secret_value(),
        # One line at start for a missing, short or public key (core/settings.py).
        snapshot.signing_key_list(),
        keep=snapshot.keep,
        chunk_bytes=snapshot.chunk_bytes,
        client=redis_client(redis_settings),
    )
    if ping:
        store.ping()
    return store
