"""The snapshot payload codec, and state fingerprints that do not depend on the process.

Codec. :func:`encode_state` and :func:`decode_state` are the one reader and writer of
a snapshot's payload (the runner's snapshots and restores, the CLI's ``snapshots
show``, and the processor's in-memory checkpoints all use them). A payload is a
header line naming the payload format and the library versions that wrote it, then
a pickle. It is read back by an allow-listing unpickler: only the classes a learning
state legitimately holds (River's estimators and statistics, numpy arrays and
generators, ``collections``, and streamwise's own ``models`` and ``stream`` classes)
may be named by it, so a payload holding any other global (``os.system``,
``builtins.open``, ``numpy.save``) is refused before anything is called. Torch
weights never go through pickle's globals: the learner stores ``torch.save`` bytes and
reads them with ``torch.load(weights_only=True)``. The upgrade rule is written in
``docs/snapshots.md``.

Fingerprints. Two workers that learned from the same events hold the same models, but their pickles
can still differ byte for byte: a ``set`` of strings pickles in hash order, which
changes with each interpreter's hash seed. :func:`fingerprint` walks the state the
way pickle would (``__reduce_ex__``), but writes sets in sorted order, pydantic models
(configuration) by value, and random generators by type only, so equal learned state
gives equal digests across processes and restarts.
"""

from __future__ import annotations

import copyreg
import hashlib
import io
import json
import pickle
import random
import struct
import sys
import types
from collections.abc import Iterator
from typing import Any

import numpy
import river
from streamwise.core.errors import StreamwiseError

# The payload format this streamwise writes. 1: a bare pickle of {"processor": state,
# "positions": ...} (before the header existed); 2: the header line, then a pickle of
# the processor state alone; 3: as 2, with plain objects written to be restored
# attribute by attribute (see _set_attributes below), a global that a reader of 2 does
# not allow. docs/snapshots.md says what each version reads.
PAYLOAD_FORMAT = 3
_MAGIC = b"streamwise-state "


class SnapshotFormatError(StreamwiseError):
    """A verified payload that this streamwise cannot, or will not, turn back into state."""


def library_versions() -> dict[str, str]:
    """The versions of the libraries whose classes a payload pickles."""
    python = "{}.{}".format(*sys.version_info[:2])
    versions = {"python": python, "river": river.__version__, "numpy": numpy.__version__}
    torch = sys.modules.get("torch")  # never imported here: River-only installs have none
    if torch is not None:
        versions["torch"] = str(torch.__version__)
    return versions


def encode_state(state: Any) -> bytes:
    """A learning state as payload bytes: the format header, then the pickle.

    Examples
    --------
    >>> from collections import Counter
    >>> payload = encode_state({"seen": Counter("abca")})
    >>> payload.split(b"\\n", 1)[0].startswith(b'streamwise-state {"format":3')
    True
    >>> decode_state(payload)
    {'seen': Counter({'a': 2, 'b': 1, 'c': 1})}
    """
    header = json.dumps({"format": PAYLOAD_FORMAT, "versions": library_versions()}, separators=(",", ":"))
    ensure_deep_recursion()
    out = io.BytesIO()
    out.write(_MAGIC + header.encode() + b"\n")
    pickler = pickle.Pickler(out, protocol=5)
    pickler.dispatch_table = _REDUCERS
    pickler.dump(state)
    return out.getvalue()


# ---- objects that decode with their attributes stored inline ----------------------
#
# CPython 3.11 keeps a plain object's attributes in a compact array shared with its
# class (no per-object dict), which its specialised attribute reads rely on. Reading
# ``obj.__dict__``, as pickle's default reduction does, turns that array into a real
# dict for good, and the object's attribute reads take a slower path from then on:
# measured on a Hoeffding tree over Phishing, learn_one 21 -> 27 µs and predict 7 -> 8
# µs once it had been pickled, for the rest of its life. Unpickling the usual way
# writes the state through ``__dict__`` too, so a restored model is as slow.
#
# The state is therefore written so that each plain object comes back by setting its
# attributes one by one on a fresh instance (pickle's ``state_setter``), which keeps
# them inline; a learner pickled for a checkpoint or a snapshot is then replaced by
# its decoded copy (streamwise/processor.py, ``_GuardedProcessor.refresh``). The bytes
# read back into the same objects; only how they are stored differs.


