"""What the benchmarks in bench/ share: the data, the topics, a clock, tables and profiles.

Not a test helper and not part of the package: bench scripts put ``bench/`` and
``tests/`` on ``sys.path`` and import this module as ``common``.

Every figure the benchmarks print is a ratio of two things measured in the same run
(these machines have two cores shared with other work), so the absolute events/s in a
table say little on their own; the ratios are what to compare across machines.
"""

from __future__ import annotations

import cProfile
import json
import math
import os
import platform
import pstats
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT / "tests", ROOT / "bench"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import yaml  # noqa: E402
from streamwise.connectors import make_admin  # noqa: E402
from streamwise.core.sensors import Sensor  # noqa: E402
from streamwise.core.settings import KafkaSettings, Settings, SnapshotSettings  # noqa: E402

from streamwise.devservices import ensure_dev_services, kafka_pid  # noqa: E402
from streamwise.pipeline_config import PipelineConfig, parse_pipeline_config  # noqa: E402
from streamwise.replay import iter_events  # noqa: E402

Event = tuple[bytes, bytes]
LOGREG = ["preprocessing.StandardScaler", "linear_model.LogisticRegression"]
# The producer batch size the service's kafka-python sink uses (connectors/kafka_config.py):
# the bare clients the service is compared with batch alike.
KAFKA_PYTHON_BATCH_BYTES = 1_000_000


def bootstrap() -> str:
    """The local broker that dev/up starts (started here if it is not running yet)."""
    return ensure_dev_services()["STREAMWISE_KAFKA__BOOTSTRAP_SERVERS"]


def unique(what: str) -> str:
    """A fresh name per run, so that every bench is idempotent: new topics, new groups."""
    return f"bench-{what}-{uuid.uuid4().hex[:8]}"


def phishing_events(repeat: int) -> list[Event]:
    """River's Phishing (1,250 events) replayed ``repeat`` times, each copy with new ids."""
    base = [json.loads(v) for _k, v in iter_events("Phishing")]
    out = []
    for rep in range(repeat):
        for e in base:
            e = dict(e, id=rep * len(base) + e["id"])
            out.append((str(e["id"]).encode(), json.dumps(e, separators=(",", ":")).encode()))
    return out


def create_topic(servers: str, topic: str, partitions: int = 1) -> None:
    admin = make_admin(KafkaSettings(bootstrap_servers=servers))
    try:
        admin.ensure_topics([topic], partitions=partitions)
    finally:
        admin.close()


def produce(servers: str, topic: str, events: list[Event], partitions: int = 1) -> None:
    """Creates ``topic`` and publishes the events, keyed, as fast as the broker takes them."""
    from support import produce as produce_plain  # an independent client, as in the tests

    create_topic(servers, topic, partitions)
    produce_plain(servers, topic, events)


def pipeline(
    input_topic: str,
    steps: list[Any] | None = None,
    example: str = "phishing.yaml",
    name: str | None = None,
) -> PipelineConfig:
    """An example pipeline on fresh output topics and group; one model ``model`` with
    ``steps`` when given, else the example's own models."""
    data = yaml.safe_load((ROOT / "examples" / example).read_text())
    name = name or unique("pipe")
    data.update(name=name)
    if steps is not None:
        data["models"] = [{"name": "model", "steps": steps}]
    data["input"]["topic"] = input_topic
    data["output"]["topic"] = f"{name}.predictions"
    return parse_pipeline_config(data)


def write_pipeline(cfg: PipelineConfig, path: Path) -> Path:
    """The pipeline as YAML for ``streamwise run -c``."""
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude_none=True), sort_keys=False))
    return path


def settings(servers: str, client: str, snapshots: bool = False, **snapshot: Any) -> Settings:
    """Settings for a bench run; snapshots off unless asked for (they are G4's business)."""
    s = Settings()
    s.kafka = KafkaSettings(bootstrap_servers=servers, client=client, poll_timeout_ms=200)  # type: ignore[arg-type]
    s.snapshot = s.snapshot.model_copy(update={"enabled": snapshots, **snapshot})
    assert isinstance(s.snapshot, SnapshotSettings)
    return s


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU of process ``pid``, every thread of it, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def broker_pid() -> int | None:
    """The local broker's process (the one dev/up started), or None when it is not known."""
    try:
        pid = kafka_pid()
        _cpu_seconds(pid)
        return pid
    except (OSError, ValueError, IndexError):
        return None


