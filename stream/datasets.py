"""A seeded stream of card transactions with realistic fraud patterns, for examples and tests.

River's bundled datasets have no entity keys or event times, and per-key windowed
features need both. :class:`CardTransactions` generates them: cards with their own
spending habits, and compromised cards whose fraud shows the patterns fraud teams
know (bursts of small "card testing" amounts, then a large one; unusual hours; new
merchants; mostly online). One transaction alone looks ordinary; its card's recent
history gives it away, which is what ``examples/fraud.yaml``'s windowed aggregates
are for.
"""

from __future__ import annotations

import datetime as dt
import math
import random
from collections.abc import Iterator
from typing import Any

__all__ = ["CardTransactions", "MERCHANT_CATEGORIES", "PatientVitals", "StoreDemand", "TrafficFlow"]

MERCHANT_CATEGORIES = ("grocery", "restaurant", "fuel", "travel", "electronics", "fashion", "online_services", "cash")
_START = 1_700_006_400.0  # 2023-11-15T00:00:00Z, a Wednesday
_DAY = 86_400.0


class CardTransactions:
    """Card transactions in event-time order, each a JSON-ready dict; the same seed gives the same stream.

    Fields: ``id``, ``card_id`` (the key), ``ts`` (ISO 8601, UTC), ``amount``,
    ``merchant`` (unbounded ids), ``merchant_category`` (one of
    :data:`MERCHANT_CATEGORIES`), ``channel`` (``pos`` or ``online``) and ``is_fraud``.

    Parameters
    ----------
    n_events
        How many transactions to yield.
    n_cards
        How many cards spend; about six transactions per card and day.
    compromised_share
        The share of cards that suffer a fraud episode.
    seed
        Seeds everything.

    Examples
    --------
    >>> events = list(CardTransactions(n_events=2000, seed=1))
    >>> events[0]["id"], sorted(events[0])
    (0, ['amount', 'card_id', 'channel', 'id', 'is_fraud', 'merchant', 'merchant_category', 'ts'])
    >>> 0.01 < sum(e["is_fraud"] for e in events) / len(events) < 0.08
    True
    >>> events == list(CardTransactions(n_events=2000, seed=1))
    True
    """

    def __init__(
        self, n_events: int = 5000, n_cards: int = 120, compromised_share: float = 0.15, seed: int = 42
    ) -> None:
        self.n_events = n_events
        self.n_cards = n_cards
        self.compromised_share = compromised_share
        self.seed = seed

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rng = random.Random(self.seed)
        n_merchants = 3000
        merchant_category = [rng.choice(MERCHANT_CATEGORIES) for _ in range(n_merchants)]
        # Enough days for n_events at about six transactions per card and day.
        days = max(2.0, self.n_events / (6.0 * self.n_cards) * 1.5)
        rows: list[tuple[float, str, float, int, str, bool]] = []
        for c in range(self.n_cards):
            card = f"card-{c:05d}"
            log_mean = rng.gauss(3.2, 0.5)  # about $25 on a typical purchase
            favourites = rng.sample(range(n_merchants), 6)
            online_share = rng.uniform(0.05, 0.4)
            per_day = rng.uniform(3.0, 9.0)
            t = _START + rng.expovariate(per_day / _DAY)
            while t < _START + days * _DAY:
                hour_of_day = (t % _DAY) / 3600.0
                # People sleep: most night-time arrivals are pushed to the morning.
                if hour_of_day < 6.5 and rng.random() < 0.93:
                    t += (7.0 - hour_of_day) * 3600.0 + rng.uniform(0, 3 * 3600)
                merchant = rng.choice(favourites) if rng.random() < 0.85 else rng.randrange(n_merchants)
                amount = math.exp(rng.gauss(log_mean, 0.7))
                if rng.random() < 0.08:  # coffee, parking: small amounts are ordinary too
                    amount = rng.uniform(1.0, 9.0)
                channel = "online" if rng.random() < online_share else "pos"
                rows.append((t, card, amount, merchant, channel, False))
                t += rng.expovariate(per_day / _DAY)
            if rng.random() < self.compromised_share:
                rows.extend(self._episode(rng, card, log_mean, days, n_merchants))
        rows.sort(key=lambda r: (r[0], r[1]))
        for i, (t, card, amount, merchant, channel, fraud) in enumerate(rows[: self.n_events]):
            yield {
                "id": i,
                "card_id": card,
                "ts": _iso(round(t, 3)),
                "amount": round(amount, 2),
                "merchant": f"m{merchant:05d}",
                "merchant_category": merchant_category[merchant],
                "channel": channel,
                "is_fraud": fraud,
            }

    @staticmethod
    def _episode(
        rng: random.Random, card: str, log_mean: float, days: float, n_merchants: int
    ) -> list[tuple[float, str, float, int, str, bool]]:
        """A compromised card: small test charges in quick succession, then cash-out charges."""
        start_day = math.floor(rng.uniform(0.3, days - 0.2))
        hour = rng.uniform(0.0, 5.0) if rng.random() < 0.6 else rng.uniform(0.0, 24.0)
        t = _START + start_day * _DAY + hour * 3600.0
        out = []
        n_tests = rng.randint(2, 6)
        for _ in range(n_tests):
            out.append((t, card, rng.uniform(0.5, 6.0), rng.randrange(n_merchants),
                        "online" if rng.random() < 0.9 else "pos", True))
            t += rng.expovariate(1 / 150.0)  # about every 2.5 minutes
        for _ in range(rng.randint(1, 3)):
            t += rng.expovariate(1 / 600.0)
            out.append((t, card, math.exp(rng.gauss(log_mean + 1.6, 0.5)), rng.randrange(n_merchants),
                        "online" if rng.random() < 0.8 else "pos", True))
        return out


