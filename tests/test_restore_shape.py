"""A snapshot whose objects lack what the current code builds is refused at restore,
not at the first event (an older streamwise's model set, before it was split per model)."""

from __future__ import annotations

import pytest

from streamwise.models.state import SnapshotFormatError, decode_state, encode_state
from streamwise.processor import PipelineProcessor
from support import phishing_pipeline


def test_a_state_of_the_shape_this_code_builds_restores():
    cfg = phishing_pipeline("restore-shape")
    state = decode_state(encode_state(PipelineProcessor(cfg).snapshot_state()))
    restored = PipelineProcessor(cfg)
    restored.restore_state(state)
    assert restored.learners is state["learners"]


@pytest.mark.parametrize("damage", ["attribute", "missing", "type"])
def test_a_state_of_another_shape_is_refused_and_changes_nothing(damage):
    cfg = phishing_pipeline("restore-shape")
    state = PipelineProcessor(cfg).snapshot_state()
    if damage == "attribute":
        del vars(state["learners"])["task"]
    elif damage == "missing":
        del state["learners"]
    else:
        state["learners"] = {"models": []}
    target = PipelineProcessor(cfg)
    before = target.learners
    with pytest.raises(SnapshotFormatError, match="lacks what this streamwise builds"):
        target.restore_state(state)
    assert target.learners is before
