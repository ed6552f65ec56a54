"""Runs the Examples of every docstring under streamwise.*, so no example drifts from the code."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

PACKAGES = ["streamwise", "streamwise.stream", "streamwise.models", "streamwise.connectors"]
# pytest's NUMBER flag needs pytest's own checker; examples round or use ELLIPSIS instead.
FLAGS = doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS


def _modules() -> list[str]:
    names: list[str] = []
    for package in PACKAGES:
        pkg = importlib.import_module(package)
        names.append(package)
        for info in pkgutil.iter_modules(pkg.__path__, prefix=f"{package}."):
            # __main__ runs the CLI on import.
            if info.name not in names and not info.ispkg and not info.name.endswith(".__main__"):
                names.append(info.name)
    return names


@pytest.mark.parametrize("module_name", _modules())
def test_docstring_examples(module_name: str) -> None:
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:  # an optional dependency (torch) that is not installed
        pytest.skip(f"{module_name}: {e}")
    result = doctest.testmod(module, optionflags=FLAGS, verbose=False, report=True)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {module_name}"