# Vital signs: the population's baselines (mean, spread between patients) and how far
# one reading moves per step while a patient deteriorates, in the direction of harm.
_VITALS: dict[str, tuple[float, float, float, int]] = {
    # name: (population mean, between-patient std, per-step drift, decimals)
    "heart_rate": (78.0, 10.0, 2.0, 1),
    "resp_rate": (16.0, 2.5, 0.5, 1),
    "systolic_bp": (122.0, 14.0, -2.5, 1),
    "spo2": (96.5, 1.2, -0.25, 2),
    "temperature": (36.9, 0.35, 0.06, 2),
}


class PatientVitals:
    """Vital-sign readings of many patients, in event-time order; the label needs the trajectory.

    Each patient has their own baselines, far apart between patients, and is read about
    every half hour. Their readings come in segments of 6 to 10. In a *deteriorating*
    segment the vitals move steadily in the harmful direction (heart and breathing rate
    up, blood pressure and oxygen saturation down, temperature up), centred on the
    patient's baseline; in a *stable* segment the very same values come in a random
    order. So any order-free summary of a segment (count, mean, min, max, std) has the
    same distribution whether the patient deteriorates or not: only the order of the
    readings tells, and a reading is labelled ``deteriorating`` from the third step of a
    deteriorating segment on, when three readings in a row have moved the same way.

    ``shift`` makes a second, fairer setting: a deteriorating segment is also moved away
    from the baseline by ``shift`` times its span, so windowed means and extremes
    recover part of the signal. ``signal="reading"`` makes a stream without temporal
    signal, for the opposite check: readings scatter around the baseline and the label
    is a threshold on the single reading's shock index (heart rate over blood pressure).

    Fields: ``id``, ``patient_id`` (the key), ``ts`` (ISO 8601, UTC), the five vitals
    and ``deteriorating``.

    Examples
    --------
    >>> events = list(PatientVitals(n_events=3000, n_patients=60, seed=1))
    >>> sorted(events[0])  # doctest: +NORMALIZE_WHITESPACE
    ['deteriorating', 'heart_rate', 'id', 'patient_id', 'resp_rate', 'spo2', 'systolic_bp',
     'temperature', 'ts']
    >>> 0.12 < sum(e["deteriorating"] for e in events) / len(events) < 0.35
    True
    >>> events == list(PatientVitals(n_events=3000, n_patients=60, seed=1))
    True
    """

    def __init__(
        self,
        n_events: int = 5000,
        n_patients: int = 200,
        deteriorating_share: float = 0.4,
        shift: float = 0.0,
        signal: str = "trend",
        seed: int = 42,
    ) -> None:
        if signal not in ("trend", "reading"):
            raise ValueError(f"signal must be 'trend' or 'reading', got {signal!r}")
        self.n_events = n_events
        self.n_patients = n_patients
        self.deteriorating_share = deteriorating_share
        self.shift = shift
        self.signal = signal
        self.seed = seed

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rng = random.Random(self.seed)
        per_patient = math.ceil(self.n_events / self.n_patients * 1.2) + 10
        rows: list[tuple[float, int, dict[str, float], bool]] = []
        for p in range(self.n_patients):
            baseline = {k: rng.gauss(mean, spread) for k, (mean, spread, _, _) in _VITALS.items()}
            t = _START + rng.uniform(0, 1800.0)
            readings: list[tuple[dict[str, float], bool]] = []
            while len(readings) < per_patient:
                readings.extend(self._segment(rng, baseline))
            for values, label in readings[:per_patient]:
                rows.append((t, p, values, label))
                t += rng.uniform(1200.0, 2400.0)  # about every half hour, whatever the state
        rows.sort(key=lambda r: (r[0], r[1]))
        for i, (t, p, values, label) in enumerate(rows[: self.n_events]):
            event: dict[str, Any] = {
                "id": i,
                "patient_id": f"patient-{p:05d}",
                "ts": _iso(round(t, 3)),
            }
            event.update({k: round(v, _VITALS[k][3]) for k, v in values.items()})
            event["spo2"] = min(event["spo2"], 100.0)  # a saturation, in percent
            event["deteriorating"] = label
            yield event

    def _segment(self, rng: random.Random, baseline: dict[str, float]) -> list[tuple[dict[str, float], bool]]:
        n = rng.randint(6, 10)
        if self.signal == "reading":
            out = []
            for _ in range(n):
                values = {k: baseline[k] + rng.gauss(0.0, 3.0 * abs(step)) for k, (_, _, step, _) in _VITALS.items()}
                shock = values["heart_rate"] / values["systolic_bp"]
                out.append((values, shock + rng.gauss(0.0, 0.03) > 0.72))
            return out
        worsening = rng.random() < self.deteriorating_share
        centre = (n - 1) / 2.0
        offset = self.shift * (n - 1) if worsening else 0.0
        steps = [
            {k: baseline[k] + step * (i - centre + offset) + rng.gauss(0.0, 0.5 * abs(step))
             for k, (_, _, step, _) in _VITALS.items()}
            for i in range(n)
        ]
        if not worsening:
            rng.shuffle(steps)  # the same values, in no particular order
        return [(values, worsening and i >= 2) for i, values in enumerate(steps)]


