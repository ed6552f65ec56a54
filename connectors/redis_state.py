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


class SnapshotManifestError(StreamwiseError):
    """A partition's manifest cannot be read: not JSON, not the shape streamwise writes,
    or an entry with missing or mistyped fields (damaged, or written by something else).
    Raised to the tools that show or change a manifest; a restore treats it as a refused
    snapshot instead (:meth:`RedisStateStore.load_latest`)."""


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


# A manifest is read from Redis, so anyone with write access to it may have put anything
# there: it is checked field by field before any value is used as a number, a key name
# or a count. Each entry's fields and the types they must have (bool is refused where a
# number is expected: json.loads gives True for `true`, and True is an int).
_REQUIRED: dict[str, tuple[type, ...]] = {
    "epoch": (int,), "offsets": (dict,), "size": (int,), "chunks": (int,), "hmac": (str,), "created": (int, float),
}
_OPTIONAL: dict[str, tuple[type, ...]] = {
    "generation": (int,), "blob": (str,), "meta": (dict,), "owner": (int,), "v": (int,), "key_id": (str,),
}
# Bounds the key lists a forged entry could make a reader build (chunk_keys): 2^20 chunks
# is 1 GiB at the smallest chunk_bytes (1 KiB) and 4 TiB at the default.
MAX_CHUNKS = 1 << 20
# Epochs go into Kafka's commit metadata and the next epoch is one more: a forged huge
# one is refused rather than carried on.
MAX_EPOCH = 1 << 63


def _entry_problem(entry: Any) -> str | None:
    """None when ``entry`` has every field a snapshot entry needs, of the right type; else what is wrong."""
    if not isinstance(entry, dict):
        return f"an entry is a JSON {type(entry).__name__}, not an object"
    missing = [name for name in _REQUIRED if name not in entry]
    if missing:
        return f"an entry has no {', '.join(map(repr, missing))}"
    for name, types in (_REQUIRED | _OPTIONAL).items():
        if name not in entry:
            continue
        value = entry[name]
        if isinstance(value, bool) or not isinstance(value, types):
            return f"an entry's {name!r} is {json.dumps(value)[:40]}, not {' or '.join(t.__name__ for t in types)}"
    if not 1 <= entry["epoch"] < MAX_EPOCH or entry["size"] < 0:
        return f"an entry has epoch {entry['epoch']} and size {entry['size']} (epochs from 1 to 2^63, sizes from 0)"
    if not 1 <= entry["chunks"] <= MAX_CHUNKS:
        return f"entry epoch {entry['epoch']}: {entry['chunks']} chunks (1 to {MAX_CHUNKS})"
    for tp, offset in entry["offsets"].items():
        topic, _, part = tp.rpartition(":")
        if not topic or not part.isdigit() or isinstance(offset, bool) or not isinstance(offset, int):
            return f"entry epoch {entry['epoch']}: offset {tp!r}: {json.dumps(offset)[:40]} is not 'topic:partition': offset"
    return None


@dataclass
class ParsedManifest:
    """What can be trusted of a manifest's bytes: its epoch counter (None when unreadable),
    the entries that have every field, and what is wrong with the rest."""

    epoch: int | None
    entries: list[dict[str, Any]]
    problems: list[str]

    @property
    def newest_epoch(self) -> int:
        """The highest epoch the manifest shows, counter or entry (0: none)."""
        return max([self.epoch or 0, *(e["epoch"] for e in self.entries)])


