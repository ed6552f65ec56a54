"""G3 (issue 8): event-to-prediction latency at a fixed open-loop rate, ÷ a Kafka echo.

1. The service's maximum throughput, measured first in the same run (as in G1: the
   Phishing pipeline with StandardScaler | LogisticRegression, exactly-once, Kafka in →
   predict → learn → Kafka out), unless ``--rate`` gives the rate to offer.
2. Events are then offered open-loop at ``--fraction`` (50%) of that throughput for
   ``--seconds``: each is sent when the schedule says, whether or not the service keeps
   up, so a slow consumer shows up as latency instead of as a slower sender.
3. The same schedule is offered to the service (``streamwise run``, in its own process)
   and to a Kafka echo (consume → produce the same bytes, no decoding, no model, one
   transaction per poll batch, on the same client library, in its own process). The
   echo is the floor: it hands on whatever has arrived as soon as one record is there
   (kafka-python's ``poll`` does so by itself; on confluent-kafka it takes
   ``consume(1, timeout)`` and then what is already fetched, where a plain
   ``consume(n, timeout)`` waits for ``n`` records or the timeout).

Latency of an event = the wall-clock time its output record was read by a separate
``read_committed`` consumer − the time the input was produced (both clocks in this
process). So it includes the producer's linger, the service's fetch, the work, the
transaction commit and the reader's fetch, for the service and the echo alike.

    .venv/bin/python bench/latency.py [--client kafka-python] [--rate EVENTS_PER_S] [--seconds 15]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from streamwise.core.settings import KafkaSettings  # noqa: E402

from streamwise.runner import Runner  # noqa: E402

WARMUP_TIMEOUT_S = 60.0
DRAIN_TIMEOUT_S = 20.0


def max_throughput(servers: str, client: str, repeat: int) -> float:
    """G1's service path at full speed: events/s from the first poll to the last commit."""
    topic = common.unique("g3-max") + ".events"
    events = common.phishing_events(repeat)
    common.produce(servers, topic, events)
    clock = common.Clock()
    Runner(common.pipeline(topic, common.LOGREG), common.settings(servers, client), sensors=[clock]).run(
        max_events=len(events)
    )
    return clock.rate


# ----- the echo, run as its own process: bench/latency.py --echo IN OUT --client C -----


def echo_kafka_python(settings: KafkaSettings, source: str, target: str, stop: threading.Event) -> None:
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.structs import OffsetAndMetadata
    from streamwise.connectors import kafka_config

    group = common.unique("echo")
    # The settings the service's own source and sink are built with (as the confluent
    # echo does): the echo differs from the service only in what it does per record.
    consumer = KafkaConsumer(source, **kafka_config.kafka_python_consumer(settings, group))
    producer = KafkaProducer(**kafka_config.kafka_python_producer(settings, group))
    producer.init_transactions()
    while not stop.is_set():
        batches = consumer.poll(timeout_ms=settings.poll_timeout_ms, max_records=settings.max_poll_records)
        if not batches:
            continue
        producer.begin_transaction()
        offsets = {}
        for tp, records in batches.items():
            for r in records:
                producer.send(target, key=r.key, value=r.value)
            offsets[tp] = OffsetAndMetadata(records[-1].offset + 1, "", -1)
        producer.send_offsets_to_transaction(offsets, consumer.group_metadata())
        producer.commit_transaction()
    consumer.close(autocommit=False)
    producer.close()


def echo_confluent(settings: KafkaSettings, source: str, target: str, stop: threading.Event) -> None:
    from confluent_kafka import Consumer, Producer, TopicPartition
    from streamwise.connectors.confluent import consumer_config, producer_config

    group = common.unique("echo")
    consumer = Consumer(consumer_config(settings, group))
    consumer.subscribe([source])
    producer = Producer(producer_config(settings, group))
    producer.init_transactions()
    while not stop.is_set():
        # consume(n, timeout) waits until n records or the timeout, whichever comes
        # first; the floor for latency waits for one record, then takes what is there.
        messages = consumer.consume(1, settings.poll_timeout_ms / 1000)
        if not messages:
            continue
        messages += consumer.consume(settings.max_poll_records - 1, 0)
        producer.begin_transaction()
        ends: dict[tuple[str, int], int] = {}
        for m in messages:
            producer.produce(target, m.value(), m.key())
            ends[(m.topic(), m.partition())] = m.offset() + 1
        producer.send_offsets_to_transaction(
            [TopicPartition(t, p, o) for (t, p), o in ends.items()], consumer.consumer_group_metadata()
        )
        producer.commit_transaction()
    consumer.close()
    producer.flush()


