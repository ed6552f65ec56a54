"""Every example pipeline a user may copy loads and builds."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamwise.pipeline_config import load_pipeline_config
from streamwise.processor import PipelineProcessor

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_builds(path: Path) -> None:
    cfg = load_pipeline_config(path)
    processor = PipelineProcessor(cfg)
    assert [m.name for m in processor.models] == [m.name for m in cfg.models]


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 4
