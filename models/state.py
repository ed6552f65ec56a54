"""State fingerprints that do not depend on the process that computed them.

Two workers that learned from the same events hold the same models, but their pickles
can still differ byte for byte: a ``set`` of strings pickles in hash order, which
changes with each interpreter's hash seed. :func:`fingerprint` walks the state the
way pickle would (``__reduce_ex__``), but writes sets in sorted order, pydantic models
(configuration) by value, and random generators by type only, so equal learned state
gives equal digests across processes and restarts.
"""

from __future__ import annotations

import contextlib
import hashlib
import pickle
import random
import struct
import sys
import types
from collections.abc import Iterator
from typing import Any

_ATOMS = (type(None), bool, int, str, bytes, bytearray)
_FUNCTIONS = (types.FunctionType, types.BuiltinFunctionType, types.MethodDescriptorType, types.WrapperDescriptorType)


def fingerprint(state: Any) -> str:
    """SHA-256 over a canonical walk of ``state``.

    Examples
    --------
    >>> fingerprint({"b": {1, 2, 3}, "a": [1.5, None]}) == fingerprint({"b": {3, 2, 1}, "a": [1.5, None]})
    True
    >>> fingerprint([1.0]) == fingerprint([1.0000001])
    False
    """
    h = hashlib.sha256()
    _walk(state, h, {})
    return h.hexdigest()


def _encode(obj: Any) -> bytes:
    h = hashlib.sha256()
    _walk(obj, h, {})
    return h.digest()


def _walk(obj: Any, h: Any, seen: dict[int, tuple[int, Any]]) -> None:
    t = type(obj)
    if t in _ATOMS:
        h.update(f"{t.__name__}:{len(repr(obj))}:".encode())
        h.update(repr(obj).encode())
        return
    if t is float:
        h.update(b"f" + struct.pack("<d", obj))
        return
    if isinstance(obj, (type, *_FUNCTIONS)):  # pickled by name, so named here too
        h.update(f"fn:{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', repr(obj))}".encode())
        return
    if isinstance(obj, random.Random) or t.__module__.startswith("numpy.random"):
        # Random generators are named, not hashed: an unseeded one (River's Gaussian
        # keeps one for sampling) differs per process even when nothing drew from it,
        # and a model that does draw shows any divergence in what it learned.
        h.update(f"rng:{t.__qualname__}".encode())
        return
    key = id(obj)
    if key in seen:  # shared reference or cycle: point at the first visit
        h.update(f"ref:{seen[key][0]}".encode())
        return
    # Keep the object alive with its index: the walk makes temporaries (the items of a
    # reduced dict), and a freed temporary's id may be reused by the next one.
    seen[key] = (len(seen), obj)
    if t in (list, tuple):
        h.update(f"{t.__name__}[{len(obj)}]".encode())
        for item in obj:
            _walk(item, h, seen)
        return
    if t is dict:
        h.update(f"dict[{len(obj)}]".encode())
        for k, v in obj.items():
            _walk(k, h, seen)
            _walk(v, h, seen)
        return
    if isinstance(obj, (set, frozenset)):
        h.update(f"{t.__name__}[{len(obj)}]".encode())
        for digest in sorted(_encode(item) for item in obj):
            h.update(digest)
        return
    if hasattr(obj, "__array__") and hasattr(obj, "dtype") and hasattr(obj, "tobytes"):
        h.update(f"array:{obj.dtype}:{getattr(obj, 'shape', '')}".encode())
        h.update(obj.tobytes())
        return
    if hasattr(obj, "model_dump") and hasattr(obj, "__pydantic_fields_set__"):
        # A pydantic model is configuration: equal values are equal, however they were
        # given (explicit defaults change its fields_set, not its meaning).
        h.update(f"pydantic:{t.__module__}.{t.__qualname__}".encode())
        _walk(obj.model_dump(), h, seen)
        return
    reduced = obj.__reduce_ex__(5)
    if isinstance(reduced, str):  # a global such as a singleton
        h.update(f"global:{reduced}".encode())
        return
    func, args, *rest = reduced + (None,) * (5 - len(reduced))
    h.update(f"obj:{t.__module__}.{t.__qualname__}".encode())
    _walk(args, h, seen)
    state, listitems, dictitems = rest[:3]
    _walk(state, h, seen)
    if listitems is not None:
        _walk(list(listitems), h, seen)
    if dictitems is not None:
        _walk(dict(dictitems), h, seen)


# ----- the snapshot payload ----------------------------------------------------------
# One codec for what a snapshot's payload holds, used by the runner (streamwise/partitions.py)
# and the CLI (`streamwise snapshots show`) alike. The payload is only ever decoded after
# its HMAC was checked by the store.


def encode_state(state: dict[str, Any]) -> bytes:
    """A processor's learning state as snapshot payload bytes.

    Examples
    --------
    >>> decode_state(encode_state({"learners": [1, 2]}))
    {'learners': [1, 2]}
    """
    # A raised recursion limit: River's trees are nested node objects whose depth grows
    # with the data (a Hoeffding tree regressor on a steadily increasing feature goes
    # past Python's default limit of 1,000).
    with _deep_recursion():
        return pickle.dumps({"processor": state}, protocol=5)


def decode_state(payload: bytes) -> dict[str, Any]:
    """The processor state held by a (verified) snapshot payload."""
    with _deep_recursion():
        return pickle.loads(payload)["processor"]  # noqa: S301 - verified by its HMAC first


@contextlib.contextmanager
def _deep_recursion(limit: int = 50_000) -> Iterator[None]:
    before = sys.getrecursionlimit()
    sys.setrecursionlimit(max(before, limit))
    try:
        yield
    finally:
        sys.setrecursionlimit(before)
