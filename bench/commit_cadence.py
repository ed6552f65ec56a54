"""Commit cadence (issue 16): throughput and G3 latency per ``kafka.commit_interval_ms``.

Several polls may share one Kafka transaction until ``kafka.commit_interval_ms`` has
passed since it began (0: one transaction per poll). Fewer transactions cost less per
event; a longer one holds its outputs back from ``read_committed`` readers for longer.
This sweeps the interval on both clients, exactly-once, with everything else at the
service's defaults, and measures both sides of that trade:

- **throughput**: the service at full speed on a pre-filled topic (Phishing, the G1
  StandardScaler | LogisticRegression pipeline), from the first poll to the last commit,
  and the transactions it committed (the sensors' ``on_commit``); the best of
  ``--rounds`` runs per interval, in alternating order;
- **under load** (G3): ``streamwise run`` offered an open-loop load at ``--fraction`` of the
  throughput measured at the current default interval, input produced → output readable
  by a ``read_committed`` reader (bench/latency.py's method), ÷ the Kafka echo's (one
  transaction per poll, measured once per client in the same run at the same rate); and
  what the load cost: the service process's CPU per event (all its threads, from
  /proc), and events per transaction (each commit leaves one control record in the
  output partition). At a steady rate below the maximum a poll returns what arrived
  since the last one, so this is where the interval changes the number of transactions;
  at full speed on a filled topic every poll is already full.

The default is then the interval that costs the least CPU per event under load among
those whose p99 ÷ echo stays within G3's bar (2) on both clients; costs within 5% count
as equal and the shorter interval wins, since latency is what the longer one costs.

    .venv/bin/python bench/commit_cadence.py [--intervals 0,20,50,100,250,1000] [--seconds 10]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import latency  # noqa: E402
from streamwise.core.settings import KafkaSettings  # noqa: E402

from streamwise.runner import Runner  # noqa: E402

CLIENTS = ("kafka-python", "confluent")
# G3's bar (issue 16): the service's p99 within twice the echo's.
P99_BAR = 2.0
# Costs this close are one figure on these shared machines: the shorter interval wins.
EQUAL_COST = 0.05


def throughput(servers: str, client: str, topic: str, n: int, interval_ms: int) -> float:
    """Events/s of the service at full speed with this interval."""
    clock = common.Clock()
    settings = common.settings(servers, client)
    settings.kafka = settings.kafka.model_copy(update={"commit_interval_ms": interval_ms})
    Runner(common.pipeline(topic, common.LOGREG), settings, sensors=[clock]).run(max_events=n)
    return clock.rate


def choose(rows: dict[int, dict[str, dict[str, float]]]) -> int:
    """The interval that costs the least CPU per event under load (averaged over the
    clients, each as a multiple of its cheapest), among those whose p99 ÷ echo is within
    the bar on both clients; near-ties go to the shorter interval.

    >>> r = lambda cpu, p99: {"cpu_us": cpu, "p99_ratio": p99}
    >>> choose({0: {"c": r(90, 1.1)}, 50: {"c": r(61, 1.3)}, 100: {"c": r(60, 1.5)}, 250: {"c": r(50, 2.5)}})
    50
    """
    clients = next(iter(rows.values())).keys()
    least = {c: min(by[c]["cpu_us"] for by in rows.values()) for c in clients}
    cost = {i: sum(by[c]["cpu_us"] / least[c] for c in clients) / len(least) for i, by in rows.items()
            if all(by[c]["p99_ratio"] <= P99_BAR for c in clients)}
    if not cost:
        return min(rows)
    lowest = min(cost.values())
    return min(i for i, c in cost.items() if c <= lowest * (1 + EQUAL_COST))


def run(
    intervals: list[int], repeat: int, seconds: float, fraction: float, rounds: int = 2
) -> tuple[str, dict[str, Any]]:
    servers = common.bootstrap()
    topic = common.unique("cadence") + ".events"
    events = common.phishing_events(repeat)
    common.produce(servers, topic, events)
    n = len(events)
    default = KafkaSettings.model_fields["commit_interval_ms"].default
    figures: dict[int, dict[str, dict[str, float]]] = {i: {} for i in intervals}
    offered: dict[str, float] = {}
    echo: dict[str, dict[str, float]] = {}
    for client in CLIENTS:
        # The best of ``rounds``, in alternating order: other load on the machine only
        # ever takes throughput away, and a drift in it should not favour one end.
        for r in range(rounds):
            for interval in intervals if r % 2 == 0 else intervals[::-1]:
                rate = throughput(servers, client, topic, n, interval)
                if rate > figures[interval].get(client, {}).get("rate", 0.0):
                    figures[interval][client] = {"rate": rate}
        reference = figures[default][client]["rate"] if default in figures else max(
            f[client]["rate"] for f in figures.values())
        offered[client] = fraction * reference
        echo[client] = latency.measure(servers, client, "echo", offered[client], seconds)
        for interval in intervals:
            svc = latency.measure(servers, client, "streamwise", offered[client], seconds,
                                  env={"STREAMWISE_KAFKA__COMMIT_INTERVAL_MS": str(interval)})
            figures[interval][client].update(
                p50=svc["p50"], p99=svc["p99"], p99_ratio=svc["p99"] / echo[client]["p99"], missing=svc["missing"],
                cpu_us=svc["cpu_us"], per_txn=svc["events_per_transaction"],
            )
    chosen = choose(figures)
    rows = []
    for interval in intervals:
        row: list[Any] = [f"{interval}{' (chosen)' if interval == chosen else ''}"]
        for client in CLIENTS:
            f = figures[interval][client]
            row += [f["rate"], f["per_txn"], f["cpu_us"], f["p50"], f["p99"], f["p99_ratio"]]
        rows.append(row)
    rows.append(["Kafka echo (a transaction per poll)", *(
        v for c in CLIENTS
        for v in ("", echo[c]["events_per_transaction"], echo[c]["cpu_us"], echo[c]["p50"], echo[c]["p99"], 1.0))])
    header = ["commit_interval_ms"] + [
        f"{c}: {what}" for c in CLIENTS
        for what in ("events/s at full speed", "events per transaction under load", "CPU µs/event under load",
                     "p50 ms", "p99 ms", "p99 ÷ echo")
    ]
    title = (f"Commit cadence, exactly-once, StandardScaler | LogisticRegression: throughput at full speed "
             f"({n:,} events), then latency open loop for {seconds:.0f} s at {fraction:.0%} of the throughput "
             f"at {default} ms ({', '.join(f'{c} {offered[c]:,.0f}' for c in CLIENTS)} events/s)")
    text = common.table(title, header, rows)
    missing = sum(f[c]["missing"] for f in figures.values() for c in CLIENTS)
    text += (f"\n\nChosen: {chosen} ms, the interval that costs the least CPU per event under load (within "
             f"{EQUAL_COST:.0%}, the shorter wins) among those whose p99 stays within {P99_BAR:g}× the echo's on "
             f"both clients. Outputs missing at the end of the latency runs: {missing}.")
    return text, {"chosen": chosen, "figures": figures, "echo": echo, "offered": offered}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--intervals", default="0,20,50,100,250,1000",
                        help="commit_interval_ms values, comma-separated")
    parser.add_argument("--repeat", type=int, default=12, help="Phishing replays for the throughput runs")
    parser.add_argument("--seconds", type=float, default=10.0, help="of open-loop load per latency run")
    parser.add_argument("--rounds", type=int, default=2, help="throughput runs per interval (the best counts)")
    parser.add_argument("--fraction", type=float, default=0.5, help="of the throughput at the default interval")
    args = parser.parse_args()
    intervals = [int(i) for i in args.intervals.split(",")]
    text, _ = run(intervals, args.repeat, args.seconds, args.fraction, args.rounds)
    print(f"{common.machine()}\n\n{text}")


if __name__ == "__main__":
    main()
