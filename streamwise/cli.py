"""The ``streamwise`` command. Each command parses its options, calls one function and
maps a :class:`StreamwiseError` to one line on stderr and exit code 2."""

from __future__ import annotations

try:
    import logging
    import math
    import signal
    import sys
    import time
    import uuid
    from pathlib import Path
    from typing import Annotated, Any

    import typer

    from streamwise.core.errors import ConfigError, StreamwiseError
    from streamwise.core.settings import Settings
except KeyboardInterrupt:
    # A Ctrl-C in the first tenth of a second lands in these imports, before typer
    # catches it; exit as typer does for a later one (130, nothing printed), not with a
    # traceback of the import.
    raise SystemExit(130) from None


class _Typer(typer.Typer):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # The same between the imports and typer's own handler, while it builds the
        # click command.
        try:
            return super().__call__(*args, **kwargs)
        except KeyboardInterrupt:
            raise SystemExit(130) from None


app = _Typer(
    help="Streaming online learning on Kafka: River and PyTorch models that learn from every event.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

@app.callback()
def _settings_check() -> None:
    # Every command starts by reading the settings once, so that an unknown or misspelt
    # STREAMWISE_ variable stops it with one line naming the key, whatever the command.
    try:
        Settings()
    except StreamwiseError as e:
        raise _fail(e) from None


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
    from streamwise.core.settings import with_changes

    settings = Settings()
    if bootstrap_servers is not None:
        settings.kafka = with_changes(settings.kafka, "--bootstrap-servers", bootstrap_servers=bootstrap_servers)
    return settings


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not verbose:
        logging.getLogger("kafka").setLevel(logging.ERROR)


def _dump_stacks_on_sigusr1() -> None:
    # `kill -USR1 <pid>` writes every thread's stack to stderr and the worker goes on:
    # where a worker that looks stuck is waiting, without stopping it (Java's SIGQUIT).
    import faulthandler

    if not hasattr(signal, "SIGUSR1"):
        return
    try:
        faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True, chain=False)
    except (ValueError, OSError, AttributeError):
        # A stderr without a file descriptor (an embedding or a test runner capturing it):
        # nothing to write the stacks to, and nothing else depends on it.
        pass


def _seconds(value: float | None) -> float | None:
    # click's FloatRange lets NaN through (every comparison with it is false): a NaN
    # --until-idle ran for ever.
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise typer.BadParameter(f"{value} is not a number of seconds (finite, 0 or more)")
    return value


def _interval(value: float) -> float:
    if not (math.isfinite(value) and value > 0):
        raise typer.BadParameter(f"{value} is not a number of seconds above 0")
    return value


