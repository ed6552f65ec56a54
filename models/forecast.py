"""Forecasting as a task: River's ``time_series`` forecasters, one per key or one for all.

With ``task: forecast`` a pipeline's models are forecasters (``time_series.SNARIMAX``,
``time_series.HoltWinters``, by dotted name like every River model). For every event
each forecaster of the event's series learns ``learn_one(y, x)`` (``y`` is the
``forecast.target`` field, ``x`` the other features), then forecasts the next
``horizon`` values; the processor writes them, with the event time each one refers
to, as the event's forecast record.

Evaluation, as ``river.evaluate.evaluate`` (``river.time_series.evaluate``) does it
    A ``HorizonMetric`` per model: one copy of ``forecast.metric`` per step ahead,
    updated when a forecast's targets have all arrived. With ``score_against: river``
    (the default) the scoring reproduces River's function exactly, including its
    offset: River asks for a forecast *before* learning the value ``y_i`` and scores it
    against ``y_{i+1} ... y_{i+h}``, so its step ``+1`` is two values after the last one
    learned, and it scores nothing until ``h`` values were learned. The forecast written
    after learning ``y_i`` is that same forecast, so it is scored against the values
    *after* the next one. ``score_against: next`` scores each written forecast against
    the ``h`` values that follow it, the ones its event times name.

Bounds
    One set of forecasters per key, at most ``max_keys`` keys (the least recently seen
    dropped first) and none idle for more than ``idle_ttl`` events (of any key): both in
    events, so a replay drops exactly what the first run dropped. A dropped key starts
    afresh when it comes back; its unscored forecasts are dropped with it.

Future features are unknown when forecasting, so ``forecast`` is called without them
(River then uses none: a SNARIMAX regressor sees only its lags for steps ahead).

Examples
--------
>>> import calendar
>>> from river import datasets, evaluate, metrics, time_series
>>> from streamwise.models.catalog import ModelSpec
>>> hw = {"time_series.HoltWinters": {"alpha": 0.3, "beta": 0.1, "gamma": 0.6, "seasonality": 12}}
>>> config = ForecastConfig(target="passengers", horizon=12, per_key=False, period="month")
>>> forecasts = ForecastSet([ModelSpec(name="hw", steps=[hw])], config)
>>> for x, y in datasets.AirlinePassengers():
...     out = forecasts.on_event(None, {"passengers": y}, calendar.timegm(x["month"].timetuple()))
>>> len(out["hw"]), out["hw"][0]["event_time"]
(12, '1961-01-01T00:00:00Z')
>>> river = evaluate.evaluate(datasets.AirlinePassengers(), time_series.HoltWinters(
...     alpha=0.3, beta=0.1, gamma=0.6, seasonality=12), metrics.MAE(), horizon=12)
>>> forecasts.models[0].horizon_metric.get() == river.get()
True
"""

from __future__ import annotations

import calendar
import copy
import datetime as dt
from collections import Counter, OrderedDict, deque
from collections.abc import Hashable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from river import time_series
from streamwise.models.catalog import ModelSpec, build_estimator
from streamwise.models.prequential import make_metric, peek

__all__ = ["ForecastConfig", "ForecastModel", "ForecastSet"]

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


class ForecastConfig(BaseModel):
    """The ``forecast:`` block of a pipeline with ``task: forecast``."""

    model_config = ConfigDict(extra="forbid")

    # The numeric feature whose future values are forecast; the other features are x.
    target: str
    horizon: int = Field(1, ge=1, le=10_000)
    # One set of forecasters per key (the schema's key, else the record key), or one for all.
    per_key: bool = True
    max_keys: int = Field(100_000, ge=1)
    idle_ttl: int | None = Field(None, ge=1)  # in events of any key
    # The spacing of future event times: "month", or a duration like "1h"; by default the
    # key's last gap between events.
    period: str | float | None = None
    # A river.metrics regression metric, kept per step ahead.
    metric: str = "MAE"
    score_against: Literal["river", "next"] = "river"

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, name: str) -> str:
        make_metric(name)
        return name

    @field_validator("period")
    @classmethod
    def _known_period(cls, value: str | float | None) -> str | float | None:
        _period_seconds(value)
        return value


