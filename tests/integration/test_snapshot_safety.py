"""Snapshots that cannot run code, keys that rotate, and every decisive field signed; real Redis."""

from __future__ import annotations

import json
import pickle
import secrets
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from streamwise.connectors.redis_state import RedisStateStore, key_id
from streamwise.core.errors import ConfigError
from streamwise.core.settings import SnapshotSettings
from streamwise.models.state import SnapshotFormatError, decode_state, encode_state
from support import phishing_pipeline, produce
from typer.testing import CliRunner

from streamwise.cli import app
from streamwise.replay import iter_events
from streamwise.runner import Runner

OLD, NEW = secrets.token_bytes(32), secrets.token_bytes(32)


@pytest.fixture
def name() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


def _store(services: dict[str, str], *keys: bytes) -> RedisStateStore:
    return RedisStateStore(services["STREAMWISE_REDIS__URL"], list(keys), chunk_bytes=1024)


class _FileGadget:
    """Unpickling this creates a file: what a payload crafted by anyone holding the key could do."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> Any:
        return (open, (self.path, "w"))


def _gadget_payload(path: Path) -> bytes:
    honest = encode_state({"learners": None})
    header = honest.partition(b"\n")[0]
    return header + b"\n" + pickle.dumps({"learners": _FileGadget(path)}, protocol=5)


def test_a_signed_gadget_is_refused_and_runs_nothing(services: dict[str, str], name: str, tmp_path: Path) -> None:
    target = tmp_path / "owned"
    pickle.loads(_gadget_payload(tmp_path / "proof").partition(b"\n")[2])  # plain pickle would run it ...
    assert (tmp_path / "proof").exists()
    store = _store(services, NEW)
    store.save(name, 0, _gadget_payload(target), {("events", 0): 0}, owner=None)
    snap = store.load_latest(name, 0)
    assert snap is not None  # ... the signature is valid ...
    with pytest.raises(SnapshotFormatError, match=r"names io\.open, which no learning state holds"):
        decode_state(snap.payload)  # ... and the codec refuses it before calling anything
    assert not target.exists()


def test_the_service_restores_past_a_signed_gadget_without_running_it(
    settings: Any, bootstrap: str, unique: str, services: dict[str, str], tmp_path: Path
) -> None:
    target = tmp_path / "owned"
    cfg = phishing_pipeline(unique)
    n = produce(bootstrap, cfg.input.topic, list(iter_events("Phishing"))[:50])
    store = RedisStateStore(services["STREAMWISE_REDIS__URL"], settings.snapshot.signing_key_list())
    store.save(cfg.name, 0, _gadget_payload(target), {(cfg.input.topic, 0): 0}, owner=None)
    summary = Runner(cfg, settings).run(until_idle_s=1.0)
    assert summary.predictions == n  # refused with one line, re-learned from the start
    assert not target.exists()


def test_rotation_restores_old_snapshots_and_signs_new_ones_with_the_new_key(
    services: dict[str, str], name: str
) -> None:
    _store(services, OLD).save(name, 0, b"learned with the old key", {("events", 0): 10}, owner=None)
    rotated = _store(services, NEW, OLD)
    snap = rotated.load_latest(name, 0)
    assert snap is not None and snap.payload == b"learned with the old key" and snap.info.key_id == key_id(OLD)
    info = rotated.save(name, 0, b"learned after the rotation", {("events", 0): 20}, owner=None)
    assert info.key_id == key_id(NEW) and info.v == 2
    assert _store(services, NEW).load_latest(name, 0).payload == b"learned after the rotation"
    # The old key alone no longer verifies the newest snapshot: it falls back to its own.
    assert _store(services, OLD).load_latest(name, 0).payload == b"learned with the old key"


@pytest.mark.parametrize(
    "field,value",
    [("owner", 99), ("meta", {"fingerprint": "forged"}), ("chunks", 1), ("key_id", "0" * 16), ("created", 0.0)],
)
def test_every_decisive_manifest_field_is_signed(services: dict[str, str], name: str, field: str, value: Any) -> None:
    store = _store(services, NEW)
    store.save(name, 0, b"x" * 3000, {("events", 0): 5}, owner=None)  # 3 chunks
    r = redis.Redis.from_url(services["STREAMWISE_REDIS__URL"])
    key = f"streamwise:{name}:0:manifest"
    manifest = json.loads(r.get(key))
    manifest["snapshots"][0][field] = value
    r.set(key, json.dumps(manifest))
    assert store.load_latest(name, 0) is None


def test_a_format_1_entry_still_restores(services: dict[str, str], name: str) -> None:
    """An entry written before key ids (format 1: narrower signed header) is verified with
    that header against every configured key; docs/snapshots.md."""
    import hashlib
    import hmac

    store = _store(services, NEW, OLD)
    info = store.save(name, 0, b"v1 state", {("events", 0): 3}, owner=None)
    r = redis.Redis.from_url(services["STREAMWISE_REDIS__URL"])
    key = f"streamwise:{name}:0:manifest"
    manifest = json.loads(r.get(key))
    entry = manifest["snapshots"][0]
    del entry["v"], entry["key_id"]
    header = {k: entry[k] for k in ("epoch", "blob", "offsets", "size")} | {"v": 1, "pipeline": name, "partition": 0}
    mac = hmac.new(OLD, json.dumps(header, sort_keys=True).encode(), hashlib.sha256)
    mac.update(b"v1 state")
    entry["hmac"] = mac.hexdigest()
    r.set(key, json.dumps(manifest))
    snap = store.load_latest(name, 0)
    assert snap is not None and snap.payload == b"v1 state" and snap.info.epoch == info.epoch


def test_weak_and_public_keys_are_refused_at_start_with_one_line(
    services: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=r"^snapshot\.signing_key: 16 bytes, at least 32 are needed"):
        SnapshotSettings(signing_key="k" * 16).signing_key_list()
    with pytest.raises(ConfigError, match=r"^snapshot\.signing_keys: a publicly known demo key"):
        SnapshotSettings(signing_keys=f"demo-only-change-me,{'o' * 32}").signing_key_list()
    assert SnapshotSettings(signing_key="demo-only-change-me", insecure_demo_key=True).signing_key_list()

    config = Path(__file__).resolve().parents[2] / "examples" / "phishing.yaml"
    for key, said in (("k" * 16, "16 bytes, at least 32"), ("demo-only-change-me", "publicly known demo key")):
        monkeypatch.setenv("STREAMWISE_SNAPSHOT__SIGNING_KEY", key)
        result = CliRunner().invoke(app, ["run", "--config", str(config), "--max-events", "1"])
        assert result.exit_code != 0
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and said in lines[0], result.output