def _set_attributes(obj: Any, state: dict[str, Any]) -> None:
    """Sets a decoded object's attributes as its constructor would (inline)."""
    try:
        for name, value in state.items():
            object.__setattr__(obj, name, value)
    except TypeError:  # a non-string key put in __dict__ by hand: as pickle would
        obj.__dict__.update(state)


def _reduce_inline(obj: Any) -> tuple[Any, ...]:
    return (copyreg.__newobj__, (type(obj),), obj.__dict__, None, None, _set_attributes)


def _reduce_as_usual(obj: Any) -> Any:
    return obj.__reduce_ex__(5)


def _inline_reducer(cls: type) -> Any:
    """The reducer for ``cls``: inline when pickle would write its instances as their
    ``__dict__`` alone (no hook of the class's own), as usual otherwise."""
    if issubclass(cls, (dict, list, set, frozenset, tuple, BaseException)):
        return _reduce_as_usual
    if cls.__reduce_ex__ is not object.__reduce_ex__ or cls.__reduce__ is not object.__reduce__:
        return _reduce_as_usual
    if getattr(cls, "__getstate__", None) is not object.__getstate__ or hasattr(cls, "__setstate__"):
        return _reduce_as_usual
    if not hasattr(cls, "__dict__") or any(vars(c).get("__slots__") for c in cls.__mro__[:-1]):
        return _reduce_as_usual
    # Setting an attribute that a data descriptor (a property) of the class names would
    # call the descriptor, where pickle writes the dict entry: such an object, should
    # one ever hold that entry, is written as usual.
    guarded = frozenset(
        k for c in cls.__mro__[:-1] for k, v in vars(c).items()
        if (hasattr(v, "__set__") or hasattr(v, "__delete__")) and k not in ("__dict__", "__weakref__")
    )
    if not guarded:
        return _reduce_inline

    def reduce_unless_shadowed(obj: Any) -> Any:
        state = obj.__dict__
        if guarded.isdisjoint(state):
            return (copyreg.__newobj__, (cls,), state, None, None, _set_attributes)
        return obj.__reduce_ex__(5)

    return reduce_unless_shadowed


class _Reducers(dict):  # type: ignore[type-arg]
    """The pickler's dispatch table: each class's reducer, decided at its first instance."""

    def __missing__(self, cls: type) -> Any:
        if issubclass(cls, type):  # a metaclass's instance, i.e. a class: pickle names it
            raise KeyError(cls)
        # A table of its own hides copyreg's global one, which pickle otherwise consults.
        registered = copyreg.dispatch_table.get(cls)  # type: ignore[attr-defined]
        reducer = registered or _inline_reducer(cls)
        self[cls] = reducer
        return reducer


_REDUCERS = _Reducers()


def payload_header(payload: bytes) -> dict[str, Any]:
    """The header of a payload; format 1 payloads (no header) give ``{"format": 1}``."""
    if not payload.startswith(_MAGIC):
        return {"format": 1, "versions": {}}
    line, _, _ = payload.partition(b"\n")
    try:
        header = json.loads(line[len(_MAGIC) :])
    except ValueError:
        raise SnapshotFormatError("snapshot payload header is not JSON") from None
    if not isinstance(header, dict) or not isinstance(header.get("format"), int):
        raise SnapshotFormatError("snapshot payload header has no format number")
    return header


