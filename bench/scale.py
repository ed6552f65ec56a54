"""Scale (issue 8): ``streamwise run --workers 2`` ÷ one worker, on a 3-partition topic.

River's Agrawal generator (``--events`` loan applications, seed 42, keyed by id, so
spread over the 3 partitions) and the credit-scoring example (StandardScaler |
LogisticRegression and GaussianNB, one replica per partition), run from the command
line exactly as a user would, with the service's defaults (exactly-once, snapshots to
Redis on). Each configuration reads the same topic with its own consumer group.

Throughput = events ÷ the span of the output records' timestamps (first prediction
written → last prediction written), read back with a read_committed consumer: process
start-up, group joins and the idle wait at the end are left out of both sides alike.
The whole command's wall time is shown too. With 3 partitions on 2 workers one worker
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
UNTIL_IDLE_S = 3.0
TIMEOUT_S = 300


def run_workers(servers: str, client: str, topic: str, workers: int, n: int) -> dict[str, Any]:
    cfg = common.pipeline(topic, example="credit_scoring.yaml", name=common.unique(f"scale{workers}"))
    env = dict(os.environ, STREAMWISE_KAFKA__BOOTSTRAP_SERVERS=servers, STREAMWISE_KAFKA__CLIENT=client)
    with tempfile.TemporaryDirectory() as tmp:
        path = common.write_pipeline(cfg, Path(tmp) / "credit.yaml")
        argv = [sys.executable, "-m", "streamwise", "run", "-c", str(path), "--workers", str(workers),
                "--until-idle", str(UNTIL_IDLE_S)]
        t0 = time.perf_counter()
        subprocess.run(argv, env=env, cwd=common.ROOT, check=True, timeout=TIMEOUT_S, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
    out = consume(servers, cfg.output.topic, n, timeout_s=60)
    stamps = [r.timestamp for r in out]
    ids = {json.loads(r.value)["id"] for r in out}
    span = (max(stamps) - min(stamps)) / 1000
    return {"rate": len(out) / span, "wall": wall, "outputs": len(out), "distinct": len(ids)}


def run(events: int, client: str) -> tuple[str, dict[str, Any]]:
    servers = common.bootstrap()
    topic = common.unique("scale") + ".events"
    data = list(iter_events("synth.Agrawal", {"seed": 42}, limit=events))
    common.produce(servers, topic, [(k or b"", v) for k, v in data], partitions=PARTITIONS)
    one = run_workers(servers, client, topic, 1, events)
    two = run_workers(servers, client, topic, 2, events)
    rows = [
        ["events/s (first → last prediction written)", one["rate"], two["rate"], two["rate"] / one["rate"]],
        ["whole command, s (start-up, joins, 3 s idle wait)", one["wall"], two["wall"], two["wall"] / one["wall"]],
        ["predictions written / distinct ids", f"{one['outputs']:,} / {one['distinct']:,}",
         f"{two['outputs']:,} / {two['distinct']:,}", ""],
    ]
    title = (f"Scale: streamwise run --workers 2 ÷ 1, {client}, exactly-once, snapshots on, "
             f"Agrawal {events:,} events on {PARTITIONS} partitions, credit_scoring.yaml")
    return common.table(title, ["measure", "1 worker", "2 workers", "2 ÷ 1"], rows), {"one": one, "two": two}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--client", choices=["kafka-python", "confluent"], default="kafka-python")
    args = parser.parse_args()
    text, _ = run(args.events, args.client)
    print(text)


if __name__ == "__main__":
    main()