class StoreDemand:
    """Daily unit sales of products in stores, each series with its own level, trend and week.

    Every ``series`` (``"store-03/product-07"``, the key) sells around its own level, which
    drifts by a small trend, with a weekly pattern (busier weekends for some stores,
    busier weekdays for others) and noise; ``promo`` days sell more. Events come one per
    series and day, days in order, series interleaved.

    Fields: ``id``, ``series``, ``store``, ``day`` (ISO 8601 date at midnight UTC),
    ``promo`` (0 or 1) and ``units``.

    Examples
    --------
    >>> events = list(StoreDemand(n_stores=2, n_products=3, n_days=10, seed=1))
    >>> len(events), events[0]["series"], sorted(events[0])
    (60, 'store-00/product-00', ['day', 'id', 'promo', 'series', 'store', 'units'])
    >>> events == list(StoreDemand(n_stores=2, n_products=3, n_days=10, seed=1))
    True
    """

    def __init__(self, n_stores: int = 5, n_products: int = 10, n_days: int = 200, seed: int = 42) -> None:
        self.n_stores = n_stores
        self.n_products = n_products
        self.n_days = n_days
        self.seed = seed

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rng = random.Random(self.seed)
        series = []
        for s in range(self.n_stores):
            weekend = rng.uniform(-0.3, 0.5)  # how much busier this store's weekend is
            for p in range(self.n_products):
                level = math.exp(rng.gauss(3.0, 0.8))
                week = [1.0 + (weekend if d >= 5 else 0.0) + rng.gauss(0.0, 0.05) for d in range(7)]
                series.append((f"store-{s:02d}/product-{p:02d}", f"store-{s:02d}", level,
                               rng.gauss(0.0, 0.002), week))
        i = 0
        for day in range(self.n_days):
            t = _START + day * _DAY
            weekday = dt.datetime.fromtimestamp(t, dt.UTC).weekday()
            for name, store, level, trend, week in series:
                promo = int(rng.random() < 0.08)
                mean = level * (1.0 + trend) ** day * week[weekday] * (1.6 if promo else 1.0)
                units = max(0, round(rng.gauss(mean, 0.15 * mean)))
                yield {"id": i, "series": name, "store": store, "day": _iso(t), "promo": promo, "units": units}
                i += 1


