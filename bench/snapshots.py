"""G4 (issue 8): what snapshotting the learning state to Redis costs, and how fast it comes back.

Throughput: the Phishing example pipeline (StandardScaler | LogisticRegression and a
Hoeffding tree, exactly-once) over the same events with snapshots every 5 s (and
``every_events`` out of reach, so time alone triggers them) ÷ with snapshots off.
The two alternate, ``--rounds`` times each, so that drifts in the machine's load fall
on both; each figure is the median of its rounds, from the first record polled to
the last batch committed.

Restore, after the last snapshotted run:

- per partition, ``RedisStateStore.load_latest`` (fetch the chunks, check the HMAC)
  plus unpickling and ``restore_state`` into a fresh processor: the time a new worker
  spends on each partition it is assigned;
- end to end, a new worker started on the same group after more events arrived: the
  time from ``Runner.run()`` to its first committed output, with the snapshot ÷
  without snapshots, where the new worker must rebuild the state by re-learning the
  whole log silently before it can emit.

    .venv/bin/python bench/snapshots.py [--client kafka-python] [--repeat 24] [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from streamwise.connectors.redis_state import RedisStateStore  # noqa: E402
from streamwise.core.sensors import Sensor  # noqa: E402
from streamwise.core.settings import Settings  # noqa: E402
from streamwise.models.state import decode_state  # noqa: E402

from streamwise.pipeline_config import PipelineConfig  # noqa: E402
from streamwise.processor import PipelineProcessor  # noqa: E402
from streamwise.runner import Runner  # noqa: E402

EVERY_SECONDS = 5.0
NEVER = 10**12


def _settings(servers: str, client: str, snapshots: bool) -> Settings:
    return common.settings(servers, client, snapshots=snapshots, every_seconds=EVERY_SECONDS, every_events=NEVER)


def throughput(
    servers: str, client: str, topic: str, n: int, snapshots: bool
) -> tuple[float, PipelineConfig, common.Clock]:
    cfg = common.pipeline(topic)
    clock = common.Clock()
    Runner(cfg, _settings(servers, client, snapshots), sensors=[clock]).run(max_events=n)
    return clock.rate, cfg, clock


def restore_seconds(settings: Settings, cfg: PipelineConfig, tries: int = 5) -> dict[str, float]:
    """Median time to load, verify, unpickle and restore one partition's newest snapshot."""
    assert settings.snapshot.signing_key is not None
    store = RedisStateStore(
        settings.redis.url.get_secret_value(), settings.snapshot.signing_key.get_secret_value().encode()
    )
    loads, restores, sizes = [], [], []
    for partition in store.partitions(cfg.name):
        for _ in range(tries):
            t0 = time.perf_counter()
            snap = store.load_latest(cfg.name, partition)
            t1 = time.perf_counter()
            assert snap is not None, f"no snapshot of {cfg.name}/{partition}"
            # The runner's own codec: format header, then the allow-listing unpickler.
            PipelineProcessor(cfg, Sensor()).restore_state(decode_state(snap.payload))
            loads.append(t1 - t0)
            restores.append(time.perf_counter() - t1)
            sizes.append(snap.info.size)
    store.close()
    return {"load": statistics.median(loads), "restore": statistics.median(restores), "bytes": max(sizes)}


def restart_seconds(servers: str, client: str, cfg: PipelineConfig, snapshots: bool, n: int) -> float:
    """A new worker on the same group: from run() to its first committed output."""
    clock = common.Clock()
    runner = Runner(cfg, _settings(servers, client, snapshots), sensors=[clock])
    t0 = time.perf_counter()
    runner.run(max_events=n)
    assert clock.first_output is not None
    return clock.first_output - t0


def run(client: str, repeat: int, rounds: int) -> tuple[str, dict[str, Any]]:
    servers = common.bootstrap()
    topic = common.unique("g4") + ".events"
    events = common.phishing_events(repeat)
    common.produce(servers, topic, events)
    rates: dict[bool, list[float]] = {False: [], True: []}
    last: dict[bool, PipelineConfig] = {}
    snaps: list[tuple[int, float]] = []
    for r in range(rounds):
        for snapshots in ((False, True) if r % 2 == 0 else (True, False)):
            rate, cfg, clock = throughput(servers, client, topic, len(events), snapshots)
            rates[snapshots].append(rate)
            last[snapshots] = cfg
            snaps += clock.snapshots if snapshots else []
    off, on = statistics.median(rates[False]), statistics.median(rates[True])
    settings = _settings(servers, client, True)
    restore = restore_seconds(settings, last[True])

    # More events arrive while both groups are down; then a new worker starts on each.
    more = [(b"new-" + k, v) for k, v in common.phishing_events(1)]
    common.produce(servers, topic, more)
    warm = restart_seconds(servers, client, last[True], True, len(more))
    cold = restart_seconds(servers, client, last[False], False, len(more))

    n_snaps = len(snaps)
    snap_ms = statistics.median(s for _b, s in snaps) * 1000 if snaps else float("nan")
    rows = [
        ["throughput, events/s", on, off, on / off],
        [f"snapshots taken during the runs (median ms each, size {restore['bytes']:,} B)",
         f"{n_snaps} ({snap_ms:.1f} ms)", "0", ""],
        ["restore one partition: load_latest (fetch + HMAC), ms", restore["load"] * 1000, "", ""],
        ["restore one partition: unpickle + restore_state, ms", restore["restore"] * 1000, "", ""],
        [f"new worker: run() → first output committed, s (log of {len(events):,} events)",
         warm, cold, warm / cold],
    ]
    title = (f"G4 snapshots, {client}, exactly-once, Phishing × {repeat} = {len(events):,} events, "
             f"logreg + hoeffding_tree, median of {rounds} alternating rounds")
    text = common.table(title, ["measure", f"snapshots every {EVERY_SECONDS:.0f} s", "snapshots off",
                                "÷ off"], rows)
    return text, {"on": on, "off": off, "restore": restore, "restart": (warm, cold)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--client", choices=["kafka-python", "confluent"], default="kafka-python")
    parser.add_argument("--repeat", type=int, default=24, help="Phishing replays (1,250 events each)")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    text, _ = run(args.client, args.repeat, args.rounds)
    print(text)


if __name__ == "__main__":
    main()
