"""RedisStateStore on the real Redis that dev/up starts."""

from __future__ import annotations

import logging
import uuid

import pytest
import redis

from streamwise.connectors.redis_state import FencedError, RedisStateStore


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