class TrafficFlow:
    """Hourly vehicle counts of road sensors, with a daily and a weekly season.

    Each sensor has its own capacity; flow follows the hour of day (morning and evening
    peaks on weekdays, one broad midday hump at weekends), is lower on weekends, and is
    noisy. One event per sensor and hour, hours in order.

    Fields: ``id``, ``sensor`` (the key), ``ts`` (ISO 8601, UTC) and ``flow``.

    Examples
    --------
    >>> events = list(TrafficFlow(n_sensors=3, n_hours=48, seed=2))
    >>> len(events), sorted(events[0])
    (144, ['flow', 'id', 'sensor', 'ts'])
    >>> by_hour = {}
    >>> for e in events:
    ...     by_hour.setdefault(e["ts"][11:13], []).append(e["flow"])
    >>> sum(by_hour["08"]) > 3 * sum(by_hour["03"])  # rush hour against the night
    True
    """

    def __init__(self, n_sensors: int = 20, n_hours: int = 24 * 28, seed: int = 42) -> None:
        self.n_sensors = n_sensors
        self.n_hours = n_hours
        self.seed = seed

    @staticmethod
    def _profile(hour: float, weekend: bool) -> float:
        def bump(centre: float, width: float) -> float:
            return math.exp(-(((hour - centre) / width) ** 2))

        if weekend:
            return 0.15 + 0.6 * bump(13.0, 4.0)
        return 0.1 + bump(8.0, 1.5) + 0.9 * bump(17.5, 2.0) + 0.4 * bump(12.5, 3.0)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rng = random.Random(self.seed)
        capacity = [rng.uniform(300.0, 2000.0) for _ in range(self.n_sensors)]
        i = 0
        for h in range(self.n_hours):
            t = _START + h * 3600.0
            when = dt.datetime.fromtimestamp(t, dt.UTC)
            weekend = when.weekday() >= 5
            shape = self._profile(when.hour, weekend) * (0.8 if weekend else 1.0)
            for s, cap in enumerate(capacity):
                flow = max(0, round(cap * shape * rng.gauss(1.0, 0.08)))
                yield {"id": i, "sensor": f"sensor-{s:03d}", "ts": _iso(t), "flow": flow}
                i += 1


def _iso(t: float) -> str:
    """ISO 8601 in UTC with a Z, as event times are written."""
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat().replace("+00:00", "Z")
