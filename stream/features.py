"""Streaming feature extractors: scaling, encoding, windowed aggregates, time and text features.

Each extractor is a River transformer (see :mod:`streamwise.stream.base`) that passes
through the fields it does not touch, so a list of extractors reads like a recipe:
each step adds or replaces a few features. Used by the service, an extractor
transforms an event with its state from before the event and then learns from it.

Memory is bounded by construction: per declared field, per hash bucket, and for the
per-key windowed aggregates, a maximum number of keys and of events per key, with
idle keys evicted.
"""

from __future__ import annotations

import math
import re
import sys
import zlib
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from streamwise.stream.base import (
    StreamComponent,
    finite_or,
    format_duration,
    is_finite_number,
    parse_duration,
    to_epoch_seconds,
)

__all__ = [
    "RunningStandardScaler",
    "RunningMinMaxScaler",
    "OneHotEncoder",
    "FeatureHasher",
    "WindowedAggregates",
    "CyclicTimeFeatures",
    "TextVectorizer",
    "RatioFeature",
    "DifferenceFeature",
    "AGGREGATES",
]


class _ScalerBase(StreamComponent):
    def __init__(self, fields: Iterable[str] | None = None, exclude: Iterable[str] = ()) -> None:
        self.fields = None if fields is None else list(fields)
        self.exclude = list(exclude)
        self._excluded = frozenset(self.exclude)

    def _targets(self, x: dict[str, Any]) -> Iterable[str]:
        if self.fields is not None:
            return self.fields
        return [k for k, v in x.items() if k not in self._excluded and is_finite_number(v)]


class RunningStandardScaler(_ScalerBase):
    """Scales numeric fields to zero mean and unit variance with running (Welford) statistics.

    Parameters
    ----------
    fields
        The fields to scale; ``None`` scales every finite number in the event except
        those in ``exclude`` (the service excludes the id and the event time).
    exclude
        Fields never scaled when ``fields`` is ``None``.

    Examples
    --------
    >>> scaler = RunningStandardScaler(["amount"])
    >>> for v in (1.0, 2.0, 3.0):
    ...     scaler.learn_one({"amount": v, "city": "Lyon"})
    >>> scaler.transform_one({"amount": 4.0, "city": "Lyon"})
    {'amount': 2.449..., 'city': 'Lyon'}
    """

    def __init__(self, fields: Iterable[str] | None = None, exclude: Iterable[str] = ()) -> None:
        super().__init__(fields, exclude)
        self._stats: dict[str, list[float]] = {}  # field -> [n, mean, M2]

    def transform_one(self, x: dict[str, Any]) -> dict[str, Any]:
        out = dict(x)
        for name in self._targets(x):
            value = x.get(name)
            if not is_finite_number(value):
                continue
            n, mean, m2 = self._stats.get(name, (0, 0.0, 0.0))
            std = math.sqrt(m2 / n) if n else 0.0
            # An overflowing float64 or a constant feature scales to the mean, 0.
            out[name] = finite_or((float(value) - mean) / std, 0.0) if std > 0 else 0.0
        return out

    def learn_one(self, x: dict[str, Any]) -> None:
        for name in self._targets(x):
            value = x.get(name)
            if not is_finite_number(value):
                continue
            s = self._stats.setdefault(name, [0, 0.0, 0.0])
            n, mean, m2 = s[0] + 1, s[1], s[2]
            delta = float(value) - mean
            new_mean = mean + delta / n
            new_m2 = m2 + delta * (float(value) - new_mean)
            if math.isfinite(new_mean) and math.isfinite(new_m2):
                s[0], s[1], s[2] = n, new_mean, new_m2


