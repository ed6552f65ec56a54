"""G2, second half (issue 8): the bare passthrough ÷ Kafka's own perf tools, same jars.

The passthrough is bench/clients.py's (consume → JSON decode/encode → produce, one
exactly-once transaction per poll batch, written directly on each Python client),
over River's Phishing replayed ``--repeat`` times. Kafka's ``kafka-producer-perf-test``
(``org.apache.kafka.tools.ProducerPerformance``, acks=all, payloads taken from the same
Phishing events) and ``kafka-consumer-perf-test`` (``ConsumerPerformance``, its fetch
rate, which leaves the group join out) run from the jars the local broker runs on, in
the same run and on the same broker. ``--records`` is larger than the passthrough's
event count because the JVM needs a few seconds to warm up.

The last row compares with Java producing and consuming each record one after the
other: 1 / (1/producer + 1/consumer), the best a single-threaded Java passthrough
without transactions could do.

    .venv/bin/python bench/kafka_tools.py [--repeat 20] [--records 150000]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from streamwise.core.settings import KafkaSettings  # noqa: E402

TIMEOUT_S = 180


def kafka_lib() -> Path:
    lib = Path(os.environ.get("STREAMWISE_DEV_KAFKA_LIB", common.ROOT / "dev" / ".cache" / "kafka" / "lib"))
    if not any(lib.glob("kafka-tools-*.jar")):
        raise SystemExit(f"kafka-tools jar not found in {lib}: run dev/up")
    return lib


def _java(lib: Path, tool: str, *args: str) -> str:
    cmd = ["java", "-Xmx256m", "-cp", f"{lib}/*", f"org.apache.kafka.tools.{tool}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=TIMEOUT_S).stdout


def producer_perf(lib: Path, servers: str, topic: str, records: int, payloads: Path) -> float:
    out = _java(lib, "ProducerPerformance", "--topic", topic, "--num-records", str(records),
                "--throughput", "-1", "--payload-file", str(payloads),
                "--producer-props", f"bootstrap.servers={servers}", "acks=all")
    match = re.search(r"(\d+) records sent, ([\d.]+) records/sec", out)
    assert match, out
    return float(match.group(2))


def consumer_perf(lib: Path, servers: str, topic: str, records: int) -> float:
    out = _java(lib, "ConsumerPerformance", "--bootstrap-server", servers, "--topic", topic,
                "--messages", str(records))
    header, values = [line for line in out.splitlines() if line.strip()][-2:]
    row = dict(zip([h.strip() for h in header.split(",")], [v.strip() for v in values.split(",")], strict=True))
    return float(row["fetch.nMsg.sec"])


def passthroughs() -> dict[str, Any]:
    """bench/clients.py's bare passthrough per client (the G2 baseline)."""
    try:
        from clients import PASSTHROUGH  # bench/clients.py, G1/G2 per client
    except ImportError as e:
        raise SystemExit(f"bench/clients.py (the G2 passthrough) is not importable: {e}") from None
    return PASSTHROUGH


def run(repeat: int, records: int) -> tuple[str, dict[str, Any]]:
    servers = common.bootstrap()
    lib = kafka_lib()
    events = common.phishing_events(repeat)
    topic = common.unique("g2-tools") + ".events"
    common.produce(servers, topic, events)
    bare = {c: fn(KafkaSettings(bootstrap_servers=servers, poll_timeout_ms=200), topic, len(events))
            for c, fn in passthroughs().items()}
    perf_topic = common.unique("g2-perf")
    with tempfile.TemporaryDirectory() as tmp:
        payloads = Path(tmp) / "phishing.txt"
        payloads.write_text("\n".join(v.decode() for _k, v in common.phishing_events(1)))
        common.create_topic(servers, perf_topic)
        produced = producer_perf(lib, servers, perf_topic, records, payloads)
    consumed = consumer_perf(lib, servers, perf_topic, records)
    serial = 1 / (1 / produced + 1 / consumed)
    clients = list(bare)
    rows = [["bare passthrough, events/s", *(bare[c] for c in clients)]]
    for name, rate in (("kafka-producer-perf-test", produced), ("kafka-consumer-perf-test", consumed),
                       ("Java produce + consume, one after the other", serial)):
        rows.append([f"passthrough ÷ {name} ({rate:,.0f} records/s)", *(bare[c] / rate for c in clients)])
    title = (f"G2 passthrough ÷ Kafka's own perf tools (kafka-tools {lib_version(lib)}), Phishing JSON "
             f"(~{len(events[0][1])} B); passthrough {len(events):,} events exactly-once, tools {records:,} records")
    text = common.table(title, ["measure", *clients], rows)
    return text, {"passthrough": bare, "producer": produced, "consumer": consumed}


def lib_version(lib: Path) -> str:
    jar = next(lib.glob("kafka-tools-[0-9]*.jar"))
    return jar.stem.removeprefix("kafka-tools-")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20, help="Phishing replays for the passthrough")
    parser.add_argument("--records", type=int, default=150_000, help="records for Kafka's tools")
    args = parser.parse_args()
    text, _ = run(args.repeat, args.records)
    print(text)


if __name__ == "__main__":
    main()