def decode_state(payload: bytes) -> Any:
    """The learning state in payload bytes; :class:`SnapshotFormatError` if it cannot be read.

    Examples
    --------
    >>> import os, pickle
    >>> class Gadget:
    ...     def __reduce__(self):
    ...         return (os.system, ("echo owned",))
    >>> try:
    ...     decode_state(encode_state({"model": Gadget()}))
    ... except SnapshotFormatError as e:
    ...     print(e)
    snapshot refused: it names posix.system, which no learning state holds
    """
    header = payload_header(payload)
    fmt = header["format"]
    if fmt > PAYLOAD_FORMAT:
        raise SnapshotFormatError(
            f"snapshot payload format {fmt} was written by a newer streamwise; this one reads formats 1 to "
            f"{PAYLOAD_FORMAT}"
        )
    written = (header.get("versions") or {}).get("river", river.__version__)  # format 1 ran on this River
    migrate = _river_migration(written, river.__version__)
    body = payload.partition(b"\n")[2] if fmt >= 2 else payload
    ensure_deep_recursion()
    try:
        state = _AllowListUnpickler(io.BytesIO(body)).load()
    except SnapshotFormatError:
        raise
    except Exception as e:  # a class renamed or changed by a library upgrade, or corrupt bytes
        written = header.get("versions") or {}
        now = library_versions()
        changed = ", ".join(
            f"{k} {written[k]} -> {now.get(k, 'absent')}" for k in sorted(written) if written[k] != now.get(k)
        )
        raise SnapshotFormatError(
            f"snapshot cannot be read by this streamwise ({type(e).__name__}: {e})"
            + (f"; written with {changed}" if changed else "")
        ) from None
    migrate(state)
    if fmt == 1:
        # Format 1 wrapped the state with the positions it covered, which the manifest's
        # signed offsets already say.
        if not isinstance(state, dict) or "processor" not in state:
            raise SnapshotFormatError("format 1 snapshot payload has no processor state")
        state = state["processor"]
    return state


def _minor(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".")[:2] if part.isdigit())


def _river_migration(written: str, running: str) -> Any:
    """What makes a state pickled under River ``written`` right under River ``running``,
    or :class:`SnapshotFormatError` when no such step is known (docs/snapshots.md).

    Within one minor release River keeps its pickles; across minors a state is loaded
    only through a migration listed in ``_RIVER_MIGRATIONS`` and checked by
    tests/test_snapshot_upgrade.py against a fixture written by the older release.
    """
    if _minor(written) == _minor(running):
        return lambda state: None
    migrate = _RIVER_MIGRATIONS.get((_minor(written), _minor(running)))
    if migrate is None:
        raise SnapshotFormatError(
            f"snapshot written with river {written}; this streamwise runs river {running} and knows no "
            "migration from it"
        )
    return migrate