class RunningMinMaxScaler(_ScalerBase):
    """Scales numeric fields by the running minimum and maximum: ``(v - min) / (max - min)``.

    A value beyond the range seen so far scales beyond ``[0, 1]``; that is the
    information an outlier carries.

    Examples
    --------
    >>> scaler = RunningMinMaxScaler(["amount"])
    >>> for v in (10.0, 20.0):
    ...     scaler.learn_one({"amount": v})
    >>> scaler.transform_one({"amount": 15.0}), scaler.transform_one({"amount": 30.0})
    ({'amount': 0.5}, {'amount': 2.0})
    """

    def __init__(self, fields: Iterable[str] | None = None, exclude: Iterable[str] = ()) -> None:
        super().__init__(fields, exclude)
        self._ranges: dict[str, list[float]] = {}

    def transform_one(self, x: dict[str, Any]) -> dict[str, Any]:
        out = dict(x)
        for name in self._targets(x):
            value = x.get(name)
            if not is_finite_number(value):
                continue
            lo, hi = self._ranges.get(name, (0.0, 0.0))
            span = hi - lo
            out[name] = finite_or((float(value) - lo) / span, 0.0) if span > 0 and math.isfinite(span) else 0.0
        return out

    def learn_one(self, x: dict[str, Any]) -> None:
        for name in self._targets(x):
            value = x.get(name)
            if not is_finite_number(value):
                continue
            v = float(value)
            r = self._ranges.get(name)
            if r is None:
                self._ranges[name] = [v, v]
            else:
                r[0], r[1] = min(r[0], v), max(r[1], v)


class OneHotEncoder(StreamComponent):
    """One 0/1 feature per declared category, ``<field>=<category>``, plus ``<field>=__other__``.

    The categories are declared, so the output has the same features on every event,
    whatever arrives; a value outside them sets ``__other__``. Stateless.

    Examples
    --------
    >>> encode = OneHotEncoder({"channel": ["pos", "online"]})
    >>> encode.transform_one({"channel": "online", "amount": 3.0})
    {'amount': 3.0, 'channel=pos': 0.0, 'channel=online': 1.0, 'channel=__other__': 0.0}
    """

    def __init__(self, categories: Mapping[str, Sequence[Any]]) -> None:
        self.categories = {name: list(values) for name, values in categories.items()}
        self._plan: list[tuple[str, dict[str, float], dict[tuple[type, Any], str], str]] | None = None

    def _build_plan(self) -> list[tuple[str, dict[str, float], dict[tuple[type, Any], str], str]]:
        # Per field: every output at 0.0 (copied in one C-level update), and the output
        # each declared value sets, so an event costs one lookup, not a scan of the list
        # (bench/one_hot_scale.py).
        plan = []
        for name, values in self.categories.items():
            zeros = {f"{name}={category}": 0.0 for category in values}
            zeros[f"{name}=__other__"] = 0.0
            index = {(type(category), category): f"{name}={category}" for category in values}
            plan.append((name, zeros, index, f"{name}=__other__"))
        return plan

    def __getstate__(self) -> dict[str, Any]:
        return {"categories": self.categories}  # the plan is derived; rebuilt on first use

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._plan = None

    def transform_one(self, x: dict[str, Any]) -> dict[str, Any]:
        if self._plan is None:
            self._plan = self._build_plan()
        out = dict(x)
        for name, zeros, index, other in self._plan:
            present = name in out and out[name] is not None
            value = out.pop(name, None)
            out.update(zeros)
            if present:
                try:
                    hit = index.get((type(value), value))
                except TypeError:  # an unhashable value is no declared category
                    hit = None
                out[hit or other] = 1.0
        return out


def _bucket(text: str, n_features: int) -> tuple[int, float]:
    # crc32 rather than hash(): Python salts str hashes per process, and a feature's
    # column must not move when the service restarts.
    h = zlib.crc32(text.encode("utf-8", "surrogatepass"))
    return h % n_features, (1.0 if (h >> 31) & 1 == 0 else -1.0)


