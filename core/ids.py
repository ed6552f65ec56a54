"""Event ids as every part of streamwise compares them (the label join, the
deduplicator): one rule, so that an event the join treats as one is one everywhere."""

from __future__ import annotations

from typing import Any

_INT64 = 2**63


def join_id(event_id: Any) -> Any:
    """The id an event and its label are joined by: the id itself, except that a string
    written as an integer is that integer. A label service often writes an event's id 42
    as "42"; the two name one event, and a strict join would hold every such label until
    it expired, the model never learning. Only the canonical form counts ("042", "+42"
    and "-0" stay strings), within int64. The prediction record keeps the event's own id.

    Examples
    --------
    >>> [join_id(v) for v in (42, "42", "-7", "042", "-0", "4e2", "abc", "٣", str(2**63))]
    [42, 42, -7, '042', '-0', '4e2', 'abc', '٣', '9223372036854775808']
    """
    if type(event_id) is not str or not event_id or len(event_id) > 20:
        return event_id
    digits = event_id[1:] if event_id[0] == "-" else event_id
    if not (digits.isascii() and digits.isdigit()):
        return event_id
    number = int(event_id)
    return number if str(number) == event_id and -_INT64 <= number < _INT64 else event_id
