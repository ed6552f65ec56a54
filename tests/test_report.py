"""streamwise/report.py without Kafka: a pipeline's processor (pure, no I/O) runs over
in-memory records, and the report rebuilt from what it wrote must hold the very figures
the processor's own models and evaluations hold, with inline labels and with a labels
topic; the page is one HTML file with its figures embedded."""

from __future__ import annotations

import json
import math
import random
import re
from typing import Any

import pytest
from streamwise.connectors.records import ConsumedRecord

from streamwise.pipeline_config import PipelineConfig, parse_pipeline_config
from streamwise.processor import PipelineProcessor
from streamwise.report import analyse, parse_time, plot_learning, render_html

N = 1200


def _config(labels_topic: str | None) -> PipelineConfig:
    return parse_pipeline_config({
        "name": "unit",
        "input": {"topic": "unit.events", **({"labels_topic": labels_topic} if labels_topic else {})},
        "output": {"topic": "unit.predictions"},
        "schema": {"id": "id", "label": "label", "label_type": "bool",
                   "features": {"x": {"type": "float"}, "z": {"type": "float"}}},
        "task": "classification",
        "metric": "Accuracy",
        "evaluation": {"window": 100, "metrics": "standard"},
        "drift": {"detector": "ADWIN", "policy": "challenger"},
        "models": [
            {"name": "prior", "steps": ["dummy.PriorClassifier"]},
            {"name": "logreg", "steps": ["preprocessing.StandardScaler", "linear_model.LogisticRegression"]},
            {"name": "nb", "steps": ["naive_bayes.GaussianNB"]},
        ],
    })