class FeatureHasher(StreamComponent):
    """Hashes unbounded categorical fields into ``n_features`` signed buckets, ``<prefix>#<i>``.

    For fields such as merchant ids whose values cannot be declared in advance; the
    sign halves the bias of collisions (Weinberger et al., 2009). The replaced fields
    leave the event. Stateless, and the same value lands in the same bucket in every
    process.

    Examples
    --------
    >>> hasher = FeatureHasher(["merchant"], n_features=16)
    >>> hasher.transform_one({"merchant": "m-42", "amount": 3.0})
    {'amount': 3.0, 'hash#...': ...1.0}
    """

    def __init__(self, fields: Iterable[str], n_features: int = 1024, seed: int = 0, prefix: str = "hash") -> None:
        if n_features < 1:
            raise ValueError(f"n_features must be at least 1, got {n_features}")
        self.fields = list(fields)
        self.n_features = n_features
        self.seed = seed
        self.prefix = prefix

    def transform_one(self, x: dict[str, Any]) -> dict[str, Any]:
        out = dict(x)
        for name in self.fields:
            value = out.pop(name, None)
            if value is None:
                continue
            index, sign = _bucket(f"{self.seed}\x00{name}\x00{value}", self.n_features)
            feature = f"{self.prefix}#{index}"
            out[feature] = out.get(feature, 0.0) + sign
        return out


AGGREGATES = ("count", "sum", "mean", "min", "max", "std")


