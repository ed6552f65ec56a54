"""The ``streamwise`` command. Each command parses its options, calls one function and
maps a :class:`StreamwiseError` to one line on stderr and exit code 2."""

from __future__ import annotations

import logging
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Annotated, Any

import typer

from streamwise.errors import StreamwiseError
from streamwise.settings import Settings

app = typer.Typer(
    help="Streaming online learning on Kafka: River and PyTorch models that learn from every event.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

BootstrapOpt = Annotated[
    str | None,
    typer.Option(
        "--bootstrap-servers",
        envvar="STREAMWISE_KAFKA__BOOTSTRAP_SERVERS",
        show_envvar=True,
        help="Kafka bootstrap servers, host:port[,host:port].",
    ),
]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Log at INFO level.")]


def _settings(bootstrap_servers: str | None) -> Settings:
    settings = Settings()
    if bootstrap_servers:
        settings.kafka = settings.kafka.model_copy(update={"bootstrap_servers": bootstrap_servers})
    return settings


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not verbose:
        logging.getLogger("kafka").setLevel(logging.ERROR)


def _fail(e: StreamwiseError) -> typer.Exit:
    typer.echo(f"streamwise: {e}", err=True)
    return typer.Exit(2)


def _parse_params(params: list[str]) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for p in params:
        k, sep, v = p.partition("=")
        if not sep or not k:
            raise typer.BadParameter(f"{p!r}: expected NAME=VALUE", param_hint="--param")
        out[k] = yaml.safe_load(v)  # 42 → int, 0.5 → float, true → bool
    return out


@app.command()
def replay(
    source: Annotated[str, typer.Argument(help="River dataset name (Phishing), synth.<Generator>, or a .csv/.jsonl file.")],
    topic: Annotated[str, typer.Option("--topic", "-t", help="Topic to publish to.")],
    limit: Annotated[int | None, typer.Option(help="Publish at most this many events.")] = None,
    rate: Annotated[float | None, typer.Option(help="Events per second (open loop); default as fast as possible.")] = None,
    param: Annotated[list[str], typer.Option("--param", "-p", help="NAME=VALUE for the dataset or generator constructor; repeatable.")] = [],  # noqa: B006
    id_field: Annotated[str, typer.Option(help="Name of the id field added to each event.")] = "id",
    label_field: Annotated[str, typer.Option(help="Name of the label field.")] = "label",
    key_field: Annotated[str | None, typer.Option(help="Field whose value is the record key (default: the id).")] = None,
    partitions: Annotated[int, typer.Option(help="Partitions of the topic if it has to be created.")] = 1,
    bootstrap_servers: BootstrapOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Publish a dataset into a Kafka topic as JSON events, one per row, each with an id."""
    from rich.progress import Progress

    from streamwise.connectors import make_admin, make_sink
    from streamwise.replay import dataset_size, iter_events, publish

    _logging(verbose)
    try:
        settings = _settings(bootstrap_servers)
        params = _parse_params(param)
        events = iter_events(source, params, limit, id_field, label_field, key_field)
        total = dataset_size(source, params)
        total = min(total, limit) if total and limit else (total or limit)
        admin = make_admin(settings.kafka)
        admin.ensure_topics([topic], partitions=partitions)
        admin.close()
        sink = make_sink(settings.kafka)
        started = time.perf_counter()
        # The bar is drawn only on a terminal and vanishes when done.
        with Progress(transient=True, disable=not sys.stdout.isatty()) as progress:
            task = progress.add_task(f"replaying {source}", total=total)
            n = publish(sink, topic, events, rate, on_event=lambda: progress.advance(task))
        sink.close()
    except StreamwiseError as e:
        raise _fail(e) from None
    typer.echo(f"published {n} events to {topic} in {time.perf_counter() - started:.2f} s")


@app.command()
def run(
    config: Annotated[Path, typer.Option("--config", "-c", help="Pipeline YAML.", envvar="STREAMWISE_PIPELINE", show_envvar=True)],
    until_idle: Annotated[float | None, typer.Option(help="Exit once the input is drained and idle this many seconds.")] = None,
    max_events: Annotated[int | None, typer.Option(help="Exit after this many records.")] = None,
    bootstrap_servers: BootstrapOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Run a pipeline until stopped. SIGINT or SIGTERM finishes the batch in hand, commits it and exits 0."""
    from streamwise.pipeline_config import load_pipeline_config
    from streamwise.runner import Runner

    _logging(verbose)
    try:
        pipeline = load_pipeline_config(config)
        runner = Runner(pipeline, _settings(bootstrap_servers))
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: runner.stop())
        summary = runner.run(until_idle_s=until_idle, max_events=max_events)
    except StreamwiseError as e:
        raise _fail(e) from None
    _print_summary(summary)


def _print_summary(summary: Any) -> None:
    typer.echo(
        f"events in: {summary.events_in}   predictions out: {summary.predictions}   "
        f"dead letters: {sum(summary.dead_letters.values())}"
        + (f" {dict(sorted(summary.dead_letters.items()))}" if summary.dead_letters else "")
    )
    typer.echo(
        f"wall time: {summary.wall_seconds:.2f} s   "
        f"throughput: {summary.events_in / summary.busy_seconds if summary.busy_seconds else 0:,.0f} events/s while busy"
    )
    for name, m in summary.metrics.items():
        typer.echo(f"  {name:<20} prequential {m['metric']}: {m['value']:.4f}  (learned from {m['learned']} events)")


@app.command()
def demo(
    events: Annotated[int | None, typer.Option(help="How many Phishing events to replay (default all 1,250).")] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Start local Kafka and Redis if needed, replay River's Phishing dataset with a few
    malformed records mixed in, run the example pipeline on it and print a summary."""
    from streamwise.connectors import make_admin, make_sink
    from streamwise.connectors.records import OutgoingRecord
    from streamwise.devservices import REPO_ROOT, ensure_dev_services
    from streamwise.pipeline_config import load_pipeline_config
    from streamwise.replay import iter_events, publish
    from streamwise.runner import Runner

    _logging(verbose)
    started = time.perf_counter()
    try:
        env = ensure_dev_services()
        settings = _settings(env.get("STREAMWISE_KAFKA__BOOTSTRAP_SERVERS"))
        pipeline = load_pipeline_config(REPO_ROOT / "examples" / "phishing.yaml")
        run_id = uuid.uuid4().hex[:8]
        pipeline.name = f"demo-{run_id}"
        pipeline.input.topic = f"demo-{run_id}.events"
        pipeline.output.topic = f"demo-{run_id}.predictions"
        typer.echo(f"Kafka at {settings.kafka.bootstrap_servers}; topics {pipeline.input.topic} → {pipeline.output.topic}")
        admin = make_admin(settings.kafka)
        admin.ensure_topics([pipeline.input.topic])
        admin.close()
        sink = make_sink(settings.kafka)
        n = publish(sink, pipeline.input.topic, iter_events("Phishing", limit=events))
        # A few records a real stream would carry too: they end in the dead-letter topic.
        for bad in (b"not json", b"\xff\xfe", b'{"id": "x1", "popup_window": "high"}', b"[1, 2]"):
            sink.send(OutgoingRecord(pipeline.input.topic, None, bad))
        sink.flush()
        sink.close()
        typer.echo(f"replayed {n} Phishing events and 4 malformed records")
        summary = Runner(pipeline, settings).run(until_idle_s=1.0)
    except StreamwiseError as e:
        raise _fail(e) from None
    _print_summary(summary)
    typer.echo(f"dead letters are in {pipeline.dead_letter_topic}; predictions in {pipeline.output.topic}")
    typer.echo(f"demo wall time: {time.perf_counter() - started:.1f} s")


def main() -> None:  # pragma: no cover
    app()
