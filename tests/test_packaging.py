"""What pyproject.toml promises: the SPDX licence form, and a confluent-kafka floor whose
API has every call connectors/confluent.py makes."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())

# The public methods of confluent-kafka 2.6.1, the declared floor, read from an install
# of it (dir() of each class). A call to anything newer must go through getattr.
FLOOR = "2.6.1"
FLOOR_API = {
    "Producer": {
        "abort_transaction", "begin_transaction", "commit_transaction", "flush", "init_transactions",
        "list_topics", "poll", "produce", "purge", "send_offsets_to_transaction", "set_sasl_credentials",
    },
    "Consumer": {
        "assign", "assignment", "close", "commit", "committed", "consume", "consumer_group_metadata",
        "get_watermark_offsets", "incremental_assign", "incremental_unassign", "list_topics", "memberid",
        "offsets_for_times", "pause", "poll", "position", "resume", "seek", "set_sasl_credentials",
        "store_offsets", "subscribe", "unassign", "unsubscribe",
    },
    "AdminClient": {
        "alter_configs", "alter_consumer_group_offsets", "alter_user_scram_credentials", "create_acls",
        "create_partitions", "create_topics", "delete_acls", "delete_consumer_groups", "delete_records",
        "delete_topics", "describe_acls", "describe_cluster", "describe_configs", "describe_consumer_groups",
        "describe_topics", "describe_user_scram_credentials", "elect_leaders", "incremental_alter_configs",
        "list_consumer_group_offsets", "list_consumer_groups", "list_groups", "list_offsets", "list_topics",
        "poll", "set_sasl_credentials",
    },
}
# Which client each receiver in connectors/confluent.py is.
RECEIVERS = {
    "self._producer": "Producer",
    "self._consumer": "Consumer",
    "self._offsets": "Consumer",
    "self._offsets_client()": "Consumer",
    "consumer": "Consumer",
    "self._admin": "AdminClient",
    # _probe's client is any of the three: it may call only what all three have.
    "client": "any",
}


def test_the_licence_is_an_spdx_expression():
    assert PYPROJECT["project"]["license"] == "Apache-2.0"


def test_every_extra_declares_the_same_confluent_floor():
    floors = {
        spec
        for deps in PYPROJECT["project"]["optional-dependencies"].values()
        for spec in deps
        if spec.startswith("confluent-kafka")
    }
    assert floors == {f"confluent-kafka>={FLOOR},<3"}


def _calls(source: str) -> list[tuple[str, str, int]]:
    """(receiver, method, line) of every ``receiver.method(...)`` call."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            out.append((ast.unparse(node.func.value), node.func.attr, node.lineno))
    return out


def _unsupported(source: str) -> list[str]:
    bad = []
    every = set.intersection(*FLOOR_API.values())
    for receiver, method, line in _calls(source):
        client = RECEIVERS.get(receiver)
        if client is None:
            continue
        api = every if client == "any" else FLOOR_API[client]
        if method not in api:
            bad.append(f"line {line}: {receiver}.{method}() is not in confluent-kafka {FLOOR}")
    return bad


def test_confluent_connectors_call_only_what_the_floor_has():
    source = (REPO / "connectors" / "confluent.py").read_text()
    assert _unsupported(source) == []
    # Producer.close() (2.13+) is called, but only where it exists.
    assert re.search(r'getattr\(self\._producer, "close", None\)', source)


def test_the_check_bites_on_a_call_the_floor_lacks():
    assert _unsupported("def close(self):\n    self._producer.close()\n") == [
        "line 2: self._producer.close() is not in confluent-kafka 2.6.1"
    ]