class WindowedAggregates(StreamComponent):
    """Per-key aggregates of numeric fields over sliding event-time windows.

    For each key (say a card) and each window (say 1h and 24h) it outputs the count of
    the key's earlier events in the window and, for each field in ``on`` (the YAML step's
    ``fields``), their sum,
    mean, min, max and standard deviation, as ``<key>.<field>.<aggregate>.<window>``
    (``<key>.count.<window>`` for counts), plus ``<key>.since_last``, the seconds since
    the key's previous event (capped at the longest window). An empty window gives 0.

    The event itself is not in its own aggregates: features describe the past, which
    is what a model can know when it must decide.

    Memory: at most ``max_events_per_key`` events per key, at most ``max_keys`` keys
    (the least recently active leave first), and a key idle for longer than
    ``idle_ttl`` (default: the longest window, after which it holds nothing anyway)
    is evicted. Event times are assumed nearly ordered; an out-of-order event is
    stored as if it arrived at its key's latest time.

    Parameters
    ----------
    by
        The field, or list of fields, that form the key.
    on
        The numeric fields to aggregate (``fields:`` in a pipeline YAML's
        ``window_aggregates`` step).
    windows
        Window lengths: seconds or durations like ``"1h"``.
    time_field
        The event time in seconds since the epoch, or ISO 8601 text.
    aggregates
        Any of ``count, sum, mean, min, max, std``.

    Examples
    --------
    >>> agg = WindowedAggregates("card", ["amount"], ["1h"], "ts", aggregates=["count", "mean"])
    >>> for t, amount in [(0, 10.0), (600, 30.0)]:
    ...     agg.learn_one({"card": "c1", "ts": t, "amount": amount})
    >>> agg.transform_one({"card": "c1", "ts": 1200, "amount": 5.0})
    {'card': 'c1', 'ts': 1200, 'amount': 5.0, 'card.count.1h': 2.0, 'card.amount.mean.1h': 20.0, 'card.since_last': 600.0}
    >>> agg.transform_one({"card": "c1", "ts": 4000})["card.count.1h"]  # the first event left the hour
    1.0
    >>> agg.transform_one({"card": "c2", "ts": 4000})["card.count.1h"]
    0.0
    """

    def __init__(
        self,
        by: str | Sequence[str],
        on: Iterable[str],
        windows: Iterable[str | float],
        time_field: str,
        aggregates: Iterable[str] = AGGREGATES,
        max_events_per_key: int = 1000,
        max_keys: int = 100_000,
        idle_ttl: str | float | None = None,
    ) -> None:
        self.by = by if isinstance(by, str) else list(by)
        self.on = list(on)
        self.windows = list(windows)
        self.time_field = time_field
        self.aggregates = list(aggregates)
        unknown = set(self.aggregates) - set(AGGREGATES)
        if unknown:
            raise ValueError(f"unknown aggregates {sorted(unknown)}; choose from {', '.join(AGGREGATES)}")
        self.max_events_per_key = max_events_per_key
        self.max_keys = max_keys
        self.idle_ttl = idle_ttl
        # Feature names keep the user's spelling of a window ("24h" stays "24h").
        labelled = {parse_duration(w): _window_label(w) for w in reversed(self.windows)}
        self._windows = sorted(labelled.items())
        if not self._windows or self._windows[0][0] <= 0:
            raise ValueError("windows must be one or more positive durations")
        self._longest = self._windows[-1][0]
        self._ttl = self._longest if idle_ttl is None else parse_duration(idle_ttl)
        self._by_fields = [self.by] if isinstance(self.by, str) else self.by
        self._prefix = "_".join(self._by_fields)
        # key -> deque of (time, values); ordered by last activity for eviction.
        self._keys: OrderedDict[Any, deque[tuple[float, tuple[float | None, ...]]]] = OrderedDict()
        self._watermark = -math.inf

    def _key(self, x: dict[str, Any]) -> Any:
        parts = []
        for name in self._by_fields:
            value = x.get(name)
            if value is None:
                return None
            parts.append(value if isinstance(value, (str, int)) else str(value))
        return parts[0] if len(parts) == 1 else tuple(parts)

    def _time(self, x: dict[str, Any]) -> float | None:
        value = x.get(self.time_field)
        if value is None:
            return None
        try:
            return to_epoch_seconds(value)
        except ValueError:
            return None

    def _output_names(self) -> list[tuple[float, str | None, list[list[tuple[str, str]]]]]:
        """Per window, ascending: its length, its count feature's name (None when count is
        not wanted) and, per field in ``on``, (aggregate, feature name) pairs. Built once,
        not per event; computed on first use, so snapshots from before it still load."""
        names = self.__dict__.get("_names")
        if names is None:
            p, want = self._prefix, self.aggregates
            names = self._names = [
                (
                    seconds,
                    f"{p}.count.{label}" if "count" in want else None,
                    [[(agg, f"{p}.{field}.{agg}.{label}") for agg in want if agg != "count"] for field in self.on],
                )
                for seconds, label in self._windows
            ]
        return names

    def transform_one(self, x: dict[str, Any]) -> dict[str, Any]:
        out = dict(x)
        key, t = self._key(x), self._time(x)
        if key is None or t is None:
            return out
        history = self._keys.get(key, ())
        # The key's events in the longest window before t, newest first: history is in
        # time order, so the walk back stops at the window's edge.
        edge = t - self._longest
        times: list[float] = []
        rows: list[tuple[float | None, ...]] = []
        for when, values in reversed(history):
            if when <= edge:
                break
            if when <= t:
                times.append(when)
                rows.append(values)
        k = 0
        for seconds, count_name, per_field in self._output_names():
            # Windows ascend, so each one's events extend the previous one's.
            while k < len(times) and times[k] > t - seconds:
                k += 1
            if count_name is not None:
                out[count_name] = float(k)
            for j, names in enumerate(per_field):
                if names:
                    stats = _aggregate([r[j] for r in rows[:k] if r[j] is not None])
                    for agg, name in names:
                        out[name] = stats[agg]
        out[f"{self._prefix}.since_last"] = min(t - times[0], self._longest) if times else self._longest
        return out

    def learn_one(self, x: dict[str, Any]) -> None:
        key, t = self._key(x), self._time(x)
        if key is None or t is None:
            return
        values = tuple(float(v) if is_finite_number(v) else None for v in (x.get(name) for name in self.on))
        history = self._keys.get(key)
        if history is None:
            history = self._keys[key] = deque()
        else:
            self._keys.move_to_end(key)
            if history and t < history[-1][0]:
                t = history[-1][0]  # keeps each key's history sorted (see the class docstring)
        history.append((t, values))
        while history and history[0][0] <= t - self._longest:
            history.popleft()
        while len(history) > self.max_events_per_key:
            history.popleft()
        self._watermark = max(self._watermark, t)
        while len(self._keys) > self.max_keys:
            self._keys.popitem(last=False)
        # Keys are ordered by last activity, so the idle ones are at the front.
        while self._keys:
            oldest_key, oldest = next(iter(self._keys.items()))
            if oldest and oldest[-1][0] > self._watermark - self._ttl:
                break
            del self._keys[oldest_key]


