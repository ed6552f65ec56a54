"""Model scope: what one model per pipeline (``scope: global``) buys over one replica per
input partition (``scope: partition``), and what the extra hop through the learn topic costs.

Through the service on the local broker (dev/up), kafka-python unless ``--client``:

1. Prequential accuracy per scope for P = 1, 3, 6, 12 input partitions, on Phishing,
   Agrawal (function 1) and Hyperplane (10 features), events keyed by id. With scope:
   partition each replica learns its partition's share; the figure is pooled over the
   replicas (each replica's accuracy weighted by the events it scored), so it is the
   accuracy of every prediction written. With scope: global, P = 1 is the same run as
   partition scope (one stage, nothing extra created).
2. Throughput and latency at P = 6, Phishing repeated: a backlog drained (events/s from
   the first record polled to the last prediction), then events offered at a steady
   rate for a few seconds, with the p50/p99 of each record's ``latency_s`` (its input
   record's timestamp to the moment its prediction was written).

The section "Model scope: global vs partition" of docs/benchmarks.md is replaced (or
added); other sections are left as they are.

    .venv/bin/python bench/scope.py [--client kafka-python] [--events 5000] [--no-write]
"""

from __future__ import annotations

import argparse
import threading
import time
from typing import Any

from common import (
    ROOT,
    add_output_args,
    create_topic,
    percentile,
    phishing_events,
    section_heading,
    settings,
    start_services,
    table,
    unique,
    write_section,
)
from kafka import KafkaProducer
from streamwise.core.sensors import Sensor

from streamwise.pipeline_config import parse_pipeline_config
from streamwise.replay import iter_events
from streamwise.runner import Runner

SECTION = "## Model scope: global vs partition"
PARTITIONS = [1, 3, 6, 12]
MODELS = {
    "logreg": ["preprocessing.StandardScaler", "linear_model.LogisticRegression"],
    "tree": ["tree.HoeffdingTreeClassifier"],
}
STREAMS: dict[str, dict[str, Any]] = {
    "Phishing": {"source": ("Phishing", {}), "label_type": "bool", "features": None},
    "Agrawal (function 1)": {
        "source": ("synth.Agrawal", {"classification_function": 1, "seed": 42}),
        "label_type": "int",
        "features": {"salary": "float", "commission": "float", "age": "int", "elevel": "int", "car": "int",
                     "zipcode": "int", "hvalue": "float", "hyears": "int", "loan": "float"},
    },
    "Hyperplane (10 features)": {
        "source": ("synth.Hyperplane", {"n_features": 10, "seed": 42}),
        "label_type": "int",
        "features": {str(i): "float" for i in range(10)},
    },
}


class Timing(Sensor):
    """First record polled, last prediction written, and every record's latency."""

    def __init__(self) -> None:
        self.first: float | None = None
        self.last = 0.0
        self.latencies: list[float] = []

    def on_events_in(self, topic: str, partition: int, n: int) -> None:
        if self.first is None:
            self.first = time.perf_counter()

    def on_predictions(self, latencies_s: Any) -> None:
        self.last = time.perf_counter()
        self.latencies.extend(latencies_s)


def _config(name: str, topic: str, stream: dict[str, Any], scope: str) -> Any:
    features = stream["features"]
    if features is None:  # Phishing: the example's schema
        import yaml

        features = yaml.safe_load((ROOT / "examples" / "phishing.yaml").read_text())["schema"]["features"]
    return parse_pipeline_config({
        "name": name, "scope": scope,
        "input": {"topic": topic}, "output": {"topic": f"{name}.predictions", "fields": ["id", "prediction"]},
        "schema": {"id": "id", "label": "label", "label_type": stream["label_type"], "features": features},
        "metric": "Accuracy",
        "models": [{"name": n, "steps": s} for n, s in MODELS.items()],
    })


def _events(stream: dict[str, Any], n: int) -> list[tuple[bytes | None, bytes]]:
    source, params = stream["source"]
    return list(iter_events(source, params, limit=n))