def _metrics_url(value: str | None) -> str | None:
    # urllib's own refusals of such a URL ("unknown url type", "nonnumeric port") do not
    # say which option gave it.
    if value is None:
        return None
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port that is not 0 to 65535
    except ValueError as e:
        raise typer.BadParameter(f"{value!r}: {e}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise typer.BadParameter(f"{value!r} is not an http:// or https:// URL (e.g. http://localhost:9108/metrics)")
    return value


def _fail(e: StreamwiseError) -> typer.Exit:
    typer.echo(f"streamwise: {e}", err=True)
    return typer.Exit(2)


def _parse_params(params: list[str]) -> dict[str, Any]:
    import yaml

    from streamwise.pipeline_config import ConfigLoader, yaml_problem

    out: dict[str, Any] = {}
    for p in params:
        k, sep, v = p.partition("=")
        if not sep or not k:
            raise typer.BadParameter(f"{p!r}: expected NAME=VALUE", param_hint="--param")
        try:
            out[k] = yaml.load(v, Loader=ConfigLoader)  # noqa: S506 - 42 → int, 1e-7 → float, true → bool
        except yaml.YAMLError as e:
            raise typer.BadParameter(f"{p!r}: the value is not valid YAML: {yaml_problem(e)}", param_hint="--param") from None
    return out


def _positive_rate(value: float | None) -> float | None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise typer.BadParameter(f"must be a positive number of events per second, got {value}")
    return value


@app.command()
def replay(
    source: Annotated[str, typer.Argument(help="River dataset name (Phishing), synth.<Generator>, or a .csv/.jsonl file.")],
    topic: Annotated[str, typer.Option("--topic", "-t", help="Topic to publish to.")],
    limit: Annotated[int | None, typer.Option(min=0, help="Publish at most this many events.")] = None,
    rate: Annotated[float | None, typer.Option(callback=_positive_rate, help="Events per second (open loop); default as fast as possible.")] = None,
    param: Annotated[list[str], typer.Option("--param", "-p", help="NAME=VALUE for the dataset or generator constructor; repeatable.")] = [],  # noqa: B006
    id_field: Annotated[str, typer.Option(help="Name of the id field added to each event.")] = "id",
    label_field: Annotated[str, typer.Option(help="Name of the label field.")] = "label",
    key_field: Annotated[str | None, typer.Option(help="Field whose value is the record key (default: the id).")] = None,
    partitions: Annotated[int, typer.Option(min=1, max=10_000, help="Partitions of the topic if it has to be created.")] = 1,
    label_share: Annotated[float, typer.Option(min=0.0, max=1.0, help="Keep the label on this share of a River dataset's events (seeded); the rest go unlabelled.")] = 1.0,
    bootstrap_servers: BootstrapOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Publish a dataset into a Kafka topic as JSON events, one per row, each with an id."""
    import itertools

    from rich.progress import Progress

    from streamwise.connectors import make_admin, make_sink
    from streamwise.replay import dataset_size, iter_events, publish

    _logging(verbose)
    try:
        settings = _settings(bootstrap_servers)
        params = _parse_params(param)
        events = iter_events(source, params, limit, id_field, label_field, key_field, label_share)
        # The first event is made before Kafka is asked: a generator parameter refused, or
        # a file that cannot be read, is then named even when no broker is up.
        first = next(events, None)
        if first is not None:
            events = itertools.chain([first], events)
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
    until_idle: Annotated[
        float | None, typer.Option(help="Exit once the input is drained and idle this many seconds.", callback=_seconds)
    ] = None,
    max_events: Annotated[int | None, typer.Option(help="Exit after this many records.")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes in this consumer group, on this host.")] = 1,
    worker_index: Annotated[int, typer.Option(min=0, envvar="STREAMWISE_WORKER_INDEX", show_envvar=True, help="This worker's slot on this host; names its transactional and static member id.")] = 0,
    explain: Annotated[bool, typer.Option("--explain", help="Print which steps run in which stage (scope) and exit.")] = False,
    check: Annotated[bool, typer.Option("--check", help="Check the config and settings, build the pipeline once, and exit: 0 when it would start, 2 with one line per problem. Touches no service.")] = False,
    bootstrap_servers: BootstrapOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Run a pipeline until stopped. SIGINT or SIGTERM finishes the batch in hand, commits it,
    snapshots the state and exits 0. With --workers N, runs N worker processes in one group."""
    from streamwise.pipeline_config import load_pipeline_config
    from streamwise.runner import Runner

    _logging(verbose)
    if explain:
        from streamwise.runner import explain_stages

        try:
            pipeline = load_pipeline_config(config)
        except StreamwiseError as e:
            raise _fail(e) from None
        if pipeline.scope == "global":
            # The same rule as Runner.run, which alone knows the input's partition count.
            if pipeline.input.labels_topic is not None:
                typer.echo("scope: global: two stages through the learn topic (a labels topic always goes through it)")
            else:
                typer.echo("scope: global: two stages through the learn topic when the input topic has more than "
                           "one partition (with one, a single stage runs all of it)")
            typer.echo(explain_stages(pipeline))
        else:
            typer.echo("scope: partition: each input partition runs every step and its own replica of every model")
        return
    if check:
        # What a deployment can run before it rolls out a config: everything `run` checks
        # before it connects (the config, the settings, every model built once).
        from streamwise.runner import check_pipeline_builds, dry_run_problems

        try:
            settings = _settings(bootstrap_servers)
            pipeline = load_pipeline_config(config)
            built = check_pipeline_builds(pipeline)
            # What the start refuses before it connects: the snapshot signing key, and
            # kafka.extra keys or values the client does not take (kafka-python's checked
            # by name and type, librdkafka's by building its clients unconnected).
            if settings.snapshot.enabled:
                settings.snapshot.signing_key_list()
            if settings.kafka.client == "kafka-python":
                from streamwise.connectors import kafka_config

                kafka_config.kafka_python_consumer(settings.kafka, pipeline.group_id)
                kafka_config.kafka_python_producer(settings.kafka, None)
            else:
                from streamwise.connectors import confluent

                confluent.check_config(settings.kafka, pipeline.group_id)
        except StreamwiseError as e:
            raise _fail(e) from None
        # A model that raises on valid events only warns at a start (the others serve);
        # a check before a roll-out says no.
        problems = dry_run_problems(pipeline, built)
        if problems:
            raise _fail(ConfigError("\n".join(problems))) from None
        models = ", ".join(m.name for m in pipeline.models)
        typer.echo(f"{config}: ok: pipeline {pipeline.name}, {pipeline.input.topic} -> {pipeline.output.topic}, "
                   f"models {models}, Kafka client {settings.kafka.client}")
        return
    _dump_stacks_on_sigusr1()
    if workers > 1:
        # Checked once here, so that a bad config or setting is one line, not one per worker.
        from streamwise.runner import check_pipeline_builds

        try:
            _settings(bootstrap_servers)
            check_pipeline_builds(load_pipeline_config(config))
        except StreamwiseError as e:
            raise _fail(e) from None
        raise typer.Exit(_run_workers(workers, sys.argv[1:]))
    try:
        pipeline = load_pipeline_config(config)
        runner = Runner(pipeline, _settings(bootstrap_servers), worker_index=worker_index)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: runner.stop())
        summary = runner.run(until_idle_s=until_idle, max_events=max_events)
    except StreamwiseError as e:
        raise _fail(e) from None
    _print_summary(summary)


def _run_workers(n: int, argv: list[str]) -> int:
    """Starts ``n`` copies of this ``run`` command as separate processes (slots 0..n-1),
    forwards SIGINT/SIGTERM to them and returns the worst exit code. Each process has its
    own interpreter, so River's per-event Python work runs on ``n`` cores."""
    import subprocess
    import threading

    cleaned = [
        a
        for i, a in enumerate(argv)
        if not (a == "--workers" or a.startswith("--workers=") or (i and argv[i - 1] == "--workers"))
    ]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "streamwise", *cleaned, "--worker-index", str(i)],
            stderr=subprocess.PIPE, text=True, errors="replace", bufsize=1,
        )
        for i in range(n)
    ]
    # Every worker meets the same missing setting or unreachable broker at its start and
    # says so in the same "streamwise: ..." line; the parent passes each such line on
    # once. Logs and anything else the workers write go through as they come.
    said: set[str] = set()
    lock = threading.Lock()

    def relay(stream: Any) -> None:
        for line in stream:
            with lock:
                if line.startswith("streamwise: "):
                    if line in said:
                        continue
                    said.add(line)
                sys.stderr.write(line)
                sys.stderr.flush()

    relays = [threading.Thread(target=relay, args=(p.stderr,), daemon=True) for p in procs]
    for t in relays:
        t.start()

    def forward(sig: int, _frame: Any) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(sig)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, forward)
    worst = max(p.wait() for p in procs)
    for t in relays:
        t.join()
    return worst


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


