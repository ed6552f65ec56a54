"""Turns a dataset into JSON events and publishes them to a Kafka topic.

A source is one of:

- the name of a River bundled dataset (``Phishing``, ``Bananas``, ``TrumpApproval``, ...);
- ``synth.<Generator>`` for a River synthetic generator, with ``params`` for its
  constructor (``synth.Agrawal`` with ``seed=42``); these are endless, so give a limit.
  A parameter that takes a generator (``ConceptDriftStream``'s ``stream`` and
  ``drift_stream``) is given as ``stream=synth.Agrawal`` plus dotted parameters for it
  (``stream.classification_function=0``);
- ``streamwise.CardTransactions``, the card-fraud stream of ``examples/fraud.yaml``;
  ``streamwise.PatientVitals``, the vital signs of ``examples/patient_deterioration.yaml``;
- a ``.csv`` file (numeric-looking cells become numbers) or a ``.jsonl`` file, one event
  per line; a JSONL line that is not a JSON object is published as it is, which makes
  such files handy for testing dead-lettering.

Each event gets an ``id`` (its position, unless the file already has one) and, for
labelled datasets, the label under ``label_field``.
"""

from __future__ import annotations

import csv
import datetime as dt
import inspect
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from streamwise.core.errors import ConfigError

Event = tuple[bytes | None, bytes]


def _jsonable(v: Any) -> Any:
    if isinstance(v, (dt.datetime, dt.date)):
        return v.isoformat()
    if hasattr(v, "item") and callable(v.item):  # numpy scalars
        return v.item()
    return v


def _given(source: str, params: dict[str, Any]) -> str:
    # River's own messages do not always name the parameter (RandomRBF's n_classes=0 ends
    # in "empty range for randrange()"), so the error repeats what was given.
    # A nested generator is shown by its class: River's repr of one is a multi-line table.
    if not params:
        return f"source: {source}"
    shown = (f"{k}={v!r}" if isinstance(v, (str, int, float, list, dict, type(None))) else f"{k}={type(v).__name__}"
             for k, v in params.items())
    return f"source: {source} with " + ", ".join(shown)


def _one_line(e: Exception) -> str:
    # Some of River's messages span lines (Friedman's about its seed); the CLI prints one.
    return " ".join(str(e).split())


def _build(cls: Any, source: str, params: dict[str, Any]) -> Any:
    try:
        return cls(**params)
    except (TypeError, ValueError) as e:
        # An unknown name, or a value the constructor checks and refuses (Agrawal's
        # classification_function=99).
        raise ConfigError(f"{_given(source, params)}: {_one_line(e)}") from None


def _produced(dataset: Any, source: str, params: dict[str, Any]) -> Iterator[Any]:
    """The dataset's items, where an error raised while making one is the parameters' fault:
    generators check some of them only when they draw (a ``seed`` of the wrong type)."""
    items = iter(dataset)
    while True:
        try:
            item = next(items)
        except StopIteration:
            return
        except (TypeError, ValueError, IndexError, KeyError, ArithmeticError) as e:
            raise ConfigError(f"{_given(source, params)}: {type(e).__name__}: {_one_line(e)}") from None
        yield item


def _synth_generator(source: str, params: dict[str, Any]) -> Any:
    """``synth.<Generator>(**params)``, where ``params`` may hold nested generators:
    ``{"stream": "synth.Agrawal", "stream.seed": 42}`` passes ``stream=synth.Agrawal(seed=42)``."""
    from river.datasets import synth

    cls = getattr(synth, source.removeprefix("synth."), None)
    if not inspect.isclass(cls):
        raise ConfigError(f"source: unknown River synthetic generator {source!r}")
    own: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for key, value in params.items():
        head, dot, rest = key.partition(".")
        if dot:
            nested.setdefault(head, {})[rest] = value
        else:
            own[key] = value
    for head, inner in nested.items():
        generator = own.get(head)
        if not (isinstance(generator, str) and generator.startswith("synth.")):
            given = f"{head}.{next(iter(inner))}"
            raise ConfigError(f"source: {source}: {given} given, but {head} is not a synth.<Generator>")
        own[head] = _synth_generator(generator, inner)
    for key, value in own.items():
        if key not in nested and isinstance(value, str) and value.startswith("synth."):
            own[key] = _synth_generator(value, {})
    return _build(cls, source, own)


def _river_dataset(source: str, params: dict[str, Any]) -> Any:
    from river import datasets

    if source.startswith("synth."):
        return _synth_generator(source, params)
    names = {n.lower(): n for n in dir(datasets) if inspect.isclass(getattr(datasets, n))}
    name = names.get(source.lower())
    if name is None:
        raise ConfigError(f"source: {source!r} is not a River dataset, synth.<Generator>, .csv or .jsonl file")
    return _build(getattr(datasets, name), source, params)