def _stream(seed: int) -> list[dict[str, Any]]:
    """Labels follow x, then (half way) z: a drift the detectors see."""
    rng = random.Random(seed)
    out = []
    for i in range(N):
        x, z = rng.random(), rng.random()
        out.append({"id": i, "x": x, "z": z, "label": (x if i < N // 2 else z) > 0.5})
    return out


class Topics:
    """What a run wrote, by topic, as the records a reader would get back."""

    def __init__(self) -> None:
        self.records: dict[str, list[ConsumedRecord]] = {}

    def add(self, topic: str, value: bytes, ts_ms: int, headers: Any = (), partition: int = 0) -> ConsumedRecord:
        records = self.records.setdefault(topic, [])
        offset = sum(1 for r in records if r.partition == partition)
        r = ConsumedRecord(topic, partition, offset, None, value, ts_ms, tuple(headers))
        records.append(r)
        return r

    def __getitem__(self, topic: str) -> list[ConsumedRecord]:
        return self.records.get(topic, [])


def _run(
    config: PipelineConfig, delayed: bool, partition: int = 0, topics: Topics | None = None, seed: int = 3,
    untimed: Any = None,
) -> tuple[PipelineProcessor, Topics]:
    """Feeds one partition's processor batches of 50 events (and, delayed, their labels
    30 events later), plus a malformed record, and keeps what it wrote. ``untimed(kind,
    i)``: whether event or label ``i`` comes without a timestamp (Kafka's -1)."""

    def stamp(kind: str, i: int, ts: int) -> int:
        return -1 if untimed is not None and untimed(kind, i) else ts

    processor = PipelineProcessor(config)
    topics = topics or Topics()
    labels_topic = config.input.labels_topic
    pending: list[ConsumedRecord] = []
    events = _stream(seed)
    for start in range(0, N, 50):
        batch = []
        for i, e in enumerate(events[start : start + 50], start=start):
            body = {k: v for k, v in e.items() if not (delayed and k == "label")}
            batch.append(topics.add(config.input.topic, json.dumps(body).encode(), stamp("event", i, 1_000_000 + 10 * i),
                                    (), partition))
            if delayed and i >= 30:
                label = {"id": i - 30, "label": events[i - 30]["label"]}
                assert labels_topic is not None
                pending.append(topics.add(labels_topic, json.dumps(label).encode(),
                                          stamp("label", i - 30, 1_000_000 + 10 * i + 5), (), partition))
        if start == 400:
            batch.append(topics.add(config.input.topic, b"not json", 1_000_000 + 10 * start + 7, (), partition))
        for out in processor.process(batch + pending):
            topics.add(out.topic, out.value, 1_000_000 + 10 * (start + 50), out.headers)
        pending = []
    return processor, topics


@pytest.mark.parametrize("delayed", [False, True], ids=["inline-labels", "labels-topic"])
def test_the_report_rebuilds_the_processors_own_figures(delayed: bool):
    config = _config("unit.labels" if delayed else None)
    processor, topics = _run(config, delayed)
    a = analyse(config, topics[config.output.topic], topics[config.input.topic],
                topics[config.input.labels_topic or ""], topics[config.alerts_topic], topics[config.dead_letter_topic])

    figures = a.figures()
    labelled = N - 30 if delayed else N
    assert a.predictions == N and a.labelled == labelled
    learners = processor.learners
    live = {m.name for m in learners.models}
    assert {"prior", "logreg", "nb"} <= live
    for m in learners.models:
        mine = figures["models"][f"{m.name}[0]"]
        theirs = learners.evaluations[m.name].report()
        # The pipeline's metric: River's own cumulative figure, and the evaluation's rolling one.
        assert mine["cumulative"]["Accuracy"] == m.metric.get()
        assert mine["rolling"] == theirs["rolling"]
        assert {k: v for k, v in mine["cumulative"].items() if k != "Accuracy"} == theirs["cumulative"]
        curve = next(c for c in a.curves if c.model == m.name)
        assert curve.cumulative[-1] == m.metric.get() and curve.x == sorted(curve.x)
    # Drift detections are placed where they happened: after the change of rule.
    drifts = [mk for mk in a.marks if mk.kind == "drift"]
    assert drifts and all(mk.x > N // 2 for mk in drifts)
    assert a.dead_letters == {"decode": 1}
    if delayed:
        # Each label arrived 30 events and 5 ms (0.305 s) after its event.
        assert len(a.label_delays) == labelled and all(abs(d - 0.305) < 1e-9 for d in a.label_delays)
    else:
        assert a.label_delays == [] and a.inline_labels


@pytest.mark.parametrize("untimed", ["every 7th event", "every 7th label", "all events", "all labels"])
def test_records_without_a_timestamp_are_scored_as_the_service_did(untimed: str):
    """Kafka's -1 on some records: the report joins them as the service does (whatever
    the times), learns them where the service read them, and leaves their unknown
    label delay and latency out instead of failing on them."""
    kind, every = untimed.split(" ")[-1].rstrip("s"), 7 if "7th" in untimed else 1
    config = _config("unit.labels")
    processor, topics = _run(config, True, untimed=lambda k, i: k == kind and i % every == 0)
    a = analyse(config, topics[config.output.topic], topics[config.input.topic],
                topics[config.input.labels_topic or ""], topics[config.alerts_topic], topics[config.dead_letter_topic])
    figures = a.figures()
    assert a.predictions == N and a.labelled == N - 30
    for m in processor.learners.models:
        mine = figures["models"][f"{m.name}[0]"]
        assert mine["cumulative"]["Accuracy"] == m.metric.get()
        assert mine["rolling"] == processor.learners.evaluations[m.name].report()["rolling"]
    untimed_joins = len([i for i in range(N - 30) if i % every == 0])
    assert len(a.label_delays) == N - 30 - untimed_joins and all(abs(d - 0.305) < 1e-9 for d in a.label_delays)
    # The time axis starts at the first record with a time, not at 1970.
    assert a.start_s >= 1000.0
    if untimed == "all events":  # no latency known at all
        assert all(math.isnan(v) for v in a.latency_overall)
    else:
        assert all(math.isfinite(v) for v in a.latency_overall)


def test_each_partition_keeps_its_own_replicas_and_champion():
    config = _config(None)
    topics = Topics()
    processors = {p: _run(config, False, p, topics, seed=10 + p)[0] for p in (0, 1)}
    a = analyse(config, topics[config.output.topic], topics[config.input.topic], (), topics[config.alerts_topic])
    figures = a.figures()
    assert a.predictions == 2 * N and {c.partition for c in a.curves} == {0, 1}
    for p, processor in processors.items():
        for m in processor.learners.models:
            mine = figures["models"][f"{m.name}[{p}]"]
            assert mine["cumulative"]["Accuracy"] == m.metric.get() and mine["labelled"] == N
            assert mine["rolling"] == processor.learners.evaluations[m.name].report()["rolling"]
        assert figures["champions"][str(p)] == processor.champion
        reigns = [r for r in a.reigns if r.partition == p]
        assert reigns[0].start == 1 and reigns[-1].end == N
        assert all(r.end + 1 == nxt.start for r, nxt in zip(reigns, reigns[1:], strict=False))
    # One plot and one champion band per partition.
    fig = plot_learning(a)
    assert [ax.get_title().split(":")[0] for ax in fig.axes[::2]] == ["unit, partition 0", "unit, partition 1"]
    assert len(fig.axes) == 4


def test_the_page_is_one_file_with_its_figures():
    config = _config(None)
    _, topics = _run(config, False)
    a = analyse(config, topics[config.output.topic], topics[config.input.topic], (),
                topics[config.alerts_topic], topics[config.dead_letter_topic])
    page = render_html(a)
    assert page.count('src="data:image/svg+xml;base64,') == 2
    assert not re.search(r'(src|href)="(https?:|//)', page) and "<script src" not in page
    embedded = re.search(r'id="streamwise-figures">(.*?)</script>', page, re.S)
    assert embedded and json.loads(embedded.group(1))["models"]["logreg[0]"]["labelled"] == N
    assert "logreg[0]" in page and "decode: 1" in page


@pytest.mark.filterwarnings("error")
def test_an_empty_range_still_makes_a_page():
    for labels_topic in (None, "unit.labels"):
        a = analyse(_config(labels_topic), [], [])
        assert a.predictions == 0 and a.curves == []
        embedded = re.search(r'id="streamwise-figures">(.*?)</script>', render_html(a), re.S)
        assert embedded and json.loads(embedded.group(1))["models"] == {}


def test_a_time_range_limits_what_is_scored():
    config = _config(None)
    _, topics = _run(config, False)
    # The events of the first half only, as a reader given --until would return them.
    cut = 1_000_000 + 10 * (N // 2)
    keep = lambda rs: [r for r in rs if r.timestamp_ms < cut]  # noqa: E731
    a = analyse(config, keep(topics[config.output.topic]), keep(topics[config.input.topic]))
    assert 0 < a.predictions < N and a.labelled == a.predictions
    assert parse_time("1970-01-01T00:16:40") == 1_000_000


def test_the_readme_shows_a_plot_the_report_command_made():
    from pathlib import Path

    import matplotlib.image
    from typer.testing import CliRunner

    from streamwise.cli import app

    repo = Path(__file__).resolve().parents[1]
    readme = (repo / "README.md").read_text()
    image = repo / "docs" / "img" / "credit-drift-learning.png"
    assert "(docs/img/credit-drift-learning.png)" in readme and image.is_file()
    pixels = matplotlib.image.imread(image)
    # The size write() gives the learning figure of a one-partition pipeline (11 x 4 in at 110 dpi).
    assert pixels.shape[:2] == (440, 1210) and float(pixels[..., :3].mean(axis=2).std()) > 0.05
    # The regeneration line names options the command has.
    assert "streamwise report -c examples/credit_drift.yaml --figures-dir docs/img" in readme
    help_text = CliRunner().invoke(app, ["report", "--help"], env={"COLUMNS": "200"}).output
    assert "--figures-dir" in help_text and "--config" in help_text


def _said(output: str) -> str:
    # typer's error box word-wraps: compared without its frame and line breaks.
    return " ".join(output.replace("│", " ").split())


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["-o", "{tmp}"], "Invalid value for --out: {tmp} is a directory; give the HTML file to write"),
        (["-o", "{tmp}/missing/r.html"], "Invalid value for --out: {tmp}/missing/r.html: no directory {tmp}/missing"),
        (["--figures-dir", "{tmp}/a-file"], "Invalid value for --figures-dir: {tmp}/a-file is a file, not a directory"),
        (["--since", "yesterday"], "Invalid value for --since: 'yesterday': expected an ISO 8601 time or Unix seconds"),
        (["--until", "2026-13-01"], "Invalid value for --until: '2026-13-01': expected an ISO 8601 time"),
    ],
)
def test_report_names_the_option_that_cannot_be_used_before_reading_any_topic(tmp_path, args, expected):
    from typer.testing import CliRunner

    from streamwise.cli import app

    (tmp_path / "a-file").write_text("")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    # No broker listens on port 1: the option is refused before Kafka is asked.
    result = CliRunner(env={"COLUMNS": "400"}).invoke(
        app, ["report", "-c", "examples/phishing.yaml", "--bootstrap-servers", "127.0.0.1:1", *args]
    )
    assert result.exit_code == 2, result.output
    assert expected.replace("{tmp}", str(tmp_path)) in _said(result.output)
    assert "Traceback" not in result.output


def test_a_page_or_figure_that_cannot_be_written_is_a_streamwise_error(tmp_path):
    from streamwise.core.errors import StreamwiseError
    from streamwise.report import write

    a = analyse(_config(None), [], [])
    with pytest.raises(StreamwiseError, match=r"r\.html: cannot write the report: No such file or directory"):
        write(a, tmp_path / "missing" / "r.html")
    (tmp_path / "a-file").write_text("")
    with pytest.raises(StreamwiseError, match="cannot make the figures directory"):
        write(a, tmp_path / "r.html", tmp_path / "a-file" / "figures")