def _accuracy(
    servers: str, client: str, stream: dict[str, Any], events: list[Any], p: int, scope: str
) -> dict[str, float]:
    topic = unique("scope-in")
    create_topic(servers, topic, p)
    from support import produce as produce_plain

    produce_plain(servers, topic, events)
    cfg = _config(unique("scope"), topic, stream, scope)
    runner = Runner(cfg, settings(servers, client))
    runner.run(until_idle_s=1.0)
    out = {}
    for name in MODELS:
        processors = runner.partitions.all_processors().values()
        replicas = [next(m for m in proc.models if m.name == name) for proc in processors]
        scored = sum(m.n_learned for m in replicas)
        out[name] = sum(m.metric.get() * m.n_learned for m in replicas) / scored
    return out


def _cost(servers: str, client: str, scope: str, p: int, backlog: int, rate: float, seconds: float) -> list[Any]:
    stream = STREAMS["Phishing"]
    events = phishing_events(-(-(backlog + int(rate * seconds)) // 1250))
    topic = unique("scope-cost")
    create_topic(servers, topic, p)
    from support import produce as produce_plain

    produce_plain(servers, topic, events[:backlog])
    cfg = _config(unique("scope-cost"), topic, stream, scope)
    timing = Timing()
    runner = Runner(cfg, settings(servers, client), sensors=[timing])
    thread = threading.Thread(target=runner.run, kwargs={"until_idle_s": 2.0})
    thread.start()
    deadline = time.monotonic() + 300
    while len(timing.latencies) < backlog and time.monotonic() < deadline:
        time.sleep(0.05)
    assert timing.first is not None
    throughput = backlog / (timing.last - timing.first)
    # Then a steady offer: latency without a backlog in front of it.
    steady_from = len(timing.latencies)
    producer = KafkaProducer(bootstrap_servers=servers, linger_ms=1)
    start = time.perf_counter()
    for i, (key, value) in enumerate(events[backlog:]):
        wait = start + i / rate - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()
    thread.join()
    lat = sorted(timing.latencies[steady_from:])
    return [scope, p, throughput, len(lat), percentile(lat, 50) * 1000, percentile(lat, 99) * 1000]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--client", default="kafka-python")
    parser.add_argument("--events", type=int, default=5000, help="Events per synthetic stream (Phishing has 1,250).")
    parser.add_argument("--rate", type=float, default=300.0, help="Events/s offered for the latency figures.")
    add_output_args(parser)
    args = parser.parse_args()
    servers, started, load = start_services()
    rows = []
    for name, stream in STREAMS.items():
        events = _events(stream, args.events)
        for p in PARTITIONS:
            part = _accuracy(servers, args.client, stream, events, p, "partition")
            glob = part if p == 1 else _accuracy(servers, args.client, stream, events, p, "global")
            for model in MODELS:
                # Three decimals: the differences are a few thousandths at P = 3.
                rows.append([name, model, p, f"{part[model]:.3f}", f"{glob[model]:.3f}",
                             f"{glob[model] - part[model]:+.3f}"])
            print(rows[-2:], flush=True)
    accuracy = table(
        f"Prequential accuracy by scope ({args.client}; {args.events:,} events per synthetic stream, keyed by id)",
        ["stream", "model", "P", "partition", "global", "global - partition"], rows,
    )
    cost_rows = [_cost(servers, args.client, scope, 6, 5000, args.rate, 8.0) for scope in ("partition", "global")]
    ratio = cost_rows[1][2] / cost_rows[0][2]
    cost = table(
        f"The cost of the learn topic at P = 6 (Phishing, {args.client}; throughput draining a 5,000-event backlog,"
        f" latency at {args.rate:.0f} events/s offered)",
        ["scope", "P", "events/s", "records timed", "p50 ms", "p99 ms"], cost_rows,
    )
    text = "\n\n".join([
        section_heading(started, load, "scope.py"),
        "scope: partition trains one replica of each model per input partition, on its partition's events;"
        " scope: global trains one model on every event, in the order the partition stage wrote them to the"
        " learn topic (README, Model scope).",
        accuracy,
        cost,
        f"Global scope drained the backlog at {ratio:.2f}x partition scope's rate: every event is written to the"
        " learn topic and read back, in a second transaction, by a learner that runs on one core. The latency"
        " adds the learn topic's hop (one more commit interval, and read_committed waits for the partition"
        " stage's commit).",
    ])
    print(text)
    if not args.no_write:
        write_section(SECTION, text, args.out)
        print(f"wrote the section {SECTION[3:]!r} of {args.out}")


if __name__ == "__main__":
    main()
