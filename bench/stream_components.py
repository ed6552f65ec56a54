"""Cost of each cleaner and feature extractor, in microseconds per event (transform + learn).

Run: .venv/bin/python bench/stream_components.py [--events 20000]

Every component runs prequentially over the same pre-generated rows (from
streamwise.stream.checks.sample_rows), so the numbers compare; the last rows compare
the whole examples/fraud.yaml event pipeline (decode, clean, features) with the bare
decoder on the same bytes. A benchmark, not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from streamwise.pipeline_config import load_pipeline_config
from streamwise.stream.checks import run_prequential, sample_rows, yield_components
from streamwise.stream.datasets import CardTransactions
from streamwise.stream.pipeline import build_event_pipeline

ROOT = Path(__file__).resolve().parents[1]


def _best_of(repeats: int, fn) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = list(sample_rows(args.events, seed=0))
    print(f"{'component':<34} {'µs/event':>9}")
    print("-" * 44)
    for label, _ in yield_components():
        factory = dict(yield_components())[label]
        seconds = _best_of(args.repeats, lambda f=factory: run_prequential(f.clone(), rows))
        print(f"{label:<34} {seconds / len(rows) * 1e6:>9.2f}")

    cfg = load_pipeline_config(ROOT / "examples" / "fraud.yaml")
    raw = [json.dumps(e).encode() for e in CardTransactions(n_events=args.events, seed=0)]

    def run(pipeline_factory) -> None:
        pipeline = pipeline_factory()
        for value in raw:
            pipeline.decode(value)

    full = _best_of(args.repeats, lambda: run(lambda: build_event_pipeline(cfg.event_schema, cfg.cleaners, cfg.features)))
    bare = _best_of(args.repeats, lambda: run(lambda: build_event_pipeline(cfg.event_schema)))
    print("-" * 44)
    print(f"{'fraud.yaml: decode only':<34} {bare / len(raw) * 1e6:>9.2f}")
    print(f"{'fraud.yaml: decode+clean+features':<34} {full / len(raw) * 1e6:>9.2f}")


if __name__ == "__main__":
    main()