ECHO = {"kafka-python": echo_kafka_python, "confluent": echo_confluent}


def _run_echo(servers: str, client: str, source: str, target: str) -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # The service's own defaults for the poll, so both sides wait for records alike.
    ECHO[client](KafkaSettings(bootstrap_servers=servers), source, target, stop)


# ----- the load: open-loop sender and a read_committed reader, in this process ------------


class Reader(threading.Thread):
    """Reads the output topic from the start, read_committed, noting when each key arrives."""

    def __init__(self, servers: str, topic: str) -> None:
        super().__init__(daemon=True)
        from confluent_kafka import Consumer

        self.seen: dict[bytes, float] = {}
        self.stop = threading.Event()
        self.consumer = Consumer({
            "bootstrap.servers": servers, "group.id": common.unique("reader"),
            "isolation.level": "read_committed", "auto.offset.reset": "earliest",
            "enable.auto.commit": False, "fetch.wait.max.ms": 10,
        })
        self.consumer.subscribe([topic])

    def run(self) -> None:
        while not self.stop.is_set():
            messages = self.consumer.consume(1000, 0.05)
            now = time.time()
            for m in messages:
                if m.error() is None:
                    self.seen.setdefault(m.key(), now)
        self.consumer.close()


def offer(
    servers: str, topic: str, rate: float, seconds: float, reader: Reader, on_warm: Callable[[], None] = lambda: None
) -> dict[bytes, float]:
    """Warms the pipe up until an output comes back, then sends ``rate × seconds`` events
    on an open-loop schedule (``on_warm`` is called just before the first). Returns each
    measured event's send time (by key)."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": servers, "linger.ms": 1, "acks": "all"})
    values = [v for _k, v in common.phishing_events(1)]
    deadline = time.monotonic() + WARMUP_TIMEOUT_S
    i = 0
    while not reader.seen:
        if time.monotonic() > deadline:
            raise SystemExit(f"no output on {topic}'s pipe within {WARMUP_TIMEOUT_S:.0f} s")
        producer.produce(topic, values[i % len(values)], f"warmup-{i}".encode())
        producer.poll(0)
        i += 1
        time.sleep(0.2)
    time.sleep(1.0)  # let the warm-up records drain
    on_warm()
    sent: dict[bytes, float] = {}
    total = int(rate * seconds)
    start = time.perf_counter()
    wall0 = time.time() - start
    n = 0
    while n < total:
        due = min(total, int((time.perf_counter() - start) * rate) + 1)
        while n < due:
            key = f"m{n}".encode()
            t = time.perf_counter()
            producer.produce(topic, values[n % len(values)], key)
            sent[key] = wall0 + t  # wall clock, without a second time() call per event
            n += 1
        producer.poll(0)
        time.sleep(0.001)
    producer.flush()
    return sent


def measure(
    servers: str, client: str, role: str, rate: float, seconds: float, env: dict[str, str] | None = None
) -> dict[str, float]:
    """Offers the load to ``role`` ("streamwise" or "echo") and returns its latencies (ms).
    ``env``: more settings for the service's process (STREAMWISE_… variables)."""
    name = common.unique(f"g3-{role}")
    source, target = f"{name}.events", f"{name}.out"
    common.create_topic(servers, source)
    env = dict(os.environ, STREAMWISE_KAFKA__BOOTSTRAP_SERVERS=servers, STREAMWISE_KAFKA__CLIENT=client,
               STREAMWISE_SNAPSHOT__ENABLED="false", **(env or {}))
    with tempfile.TemporaryDirectory() as tmp:
        if role == "streamwise":
            cfg = common.pipeline(source, common.LOGREG, name=name)
            target = cfg.output.topic
            argv = ["-m", "streamwise", "run", "-c", str(common.write_pipeline(cfg, Path(tmp) / "p.yaml"))]
        else:
            common.create_topic(servers, target)
            argv = [str(Path(__file__).resolve()), "--echo", source, target, "--client", client]
        service = subprocess.Popen([sys.executable, *argv], env=env, cwd=common.ROOT, stdout=subprocess.DEVNULL)
        reader = Reader(servers, target)
        reader.start()
        cpu = [0.0, 0.0]
        try:
            sent = offer(servers, source, rate, seconds, reader,
                         on_warm=lambda: cpu.__setitem__(0, _cpu_seconds(service.pid)))
            deadline = time.monotonic() + DRAIN_TIMEOUT_S
            while time.monotonic() < deadline and any(k not in reader.seen for k in list(sent)[-100:]):
                time.sleep(0.1)
            cpu[1] = _cpu_seconds(service.pid)
        finally:
            common.stop_service(service, timeout_s=30)
            reader.stop.set()
            reader.join(timeout=10)
    lat = sorted((reader.seen[k] - t) * 1000 for k, t in sent.items() if k in reader.seen)
    # Each committed transaction leaves one control record in the output partition, so its
    # end offset less the records read is the number of transactions (warm-up included).
    transactions = _end_offset(servers, target) - len(reader.seen)
    return {
        "events": len(sent), "missing": len(sent) - len(lat),
        "p50": common.percentile(lat, 50), "p99": common.percentile(lat, 99),
        "p99.9": common.percentile(lat, 99.9),
        # CPU of the whole process (all its threads) per event offered, warm-up left out.
        "cpu_us": (cpu[1] - cpu[0]) * 1e6 / max(1, len(sent)),
        "events_per_transaction": len(reader.seen) / max(1, transactions),
    }


