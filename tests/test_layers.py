"""The layer rule, checked by reading the source (an AST walk, nothing is imported).

``core`` imports nothing of ours; ``stream`` and ``models`` import only ``core`` and
themselves; ``connectors`` imports only ``core`` and itself; the app (the rest of
``streamwise``) may import every layer; nothing imports ``bench``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Folder on disk -> the layer it installs as (pyproject.toml's package-dir).
LAYER_DIRS = {"core": "core", "stream": "stream", "models": "models", "connectors": "connectors", "streamwise": "app"}
ALLOWED = {
    "core": {"core"},
    "stream": {"core", "stream"},
    "models": {"core", "models"},
    "connectors": {"core", "connectors"},
    "app": {"core", "stream", "models", "connectors", "app"},
}


def layer_of_module(name: str) -> str | None:
    """The layer a dotted module name belongs to; None for a third-party module."""
    parts = name.split(".")
    if parts[0] == "bench":
        return "bench"
    if parts[0] != "streamwise":
        return None
    if len(parts) > 1 and parts[1] in ("core", "stream", "models", "connectors"):
        return parts[1]
    return "app"


def _package_of(path: Path) -> list[str]:
    """The dotted package a file lives in, as installed (``stream/x.py`` -> streamwise.stream)."""
    rel = path.relative_to(REPO).parts
    top = "streamwise" if rel[0] == "streamwise" else f"streamwise.{rel[0]}"
    return [*top.split("."), *rel[1:-1]]


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) for every import in a file, relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package_of(path)[: len(_package_of(path)) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            if module == "streamwise":
                # `from streamwise import stream` names a layer through the attribute.
                out.extend((node.lineno, f"streamwise.{alias.name}") for alias in node.names)
            else:
                out.append((node.lineno, module))
    return out


def violations(root: Path = REPO) -> list[str]:
    found = []
    for folder, layer in LAYER_DIRS.items():
        for path in sorted((root / folder).rglob("*.py")):
            for line, module in imports_of(path):
                target = layer_of_module(module)
                if target is None:
                    continue
                if target == "bench" or target not in ALLOWED[layer]:
                    found.append(f"{path.relative_to(root)}:{line}: {layer} imports {module} ({target})")
    for path in sorted((root / "tests").rglob("*.py")):
        for line, module in imports_of(path):
            if layer_of_module(module) == "bench":
                found.append(f"{path.relative_to(root)}:{line}: tests import {module} (bench)")
    return found


def test_no_layer_imports_what_it_must_not():
    assert violations() == []


@pytest.mark.parametrize(
    ("folder", "source", "expected"),
    [
        ("stream", "from streamwise.connectors import kafka_python\n", "stream imports streamwise.connectors"),
        ("models", "import streamwise.runner\n", "models imports streamwise.runner (app)"),
        ("connectors", "from streamwise.runner import Runner\n", "connectors imports streamwise.runner (app)"),
        ("core", "from streamwise.stream.schema import EventSchema\n", "core imports streamwise.stream.schema"),
        ("streamwise", "import bench.common\n", "app imports bench.common (bench)"),
        ("core", "from streamwise import models\n", "core imports streamwise.models (models)"),
    ],
)
def test_the_rule_bites_on_a_wrong_import(tmp_path, folder, source, expected):
    """A temporary copy of the layout with one deliberately wrong module in it."""
    for name in LAYER_DIRS:
        (tmp_path / name).mkdir()
    (tmp_path / "tests").mkdir()
    bad = tmp_path / folder / "bad_module.py"
    bad.write_text(source)
    found = violations(tmp_path)
    assert len(found) == 1, found
    assert found[0].startswith(f"{folder}/bad_module.py:1: ") and expected in found[0]


def test_every_dead_letter_stage_used_is_declared():
    """Every stage a dead letter can carry is a DeadLetterStage member: the source names
    stages only through the enum, never as a bare string at a dead-letter call."""
    from streamwise.core.stages import DeadLetterStage

    used = set()
    for folder in LAYER_DIRS:
        for path in (REPO / folder).rglob("*.py"):
            # Doctest lines may name a stage as the string it is.
            text = "\n".join(ln for ln in path.read_text().splitlines() if ">>>" not in ln)
            used |= set(re.findall(r"DeadLetterStage\.([A-Z_]+)", text))
            # A bare string where a stage goes is a stage the enum may not know.
            bare = re.findall(r"RejectedEvent\(\s*\"|stage: ClassVar\[str\] = \"|on_dead_letter\([^,()]+,\s*\"", text)
            assert not bare, f"{path.relative_to(REPO)} names a dead-letter stage as a string: {bare}"
    assert used, "no stage found: the scan is broken"
    assert used <= set(DeadLetterStage.__members__), used - set(DeadLetterStage.__members__)
