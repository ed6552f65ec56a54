"""The business-rule language: what parses, what it means, and how a mistake is reported."""

from __future__ import annotations

import operator
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from streamwise.core.errors import ConfigError
from streamwise.models.rules import RuleSet, RuleSpec, RuleSyntaxError, parse_condition
from typer.testing import CliRunner

from streamwise.cli import app
from streamwise.pipeline_config import load_pipeline_config, parse_pipeline_config

REPO = Path(__file__).resolve().parents[2]
FEATURES = {"age": "int", "loan": "float", "city": "category", "member": "bool", "1": "float"}


def _c(text: str, label_type: str = "int"):
    return parse_condition(text, FEATURES, label_type)


# (condition, column, token, part of the message): each a mistake a user makes.
MALFORMED = [
    ("", 1, "end of condition", "empty"),
    ("age <", 6, "end of condition", "expected a value after '<'"),
    ("age < 18 and", 13, "end of condition", "expected a value after 'and'"),
    ("age < 18 or or loan > 1", 13, "or", "expected a value"),
    ("agee < 18", 1, "agee", "unknown name 'agee'; did you mean 'age'?"),
    ("age < 18 and lon > 5", 14, "lon", "did you mean 'loan'?"),
    ("age = 18", 5, "=", "did you mean '=='?"),
    ("age < 18 && loan > 1", 10, "&", "write 'and'"),
    ("age < 18 || loan > 1", 10, "|", "write 'or'"),
    ("(age < 18", 10, "end of condition", "expected ')' to close the '(' at column 1"),
    ("age < 18)", 9, ")", "after a complete condition"),
    ("age < 18 loan > 1", 10, "loan", "join tests with 'and' or 'or'"),
    ("()", 2, ")", "empty parentheses"),
    ("age", 1, "age", "must be a test"),
    ("age and loan > 3", 1, "age", "each side of 'and' must be a test"),
    ("not loan", 5, "loan", "what 'not' negates must be a test"),
    ("age < 'ten'", 5, "<", "cannot compare age (a number) with 'ten' (a string)"),
    ("city == 3", 6, "==", "cannot compare city (a string) with 3 (a number)"),
    ("member < true", 8, "<", "does not order booleans"),
    ("age in [1, 'a']", 12, "'a'", "age is a number, the list holds a string"),
    ("age in 1, 2", 8, "1", "'[' to open the list"),
    ("age in [1 2]", 11, "2", "expected ',' or ']'"),
    ("age in []", 9, "]", "expected a number, a string, true or false"),
    ("age between 18 65", 16, "65", "expected 'and' between the two bounds"),
    ("age between 18 and", 19, "end of condition", "expected a value"),
    ("city == 'Oslo", 9, "'Oslo", "a string is not closed"),
    ("proba 1 > 0.5", 7, "1", "'[' after proba"),
    ("proba[1 > 0.5", 9, ">", "']' to close proba"),
    ("age < - loan", 7, "-", "'-' goes only before a number"),
    ("age < 18 $", 10, "$", "unexpected character '$'"),
    ("not", 4, "end of condition", "expected a value"),
]


@pytest.mark.parametrize(("text", "column", "token", "message"), MALFORMED, ids=[m[0] or "<empty>" for m in MALFORMED])
def test_a_malformed_condition_names_the_column_and_the_token(text, column, token, message):
    with pytest.raises(RuleSyntaxError) as caught:
        _c(text)
    e = caught.value
    assert (e.column, e.token) == (column, token), str(e)
    assert message in str(e)
    assert str(e).startswith(f"column {column} at ")


