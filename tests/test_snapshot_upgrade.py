"""A snapshot written under the previous River minor release restores, or is refused cleanly.

The fixtures in tests/fixtures/ were written by tests/fixtures/make_older_river_snapshots.py
under River 0.25.0 (streamwise pins 0.26). docs/snapshots.md states the rule this checks:
a payload this version can read restores; one it cannot is refused with one line that
names the library versions, never with a traceback or a half-restored state.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from streamwise.models.state import SnapshotFormatError, decode_state

FIXTURES = Path(__file__).resolve().parent / "fixtures"
PAYLOADS = sorted(FIXTURES.glob("*.river-0.25.0.payload"))
# The shipped examples must survive the upgrade; of the extra models, River 0.26
# changed how a KNN's search graph pickles (SWINN's Vertex lost its __dict__), so a
# snapshot holding one is refused and its partition re-learns (docs/snapshots.md).
MUST_RESTORE = {"phishing", "fraud", "phishing-arf", "phishing-gnb", "phishing-pa", "phishing-hat"}
REFUSED = {"phishing-knn"}


def _name(path: Path) -> str:
    return path.name.split(".river-")[0]


def test_every_fixture_is_accounted_for() -> None:
    assert {_name(p) for p in PAYLOADS} == MUST_RESTORE | REFUSED


@pytest.mark.parametrize("payload", PAYLOADS, ids=_name)
def test_an_older_river_snapshot_restores_or_is_refused_cleanly(payload: Path) -> None:
    name = _name(payload)
    expected = json.loads(payload.with_suffix(".json").read_text())
    try:
        state = decode_state(payload.read_bytes())
    except SnapshotFormatError as e:
        assert name in REFUSED, f"{name} was refused: {e}"
        assert "\n" not in str(e) and "written with river 0.25.0 -> 0.26" in str(e)
        return
    assert name in MUST_RESTORE, f"{name} restored although it was expected to be refused"
    pipeline, models = state["events"], state["models"]
    answered: dict[str, list[Any]] = {n: [] for n in models}
    for event in expected["next_events"]:
        x = pipeline.decode(json.dumps(event).encode()).x
        for n, model in models.items():
            proba = model.predict_proba_one(x)
            answered[n].append({json.dumps(k): float(v) for k, v in sorted(proba.items(), key=lambda kv: str(kv[0]))})
    for n in models:
        # The restored model answers what it answered before the upgrade.
        want = expected["expected_proba"][n]
        assert len(answered[n]) == len(want)
        for got, before in zip(answered[n], want, strict=True):
            assert got == pytest.approx(before, rel=1e-9, abs=1e-12), n


def _with_header(payload: bytes, **changes: Any) -> bytes:
    line, _, body = payload.partition(b"\n")
    prefix, _, header = line.partition(b" ")
    data = json.loads(header)
    data.update(changes)
    return prefix + b" " + json.dumps(data).encode() + b"\n" + body


def test_a_river_release_without_a_migration_or_a_newer_format_is_refused_before_unpickling() -> None:
    from streamwise.models.state import encode_state

    payload = encode_state({"learned": [1.0]})
    with pytest.raises(SnapshotFormatError, match=r"written with river 0\.24\.2; .* knows no migration"):
        decode_state(_with_header(payload, versions={"river": "0.24.2"}))
    with pytest.raises(SnapshotFormatError, match=r"payload format 4 was written by a newer streamwise"):
        decode_state(_with_header(payload, format=4))
    assert decode_state(_with_header(payload, versions={"river": "0.26.0"})) == {"learned": [1.0]}
