"""First throughput figure: `streamwise run` on River's Phishing replayed 20 times.

Publishes 20 × 1,250 events to a fresh one-partition topic on the local broker
(dev/up), runs the example pipeline (StandardScaler | LogisticRegression and a
Hoeffding tree) over them once per delivery guarantee, and, in the same process, the
same models in a plain in-memory loop over the same pre-decoded events. Prints a table;
the ratio is what to compare across machines, not the absolute numbers.

    .venv/bin/python bench/phishing_run.py [--repeat 20]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


from streamwise.devservices import ensure_dev_services  # noqa: E402
from streamwise.replay import iter_events  # noqa: E402
from streamwise.runner import Runner  # noqa: E402
from streamwise.core.settings import KafkaSettings, Settings  # noqa: E402
from support import phishing_pipeline, produce, reference_predictions  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    env = ensure_dev_services()
    bootstrap = env["STREAMWISE_KAFKA__BOOTSTRAP_SERVERS"]

    base = [json.loads(v) for _k, v in iter_events("Phishing")]
    events = []
    for rep in range(args.repeat):
        for e in base:
            e = dict(e, id=rep * len(base) + e["id"])
            events.append((str(e["id"]).encode(), json.dumps(e).encode()))
    n = len(events)

    rows = []
    for guarantee in ("exactly_once", "at_least_once"):
        prefix = f"bench-{uuid.uuid4().hex[:8]}"
        cfg = phishing_pipeline(prefix)
        produce(bootstrap, cfg.input.topic, events)
        settings = Settings()
        settings.kafka = KafkaSettings(bootstrap_servers=bootstrap, guarantee=guarantee, poll_timeout_ms=200)
        summary = Runner(cfg, settings).run(until_idle_s=1.0)
        assert summary.events_in == n, summary
        # The idle wait that ends the run is not work: subtract it.
        active = summary.wall_seconds - 1.0
        rows.append((f"streamwise run ({guarantee})", n, active, n / active))

    xs = [(json.loads(v), None) for _k, v in events]
    pairs = [({k: v for k, v in e.items() if k not in ("id", "label")}, e["label"]) for e, _ in xs]
    t0 = time.perf_counter()
    reference_predictions(phishing_pipeline("mem"), pairs)
    mem = time.perf_counter() - t0
    rows.append(("in-memory loop, same models", n, mem, n / mem))

    print(f"\nPhishing × {args.repeat} = {n} events, models: logreg (StandardScaler | LogisticRegression), hoeffding_tree\n")
    print(f"| {'path':<36} | {'events':>7} | {'seconds':>8} | {'events/s':>9} | {'÷ in-memory':>11} |")
    print(f"|{'-' * 38}|{'-' * 9}|{'-' * 10}|{'-' * 11}|{'-' * 13}|")
    for name, count, secs, rate in rows:
        print(f"| {name:<36} | {count:>7} | {secs:>8.2f} | {rate:>9,.0f} | {rate / rows[-1][3]:>11.2f} |")


if __name__ == "__main__":
    main()