def test_every_malformed_rule_of_a_pipeline_fails_to_load_with_its_name_and_position():
    base = yaml.safe_load((REPO / "examples" / "credit_rules.yaml").read_text())
    base["rules"] = [
        {"name": "minor", "when": "age < 18", "decision": "refuse"},
        {"name": "big_loan", "when": "loan >= 400000 and", "decision": "review"},
        {"name": "odd", "when": "agee < 3", "decision": "review"},
        {"name": "nothing", "when": "age < 3"},
    ]
    with pytest.raises(ConfigError) as caught:
        parse_pipeline_config(base, "credit_rules.yaml")
    lines = str(caught.value).splitlines()
    assert lines == [
        "credit_rules.yaml: rules[1].when: rule 'big_loan': column 19 at end of condition:"
        " expected a value after 'and'",
        "credit_rules.yaml: rules[2].when: rule 'odd': column 1 at 'agee': unknown name 'agee'; did you mean 'age'?"
        " Features: age, car, commission, elevel, hvalue, hyears, loan, salary, zipcode; and prediction,"
        " probability, proba[class]",
        "credit_rules.yaml: rules[3]: rule 'nothing' has no outcome: give it a decision (refuse, review,"
        " approve), a prediction, or both",
    ]


def test_rule_names_are_unique_and_an_override_has_the_labels_type():
    base = yaml.safe_load((REPO / "examples" / "credit_rules.yaml").read_text())
    twice = {**base, "rules": [{"name": "r", "when": "age < 18", "decision": "refuse"}] * 2}
    with pytest.raises(ConfigError, match=r"rules: rule names must be unique, repeated: r$"):
        parse_pipeline_config(twice)
    wrong = {**base, "rules": [{"name": "r", "when": "age < 18", "prediction": "no"}]}
    with pytest.raises(ConfigError, match=r"rules\[0\]\.prediction: rule 'r': prediction 'no' must be a number"):
        parse_pipeline_config(wrong)


def test_a_malformed_rule_stops_the_service_at_start_in_one_line(tmp_path):
    text = (REPO / "examples" / "credit_rules.yaml").read_text().replace("when: age < 18", "when: age << 18")
    assert "age << 18" in text
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = CliRunner().invoke(app, ["run", "--config", str(path)])
    assert result.exit_code != 0
    (line,) = [ln for ln in result.output.splitlines() if ln.strip()]
    assert "rule 'minor': column 6 at '<': expected a value, found '<'" in line, result.output


def test_the_examples_rules_load():
    cfg = load_pipeline_config(REPO / "examples" / "credit_rules.yaml")
    assert [r.name for r in cfg.rules][:2] == ["minor", "large_loan"]
    assert cfg.build_rules().outcomes()["minor"] == "refuse"


# ---- meaning ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "x", "expected"),
    [
        ("18 <= age < 65", {"age": 18}, True),
        ("18 <= age < 65", {"age": 65}, False),
        ("18 <= age < 65", {}, None),
        ("age between 18 and 65", {"age": 65}, True),
        ("age not between 18 and 65", {"age": 66}, True),
        ("age not between 18 and 65", {}, None),
        ("city in ['Oslo', 'Lyon']", {"city": "Lyon"}, True),
        ("city not in ['Oslo', 'Lyon',]", {"city": "Lyon"}, False),
        ("not age < 18 and loan > 5", {"age": 20, "loan": 6.0}, True),  # not binds tighter than and
        ("age < 18 or age > 60 and loan > 5", {"age": 10, "loan": 0.0}, True),  # and binds tighter than or
        ("(age < 18 or age > 60) and loan > 5", {"age": 10, "loan": 0.0}, False),
        ("member", {"member": True}, True),
        ("member == false", {"member": False}, True),
        ("`1` > -0.5e1", {"1": -4.0}, True),
        ("loan > 1e5", {"loan": float("nan")}, None),
        # Kleene: unknown and false is false, unknown or true is true.
        ("age < 18 and loan > 5", {"loan": 1.0}, False),
        ("age < 18 or loan > 5", {"loan": 6.0}, True),
        ("not (age < 18)", {}, None),
    ],
)
def test_conditions_mean_what_they_say(text, x, expected):
    assert _c(text)(x) is expected


