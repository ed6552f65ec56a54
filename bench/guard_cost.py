"""Cost of the processor's last-resort guard: one state checkpoint per batch.

Run: .venv/bin/python bench/guard_cost.py [--events 10000]

Each example pipeline processes the same records in batches of 500 and of 5,000 (the
default ``max_poll_records``), once through ``PipelineProcessor.process`` (guarded:
it encodes the state before the batch) and once through the unguarded batch body, on
two fresh processors, alternating, best of three. The checkpoint's cost is a function
of the state's size, so the table shows that too, and the checkpoint alone timed
against the batch's unguarded time (the steadier figure on a shared machine). A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path
from typing import Any

from river import datasets
from river.datasets import synth

from streamwise.connectors.records import ConsumedRecord
from streamwise.models.state import encode_state
from streamwise.pipeline_config import load_pipeline_config
from streamwise.processor import PipelineProcessor
from streamwise.stream.datasets import CardTransactions

ROOT = Path(__file__).resolve().parents[1]


def _events(name: str, n: int) -> list[dict[str, Any]]:
    if name == "fraud":
        return list(CardTransactions(n_events=n))
    source = datasets.Phishing() if name == "phishing" else synth.Agrawal(seed=42)
    rows = itertools.islice(itertools.cycle(list(itertools.islice(source, 5000))), n)
    return [{"id": i, **x, "label": y} for i, (x, y) in enumerate(rows)]


def _run(cfg: Any, records: list[ConsumedRecord], batch: int, guarded: bool) -> float:
    processor = PipelineProcessor(cfg)
    step = processor.process if guarded else processor._process_batch
    started = time.perf_counter()
    for i in range(0, len(records), batch):
        step(records[i : i + batch])
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000)
    args = parser.parse_args()
    print(
        f"{'pipeline':<16}{'batch':>7}{'state KiB':>11}{'checkpoint ms':>15}{'unguarded µs/ev':>17}"
        f"{'guarded µs/ev':>15}{'cost':>8}{'checkpoint/batch':>18}"
    )
    for name in ("phishing", "fraud", "credit_scoring"):
        cfg = load_pipeline_config(ROOT / "examples" / f"{name}.yaml")
        now = int(time.time() * 1000)
        records = [
            ConsumedRecord(cfg.input.topic, 0, i, None, json.dumps(e).encode(), now)
            for i, e in enumerate(_events(name, args.events))
        ]
        warm = PipelineProcessor(cfg)
        warm.process(records)
        size = len(encode_state(warm.snapshot_state())) / 1024
        checkpoint = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            encode_state(warm.snapshot_state())
            checkpoint = min(checkpoint, time.perf_counter() - t0)
        for batch in (500, 5000):
            plain, guarded = float("inf"), float("inf")
            for _ in range(3):
                plain = min(plain, _run(cfg, records, batch, guarded=False))
                guarded = min(guarded, _run(cfg, records, batch, guarded=True))
            per = 1e6 / len(records)
            print(
                f"{name:<16}{batch:>7}{size:>11.0f}{checkpoint * 1e3:>15.2f}{plain * per:>17.1f}"
                f"{guarded * per:>15.1f}{(guarded / plain - 1) * 100:>7.1f}%"
                f"{checkpoint / (plain / len(records) * batch) * 100:>17.1f}%"
            )


if __name__ == "__main__":
    main()
