"""Scale (issue 8): ``streamwise run --workers 2`` ÷ one worker, on a 3-partition topic.

River's Agrawal generator (``--events`` loan applications, seed 42, keyed by id, so
spread over the 3 partitions) and the credit-scoring example (StandardScaler |
LogisticRegression and GaussianNB, one replica per partition), run from the command
line exactly as a user would, with the service's defaults (exactly-once, snapshots to
Redis on). Each configuration reads the same topic with its own consumer group.

The workers start on the empty topic; once the group is stable with all of them, the
events are published and every prediction is read back with a read_committed consumer.
Throughput = events ÷ the span of the predictions' timestamps (first written → last
written): process start-up and the group join are left out of both sides alike (their
time is shown), and so are the start-up rebalances. With 3 partitions on 2 workers one worker
owns two of them, so the ideal is 1.5×, and this machine has 2 cores shared with the
broker, Redis and the load: the ratio says how much of that the service gets.

    .venv/bin/python bench/scale.py [--events 20000] [--client kafka-python]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from streamwise.replay import iter_events  # noqa: E402
from support import consume  # noqa: E402

PARTITIONS = 3
TIMEOUT_S = 300


def _wait_for_group(servers: str, group: str, members: int, timeout_s: float = 90.0) -> float:
    """Waits until the group is stable with ``members`` members; returns the seconds waited."""
    from confluent_kafka import ConsumerGroupState
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": servers})
    t0 = time.perf_counter()
    settled = 0
    while time.perf_counter() - t0 < timeout_s:
        desc = admin.describe_consumer_groups([group])[group].result()
        owned = sum(len(m.assignment.topic_partitions) for m in desc.members if m.assignment)
        # Cooperative rebalancing takes two rounds, with a stable group in between whose
        # revoked partitions are not yet assigned: wait for all partitions, twice in a row.
        ok = desc.state == ConsumerGroupState.STABLE and len(desc.members) == members and owned == PARTITIONS
        settled = settled + 1 if ok else 0
        if settled == 2:
            return time.perf_counter() - t0
        time.sleep(0.5)
    raise SystemExit(f"group {group} not stable with {members} members after {timeout_s:.0f} s")


def run_workers(servers: str, client: str, workers: int, events: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    """Starts the workers on an empty topic, waits for the group to settle, then publishes
    the events and reads every prediction back: the figure is the steady state, without
    the rebalances of start-up."""
    name = common.unique(f"scale{workers}")
    topic = f"{name}.events"
    common.create_topic(servers, topic, PARTITIONS)
    cfg = common.pipeline(topic, example="credit_scoring.yaml", name=name)
    env = dict(os.environ, STREAMWISE_KAFKA__BOOTSTRAP_SERVERS=servers, STREAMWISE_KAFKA__CLIENT=client)
    with tempfile.TemporaryDirectory() as tmp:
        path = common.write_pipeline(cfg, Path(tmp) / "credit.yaml")
        argv = [sys.executable, "-m", "streamwise", "run", "-c", str(path), "--workers", str(workers)]
        proc = subprocess.Popen(argv, env=env, cwd=common.ROOT, stdout=subprocess.DEVNULL)
        try:
            joined = _wait_for_group(servers, cfg.group_id, workers)
            common.produce(servers, topic, events, partitions=PARTITIONS)
            out = consume(servers, cfg.output.topic, len(events), timeout_s=TIMEOUT_S)
        finally:
            common.stop_service(proc, timeout_s=60)
    stamps = sorted(r.timestamp for r in out)
    ids = {json.loads(r.value)["id"] for r in out}
    span = (stamps[-1] - stamps[0]) / 1000
    gap = max((b - a for a, b in zip(stamps, stamps[1:], strict=False)), default=0) / 1000
    return {"rate": len(out) / span, "joined": joined, "gap": gap, "outputs": len(out), "distinct": len(ids)}


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median throughput (the upper one of two)."""
    return sorted(runs, key=lambda r: r["rate"])[len(runs) // 2]


def run(events: int, client: str, rounds: int) -> tuple[str, dict[str, Any]]:
    servers = common.bootstrap()
    data = [(k or b"", v) for k, v in iter_events("synth.Agrawal", {"seed": 42}, limit=events)]
    runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    for r in range(rounds):
        # Alternating order, so that a drift in the machine's load falls on both sides.
        for workers in ((1, 2) if r % 2 == 0 else (2, 1)):
            runs[workers].append(run_workers(servers, client, workers, data))
    one, two = (_median_run(runs[w]) for w in (1, 2))
    rows = [
        ["events/s (first → last prediction written)", one["rate"], two["rate"], two["rate"] / one["rate"]],
        ["longest pause between two predictions, s", one["gap"], two["gap"], ""],
        ["group settled after, s (start-up, join)", one["joined"], two["joined"], ""],
        ["predictions written / distinct ids", f"{one['outputs']:,} / {one['distinct']:,}",
         f"{two['outputs']:,} / {two['distinct']:,}", ""],
    ]
    title = (f"Scale: streamwise run --workers 2 ÷ 1, {client}, exactly-once, snapshots on, "
             f"Agrawal {events:,} events on {PARTITIONS} partitions, credit_scoring.yaml, median of {rounds} "
             "alternating rounds")
    return common.table(title, ["measure", "1 worker", "2 workers", "2 ÷ 1"], rows), {"one": one, "two": two}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--client", choices=["kafka-python", "confluent"], default="kafka-python")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    text, _ = run(args.events, args.client, args.rounds)
    print(text)


if __name__ == "__main__":
    main()
