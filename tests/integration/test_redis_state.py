"""RedisStateStore on the real Redis that dev/up starts."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import uuid

import pytest
import redis

from streamwise.connectors.redis_state import FencedError, RedisStateStore, SnapshotManifestError, parse_manifest
from streamwise.core.errors import ConfigError


@pytest.fixture
def store(services):
    s = RedisStateStore(services["STREAMWISE_REDIS__URL"], b"test-key", keep=3, chunk_bytes=1024)
    yield s
    s.close()


@pytest.fixture
def name():
    return f"t-{uuid.uuid4().hex[:8]}"


def test_round_trip_in_chunks_keeps_the_last_k(store, name):
    payloads = [bytes([i]) * 5000 for i in range(5)]  # 5 chunks each
    for i, payload in enumerate(payloads):
        info = store.save(name, 0, payload, {("events", 0): 100 * (i + 1)}, owner=None)
        assert info.epoch == i + 1 and info.chunks == 5
    kept = store.list(name, 0)
    assert [i.epoch for i in kept] == [5, 4, 3]
    latest = store.load_latest(name, 0)
    assert latest.payload == payloads[-1] and latest.info.offsets_by_tp() == {("events", 0): 500}
    # Chunks of snapshots no longer kept are deleted.
    r = redis.Redis.from_url(store._url)
    assert len(list(r.scan_iter(match=f"streamwise:{name}:0:blob:*"))) == 3 * 5


def test_a_tampered_snapshot_is_refused_and_the_previous_used(store, name, caplog):
    store.save(name, 0, b"good state", {("events", 0): 10}, owner=None)
    newest = store.save(name, 0, b"new state!", {("events", 0): 20}, owner=None)
    r = redis.Redis.from_url(store._url)
    r.set(newest.chunk_keys(f"streamwise:{name}:0:")[0], b"evil state")
    with caplog.at_level(logging.ERROR):
        snap = store.load_latest(name, 0)
    assert snap.payload == b"good state" and snap.info.epoch == 1
    assert any("HMAC check failed" in m for m in caplog.messages)


def test_a_different_signing_key_never_yields_a_payload(store, services, name):
    store.save(name, 0, b"state", {("events", 0): 1}, owner=None)
    other = RedisStateStore(services["STREAMWISE_REDIS__URL"], b"another key")
    assert other.load_latest(name, 0) is None


def test_a_worker_whose_claim_was_superseded_is_fenced_off(store, name):
    first = store.claim(name, 0)
    store.save(name, 0, b"owner 1", {("events", 0): 1}, owner=first)
    second = store.claim(name, 0)  # the partition moved to another worker
    assert second > first
    store.save(name, 0, b"owner 2", {("events", 0): 2}, owner=second)
    with pytest.raises(FencedError):
        store.save(name, 0, b"zombie", {("events", 0): 3}, owner=first)
    assert store.load_latest(name, 0).payload == b"owner 2"
    # The zombie's chunks were not left behind.
    r = redis.Redis.from_url(store._url)
    assert len(list(r.scan_iter(match=f"streamwise:{name}:0:blob:*"))) == 2


def test_chunks_of_an_unfinished_write_expire_and_are_cleaned_up(store, name):
    owner = store.claim(name, 0)
    store.save(name, 0, b"kept", {("events", 0): 1}, owner=owner)
    r = redis.Redis.from_url(store._url)
    prefix = f"streamwise:{name}:0:"
    # A write that died between its chunks and its manifest switch: chunks with a TTL.
    r.set(prefix + "blob:2-deadbeef:0", b"half", ex=store.orphan_ttl_s)
    r.set(prefix + "blob:9-inflight:0", b"new", ex=store.orphan_ttl_s)  # a later epoch: a newer owner's write
    assert [k for k in r.scan_iter(match=prefix + "blob:*") if r.ttl(k) == -1]  # the kept one is permanent
    assert 0 < r.ttl(prefix + "blob:2-deadbeef:0") <= store.orphan_ttl_s  # it would expire by itself
    store.save(name, 0, b"next", {("events", 0): 2}, owner=owner)  # epoch 2
    left = sorted(k.decode().split(":")[-2] for k in r.scan_iter(match=prefix + "blob:*"))
    assert "2-deadbeef" not in left and "9-inflight" in left
    assert store.load_latest(name, 0).payload == b"next"


def test_rollback_makes_an_older_snapshot_current_and_epochs_keep_rising(store, name):
    for i in range(3):
        store.save(name, 1, f"s{i}".encode(), {("events", 1): i}, owner=None)
    store.rollback(name, 1, 2)
    assert store.load_latest(name, 1).payload == b"s1"
    assert store.save(name, 1, b"after", {("events", 1): 9}, owner=None).epoch == 4
    assert store.partitions(name) == [1]


# ----- a damaged or forged manifest (anyone with write access to Redis can put any bytes there)

GOOD_ENTRY = {"epoch": 1, "offsets": {"events:0": 5}, "size": 3, "chunks": 1, "hmac": "00", "created": 0.0}
FORGED = {
    "not JSON": b"\x00garbage{",
    "bad UTF-8": b"\xff\xfe{}",
    "a list": b"[1, 2]",
    "epoch not a number": b'{"epoch": "7", "snapshots": []}',
    "snapshots not a list": b'{"epoch": 7, "snapshots": {"epoch": 7}}',
    "entry not an object": b'{"epoch": 7, "snapshots": ["7"]}',
    "entry without fields": b'{"epoch": 7, "snapshots": [{"epoch": 7}]}',
    "epoch a bool": json.dumps({"epoch": 7, "snapshots": [{**GOOD_ENTRY, "epoch": True}]}).encode(),
    "offsets a list": json.dumps({"epoch": 7, "snapshots": [{**GOOD_ENTRY, "offsets": [5]}]}).encode(),
    "offset key without partition": json.dumps({"epoch": 7, "snapshots": [{**GOOD_ENTRY, "offsets": {"events": 5}}]}).encode(),
    "chunks a trillion": json.dumps({"epoch": 7, "snapshots": [{**GOOD_ENTRY, "chunks": 10**12}]}).encode(),
    "meta a string": json.dumps({"epoch": 7, "snapshots": [{**GOOD_ENTRY, "meta": "x"}]}).encode(),
    "epoch past 2^63": json.dumps({"epoch": 2**70, "snapshots": []}).encode(),
}


@pytest.mark.parametrize("forged", FORGED.values(), ids=FORGED.keys())
def test_a_forged_manifest_counts_as_no_snapshot_is_named_by_the_tools_and_the_next_save_replaces_it(store, name, forged, caplog):
    owner = store.claim(name, 0)
    for i in range(3):
        store.save(name, 0, f"s{i}".encode(), {("events", 0): i}, owner=owner)
    r = redis.Redis.from_url(store._url)
    key = f"streamwise:{name}:0:manifest"
    r.set(key, forged)
    # A restore: nothing that cannot be read is used, nothing raises, and it is said once.
    with caplog.at_level(logging.ERROR):
        assert store.load_latest(name, 0) is None
        assert store.load_latest(name, 0) is None
    said = [m for m in caplog.messages if key in m]
    assert len(said) == 1 and f"{name}/0" in said[0], caplog.messages
    # The tools that show or change the manifest refuse it in one line naming the key.
    for call in (lambda: store.list(name, 0), lambda: store.rollback(name, 0, 2)):
        with pytest.raises(SnapshotManifestError, match=f"snapshot manifest {key} cannot be read: ") as e:
            call()
        assert "\n" not in str(e.value)
    assert store.partitions(name) == [0]
    # The owner's next snapshot replaces it, above every epoch the old chunks still show
    # (Kafka's commit markers name epochs: they must keep rising), and restores.
    info = store.save(name, 0, b"after", {("events", 0): 9}, owner=owner)
    assert info.epoch == max(3, parse_manifest(forged).newest_epoch) + 1
    assert store.load_latest(name, 0).payload == b"after"
    assert [i.epoch for i in store.list(name, 0)] == [info.epoch]
    # The old snapshots' chunks, which no manifest names any more, were cleaned up.
    assert [k.decode().split(":")[-2] for k in r.scan_iter(match=f"streamwise:{name}:0:blob:*")] == [info.blob]


def test_a_forged_entry_is_refused_and_the_readable_ones_still_restore(store, name, caplog):
    owner = store.claim(name, 0)
    store.save(name, 0, b"good", {("events", 0): 1}, owner=owner)
    r = redis.Redis.from_url(store._url)
    key = f"streamwise:{name}:0:manifest"
    manifest = json.loads(r.get(key))
    manifest["snapshots"].insert(0, {"epoch": 2, "offsets": "everything"})
    r.set(key, json.dumps(manifest))
    with caplog.at_level(logging.ERROR):
        snap = store.load_latest(name, 0)
    assert snap.payload == b"good" and snap.info.epoch == 1
    assert any(key in m and "an entry has no 'size', 'chunks'" in m for m in caplog.messages), caplog.messages
    # A save keeps the readable entry and drops the forged one (whose epoch, never
    # written by streamwise, no commit marker names: it is not counted).
    assert store.save(name, 0, b"next", {("events", 0): 2}, owner=owner).epoch == 2
    assert [i.epoch for i in store.list(name, 0)] == [2, 1]


def test_keys_that_name_no_partition_are_skipped(store, name, caplog):
    store.save(name, 2, b"s", {("events", 2): 1}, owner=None)
    r = redis.Redis.from_url(store._url)
    r.set(f"streamwise:{name}:zz:manifest", b"{}")
    r.set(f"streamwise:{name}:-1:manifest", b"{}")
    r.set(f"streamwise:{name}:other:3:manifest", b"{}")  # pipeline "<name>:other", not ours
    with caplog.at_level(logging.WARNING):
        assert store.partitions(name) == [2]
    assert any(f"streamwise:{name}:zz:manifest skipped" in m for m in caplog.messages), caplog.messages


def test_a_forged_owner_claim_that_is_no_number_fences_the_writer(store, name):
    owner = store.claim(name, 0)
    redis.Redis.from_url(store._url).set(f"streamwise:{name}:0:owner", b"me!")
    with pytest.raises(FencedError, match="claimed by b'me!'"):
        store.save(name, 0, b"s", {("events", 0): 1}, owner=owner)
    assert store.save(name, 0, b"s", {("events", 0): 1}, owner=store.claim(name, 0)).epoch == 1


def test_the_snapshots_commands_name_a_forged_manifest_in_one_line(services, name):
    r = redis.Redis.from_url(services["STREAMWISE_REDIS__URL"])
    key = f"streamwise:{name}:0:manifest"
    r.set(key, b"not json")
    r.set(f"streamwise:{name}:x:manifest", b"{}")
    for args in (["list"], ["show", "--partition", "0"], ["rollback", "--partition", "0", "--epoch", "1"]):
        done = subprocess.run([sys.executable, "-m", "streamwise", "snapshots", *args, "--pipeline", name],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, (args, done.stderr)
        assert done.stderr.strip().splitlines()[-1] == (
            f"streamwise: snapshot manifest {key} cannot be read: not JSON (Expecting value at line 1 column 1)"
        ), (args, done.stderr)
        assert "Traceback" not in done.stderr


@pytest.mark.parametrize("kafka_client", ["kafka-python"], indirect=True)
def test_a_run_over_a_forged_manifest_relearns_and_snapshots_again(settings, bootstrap, unique, caplog):
    from streamwise.replay import iter_events
    from streamwise.runner import Runner
    from support import phishing_pipeline, produce

    cfg = phishing_pipeline(unique)
    produce(bootstrap, cfg.input.topic, iter_events("Phishing"))
    r = redis.Redis.from_url(settings.redis.url.get_secret_value())
    key = f"streamwise:{cfg.name}:0:manifest"
    r.set(key, b'{"epoch": 5, "snapshots": [{"epoch": 5, "chunks": "all"}]}')
    with caplog.at_level(logging.ERROR):
        summary = Runner(cfg, settings).run(until_idle_s=1.0)
    assert summary.metrics["logreg"]["learned"] == 1250
    assert any(key in m and f"{cfg.name}/0" in m for m in caplog.messages), caplog.messages
    store = RedisStateStore(settings.redis.url.get_secret_value(), settings.snapshot.signing_key_list())
    (latest, *_) = store.list(cfg.name, 0)  # readable again, above the forged epoch
    assert latest.epoch > 5 and latest.offsets == {f"{cfg.input.topic}:0": 1250}


def test_a_database_number_the_server_lacks_is_a_config_error_not_an_outage(services):
    # Retried as an outage, the worker started anyway and waited for Redis for ever.
    url = services["STREAMWISE_REDIS__URL"].rsplit("/", 1)[0] + "/99"
    with pytest.raises(ConfigError, match=r"^Redis at .*/99: DB index is out of range: check the database number"):
        RedisStateStore(url, b"test-key").ping()