class CpuMeter:
    """CPU seconds spent between :meth:`start` and :meth:`stop` by this process (all its
    threads, the Kafka client's own included) and by the local broker. On a machine whose
    cores also run the broker, throughput is bounded by cores ÷ the sum of the two per
    event, whatever runs in parallel (bench/peer_quix.py's ceiling)."""

    def __init__(self) -> None:
        self._broker = broker_pid()
        self._at: tuple[float, float] | None = None
        self.process_s = self.broker_s = 0.0
        self.events = 0

    def _now(self) -> tuple[float, float]:
        t = os.times()
        return t.user + t.system, _cpu_seconds(self._broker) if self._broker else math.nan

    def start(self) -> None:
        if self._at is None:
            self._at = self._now()

    def stop(self, events: int) -> None:
        """Ends the measure, which covered ``events`` events."""
        assert self._at is not None, "stop() before start()"
        process, broker = self._now()
        self.process_s, self.broker_s = process - self._at[0], broker - self._at[1]
        self.events = events

    def per_event_us(self) -> tuple[float, float]:
        """(this process, the broker) in CPU µs per event; NaN when not known (no events
        measured, or the broker's process not found)."""
        if self.events <= 0:
            return math.nan, math.nan
        return self.process_s / self.events * 1e6, self.broker_s / self.events * 1e6


class Clock(Sensor):
    """Service throughput from the first record polled to the end of the last batch
    (processed and committed): group joins and idle waits are left out."""

    def __init__(self, meter: CpuMeter | None = None) -> None:
        self.started = time.perf_counter()
        # Started once the first batch is done (the sensor hears of a batch only then),
        # and read per event of the batches after it: start-up and joins are left out.
        self.meter = meter
        self.metered_from = 0
        self.first: float | None = None
        self.first_commit: float | None = None
        # The first batch that emitted a prediction (a restarted worker's silent replay
        # commits batches that emit nothing).
        self.first_output: float | None = None
        self._predicted = False
        self.last = 0.0
        self.events = 0
        self.snapshots: list[tuple[int, float]] = []

    def on_event_in(self, topic: str, partition: int) -> None:
        if self.first is None:
            self.first = time.perf_counter()

    def on_events_in(self, topic: str, partition: int, n: int) -> None:
        self.on_event_in(topic, partition)

    def on_batch(self, n_records: int, seconds: float) -> None:
        self.events += n_records
        self.last = time.perf_counter()
        if self.meter is not None and not self.metered_from:
            self.meter.start()
            self.metered_from = self.events
        # The processor tells its sensors about a batch once the batch has succeeded
        # (streamwise/processor.py, _attempt): the first batch began ``seconds`` ago.
        if self.first is None or self.last - seconds < self.first:
            self.first = self.last - seconds
        if self.first_commit is None:
            self.first_commit = self.last
        if self._predicted and self.first_output is None:
            self.first_output = self.last

    def on_prediction(self, latency_s: float) -> None:
        self._predicted = True

    def on_snapshot(self, partition: int, size_bytes: int, seconds: float) -> None:
        self.snapshots.append((size_bytes, seconds))

    @property
    def rate(self) -> float:
        assert self.first is not None, "no record was polled"
        return self.events / (self.last - self.first)


def stop_service(proc: subprocess.Popen[Any], timeout_s: float) -> None:
    """Stops a ``streamwise run`` the way an operator would: SIGTERM, so it finishes its
    batch and commits, then SIGKILL if it has not exited within ``timeout_s``."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list.

    >>> percentile([1.0, 2.0, 3.0, 4.0], 50)
    2.0
    >>> percentile([float(i) for i in range(1, 1001)], 99.9)
    999.0
    """
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * q // 100))
    return sorted_values[int(min(rank, len(sorted_values))) - 1]


