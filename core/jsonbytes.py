"""Bounded JSON decoding of untrusted record bytes, shared by every input path.

Events (:mod:`streamwise.stream.schema`) and label records
(:mod:`streamwise.models.labels`) both arrive as JSON from producers we do not control.
Both go through :func:`loads_bounded`, so that a limit set for one holds for the other:
a size bound before any parsing, strict UTF-8, and orjson's own nesting limit (1,024
levels, reported as a decode error; the standard library's ``json`` would recurse
until ``RecursionError`` on a deeply nested array, which no handler expects).
"""

from __future__ import annotations

from typing import Any

import orjson


class UnreadableRecord(ValueError):
    """Bytes that are not a JSON value within the limits; the message says which limit."""


def loads_bounded(value: bytes | None, max_bytes: int, what: str = "record") -> Any:
    """The JSON value in ``value``, or :class:`UnreadableRecord`.

    Examples
    --------
    >>> loads_bounded(b'{"id": 1}', 64)
    {'id': 1}
    >>> for bad in (None, b"x" * 65, b"[" * 100_000 + b"]" * 100_000, b"\\xff", b"{"):
    ...     try:
    ...         loads_bounded(bad, 64)
    ...     except UnreadableRecord as e:
    ...         print(str(e)[:47])
    record has no value (tombstone)
    record of 65 bytes exceeds max_event_bytes=64
    record of 200000 bytes exceeds max_event_bytes=
    not UTF-8: 'utf-8' codec can't decode byte 0xff
    not JSON: unexpected end of data: line 1 column
    >>> try:
    ...     loads_bounded(b"[" * 100_000 + b"]" * 100_000, 10**6)
    ... except UnreadableRecord as e:
    ...     print(str(e)[:30])
    not JSON: depth limit exceeded
    """
    if value is None:
        raise UnreadableRecord(f"{what} has no value (tombstone)")
    if len(value) > max_bytes:
        raise UnreadableRecord(f"{what} of {len(value)} bytes exceeds max_event_bytes={max_bytes}")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UnreadableRecord(f"not UTF-8: {e}") from None
    try:
        # orjson: a quarter of json's time per event (measured), and strict JSON: NaN
        # and Infinity are refused, nesting is bounded.
        return orjson.loads(text)
    except orjson.JSONDecodeError as e:
        raise UnreadableRecord(f"not JSON: {e}") from None