def _streamwise_dataset(source: str, params: dict[str, Any]) -> Any:
    from streamwise.stream import datasets

    cls = getattr(datasets, source.removeprefix("streamwise."), None)
    if not inspect.isclass(cls):
        known = ", ".join(f"streamwise.{name}" for name in datasets.__all__ if inspect.isclass(getattr(datasets, name)))
        raise ConfigError(f"source: unknown streamwise dataset {source!r} (known: {known})")
    return _build(cls, source, params)


def _number(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def iter_events(
    source: str,
    params: dict[str, Any] | None = None,
    limit: int | None = None,
    id_field: str = "id",
    label_field: str = "label",
    key_field: str | None = None,
    label_share: float = 1.0,
) -> Iterator[Event]:
    """Yields ``(key, value)`` pairs of the events to publish, in dataset order.

    ``label_share`` below 1 keeps the label of a River dataset's event with that
    probability (seeded, so the same events keep it on every replay) and publishes the
    others unlabelled: a stream where most events never get a label (self-training).
    """
    import random

    params = params or {}
    keep_label = random.Random(0).random if label_share < 1.0 else None
    path = Path(source)
    n = 0

    def encode(obj: dict[str, Any]) -> Event:
        key_value = obj.get(key_field or id_field)
        key = None if key_value is None else str(key_value).encode()
        return key, json.dumps(obj, separators=(",", ":"), allow_nan=True).encode()

    if path.suffix.lower() in {".jsonl", ".ndjson"}:
        if not path.is_file():
            raise ConfigError(f"source: no such file {source}")
        with path.open("rb") as f:
            for line in f:
                if limit is not None and n >= limit:
                    return
                line = line.rstrip(b"\r\n")
                if not line:
                    continue
                try:
                    obj = json.loads(line)
                except ValueError:
                    obj = None
                if isinstance(obj, dict):
                    obj.setdefault(id_field, n)
                    yield encode(obj)
                else:
                    yield None, line
                n += 1
        return
    if path.suffix.lower() == ".csv":
        if not path.is_file():
            raise ConfigError(f"source: no such file {source}")
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            try:
                for row in reader:
                    if limit is not None and n >= limit:
                        return
                    # DictReader puts the cells past the header under None and fills a
                    # short row with None: neither is an event the header describes.
                    if None in row or None in row.values():
                        cells = sum(v is not None for k, v in row.items() if k is not None) + len(row.get(None) or ())
                        raise ConfigError(
                            f"source: {source}, line {reader.line_num}: {cells} field{'s' if cells != 1 else ''}, "
                            f"the header has {len(reader.fieldnames or ())}"
                        )
                    obj = {k: _number(v) for k, v in row.items() if v != ""}
                    obj.setdefault(id_field, n)
                    yield encode(obj)
                    n += 1
            except UnicodeDecodeError as e:
                line = _first_undecodable_line(path)
                where = f", line {line}" if line is not None else ""
                raise ConfigError(f"source: {source}{where}: not UTF-8 text ({e.reason})") from None
            except csv.Error as e:
                raise ConfigError(f"source: {source}, line {reader.line_num}: {e}") from None
        return
    if source.startswith("streamwise."):
        # Streams shipped with streamwise yield whole events (id, key and label included).
        for obj in _produced(_streamwise_dataset(source, params), source, params):
            if limit is not None and n >= limit:
                return
            yield encode({k: _jsonable(v) for k, v in obj.items()})
            n += 1
        return
    dataset = _river_dataset(source, params)
    for x, y in _produced(dataset, source, params):
        if limit is not None and n >= limit:
            return
        obj = {id_field: n, **{str(k): _jsonable(v) for k, v in x.items()}}
        if y is not None and (keep_label is None or keep_label() < label_share):
            obj[label_field] = _jsonable(y)
        yield encode(obj)
        n += 1


def _first_undecodable_line(path: Path) -> int | None:
    # The text reader decodes a block at a time, so its error does not say which line;
    # a newline byte never occurs inside a UTF-8 character, so lines decode one by one.
    with path.open("rb") as f:
        for number, line in enumerate(f, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return None


def dataset_size(source: str, params: dict[str, Any] | None = None) -> int | None:
    """Number of events in a bundled dataset, when River knows it."""
    try:
        if Path(source).suffix:
            return None
        return getattr(_river_dataset(source, params or {}), "n_samples", None)
    except ConfigError:
        return None


def publish(
    sink: Any,
    topic: str,
    events: Iterator[Event],
    rate: float | None = None,
    on_event: Any = None,
) -> int:
    """Sends the events to ``topic``; with ``rate``, paced open-loop at that many per second."""
    from streamwise.connectors.records import OutgoingRecord

    start = time.perf_counter()
    n = 0
    for key, value in events:
        if rate:
            delay = start + n / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        sink.send(OutgoingRecord(topic=topic, key=key, value=value))
        n += 1
        if on_event:
            on_event()
        if n % 10_000 == 0:
            sink.flush()  # bounds the futures kept in memory
    sink.flush()
    return n
