"""Memory of the de-duplicator under a stream of unique, long ids.

Run: .venv/bin/python bench/dedup_memory.py [--events 1000000] [--id-bytes 1024]

Each configuration runs in a fresh subprocess: it builds the Deduplicator, reads its
resident set size (VmRSS), then feeds ``--events`` distinct ids of ``--id-bytes``
characters through it prequentially (transform, then learn) and reads VmRSS and the
peak (VmHWM) again. The ids are made one at a time, so the stream itself holds no
memory; what grows is the de-duplicator's window. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def _child(events: int, id_bytes: int, window: int) -> None:
    from streamwise.stream.cleaners import Deduplicator

    dedup = Deduplicator("id", window=window)
    before = _status("VmRSS")
    started = time.perf_counter()
    pad = "x" * (id_bytes - 12)
    for i in range(events):
        row = {"id": f"{i:012d}{pad}"}
        dedup.transform_one(row)
        dedup.learn_one(row)
    elapsed = time.perf_counter() - started
    print(
        json.dumps(
            {
                "rss_before": before,
                "rss_after": _status("VmRSS"),
                "peak": _status("VmHWM"),
                "seconds": elapsed,
                "kept": len(dedup._seen),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--id-bytes", type=int, default=1024)
    parser.add_argument("--child", nargs=3, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return
    print(f"{args.events:,} distinct ids of {args.id_bytes} characters each")
    print(
        f"{'window':>10}{'ids kept':>10}{'RSS growth MB':>15}{'per kept id B':>15}{'peak RSS MB':>13}{'µs/event':>10}"
    )
    for window in (100_000, 1_000_000):
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(args.events), str(args.id_bytes), str(window)],
            capture_output=True,
            text=True,
            check=True,
        )
        r = json.loads(out.stdout)
        growth = r["rss_after"] - r["rss_before"]
        print(
            f"{window:>10,}{r['kept']:>10,}{growth / 1e6:>15.1f}{growth / r['kept']:>15.0f}"
            f"{r['peak'] / 1e6:>13.1f}{r['seconds'] / args.events * 1e6:>10.2f}"
        )


if __name__ == "__main__":
    main()