def _instances(root: Any, cls: type) -> Iterator[Any]:
    """Every object of type ``cls`` reachable from ``root`` through containers and attributes."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, (str, bytes, int, float, bool, type(None))):
            continue
        seen.add(id(obj))
        if isinstance(obj, cls):
            yield obj
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        elif hasattr(obj, "__dict__"):
            stack.extend(vars(obj).values())


def _river_025_to_026(state: Any) -> None:
    """River 0.26's Pipeline routes arguments through a plan of its steps that it
    caches (``_build_plan``); a 0.25 pipeline unpickles without it, or with 0.25's
    layout of it, and fails at its first prediction. Rebuilding the plan is all the
    fixtures need (tests/test_snapshot_upgrade.py compares predictions)."""
    from river import compose

    for pipeline in _instances(state, compose.Pipeline):
        pipeline._plan = None
        pipeline._build_plan()


_RIVER_MIGRATIONS = {((0, 25), (0, 26)): _river_025_to_026}


# River's trees are nested node objects whose depth grows with the data (a Hoeffding
# tree regressor on a steadily increasing feature goes past Python's default limit of
# 1,000), so pickling and unpickling them needs more than the default recursion.
DEEP_RECURSION_LIMIT = 50_000


def ensure_deep_recursion() -> None:
    """Raises the interpreter's recursion limit to :data:`DEEP_RECURSION_LIMIT`, for good.

    Never lowered again, and never raised only around a pickle: the limit is one value
    for the whole process, and River reads it into learned state. A Hoeffding tree (and
    a stochastic gradient tree) without ``max_depth`` takes ``recursionlimit - 20`` when
    it is built, which happens while learning too (a forest's new trees, an ensemble's
    reset members), in any thread. Raised only around each pickle, a tree built in one
    thread while another pickled a checkpoint got a ``max_depth`` of 49,980 instead of
    980, and two pickles overlapping in two threads restored each other's "before" and
    left the limit raised for good: equal learning gave different states (about one
    taken-over learner in five, tests/test_global_scope.py). Called when this module is
    imported (every streamwise process that builds or snapshots a model imports it), by
    :func:`~streamwise.models.catalog.build_estimator`, and before each pickle, in case
    something lowered the limit since.

    Examples
    --------
    >>> ensure_deep_recursion()
    >>> sys.getrecursionlimit() >= DEEP_RECURSION_LIMIT
    True
    """
    if sys.getrecursionlimit() < DEEP_RECURSION_LIMIT:
        sys.setrecursionlimit(DEEP_RECURSION_LIMIT)


ensure_deep_recursion()


# ---- the allow-list ----------------------------------------------------------------

_BUILTINS = frozenset(
    "set frozenset dict list tuple float int complex bool str bytes bytearray slice range object".split()
)
# Globals that are not classes, named one by one: how numpy rebuilds arrays, scalars
# and generators, and the helpers River's estimators keep (SoftmaxRegression keeps a
# partial of copy.deepcopy as a defaultdict factory).
_ALLOWED_FUNCTIONS = frozenset(
    {
        ("copyreg", "_reconstructor"),
        ("streamwise.models.state", "_set_attributes"),
        ("functools", "partial"),
        ("copy", "deepcopy"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy.random._pickle", "__randomstate_ctor"),
        ("numpy.random._pickle", "__bit_generator_ctor"),
        ("numpy.random._pickle", "__generator_ctor"),
    }
)
_CLASSES = frozenset({("collections", n) for n in ("OrderedDict", "defaultdict", "deque", "Counter")}) | {
    ("random", "Random"),
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
}
# Modules whose classes a state may hold. Functions in them are not allowed (numpy.save
# writes a file; a class's constructor is what a pickle may call), except River's
# compiled helpers and distance functions, which estimators keep as parameters.
_CLASS_MODULES = ("river.", "streamwise.models.", "streamwise.stream.", "numpy.random.", "numpy.dtypes")
_NOT_STATE_MODULES = ("river.datasets", "river.stream", "river.api")
_FUNCTION_MODULES = ("river._river_rust.", "river.utils.math")


def _bound_method(obj: Any, name: str) -> Any:
    """``getattr`` as a pickle may use it: a bound method of an allowed object, nothing else.

    Pickle stores a bound method (PAClassifier keeps ``self._calc_tau_1``) as
    ``getattr(obj, name)``; a free ``getattr`` would reach ``__globals__`` and from there
    anything.
    """
    if name.startswith("__") or not _allowed_class(type(obj)):
        raise SnapshotFormatError(f"snapshot refused: getattr({type(obj).__qualname__}, {name!r}) is not a method")
    method = getattr(obj, name)
    if not isinstance(method, types.MethodType):
        raise SnapshotFormatError(f"snapshot refused: {type(obj).__qualname__}.{name} is not a method")
    return method


def _allowed_class(cls: Any) -> bool:
    if not isinstance(cls, type):
        return False
    module = cls.__module__
    if (module, cls.__name__) in _CLASSES or module == "builtins" and cls.__name__ in _BUILTINS:
        return True
    if module.startswith(_NOT_STATE_MODULES):
        return False
    if module.startswith(_CLASS_MODULES) or module == "numpy":
        # numpy's top level holds memmap (opens a file) and friends: its scalars only.
        return module != "numpy" or issubclass(cls, numpy.generic)
    return False


class _AllowListUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("builtins", "getattr"):
            return _bound_method
        if (module, name) in _ALLOWED_FUNCTIONS:
            return super().find_class(module, name)
        if module.startswith(_NOT_STATE_MODULES) or not (
            module.startswith(("river", "streamwise.", "numpy", "collections", "random", "builtins"))
        ):
            raise SnapshotFormatError(f"snapshot refused: it names {module}.{name}, which no learning state holds")
        obj = super().find_class(module, name)
        if _allowed_class(obj):
            return obj
        if isinstance(obj, (types.FunctionType, types.BuiltinFunctionType)) and (
            module.startswith(_FUNCTION_MODULES) or _river_class_function(module, name, obj)
        ):
            return obj
        if module.startswith("numpy.random.") and name.startswith("__pyx_unpickle_"):
            return obj  # Cython's rebuilders of numpy's own generator classes
        raise SnapshotFormatError(f"snapshot refused: it names {module}.{name}, which no learning state holds")


def _river_class_function(module: str, name: str, obj: Any) -> bool:
    """A function defined on an allowed River class, named by its qualified name
    (GaussianNB keeps ``GaussianNB._make_gaussian`` as a defaultdict factory)."""
    owner, _, _ = name.partition(".")
    if not module.startswith("river.") or owner == name:
        return False
    return _allowed_class(getattr(sys.modules[module], owner, None)) and getattr(obj, "__module__", None) == module


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