def test_answer_names_read_the_champions_answer():
    assert _c("prediction == 1 and probability >= 0.7")({}, 1, {0: 0.25, 1: 0.75}) is True
    assert _c("proba[2] == 0")({}, 1, {0: 0.25, 1: 0.75}) is True  # a class never seen
    assert _c("probability > 0.5")({}, None, None) is None  # the champion failed
    assert parse_condition("prediction", {}, "bool")({}, True, None) is True
    assert parse_condition("prediction in ['gold', 'silver']", {}, "category")({}, "gold", None) is True
    assert parse_condition("score > 0.8 and prediction > 0.8", {}, "float")({}, 0.9, None) is True
    with pytest.raises(RuleSyntaxError, match="score is the number an anomaly detector or a regressor answers"):
        parse_condition("score > 0.8", {}, "int")
    with pytest.raises(RuleSyntaxError, match=r"proba\[\.\.\.\] needs a classifier"):
        parse_condition("proba[1] > 0", {}, "float")


def test_the_most_severe_rule_decides_and_in_file_order_among_equals():
    specs = [
        RuleSpec(name="ok_member", when="member", decision="approve"),
        RuleSpec(name="flag", when="loan > 10", prediction=1),
        RuleSpec(name="big", when="loan > 100", decision="review", reason="large loan"),
        RuleSpec(name="huge", when="loan > 1000", decision="review"),
        RuleSpec(name="minor", when="age < 18", decision="refuse", prediction=0),
    ]
    rules = RuleSet.compile(specs, FEATURES, "int")
    v = rules.apply({"member": True, "loan": 5000.0, "age": 40}, 0, None)
    assert (v.decision, v.rule, v.reason) == ("review", "big", "large loan")
    assert v.fired == ("ok_member", "flag", "big", "huge")
    assert not v.overrides
    v = rules.apply({"member": True, "loan": 5000.0, "age": 16}, 1, None)
    assert (v.decision, v.rule, v.overrides, v.prediction) == ("refuse", "minor", True, 0)
    v = rules.apply({"member": False, "loan": 50.0, "age": 30}, 0, None)
    assert (v.decision, v.rule, v.overrides, v.prediction, v.reason) == (None, "flag", True, 1, "when: loan > 10")
    assert rules.apply({"member": False, "loan": 1.0, "age": 30}, 0, None).rule is None


# ---- properties --------------------------------------------------------------------------

_OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq, "!=": operator.ne}


@st.composite
def _condition(draw, depth=0):
    """(text, reference) where reference(x) computes the truth with Python's own operators."""
    if depth >= 3 or draw(st.booleans()):
        feature = draw(st.sampled_from(["age", "loan"]))
        op = draw(st.sampled_from(list(_OPS)))
        bound = draw(st.integers(-5, 5))
        return f"{feature} {op} {bound}", lambda x, f=feature, o=_OPS[op], b=bound: o(x[f], b)
    kind = draw(st.sampled_from(["and", "or", "not"]))
    left, lref = draw(_condition(depth + 1))
    if kind == "not":
        return f"not ({left})", lambda x: not lref(x)
    right, rref = draw(_condition(depth + 1))
    if kind == "and":
        return f"({left}) and ({right})", lambda x: lref(x) and rref(x)
    return f"({left}) or ({right})", lambda x: lref(x) or rref(x)


@settings(max_examples=150, deadline=None)
@given(_condition(), st.integers(-6, 6), st.integers(-6, 6))
def test_a_random_condition_agrees_with_pythons_operators(condition, age, loan):
    text, reference = condition
    x = {"age": age, "loan": float(loan)}
    assert _c(text)(x) is bool(reference(x))


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="agelon <>=!()[],'\"`-0123456789.andortbwi", max_size=30))
def test_any_text_parses_or_fails_with_a_position(text):
    try:
        _c(text)
    except RuleSyntaxError as e:
        assert 1 <= e.column <= len(text) + 1


def test_a_timestamp_feature_is_a_number_of_seconds_to_the_rules():
    """Timestamp features reach the models and the rules as epoch seconds: a rule that
    compared one with ISO text could never fire; now it is refused at start."""
    with pytest.raises(RuleSyntaxError, match="cannot compare opened \\(a number\\) with '2024-06-01'"):
        parse_condition("opened < '2024-06-01'", {"opened": "timestamp"})
    rule = parse_condition("opened < 1717200000", {"opened": "timestamp"})
    assert rule.fn({"opened": 1717100000.0}, None, None) is True