dashboards_app = typer.Typer(
    help="Grafana dashboards built in Python: render them to JSON, push them to Grafana.", no_args_is_help=True
)
app.add_typer(dashboards_app, name="dashboards")
GrafanaUrlOpt = Annotated[
    str | None,
    typer.Option("--grafana-url", envvar="STREAMWISE_GRAFANA__URL", show_envvar=True, help="Grafana's base URL."),
]


def _default_metrics_url() -> str:
    m = Settings().metrics
    scheme = "https" if m.tls_cert_file else "http"
    return f"{scheme}://{m.host}:{m.port or 9108}/metrics"


def _scrape(url: str) -> Any:
    """Reads /metrics with the credentials the service asks for (the metrics settings);
    a self-signed certificate is checked against STREAMWISE_METRICS__TLS_CA_FILE's CA."""
    from streamwise.connectors.prometheus import scrape

    m = Settings().metrics
    auth = None
    if m.basic_auth_username is not None and m.basic_auth_password is not None:
        auth = (m.basic_auth_username, m.basic_auth_password.get_secret_value())
    return scrape(url, auth=auth, cafile=str(m.tls_ca_file) if m.tls_ca_file else None)


@dashboards_app.command("render")
def dashboards_render(
    out: Annotated[Path | None, typer.Option(help="Directory to write into (default deploy/grafana/dashboards).")] = None,
    check: Annotated[bool, typer.Option("--check", help="Write nothing; exit 1 if a checked-in board differs from the code.")] = False,
) -> None:
    """Render the overview, models and data boards to JSON (grafana-foundation-sdk), and the
    Prometheus alerting rules to deploy/prometheus/alerts.yml and alerts-fast.yml."""
    from streamwise import alerts, dashboards

    if out is not None and out.exists() and not out.is_dir():
        raise typer.BadParameter(f"{out} is a file, not a directory", param_hint="--out")
    directory = out or dashboards.DASHBOARD_DIR
    rules_directory = out or alerts.RULES_DIR
    if check:
        stale = dashboards.stale(directory) + alerts.stale(rules_directory)
        if stale:
            typer.echo(f"stale: {', '.join(stale)} (run: streamwise dashboards render)", err=True)
            raise typer.Exit(1)
        typer.echo(f"up to date: {directory}, {rules_directory}")
        return
    try:
        written = dashboards.render(directory) + alerts.render(rules_directory)
    except OSError as e:
        # A directory that cannot be made or written (no permission, a file on its path).
        raise _fail(StreamwiseError(f"cannot write {e.filename or directory}: {e.strerror or e}")) from None
    for path in written:
        typer.echo(f"wrote {path}")