def parse_manifest(raw: bytes | str | None) -> ParsedManifest:
    """Reads a manifest's bytes without trusting them; never raises.

    Examples
    --------
    >>> parse_manifest(None)
    ParsedManifest(epoch=0, entries=[], problems=[])
    >>> parse_manifest(b"not json").problems
    ['not JSON (Expecting value at line 1 column 1)']
    >>> parse_manifest(b'{"epoch": 2, "snapshots": [{"epoch": 2, "size": 1}]}').problems
    ["an entry has no 'offsets', 'chunks', 'hmac', 'created'"]
    >>> print(*parse_manifest(b'{"epoch": 2, "snapshots": [{"epoch": "2", "offsets": {}, "size": 1,'
    ...                       b' "chunks": 1, "hmac": "", "created": 0}]}').problems)
    an entry's 'epoch' is "2", not int
    >>> parse_manifest(b'[1, 2]').problems
    ['a JSON list, not an object with "epoch" and "snapshots"']
    """
    if raw is None:
        return ParsedManifest(0, [], [])
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as e:  # bad UTF-8 too (UnicodeDecodeError is a ValueError)
        reason = f"{e.msg} at line {e.lineno} column {e.colno}" if isinstance(e, json.JSONDecodeError) else type(e).__name__
        return ParsedManifest(None, [], [f"not JSON ({reason})"])
    if not isinstance(doc, dict):
        return ParsedManifest(None, [], [f'a JSON {type(doc).__name__}, not an object with "epoch" and "snapshots"'])
    epoch, snaps = doc.get("epoch"), doc.get("snapshots")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch < MAX_EPOCH or not isinstance(snaps, list):
        return ParsedManifest(
            None, [], [f'"epoch" is {json.dumps(epoch)[:40]} and "snapshots" {json.dumps(snaps)[:40]}:'
                       ' expected a count from 0 and a list']
        )
    entries, problems = [], []
    for entry in snaps:
        problem = _entry_problem(entry)
        if problem is None:
            entries.append(entry)
        else:
            problems.append(problem)
    return ParsedManifest(epoch, entries, problems)


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
        # (key, problem) of the unreadable manifests and keys already logged (_trusted).
        self._reported: set[tuple[Any, str]] = set()
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
            if "DB index" in str(e):  # the server has fewer databases (its `databases`, 16 by default)
                raise ConfigError(f"Redis at {self.where}: {e}: check the database number in redis.url") from None
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
        """The whole manifest, for the tools that show or change it (list, rollback): a
        :class:`SnapshotManifestError` naming the key when any of it cannot be read, since
        what they print or write back would otherwise leave out what they could not read."""
        key = self._prefix(pipeline, partition) + "manifest"
        parsed = parse_manifest(pipe.get(key))
        if parsed.problems:
            more = f" (and {len(parsed.problems) - 1} more problems)" if len(parsed.problems) > 1 else ""
            raise SnapshotManifestError(f"snapshot manifest {key} cannot be read: {parsed.problems[0]}{more}")
        return {"v": FORMAT_VERSION, "epoch": parsed.epoch, "snapshots": parsed.entries}

    def _trusted(self, conn: Any, pipeline: str, partition: int) -> ParsedManifest:
        """What a restore or a save may use of the manifest: the entries that can be read
        (each still verified by its HMAC before its payload is used). What cannot be read
        is logged once per store and problem: a restore retried with backoff, and every
        save until one replaces the manifest, would otherwise repeat it."""
        key = self._prefix(pipeline, partition) + "manifest"
        parsed = parse_manifest(conn.get(key))
        for problem in parsed.problems:
            if (key, problem) in self._reported:
                continue
            self._reported.add((key, problem))
            if parsed.epoch is None:
                log.error("snapshot manifest of %s/%s (%s) refused: %s; it counts as holding no snapshot, and the"
                          " partition's next snapshot replaces it", pipeline, partition, key, problem)
            else:
                log.error("snapshot manifest of %s/%s (%s): %s; that entry is refused, the others are tried,"
                          " and the partition's next snapshot drops it", pipeline, partition, key, problem)
        return parsed

    def _highest_blob_epoch(self, pipeline: str, partition: int) -> int:
        """The highest epoch among the partition's chunk names (0: none)."""
        prefix = self._prefix(pipeline, partition) + "blob:"
        epochs = [0]
        for key in self._redis.scan_iter(match=prefix + "*", count=1000):
            written = key.decode(errors="replace")[len(prefix) :].split("-", 1)[0]
            if written.isdigit():
                epochs.append(int(written))
        return max(epochs)

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
            current = self._trusted(self._redis, pipeline, partition)
            self._check_owner(self._redis, owner, pipeline, partition)
            # Chunks go under a name no other write uses (epoch plus a nonce); if two
            # writers race for the same epoch, the WATCH below lets only one manifest
            # point at its chunks, and the loser's chunks are deleted.
            epoch = current.newest_epoch + 1
            if current.problems:
                # The damaged manifest's counter cannot be trusted, and epochs must keep
                # rising (Kafka's commit markers name them, docs/faults.md): above every
                # epoch its chunks' names still show too.
                epoch = max(epoch, self._highest_blob_epoch(pipeline, partition) + 1)
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
        manifest = parse_manifest(self._redis.get(prefix + "manifest"))
        if manifest.problems:  # damaged since the switch: which chunks are live is not known
            return
        live = {k for s in manifest.entries for k in SnapshotInfo.from_json(s).chunk_keys(prefix)}
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
        holder = int(current) if current is not None and current.isdigit() else None
        if holder != owner:
            # An owner that is not a number (damaged, forged) counts as another owner's:
            # the partition is dropped, and claimed again (which rewrites it) later.
            raise FencedError(
                f"snapshot of {pipeline}/{partition} refused: the partition is claimed by "
                f"{'nobody' if current is None else holder if holder is not None else repr(current[:40])},"
                f" this worker holds claim {owner}"
            )

    def _flip_manifest(self, pipeline: str, partition: int, info: SnapshotInfo, owner: int | None) -> list[str]:
        prefix = self._prefix(pipeline, partition)
        key = prefix + "manifest"
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.watch(key, prefix + "owner")
            # A manifest that cannot be read in full is replaced, keeping the entries that
            # can (each still verified by its HMAC at a restore). Refusing to write would
            # keep nothing safer: what cannot be read can never restore, and the partition
            # could never be snapshotted again (it would pause past
            # snapshot.max_unsnapshotted_events, and every restart re-learn from the start).
            # Only the partition's owner replaces it (the claim is checked here, under the
            # WATCH), and the problem was logged when it was read.
            manifest = self._trusted(pipe, pipeline, partition)
            self._check_owner(pipe, owner, pipeline, partition)
            if manifest.newest_epoch >= info.epoch:
                raise redis.WatchError("epoch moved")
            snaps = [asdict(info)] + manifest.entries
            kept, gone = snaps[: self.keep], snaps[self.keep :]
            pipe.multi()
            for chunk in info.chunk_keys(prefix):
                pipe.persist(chunk)
            pipe.set(key, json.dumps({"v": FORMAT_VERSION, "epoch": info.epoch, "snapshots": kept}))
            pipe.execute()
        return [k for s in gone for k in SnapshotInfo.from_json(s).chunk_keys(prefix)]

    # ----- reading --------------------------------------------------------------

    def list(self, pipeline: str, partition: int) -> list[SnapshotInfo]:
        """The kept snapshots, newest first; :class:`SnapshotManifestError` when the
        manifest cannot be read in full."""
        try:
            manifest = self._manifest(self._redis, pipeline, partition)
        except redis.RedisError as e:
            raise SnapshotUnavailableError(f"Redis at {self.where}: {type(e).__name__}: {e}") from None
        return [SnapshotInfo.from_json(s) for s in manifest["snapshots"]]

    def partitions(self, pipeline: str) -> list[int]:
        """The partitions with a manifest. A key whose partition is not a number (not
        written by streamwise) is skipped with a warning, and so is one of another
        pipeline the pattern also matches (``*`` spans ``:``)."""
        head, tail = f"streamwise:{pipeline}:", ":manifest"
        try:
            keys = list(self._redis.scan_iter(match=f"{head}*{tail}", count=1000))
        except redis.RedisError as e:
            raise SnapshotUnavailableError(f"Redis at {self.where}: {type(e).__name__}: {e}") from None
        out = []
        for key in keys:
            middle = key.decode(errors="replace")[len(head) : -len(tail)]
            if middle.isdigit():
                out.append(int(middle))
            elif ":" not in middle and (key, "partition") not in self._reported:
                self._reported.add((key, "partition"))
                log.warning("key %s skipped: %r is not a partition number", key.decode(errors="replace"), middle)
        return sorted(out)

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
        """The newest snapshot that passes its check, or None when there is none. An
        entry of the manifest that cannot be read is refused like one that fails its
        check (logged once, the next one tried); a manifest that cannot be read at all
        counts as holding no snapshot (docs/snapshots.md)."""
        try:
            for entry in self._trusted(self._redis, pipeline, partition).entries:
                info = SnapshotInfo.from_json(entry)
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
        try:
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
        except redis.WatchError:
            raise StreamwiseError(f"{key} changed during the rollback (is the pipeline running?): try again") from None
        except redis.RedisError as e:
            raise SnapshotUnavailableError(f"Redis at {self.where}: {type(e).__name__}: {e}") from None
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