def _period_seconds(value: str | float | None) -> float | None:
    """Seconds between forecast steps, or None for calendar months / the observed gap."""
    if value is None or value == "month":
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    if isinstance(value, str) and len(value) > 1 and value[-1] in _UNITS:
        try:
            seconds = float(value[:-1]) * _UNITS[value[-1]]
        except ValueError:
            seconds = -1.0
        if seconds > 0:
            return seconds
    raise ValueError(f'period must be "month" or a duration like "1h" or "7d", got {value!r}')


def _add_months(t: float, months: int) -> float:
    when = dt.datetime.fromtimestamp(t, dt.UTC)
    month0 = when.month - 1 + months
    year, month = when.year + month0 // 12, month0 % 12 + 1
    day = min(when.day, calendar.monthrange(year, month)[1])
    return when.replace(year=year, month=month, day=day).timestamp()


def _iso(t: float) -> str | None:
    try:
        return dt.datetime.fromtimestamp(t, dt.UTC).isoformat().replace("+00:00", "Z")
    except (ValueError, OverflowError, OSError):
        # A time no datetime holds (years 1 to 9999): the schema refuses such event
        # times, but steps ahead of one near the end, or an ISO time's zone offset, can
        # still cross it. Unknown then, as without a period, rather than a failed event.
        return None


def _months_ahead_iso(t: float, months: int) -> str | None:
    try:
        return _iso(_add_months(t, months))
    except (ValueError, OverflowError, OSError):  # past year 9999, as in _iso
        return None


class _Series:
    """One forecaster of one key, with its forecasts still waiting for their targets."""

    __slots__ = ("model", "pending", "n", "last_t", "gap", "last_seen")

    def __init__(self, model: Any) -> None:
        self.model = model
        # [forecast, values still to skip, targets gathered so far], oldest first
        self.pending: deque[list[Any]] = deque()
        self.n = 0
        self.last_t: float | None = None
        self.gap: float | None = None
        self.last_seen = 0

    def __getstate__(self) -> tuple[Any, ...]:
        return tuple(getattr(self, s) for s in self.__slots__)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        for name, value in zip(self.__slots__, state, strict=True):
            setattr(self, name, value)


class ForecastModel:
    """One named forecaster spec, its horizon metric and its per-key forecasters' count.

    ``metric`` pools every step's errors (for MAE, the mean of the per-step values): the
    single number the runner reports as the model's metric; ``horizon_metric`` is River's
    ``HorizonMetric``, one value per step ahead.
    """

    # What the runner's report reads of every model: a forecaster has no search and
    # no self-training.
    search = None
    self_training = None

    def __init__(self, name: str, steps: list[Any], metric: str) -> None:
        self.name = name
        self.steps = steps
        self.template = build_estimator(steps)
        if not callable(getattr(self.template, "forecast", None)):
            raise ValueError(f"model {name!r} is not a forecaster (no forecast method): use time_series.*")
        self.metric = make_metric(metric)
        self.horizon_metric = time_series.HorizonMetric(make_metric(metric))
        self.n_learned = 0

    def fresh(self) -> Any:
        return copy.deepcopy(self.template)

    def score(self, y_true: list[float], y_pred: list[float]) -> None:
        self.horizon_metric.update(y_true, y_pred)
        for yt, yp in zip(y_true, y_pred, strict=True):
            self.metric.update(yt, yp)

    def report(self) -> dict[str, dict[str, float]]:
        """Per-step values under the names the runner exports (``MAE+1``, ``MAE+2``, ...)."""
        name = type(self.metric).__name__
        return {"cumulative": {f"{name}+{i + 1}": m.get() for i, m in enumerate(self.horizon_metric.metrics)}}