@dashboards_app.command("push")
def dashboards_push(
    grafana_url: GrafanaUrlOpt = None,
    folder: Annotated[str, typer.Option(help="uid (and title) of the Grafana folder to put them in.")] = "streamwise",
    message: Annotated[str, typer.Option(help="Version message Grafana keeps.")] = "streamwise dashboards push",
) -> None:
    """Upload the boards to Grafana with a service-account token from STREAMWISE_GRAFANA__TOKEN."""
    from streamwise import dashboards
    from streamwise.connectors.grafana import Grafana

    settings = Settings().grafana
    try:
        grafana = Grafana(grafana_url or settings.url, settings.token.get_secret_value())
        folder_uid = grafana.ensure_folder(folder, folder)
        for name, build in dashboards.BOARDS.items():
            answer = grafana.push_dashboard(dashboards.to_json(build()), folder_uid, message)
            typer.echo(f"{name}: {answer.get('status', 'success')} {answer.get('url', '')} (version {answer.get('version', '?')})")
    except StreamwiseError as e:
        raise _fail(e) from None


@dashboards_app.command("live")
def dashboards_live(
    metrics_url: Annotated[str | None, typer.Option(help="The pipeline's /metrics (default from STREAMWISE_METRICS__HOST/PORT).", callback=_metrics_url)] = None,
    grafana_url: GrafanaUrlOpt = None,
    stream: Annotated[str, typer.Option(help="Grafana Live stream id: channels stream/<id>/streamwise and .../streamwise_model.")] = "streamwise",
    interval: Annotated[float, typer.Option(help="Seconds between pushes.", callback=_interval)] = 1.0,
    count: Annotated[int | None, typer.Option(help="Stop after this many pushes.")] = None,
) -> None:
    """Push the figures of `streamwise top` to Grafana Live every second (in memory, no history)."""
    from streamwise.connectors.grafana import Grafana
    from streamwise.top import live_lines

    settings = Settings().grafana
    url = metrics_url or _default_metrics_url()
    try:
        grafana = Grafana(grafana_url or settings.url, settings.token.get_secret_value())
        prev = _scrape(url)
        n = 0
        while count is None or n < count:
            time.sleep(interval)
            cur = _scrape(url)
            grafana.push_live(stream, live_lines(prev, cur))
            prev, n = cur, n + 1
    except StreamwiseError as e:
        raise _fail(e) from None


