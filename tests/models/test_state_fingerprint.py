"""The state fingerprint must not depend on the process that computes it."""

from __future__ import annotations

import subprocess
import sys

from river import datasets, linear_model, naive_bayes, preprocessing, tree
from streamwise.models.state import encode_state, fingerprint
from streamwise.stream.schema import EventSchema

_TRAIN = """
import sys
from river import datasets, naive_bayes, preprocessing, linear_model
from streamwise.models.state import fingerprint
models = [naive_bayes.GaussianNB(), preprocessing.StandardScaler() | linear_model.LogisticRegression()]
for x, y in datasets.Phishing().take(300):
    for m in models:
        m.learn_one(x, y)
print(fingerprint({"models": models, "seen": set(x)}))
"""


def _in_subprocess(hash_seed: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", _TRAIN], env={"PYTHONHASHSEED": hash_seed, "PATH": ""}, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_equal_learning_gives_equal_fingerprints_across_hash_seeds():
    assert _in_subprocess("1") == _in_subprocess("2")


def test_a_different_update_changes_the_fingerprint():
    a, b = naive_bayes.GaussianNB(), naive_bayes.GaussianNB()
    stream = list(datasets.Phishing().take(50))
    for x, y in stream:
        a.learn_one(x, y)
    for x, y in stream[:-1]:
        b.learn_one(x, y)
    assert fingerprint(a) != fingerprint(b)
    b.learn_one(*stream[-1])
    assert fingerprint(a) == fingerprint(b)


def test_configuration_compares_by_value():
    explicit = EventSchema.model_validate({"features": {"x": {"type": "float", "required": True}}})
    implicit = EventSchema.model_validate({"features": {"x": "float"}})
    assert fingerprint(explicit) == fingerprint(implicit)


def test_shared_references_and_temporaries_are_not_confused():
    model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    shared = {"a": [1.0]}
    assert fingerprint({"p": shared, "q": shared}) != fingerprint({"p": {"a": [1.0]}, "q": {"a": [2.0]}})
    assert fingerprint(model) == fingerprint(preprocessing.StandardScaler() | linear_model.LogisticRegression())


class _BuildsATreeWhenPickled:
    """Builds a tree while it is being pickled: what a second thread may do at any moment
    while this one writes a checkpoint (a worker's other stage starting a learner, a
    forest growing a tree)."""

    def __init__(self) -> None:
        self.built: tree.HoeffdingTreeClassifier | None = None

    def __getstate__(self) -> dict[str, str]:
        self.built = tree.HoeffdingTreeClassifier()
        return {}


def test_a_tree_built_while_a_state_is_pickled_equals_one_built_outside():
    # River sets a tree's max_depth from the recursion limit when the tree is built; a
    # limit raised only around pickles gave trees built meanwhile another max_depth.
    probe = _BuildsATreeWhenPickled()
    encode_state({"probe": probe})
    outside = tree.HoeffdingTreeClassifier()
    assert probe.built is not None and probe.built.max_depth == outside.max_depth
    assert fingerprint(probe.built) == fingerprint(outside)