def _window_label(window: str | float) -> str:
    return window.strip().replace(" ", "") if isinstance(window, str) else format_duration(float(window))


def _aggregate(values: list[float]) -> dict[str, float]:
    if not values:
        return dict.fromkeys(("sum", "mean", "min", "max", "std"), 0.0)
    n = len(values)
    # Each term divided by n before summing, and deviations scaled by the largest
    # magnitude before squaring: no intermediate overflows even near float64's limits.
    mean = math.fsum(v / n for v in values)
    scale = max(abs(v) for v in values) or 1.0
    var = math.fsum(((v - mean) / scale) * ((v - mean) / scale) for v in values) / n
    return {
        "sum": max(-_FLOAT_MAX, min(_FLOAT_MAX, mean * n)),
        "mean": mean,
        "min": min(values),
        "max": max(values),
        "std": finite_or(scale * math.sqrt(var), _FLOAT_MAX),
    }


_FLOAT_MAX = sys.float_info.max


class CyclicTimeFeatures(StreamComponent):
    """Hour of day and day of week as points on a circle: 23:00 is close to 00:00.

    Outputs ``<field>.hour_sin``, ``.hour_cos``, ``.dow_sin`` and ``.dow_cos`` computed
    in UTC shifted by ``utc_offset_hours`` (the users' local time). Stateless.

    Examples
    --------
    >>> cyclic = CyclicTimeFeatures("ts")
    >>> out = cyclic.transform_one({"ts": "2024-01-01T06:00:00Z"})  # a Monday, 06:00
    >>> round(out["ts.hour_sin"], 6), round(out["ts.hour_cos"], 6), round(out["ts.dow_sin"], 6)
    (1.0, 0.0, 0.0)
    """

    def __init__(self, time_field: str, utc_offset_hours: float = 0.0) -> None:
        self.time_field = time_field
        self.utc_offset_hours = utc_offset_hours

    def transform_one(self, x: dict[str, Any]) -> dict[str, Any]:
        out = dict(x)
        value = x.get(self.time_field)
        if value is None:
            return out
        try:
            t = to_epoch_seconds(value) + self.utc_offset_hours * 3600.0
        except ValueError:
            return out
        # Plain arithmetic rather than datetime: no overflow for any finite time.
        day_fraction = (t % 86400.0) / 86400.0
        # The epoch, 1970-01-01, was a Thursday: day 3 when Monday is day 0.
        weekday = ((t // 86400.0) + 3.0) % 7.0
        name = self.time_field
        out[f"{name}.hour_sin"] = math.sin(2 * math.pi * day_fraction)
        out[f"{name}.hour_cos"] = math.cos(2 * math.pi * day_fraction)
        out[f"{name}.dow_sin"] = math.sin(2 * math.pi * weekday / 7.0)
        out[f"{name}.dow_cos"] = math.cos(2 * math.pi * weekday / 7.0)
        return out


_TOKEN = re.compile(r"\w+", re.UNICODE)


class TextVectorizer(StreamComponent):
    """Bag of words or TF-IDF of a text field, with words hashed into ``n_features`` buckets.

    ``mode="tfidf"`` weighs each bucket's term count by its running inverse document
    frequency, ``log((1 + n_docs) / (1 + df)) + 1``, and scales the vector to unit
    length; ``mode="count"`` gives the raw counts. Hashing bounds the vocabulary's
    memory whatever words arrive. The text field leaves the event; features are
    ``<field>#<bucket>``.

    Examples
    --------
    >>> vectorize = TextVectorizer("memo", mode="count", n_features=8)
    >>> out = vectorize.transform_one({"memo": "Gift card gift"})
    >>> sorted(out.values())
    [1.0, 2.0]
    >>> tfidf = TextVectorizer("memo", n_features=64)
    >>> for memo in ["rent", "rent", "rent", "crypto"]:
    ...     tfidf.learn_one({"memo": memo})
    >>> out = tfidf.transform_one({"memo": "rent crypto"})
    >>> [round(v, 3) for v in sorted(out.values())]
    [0.538, 0.843]
    """

    def __init__(self, field: str, mode: str = "tfidf", n_features: int = 4096, max_tokens: int = 10_000) -> None:
        if mode not in ("tfidf", "count"):
            raise ValueError(f"mode must be tfidf or count, got {mode!r}")
        self.field = field
        self.mode = mode
        self.n_features = n_features
        self.max_tokens = max_tokens
        self._n_docs = 0
        self._df: dict[int, int] = {}

    def _counts(self, text: Any) -> dict[int, int]:
        counts: dict[int, int] = {}
        if not isinstance(text, str):
            return counts
        for i, match in enumerate(_TOKEN.finditer(text.lower())):
            if i >= self.max_tokens:  # a bound on per-event work
                break
            index, _ = _bucket(match.group(), self.n_features)
            counts[index] = counts.get(index, 0) + 1
        return counts

    def transform_one(self, x: dict[str, Any]) -> dict[str, Any]:
        out = dict(x)
        counts = self._counts(out.pop(self.field, None))
        if self.mode == "count":
            weights = {i: float(c) for i, c in counts.items()}
        else:
            n = self._n_docs
            weights = {i: c * (math.log((1 + n) / (1 + self._df.get(i, 0))) + 1.0) for i, c in counts.items()}
            norm = math.sqrt(math.fsum(w * w for w in weights.values()))
            if norm > 0:
                weights = {i: w / norm for i, w in weights.items()}
        for i, w in sorted(weights.items()):
            out[f"{self.field}#{i}"] = w
        return out

    def learn_one(self, x: dict[str, Any]) -> None:
        if self.mode == "count":
            return
        self._n_docs += 1
        for i in self._counts(x.get(self.field)):
            self._df[i] = self._df.get(i, 0) + 1


class _BinaryFeature(StreamComponent):
    symbol = "?"

    def __init__(self, left: str, right: str, name: str | None = None) -> None:
        self.left = left
        self.right = right
        self.name = name

    @property
    def output_name(self) -> str:
        return self.name or f"{self.left}{self.symbol}{self.right}"

    def _combine(self, a: float, b: float) -> float | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def transform_one(self, x: dict[str, Any]) -> dict[str, Any]:
        out = dict(x)
        a, b = x.get(self.left), x.get(self.right)
        if is_finite_number(a) and is_finite_number(b):
            value = self._combine(float(a), float(b))
            if value is not None and math.isfinite(value):
                out[self.output_name] = value
        return out


class RatioFeature(_BinaryFeature):
    """``left / right`` as a new feature, e.g. an amount over the card's mean amount.

    Absent when either side is missing or the denominator is 0. Stateless.

    Examples
    --------
    >>> RatioFeature("amount", "card.amount.mean.24h").transform_one({"amount": 90.0, "card.amount.mean.24h": 30.0})
    {'amount': 90.0, 'card.amount.mean.24h': 30.0, 'amount/card.amount.mean.24h': 3.0}
    """

    symbol = "/"

    def _combine(self, a: float, b: float) -> float | None:
        return a / b if b != 0 else None


class DifferenceFeature(_BinaryFeature):
    """``left - right`` as a new feature. Absent when either side is missing. Stateless.

    Examples
    --------
    >>> DifferenceFeature("price", "list_price", name="discount").transform_one({"price": 8.0, "list_price": 10.0})
    {'price': 8.0, 'list_price': 10.0, 'discount': -2.0}
    """

    symbol = "-"

    def _combine(self, a: float, b: float) -> float | None:
        return a - b