class ForecastSet:
    """The forecasters of a pipeline, driven one event at a time (see the module's docs)."""

    # What the processor and runner read from a set of learners.
    delayed_labels = False

    def __init__(self, specs: list[ModelSpec], config: ForecastConfig) -> None:
        self.config = config
        self.models = [ForecastModel(s.name, s.steps, config.metric) for s in specs]
        self.evaluations = {m.name: m for m in self.models}
        self._series: OrderedDict[Hashable, list[_Series]] = OrderedDict()
        self.n_events = 0
        self.n_evicted_keys = 0
        self._period = _period_seconds(config.period)
        self._learned: Counter[str] = Counter()

    @property
    def champion(self) -> str:
        return self.models[0].name

    @property
    def n_keys(self) -> int:
        return len(self._series)

    def _series_of(self, key: Hashable) -> list[_Series]:
        self.n_events += 1
        key = key if self.config.per_key else None
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = [_Series(m.fresh()) for m in self.models]
        else:
            self._series.move_to_end(key)
        for s in series:
            s.last_seen = self.n_events
        ttl = self.config.idle_ttl
        while ttl is not None and self._series:
            oldest = next(iter(self._series.values()))
            if self.n_events - oldest[0].last_seen < ttl:
                break
            self._series.popitem(last=False)
            self.n_evicted_keys += 1
        while len(self._series) > self.config.max_keys:
            self._series.popitem(last=False)
            self.n_evicted_keys += 1
        return series

    def on_event(self, key: Hashable, x: dict[str, Any], t: float | None) -> dict[str, list[dict[str, Any]] | None]:
        """Scores the forecasts this value completes, learns it, forecasts the next
        ``horizon`` values. ``t`` is the event time in seconds (None: unknown). Returns each
        model's forecast as ``[{"event_time": ..., "value": ...}, ...]``, or None for a
        model that cannot forecast yet."""
        cfg = self.config
        y = float(x[cfg.target])
        features = {k: v for k, v in x.items() if k != cfg.target}
        out: dict[str, list[dict[str, Any]] | None] = {}
        for m, s in zip(self.models, self._series_of(key), strict=True):
            self._score_pending(m, s, y)
            s.model.learn_one(y=y, x=features)
            s.n += 1
            m.n_learned += 1
            self._learned[m.name] += 1
            if t is not None:
                if s.last_t is not None and t > s.last_t:
                    s.gap = t - s.last_t
                s.last_t = t
            try:
                values = [float(v) for v in s.model.forecast(horizon=cfg.horizon)]
            except (IndexError, ZeroDivisionError, ValueError):
                values = None  # not enough values seen yet (e.g. a season not filled)
            if values is None:
                out[m.name] = None
                continue
            if cfg.score_against == "next":
                s.pending.append([values, 0, []])
            elif s.n >= cfg.horizon:
                s.pending.append([values, 1, []])
            times = self._future_times(s)
            out[m.name] = [{"event_time": when, "value": v} for when, v in zip(times, values, strict=True)]
        return out

    def _score_pending(self, m: ForecastModel, s: _Series, y: float) -> None:
        # Completed forecasts are always the oldest: each needs the same number of values.
        for item in s.pending:
            if item[1]:
                item[1] -= 1
            else:
                item[2].append(y)
        while s.pending and len(s.pending[0][2]) == self.config.horizon:
            values, _, targets = s.pending.popleft()
            m.score(targets, values)

    def _future_times(self, s: _Series) -> list[str | None]:
        h = self.config.horizon
        if s.last_t is None:
            return [None] * h
        if self.config.period == "month":
            return [_months_ahead_iso(s.last_t, i + 1) for i in range(h)]
        step = self._period if self._period is not None else s.gap
        if step is None:
            return [None] * h
        return [_iso(s.last_t + step * (i + 1)) for i in range(h)]

    def end_batch(self) -> Counter[str]:
        """Values learned per model since the last call."""
        learned, self._learned = self._learned, Counter()
        return learned

    def report(self) -> dict[str, Any]:
        return {
            "champion": self.champion,
            "models": {
                m.name: {"metric": type(m.metric).__name__, "value": peek(m.metric), "learned": m.n_learned,
                         "horizon": peek(m.horizon_metric)}
                for m in self.models
            },
            "keys": len(self._series),
            "evicted_keys": self.n_evicted_keys,
        }