def table(title: str, header: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table with a bold title line. Floats below 10 get two decimals
    (ratios, milliseconds), larger numbers thousands separators.

    >>> print(table("T", ["a", "b"], [["x", 0.5], ["y", 12345.0]]))
    **T**
    <BLANKLINE>
    | a | b |
    |---|---:|
    | x | 0.50 |
    | y | 12,345 |
    """

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.2f}" if abs(v) < 10 else f"{v:,.0f}"
        if isinstance(v, int):
            return f"{v:,}"
        return str(v)

    lines = [f"**{title}**", "", "| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def machine() -> str:
    """One line: date, host, cores, Python and the versions the figures depend on."""
    import kafka
    import river

    try:
        import confluent_kafka

        confluent = f", confluent-kafka {confluent_kafka.__version__} (librdkafka {confluent_kafka.libversion()[0]})"
    except ImportError:
        confluent = ""
    return (
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}, {platform.node()}, {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, river {river.__version__}, "
        f"kafka-python {kafka.__version__}{confluent}"
    )


# C functions called from Python, by what they are: the name says which library or wait.
_C_KINDS = (
    ("cimpl.", "confluent_kafka (librdkafka, C)"),
    ("_socket", "socket I/O"),
    ("select", "socket I/O"),
    ("_thread.lock", "waiting on a lock (another thread, a future)"),
    ("_json", "json (C)"),
    ("pickle", "pickle (C)"),
    ("sleep", "sleep"),
)

# Where the runner's loop spends its time, by the functions that own each stage.
STAGES = (
    ("poll: fetch and turn into records", (("kafka_python.py", "poll"), ("confluent.py", "poll"))),
    ("process: decode, validate, predict, learn, build outputs", (("partitions.py", "process"),)),
    # The checkpoint (streamwise/checkpoint.py): add() produces a batch's outputs into the
    # open transaction; commit() ends it, then writes the snapshots that are due.
    ("commit: produce and the Kafka transaction", (("checkpoint.py", "add"), ("checkpoint.py", "commit"))),
    ("snapshots (inside commit)", (("partitions.py", "snapshot_due"),)),
    ("lag and metric reports", (("runner.py", "_report"),)),
)


def _package(filename: str, func: str) -> str:
    """Which library a profiled function belongs to, from its file name."""
    if filename in ("~", "") or filename.startswith("<"):
        return next((kind for key, kind in _C_KINDS if key in func), "other C built-ins")
    parts = Path(filename).parts
    if "site-packages" in parts:
        i = parts.index("site-packages")
        top = parts[i + 1] if len(parts) > i + 1 else "?"
        return top.removesuffix(".py")
    if str(ROOT) in filename:
        for name in ("stream", "models", "connectors"):
            if name in parts:
                return f"streamwise/{name}"
        return "streamwise"
    return "python stdlib"


@dataclass
class Profiled:
    """A profile of one service run and the CPU the process spent meanwhile."""

    profiler: cProfile.Profile
    events: int
    wall: float
    main_cpu: float
    process_cpu: float

    def stages(self) -> dict[str, float]:
        """Wall seconds in each stage of the runner's loop (cumulative time)."""
        stats = pstats.Stats(self.profiler).stats  # type: ignore[attr-defined]
        out = {}
        for stage, owners in STAGES:
            out[stage] = sum(
                v[3] for (filename, _line, func), v in stats.items()
                if (Path(filename).name, func) in owners
            )
        return out

    def top_functions(self, n: int) -> list[tuple[str, float]]:
        """The ``n`` functions with the most own time: (short name, seconds)."""
        stats = pstats.Stats(self.profiler).stats  # type: ignore[attr-defined]
        ranked = sorted(stats.items(), key=lambda kv: -kv[1][2])[:n]
        return [(_short_name(f, func), v[2]) for (f, _line, func), v in ranked]


def _short_name(filename: str, func: str) -> str:
    if filename in ("~", "") or filename.startswith("<"):
        return func.replace("<method ", "").replace(" objects>", "").replace("'", "")
    return f"{Path(filename).stem}.{func}"


class ProfileWindow(Clock):
    """A clock that also profiles, from the first record polled to the batch that reaches
    ``n`` events: start-up, the group join and shutdown are left out. cProfile's clock is
    the wall clock, so blocking waits (fetches, transaction round trips) show up."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n
        self.profiler = cProfile.Profile()
        self._marks: tuple[float, float, float] = (0.0, 0.0, 0.0)
        self.result: Profiled | None = None

    @staticmethod
    def _now() -> tuple[float, float, float]:
        return time.perf_counter(), time.thread_time(), time.process_time()

    def on_event_in(self, topic: str, partition: int) -> None:
        if self.first is None:
            self._marks = self._now()
            self.profiler.enable()
        super().on_event_in(topic, partition)

    def on_batch(self, n_records: int, seconds: float) -> None:
        super().on_batch(n_records, seconds)
        if self.events >= self.n and self.result is None:
            self.profiler.disable()
            wall, thread, process = (b - a for a, b in zip(self._marks, self._now(), strict=True))
            self.result = Profiled(self.profiler, self.events, wall, thread, process)


def profile_summary(p: Profiled, top: int = 12) -> str:
    """Per event: the loop's stages, own time per library, and the top functions by own time."""
    us = 1e6 / p.events
    stats = pstats.Stats(p.profiler)
    by_package: dict[str, float] = defaultdict(float)
    total = 0.0
    rows = []
    for (filename, line, func), (_cc, ncalls, tottime, _cum, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        by_package[_package(filename, func)] += tottime
        total += tottime
        rows.append((tottime, ncalls, f"{Path(filename).name}:{line}({func})"))
    out = [
        f"{p.events:,} events; per event, under the profiler: {p.wall * us:.0f} µs of wall time, "
        f"{p.main_cpu * us:.0f} µs of CPU in the main thread, {p.process_cpu * us:.0f} µs of CPU in the "
        "whole process (the rest runs in the client's own threads).",
        "",
        "| stage of the loop (cumulative) | µs/event | share of wall |",
        "|---|---:|---:|",
    ]
    for stage, seconds in p.stages().items():
        out.append(f"| {stage} | {seconds * us:.0f} | {seconds / p.wall:.0%} |")
    out += ["", "| library, own time | µs/event | share |", "|---|---:|---:|"]
    for pkg, t in sorted(by_package.items(), key=lambda kv: -kv[1])[:10]:
        out.append(f"| {pkg} | {t * us:.0f} | {t / total:.0%} |")
    out += ["", "| function, own time | calls | µs/event |", "|---|---:|---:|"]
    for tottime, ncalls, name in sorted(rows, reverse=True)[:top]:
        out.append(f"| `{name}` | {ncalls:,} | {tottime * us:.1f} |")
    return "\n".join(out)


def write_section(section: str, text: str, path: Path) -> None:
    """Replaces ``section`` (a ``## `` heading line) of ``path`` with ``text``, or appends
    it, leaving the other sections as they are: each bench owns its own sections."""
    import re

    doc = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(section)}\n.*?(?=^## |\Z)", re.S | re.M)
    block = f"{section}\n\n{text.strip()}\n\n"
    doc = pattern.sub(lambda _m: block, doc) if pattern.search(doc) else doc.rstrip("\n") + "\n\n" + block
    path.write_text(doc.rstrip("\n") + "\n")


def add_output_args(parser: Any) -> None:
    """``--no-write`` and ``--out``: every bench that owns a section of docs/benchmarks.md."""
    parser.add_argument("--no-write", action="store_true", help="Print the tables only.")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")


def section_heading(started: float, load: float, script: str) -> str:
    """A section's first lines: how long the bench took, how busy the machine was when it
    began (the 1-minute load average), and on what it ran."""
    return f"_{time.perf_counter() - started:.0f} s, load average {load:.1f} at its start; `{script}`_\n\n{machine()}"


def start_services() -> tuple[str, float, float]:
    """Starts (or finds) the dev services for a bench that runs the service itself, with
    their addresses in this process's environment: (bootstrap servers, the start time for
    :func:`section_heading`, the load average now)."""
    os.environ.update(ensure_dev_services())
    return bootstrap(), time.perf_counter(), os.getloadavg()[0]