@app.command()
def top(
    url: Annotated[str | None, typer.Option(help="The pipeline's /metrics (default from STREAMWISE_METRICS__HOST/PORT).", callback=_metrics_url)] = None,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes; rates are over this span.", callback=_interval)] = 2.0,
    once: Annotated[bool, typer.Option("--once", help="Print one table (after one interval) and exit.")] = False,
    metric: Annotated[str | None, typer.Option(help="Show only this metric of each model (e.g. Accuracy, LogLoss); default every metric, one row each.")] = None,
) -> None:
    """A live terminal table of throughput, latency, lag and every model's metrics, from /metrics.
    One row per model replica and metric; * marks the champion of the replica's partition."""
    from rich.console import Console
    from rich.live import Live

    from streamwise.top import metric_names, render

    url = url or _default_metrics_url()
    tty = sys.stdout.isatty()
    # Off a terminal nothing wraps, so the output stays one row per line for scripts.
    console = Console(width=None if tty else 400)
    try:
        prev = _scrape(url)
        time.sleep(interval)
        cur = _scrape(url)
        known = metric_names(cur)
        if metric is not None and known and metric not in known:
            raise typer.BadParameter(f"{metric!r} is not reported; the models report {', '.join(known)}", param_hint="--metric")
        if once or not tty:
            console.print(render(prev, cur, url, metric))
            if once:
                return
        with Live(render(prev, cur, url, metric), console=console, auto_refresh=False) as live:
            while True:
                time.sleep(interval)
                prev, cur = cur, _scrape(url)
                live.update(render(prev, cur, url, metric), refresh=True)
    except StreamwiseError as e:
        raise _fail(e) from None
    except KeyboardInterrupt:
        pass