def _end_offset(servers: str, topic: str) -> int:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": servers, "group.id": common.unique("ends")})
    try:
        return consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)[1]
    finally:
        consumer.close()


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process, all threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(client: str, rate: float | None, fraction: float, seconds: float, repeat: int) -> tuple[str, dict[str, Any]]:
    servers = common.bootstrap()
    full = max_throughput(servers, client, repeat) if rate is None else None
    offered = rate if rate is not None else fraction * (full or 0.0)
    svc = measure(servers, client, "streamwise", offered, seconds)
    echo = measure(servers, client, "echo", offered, seconds)
    rows = [
        [f"{what} (ms)", svc[what], echo[what], svc[what] / echo[what]] for what in ("p50", "p99", "p99.9")
    ]
    rows.append(["events offered / outputs missing", f"{svc['events']} / {svc['missing']}",
                 f"{echo['events']} / {echo['missing']}", ""])
    how = (f"{fraction:.0%} of the service's maximum {full:,.0f} events/s measured in this run"
           if full else "given with --rate")
    title = (f"G3 latency, {client}, exactly-once: open loop at {offered:,.0f} events/s ({how}) "
             f"for {seconds:.0f} s; input produced → output readable (read_committed)")
    text = common.table(title, ["measure", "streamwise", "Kafka echo", "÷ echo"], rows)
    return text, {"max_rate": full, "offered": offered, "streamwise": svc, "echo": echo}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--client", choices=["kafka-python", "confluent"], default="kafka-python")
    parser.add_argument("--rate", type=float, help="offer this many events/s instead of measuring")
    parser.add_argument("--fraction", type=float, default=0.5, help="of the measured maximum throughput")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--repeat", type=int, default=8, help="Phishing replays for the throughput run")
    parser.add_argument("--echo", nargs=2, metavar=("SOURCE", "TARGET"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo:
        _run_echo(common.bootstrap(), args.client, *args.echo)
        return
    text, _ = run(args.client, args.rate, args.fraction, args.seconds, args.repeat)
    print(text)


if __name__ == "__main__":
    main()
