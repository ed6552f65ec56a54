"""Per-event time of the one-hot path when 100,000 distinct categories arrive.

Run: .venv/bin/python bench/one_hot_scale.py [--events 100000]

A one_hot step encodes the categories *declared* for a field (in the schema or the
step), one 0/1 feature each plus ``__other__``, on every event; a value outside them
only sets ``__other__``. So the distinct values that arrive cost nothing to keep, and
the time per event grows with the declared list, which the pipeline caps at
MAX_ONE_HOT_CATEGORIES (1,000). Each row: ``--events`` events, each with a category
never seen before (one in ten is a declared one), through the whole event pipeline
(decode, validate, one_hot), timed one by one. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from streamwise.stream.pipeline import MAX_ONE_HOT_CATEGORIES, build_event_pipeline

from streamwise.pipeline_config import parse_pipeline_config


def _run(declared: int, events: int) -> list[float]:
    categories = [f"cat-{i}" for i in range(declared)]
    cfg = parse_pipeline_config(
        {
            "name": "bench",
            "input": {"topic": "in"},
            "output": {"topic": "out"},
            "schema": {"features": {"amount": "float", "city": {"type": "category", "required": False}}},
            "features": [{"kind": "one_hot", "fields": ["city"], "categories": {"city": categories}}],
            "task": "classification",
            "metric": "Accuracy",
            "models": [{"name": "lr", "steps": ["linear_model.LogisticRegression"]}],
        }
    )
    pipeline = build_event_pipeline(cfg.event_schema, cfg.cleaners, cfg.features)
    records = [
        json.dumps({"id": i, "amount": 1.0, "city": categories[i % declared] if i % 10 == 0 else f"new-{i}"}).encode()
        for i in range(events)
    ]
    times = []
    for value in records:
        t0 = time.perf_counter()
        pipeline.decode(value)
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    args = parser.parse_args()
    print(f"{args.events:,} events, each with a category never seen before (1 in 10 declared)")
    print(f"{'declared':>10}{'features/event':>16}{'p50 µs':>9}{'p99 µs':>9}{'max µs':>9}")
    for declared in (10, 100, MAX_ONE_HOT_CATEGORIES):
        times = sorted(_run(declared, args.events))
        p = statistics.quantiles(times, n=100)
        print(f"{declared:>10,}{declared + 2:>16,}{p[49] * 1e6:>9.1f}{p[98] * 1e6:>9.1f}{times[-1] * 1e6:>9.0f}")


if __name__ == "__main__":
    main()