@app.command()
def report(
    config: Annotated[Path, typer.Option("--config", "-c", help="Pipeline YAML: names the topics to read.", envvar="STREAMWISE_PIPELINE", show_envvar=True)],
    out: Annotated[Path, typer.Option("--out", "-o", help="The HTML file to write.")] = Path("streamwise-report.html"),
    since: Annotated[str | None, typer.Option(help="Only records from this time on (ISO 8601, or Unix seconds).")] = None,
    until: Annotated[str | None, typer.Option(help="Only records before this time (ISO 8601, or Unix seconds).")] = None,
    figures_dir: Annotated[Path | None, typer.Option(help="Also write each figure as a PNG into this directory.")] = None,
    bootstrap_servers: BootstrapOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Write one self-contained HTML page of how a pipeline's models learned: prequential
    metric per model with drift and champion changes, label delay, dead letters by stage,
    throughput, latency and the final figures, read back from its Kafka topics."""
    from streamwise.pipeline_config import load_pipeline_config
    from streamwise.report import collect, parse_time, write

    _logging(verbose)

    def when(value: str | None, option: str) -> int | None:
        try:
            return parse_time(value) if value else None
        except StreamwiseError as e:
            raise typer.BadParameter(str(e), param_hint=option) from None

    since_ms, until_ms = when(since, "--since"), when(until, "--until")
    # Checked before the topics are read, which can take a while: a page or a figure
    # that cannot be written would only fail at the end.
    if out.is_dir():
        raise typer.BadParameter(f"{out} is a directory; give the HTML file to write", param_hint="--out")
    if not out.parent.is_dir():
        raise typer.BadParameter(f"{out}: no directory {out.parent}", param_hint="--out")
    if figures_dir is not None and figures_dir.exists() and not figures_dir.is_dir():
        raise typer.BadParameter(f"{figures_dir} is a file, not a directory", param_hint="--figures-dir")
    try:
        pipeline = load_pipeline_config(config)
        analysis = collect(pipeline, _settings(bootstrap_servers), since_ms, until_ms)
        written = write(analysis, out, figures_dir)
    except StreamwiseError as e:
        raise _fail(e) from None
    typer.echo(f"{analysis.predictions:,} predictions, {analysis.labelled:,} labelled, "
               f"{sum(analysis.dead_letters.values()):,} dead letters")
    for path in written:
        typer.echo(f"wrote {path}")


snapshots_app = typer.Typer(
    help="Inspect and roll back the learning-state snapshots kept in Redis.", no_args_is_help=True
)
app.add_typer(snapshots_app, name="snapshots")

PipelineOpt = Annotated[str, typer.Option("--pipeline", help="Pipeline name (the `name:` of its YAML).")]
RedisOpt = Annotated[
    str | None,
    typer.Option("--redis-url", envvar="STREAMWISE_REDIS__URL", show_envvar=True, help="Redis holding the snapshots."),
]


def _store(redis_url: str | None) -> Any:
    from streamwise.connectors.redis_state import open_state_store
    from streamwise.core.settings import with_changes

    settings = Settings()
    redis = settings.redis
    if redis_url:
        redis = with_changes(redis, "--redis-url", url=redis_url)
    # The CLI reads snapshots even where the service runs with them off.
    return open_state_store(redis, settings.snapshot.model_copy(update={"enabled": True}))


@snapshots_app.command("list")
def snapshots_list(pipeline: PipelineOpt, redis_url: RedisOpt = None) -> None:
    """List the kept snapshots of every partition of a pipeline, newest first."""
    try:
        store = _store(redis_url)
        for p in store.partitions(pipeline):
            for info in store.list(pipeline, p):
                age = time.time() - info.created
                offsets = " ".join(f"{k}={v}" for k, v in info.offsets.items())
                typer.echo(
                    f"partition {p}  epoch {info.epoch:>5}  {info.size:>10,} B  {age:8.0f} s ago  "
                    f"owner claim {info.owner}  {offsets}"
                )
    except StreamwiseError as e:
        raise _fail(e) from None


@snapshots_app.command("show")
def snapshots_show(
    pipeline: PipelineOpt,
    partition: Annotated[int, typer.Option(help="Input partition.")],
    epoch: Annotated[int | None, typer.Option(help="Snapshot epoch (default: the newest).")] = None,
    redis_url: RedisOpt = None,
) -> None:
    """Verify one snapshot's signature and describe what it holds."""
    import json as _json
    from dataclasses import asdict

    from streamwise.models.state import decode_state, payload_header

    try:
        store = _store(redis_url)
        infos = store.list(pipeline, partition)
        info = next((i for i in infos if epoch is None or i.epoch == epoch), None)
        if info is None:
            raise StreamwiseError(f"no snapshot {epoch if epoch is not None else ''} for {pipeline}/{partition}")
        snap = store.load(pipeline, partition, info)
        out = asdict(info)
        out["signature"] = "valid" if snap is not None else "INVALID (refused)"
        if snap is not None:
            out["payload"] = payload_header(snap.payload)
            out["models"] = decode_state(snap.payload)["learners"].report()["models"]
        typer.echo(_json.dumps(out, indent=2, default=str))
    except StreamwiseError as e:
        raise _fail(e) from None


@snapshots_app.command("rollback")
def snapshots_rollback(
    pipeline: PipelineOpt,
    partition: Annotated[int, typer.Option(help="Input partition.")],
    epoch: Annotated[int, typer.Option(help="The kept snapshot to make current again.")],
    redis_url: RedisOpt = None,
) -> None:
    """Make an older kept snapshot the newest again. Stop the pipeline first: on its next
    start the partition restores this snapshot and re-learns from its offsets."""
    try:
        info = _store(redis_url).rollback(pipeline, partition, epoch)
    except StreamwiseError as e:
        raise _fail(e) from None
    typer.echo(f"{pipeline}/{partition} now restores from epoch {info.epoch} at {info.offsets}")


def main() -> None:  # pragma: no cover
    app()
