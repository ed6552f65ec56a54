"""Business rules beside the models: a small condition language, parsed, never ``eval``-ed.

A pipeline's ``rules:`` is an ordered list. Each rule has a ``name``, a condition
(``when``) over the event's features and the champion's answer, and an outcome: a
``decision`` (``refuse``, ``review`` or ``approve``), an override of the record's
``prediction``, or both, and a ``reason`` an auditor can read.

.. code-block:: yaml

    rules:
      - name: minor
        when: age < 18
        decision: refuse
        prediction: 0
        reason: applicants under 18 cannot sign a credit contract
      - name: large_loan
        when: loan >= 400000 and probability < 0.9
        decision: review

The language
    - comparisons ``< <= > >= == !=``, chained as in maths: ``18 <= age < 65``;
    - ``x between 18 and 65`` (both ends included), ``x not between ...``;
    - ``x in [1, 2, "a"]``, ``x not in [...]``;
    - ``and``, ``or``, ``not`` (in that order of precedence, weakest last: ``not`` binds
      tightest) and parentheses;
    - numbers (``-3``, ``2.5e3``), strings in single or double quotes, ``true``, ``false``;
    - names: the schema's features (as validated, before any cleaner or feature
      extractor changed them: a rule reads what the applicant declared), a feature whose
      name is not a plain word in backquotes (```1```), and the champion's answer:
      ``prediction`` (its class or number), ``probability`` (the probability it gives its
      own prediction), ``proba[c]`` (the probability of class ``c``; 0 for a class it
      has not seen) and, for an anomaly detector or a regressor, ``score`` (the number
      it answered, the same as ``prediction``).

    A name that is neither a feature nor one of those is an error at start, as is a
    comparison between a number and a string, or a condition that is not a test (``when:
    age``). Every error names the column and the token where it was found.

Missing values
    A feature absent from the event, or an answer the model could not give (an error, no
    probabilities), is *unknown*, and logic over it is Kleene's (as in SQL): ``unknown <
    18`` is unknown, ``not unknown`` is unknown, ``unknown and false`` is false,
    ``unknown or true`` is true. A rule fires only when its condition is true, so a rule
    never fires on a value it has not seen.

Which rule decides
    Every rule is evaluated on every event, and every rule whose condition holds
    *fires* (each is counted in the metrics and listed in the record's ``fired``). One of
    them *decides*: the most severe, ``refuse`` before ``review`` before ``approve``
    before a rule that only overrides the prediction, and among equally severe ones the
    first in the file. The deciding rule's decision, reason and prediction override (if
    it has one) are the record's; the others change nothing. No model can change a
    decision: rules run after the models, on their answer.

Examples
--------
>>> rules = RuleSet.compile(
...     [RuleSpec(name="minor", when="age < 18", decision="refuse", prediction=0),
...      RuleSpec(name="big", when="loan between 1e5 and 1e6 or not (0 < age <= 120)", decision="review")],
...     features={"age": "int", "loan": "float"}, label_type="int")
>>> v = rules.apply({"age": 16, "loan": 2e5}, 1, {0: 0.3, 1: 0.7})
>>> v.decision, v.rule, v.fired, v.overrides, v.prediction
('refuse', 'minor', ('minor', 'big'), True, 0)
>>> rules.apply({"age": 40, "loan": 10.0}, 1, None).decision is None
True
>>> RuleSet.compile([RuleSpec(name="typo", when="agee < 18", decision="refuse")], {"age": "int"})
Traceback (most recent call last):
...
streamwise.models.rules.RuleError: rule 'typo': column 1 at 'agee': unknown name 'agee'; did you mean 'age'? ...
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["DECISIONS", "RuleError", "RuleSet", "RuleSpec", "RuleSyntaxError", "Verdict", "parse_condition"]

# Most severe first: the order in which a fired rule decides.
DECISIONS = ("refuse", "review", "approve")
KEYWORDS = frozenset({"and", "or", "not", "in", "between", "true", "false"})
ANSWER_NAMES = ("prediction", "probability", "proba", "score")

# Static types of values: what a feature's schema type, a literal or the answer is.
NUMBER, STRING, BOOL, ANY = "number", "string", "bool", "any"
# A timestamp feature reaches the rules as epoch seconds (stream/schema.py, to_seconds).
_FEATURE_TYPES = {"float": NUMBER, "int": NUMBER, "bool": BOOL, "category": STRING, "text": STRING,
                  "timestamp": NUMBER}
_LABEL_TYPES = {"bool": BOOL, "int": NUMBER, "float": NUMBER, "category": STRING}

# A compiled node: (features, prediction, probabilities) -> value; None means unknown.
Fn = Callable[[Mapping[str, Any], Any, "Mapping[Any, float] | None"], Any]


class RuleError(ValueError):
    """A rule that cannot be compiled; ``field`` is the rule's key at fault (``when``,
    ``prediction``), or None for the rule as a whole."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class RuleSyntaxError(ValueError):
    """A condition that does not parse or does not type; ``column`` is 1-based.

    Examples
    --------
    >>> try:
    ...     parse_condition("age < ", {"age": "int"})
    ... except RuleSyntaxError as e:
    ...     print(e.column, repr(e.token), e)
    7 'end of condition' column 7 at end of condition: expected a value after '<'
    """

    def __init__(self, message: str, column: int, token: str) -> None:
        self.message = message
        self.column = column
        self.token = token
        where = token if token == "end of condition" else repr(token)
        super().__init__(f"column {column} at {where}: {message}")


# ---- tokens ---------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""(?P<space>\s+)
      | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
      | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
      | (?P<quoted>`[^`]+`)
      | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<op><=|>=|==|!=|<|>|\(|\)|\[|\]|,|-)
    """,
    re.VERBOSE,
)


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # number, string, name, keyword, op, end
    text: str
    column: int  # 1-based
    value: Any = None


def tokenize(text: str) -> list[Token]:
    """The condition's tokens, ending with an ``end`` token; an unknown character is an error.

    Examples
    --------
    >>> [(t.kind, t.text) for t in tokenize("18 <= age and `odd name` in ['a']")][:5]
    [('number', '18'), ('op', '<='), ('name', 'age'), ('keyword', 'and'), ('name', '`odd name`')]
    >>> tokenize("age = 18")
    Traceback (most recent call last):
    ...
    streamwise.models.rules.RuleSyntaxError: column 5 at '=': unexpected character '='; did you mean '=='?
    """
    out: list[Token] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            ch = text[pos]
            hint = {"=": "; did you mean '=='?", "&": "; write 'and'", "|": "; write 'or'", "!": "; write 'not'"}
            if ch in "\"'":
                raise RuleSyntaxError("a string is not closed", pos + 1, text[pos:])
            raise RuleSyntaxError(f"unexpected character {ch!r}{hint.get(ch, '')}", pos + 1, ch)
        kind = m.lastgroup or ""
        word = m.group()
        column = pos + 1
        pos = m.end()
        if kind == "space":
            continue
        if kind == "number":
            try:
                value: Any = float(word) if any(c in word for c in ".eE") else int(word)
            except ValueError:  # past Python's limit on digits read as an int (4,300)
                raise RuleSyntaxError(f"a number of {len(word)} digits is past any field's range", column, word[:20]) from None
            out.append(Token("number", word, column, value))
        elif kind == "string":
            out.append(Token("string", word, column, re.sub(r"\\(.)", r"\1", word[1:-1])))
        elif kind == "quoted":
            out.append(Token("name", word, column, word[1:-1]))
        elif kind == "name":
            out.append(Token("keyword" if word in KEYWORDS else "name", word, column, word))
        else:
            out.append(Token("op", word, column, word))
    out.append(Token("end", "end of condition", len(text) + 1))
    return out


# ---- the parser: recursive descent, one function per grammar rule -----------------------
#
#   condition := or EOF
#   or        := and ("or" and)*
#   and       := not ("and" not)*
#   not       := "not" not | test
#   test      := value [ (cmp value)+ | ["not"] "in" list | ["not"] "between" value "and" value ]
#   value     := number | "-" number | string | "true" | "false" | name ["[" literal "]"] | "(" or ")"
#   list      := "[" literal ("," literal)* [","] "]"


@dataclass(slots=True)
class _Node:
    fn: Fn
    type: str
    column: int
    text: str  # how it reads in an error message


def _kleene_and(values: Sequence[Any]) -> Any:
    unknown = False
    for v in values:
        if v is False:
            return False
        if v is None:
            unknown = True
    return None if unknown else True


def _compare(op: str, a: Any, b: Any) -> bool | None:
    if a is None or b is None:
        return None
    if isinstance(a, float) and math.isnan(a) or isinstance(b, float) and math.isnan(b):
        return None
    try:
        if op == "<":
            return bool(a < b)
        if op == "<=":
            return bool(a <= b)
        if op == ">":
            return bool(a > b)
        if op == ">=":
            return bool(a >= b)
        if op == "==":
            return bool(a == b)
        return bool(a != b)
    except TypeError:  # an answer of another type than the label's (a model's bug): unknown
        return None


def _negate(fn: Fn) -> Fn:
    def negated(x: Mapping[str, Any], p: Any, proba: Mapping[Any, float] | None) -> Any:
        v = fn(x, p, proba)
        return None if v is None else not v

    return negated


class _Parser:
    def __init__(self, text: str, features: Mapping[str, str], label_type: str) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.i = 0
        self.features = features
        self.label_type = label_type

    # -- token helpers --
    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def _error(self, message: str, tok: Token | None = None) -> RuleSyntaxError:
        tok = tok or self.tok
        return RuleSyntaxError(message, tok.column, tok.text)

    def _take(self) -> Token:
        tok = self.tokens[self.i]
        if tok.kind != "end":
            self.i += 1
        return tok

    def _at(self, kind: str, text: str | None = None) -> bool:
        return self.tok.kind == kind and (text is None or self.tok.text == text)

    def _expect(self, kind: str, text: str, what: str) -> Token:
        if not self._at(kind, text):
            raise self._error(f"expected {what}")
        return self._take()

    # -- grammar --
    def condition(self) -> _Node:
        if self._at("end"):
            raise self._error("the condition is empty")
        node = self.or_()
        if not self._at("end"):
            hint = " (join tests with 'and' or 'or')" if self.tok.kind in ("name", "number", "string") else ""
            raise self._error(f"unexpected {self._describe(self.tok)} after a complete condition{hint}")
        self._boolean(node, "a condition")
        return node

    def _describe(self, tok: Token) -> str:
        return {"op": f"'{tok.text}'", "keyword": f"'{tok.text}'", "end": "end of condition"}.get(
            tok.kind, f"{tok.kind} {tok.text}"
        )

    def _boolean(self, node: _Node, role: str) -> None:
        if node.type not in (BOOL, ANY):
            raise RuleSyntaxError(
                f"{role} must be a test such as '{node.text} > 0', and {node.text} is a {node.type}",
                node.column, node.text,
            )

    def or_(self) -> _Node:
        return self._joined("or", self.and_, decisive=True)

    def and_(self) -> _Node:
        return self._joined("and", self.not_, decisive=False)

    def _joined(self, word: str, operand: Callable[[], _Node], decisive: bool) -> _Node:
        """``operand (word operand)*``, with Kleene's logic: one ``decisive`` value (True for
        'or', False for 'and') settles it, else any unknown makes it unknown."""
        first = operand()
        parts = [first]
        while self._at("keyword", word):
            self._take()
            parts.append(operand())
        if len(parts) == 1:
            return first
        for p in parts:
            self._boolean(p, f"each side of '{word}'")
        fns = [p.fn for p in parts]

        def joined(x: Mapping[str, Any], pr: Any, proba: Mapping[Any, float] | None) -> Any:
            unknown = False
            for fn in fns:
                v = fn(x, pr, proba)
                if v is decisive:
                    return decisive
                if v is None:
                    unknown = True
            return None if unknown else not decisive

        return _Node(joined, BOOL, first.column, f"(... {word} ...)")

    def not_(self) -> _Node:
        if self._at("keyword", "not"):
            tok = self._take()
            inner = self.not_()
            self._boolean(inner, "what 'not' negates")
            return _Node(_negate(inner.fn), BOOL, tok.column, f"not {inner.text}")
        return self.test()

    def test(self) -> _Node:
        left = self.value()
        if self.tok.kind == "op" and self.tok.text in ("<", "<=", ">", ">=", "==", "!="):
            return self._comparisons(left)
        negated = False
        if self._at("keyword", "not") and self.tokens[self.i + 1].text in ("in", "between"):
            self._take()
            negated = True
        if self._at("keyword", "in"):
            node = self._membership(left)
        elif self._at("keyword", "between"):
            node = self._between(left)
        else:
            return left
        if negated:
            node = _Node(_negate(node.fn), BOOL, node.column, f"not {node.text}")
        return node

    def _comparisons(self, left: _Node) -> _Node:
        operands, ops = [left], []
        while self.tok.kind == "op" and self.tok.text in ("<", "<=", ">", ">=", "==", "!="):
            op = self._take()
            if self._at("end") or self.tok.kind == "keyword" and self.tok.text in ("and", "or", "in", "between"):
                raise self._error(f"expected a value after '{op.text}'")
            right = self.value()
            self._check_comparable(operands[-1], right, op)
            operands.append(right)
            ops.append(op.text)
        pairs = list(zip(ops, [o.fn for o in operands[:-1]], [o.fn for o in operands[1:]], strict=True))
        if len(pairs) == 1:
            (op_, lf, rf), = pairs

            def compare(x: Mapping[str, Any], p: Any, proba: Mapping[Any, float] | None) -> Any:
                return _compare(op_, lf(x, p, proba), rf(x, p, proba))
        else:
            def compare(x: Mapping[str, Any], p: Any, proba: Mapping[Any, float] | None) -> Any:
                return _kleene_and([_compare(o, lf(x, p, proba), rf(x, p, proba)) for o, lf, rf in pairs])

        return _Node(compare, BOOL, left.column, f"{left.text} {ops[0]} ...")

    def _check_comparable(self, a: _Node, b: _Node, op: Token) -> None:
        if ANY in (a.type, b.type):
            return
        if a.type != b.type:
            message = f"cannot compare {a.text} (a {a.type}) with {b.text} (a {b.type})"
            raise RuleSyntaxError(message, op.column, op.text)
        if a.type == BOOL and op.text not in ("==", "!="):
            raise RuleSyntaxError(f"'{op.text}' does not order booleans; use == or !=", op.column, op.text)

    def _literal(self) -> tuple[Any, str, Token]:
        tok = self.tok
        if tok.kind == "op" and tok.text == "-" and self.tokens[self.i + 1].kind == "number":
            self._take()
            num = self._take()
            return -num.value, NUMBER, tok
        if tok.kind == "number":
            self._take()
            return tok.value, NUMBER, tok
        if tok.kind == "string":
            self._take()
            return tok.value, STRING, tok
        if tok.kind == "keyword" and tok.text in ("true", "false"):
            self._take()
            return tok.text == "true", BOOL, tok
        raise self._error(f"expected a number, a string, true or false, found {self._describe(tok)}")

    def _membership(self, left: _Node) -> _Node:
        kw = self._take()
        self._expect("op", "[", "'[' to open the list after 'in'")
        items: list[Any] = []
        while True:
            if self._at("op", "]") and items:
                break
            value, kind, tok = self._literal()
            if ANY != left.type != kind:
                raise RuleSyntaxError(f"{left.text} is a {left.type}, the list holds a {kind}", tok.column, tok.text)
            items.append(value)
            if self._at("op", ","):
                self._take()
                continue
            if not self._at("op", "]"):
                raise self._error("expected ',' or ']' in the list")
        self._take()
        members = frozenset(items) if all(isinstance(i, (str, int, float, bool)) for i in items) else items
        lf = left.fn

        def member(x: Mapping[str, Any], p: Any, proba: Mapping[Any, float] | None) -> Any:
            v = lf(x, p, proba)
            if v is None:
                return None
            try:
                return v in members
            except TypeError:  # an unhashable answer
                return None

        return _Node(member, BOOL, left.column, f"{left.text} in [...] (column {kw.column})")

    def _between(self, left: _Node) -> _Node:
        kw = self._take()
        low = self.value()
        self._check_comparable(left, low, kw)
        self._expect("keyword", "and", "'and' between the two bounds of 'between'")
        high = self.value()
        self._check_comparable(left, high, kw)
        lf, lo, hi = left.fn, low.fn, high.fn

        def within(x: Mapping[str, Any], p: Any, proba: Mapping[Any, float] | None) -> Any:
            v = lf(x, p, proba)
            return _kleene_and([_compare(">=", v, lo(x, p, proba)), _compare("<=", v, hi(x, p, proba))])

        return _Node(within, BOOL, left.column, f"{left.text} between ...")

    def value(self) -> _Node:
        tok = self.tok
        if tok.kind == "op" and tok.text == "(":
            self._take()
            if self._at("op", ")"):
                raise self._error("empty parentheses")
            inner = self.or_()
            if not self._at("op", ")"):
                raise self._error(f"expected ')' to close the '(' at column {tok.column}")
            self._take()
            return inner
        if tok.kind in ("number", "string") or tok.kind == "keyword" and tok.text in ("true", "false") or (
            tok.kind == "op" and tok.text == "-"
        ):
            if tok.text == "-" and self.tokens[self.i + 1].kind != "number":
                raise self._error("'-' goes only before a number")
            value, kind, _ = self._literal()
            return _Node(lambda x, p, proba, v=value: v, kind, tok.column, tok.text)
        if tok.kind == "name":
            return self._name()
        if tok.kind == "end":
            previous = self.tokens[self.i - 1] if self.i else None
            after = f" after '{previous.text}'" if previous is not None else ""
            raise self._error(f"expected a value{after}")
        raise self._error(f"expected a value, found {self._describe(tok)}")

    def _name(self) -> _Node:
        tok = self._take()
        name = tok.value
        quoted = tok.text.startswith("`")
        if not quoted and name == "proba":
            self._expect("op", "[", "'[' after proba, as in proba[1]")
            cls, _, ctok = self._literal()
            self._expect("op", "]", "']' to close proba[...]")
            if self.label_type == "float":
                message = "proba[...] needs a classifier; this pipeline's label is a float"
                raise RuleSyntaxError(message, tok.column, tok.text)

            def proba_of(x: Mapping[str, Any], p: Any, proba: Mapping[Any, float] | None) -> Any:
                return None if proba is None else proba.get(cls, 0.0)

            return _Node(proba_of, NUMBER, tok.column, f"proba[{ctok.text}]")
        if not quoted and name == "probability":

            def confidence(x: Mapping[str, Any], p: Any, proba: Mapping[Any, float] | None) -> Any:
                return max(proba.values()) if proba else None

            return _Node(confidence, NUMBER, tok.column, "probability")
        if not quoted and name == "score":
            if self.label_type != "float":
                message = "score is the number an anomaly detector or a regressor answers; use prediction, probability"
                raise RuleSyntaxError(message, tok.column, tok.text)
            return _Node(lambda x, p, proba: p, NUMBER, tok.column, "score")
        if not quoted and name == "prediction":
            return _Node(lambda x, p, proba: p, _LABEL_TYPES.get(self.label_type, ANY), tok.column, "prediction")
        if name not in self.features:
            raise RuleSyntaxError(self._unknown(name), tok.column, tok.text)
        kind = _FEATURE_TYPES.get(self.features[name], ANY)

        def feature(x: Mapping[str, Any], p: Any, proba: Mapping[Any, float] | None, n: str = name) -> Any:
            return x.get(n)

        return _Node(feature, kind, tok.column, name if not quoted else tok.text)

    def _unknown(self, name: str) -> str:
        close = difflib.get_close_matches(name, [*self.features, *ANSWER_NAMES], n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        known = ", ".join(sorted(self.features)[:12]) + (", ..." if len(self.features) > 12 else "")
        return f"unknown name '{name}'{hint} Features: {known}; and prediction, probability, proba[class]"


@dataclass(frozen=True, slots=True)
class Condition:
    """A parsed condition: call it with the features, the prediction and the probabilities."""

    text: str
    fn: Fn

    def __call__(self, x: Mapping[str, Any], prediction: Any = None, proba: Mapping[Any, float] | None = None) -> Any:
        """True, False or None (unknown)."""
        return self.fn(x, prediction, proba)


def parse_condition(text: str, features: Mapping[str, str], label_type: str = "bool") -> Condition:
    """Parses and type-checks a condition; :class:`RuleSyntaxError` with the column otherwise.

    ``features`` maps each feature name to its schema type (``float``, ``int``,
    ``bool``, ``category``, ``text``, ``timestamp``); ``label_type`` types ``prediction``.

    Examples
    --------
    >>> c = parse_condition("18 <= age < 65 and city in ['Oslo', 'Lyon']", {"age": "int", "city": "category"})
    >>> c({"age": 30, "city": "Lyon"}), c({"age": 70, "city": "Lyon"}), c({"city": "Lyon"})
    (True, False, None)
    >>> parse_condition("not (age < 18 or proba[1] >= 0.5)", {"age": "int"}, "int")({"age": 20}, 0, {0: 0.8, 1: 0.2})
    True
    >>> parse_condition("age < 'ten'", {"age": "int"})
    Traceback (most recent call last):
    ...
    streamwise.models.rules.RuleSyntaxError: column 5 at '<': cannot compare age (a number) with 'ten' (a string)
    """
    return Condition(text, _Parser(text, features, label_type).condition().fn)


# ---- rules, their outcomes, and which one decides -------------------------------------


class RuleSpec(BaseModel):
    """One rule of a pipeline's ``rules:`` list."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    when: str = Field(min_length=1)
    decision: Literal["refuse", "review", "approve"] | None = None
    # Replaces the record's prediction (the champion's stays in ``model_prediction``).
    prediction: str | int | float | bool | None = None
    # Written in every record the rule decides; defaults to "when: <condition>".
    reason: str | None = None



@dataclass(frozen=True, slots=True)
class Verdict:
    """What the rules made of one event: the deciding rule's decision, name, reason and
    prediction override, and every rule that fired (config order). ``rule`` is None when
    none fired."""

    decision: str | None = None
    rule: str | None = None
    reason: str | None = None
    fired: tuple[str, ...] = ()
    overrides: bool = False
    prediction: Any = None


_NOTHING = Verdict()


@dataclass(frozen=True, slots=True)
class _Rule:
    name: str
    condition: Condition
    decision: str | None
    overrides: bool
    prediction: Any
    reason: str
    rank: int  # position in the decide order: severity, then the file's order

    @property
    def outcome(self) -> str:
        """The rule's outcome as a metric label: its decision, or ``override``."""
        return self.decision or "override"


class RuleSet:
    """A pipeline's compiled rules; :meth:`apply` is the whole per-event step."""

    def __init__(self, rules: Sequence[_Rule]) -> None:
        self.rules = list(rules)
        self.names = [r.name for r in self.rules]

    @classmethod
    def compile(
        cls, specs: Sequence[RuleSpec], features: Mapping[str, str], label_type: str = "bool"
    ) -> RuleSet:
        """Parses every rule; a :class:`RuleError` naming the rule (and, for a condition,
        the column and the token) otherwise."""
        names = [s.name for s in specs]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise RuleError(f"rule names must be unique, repeated: {', '.join(dupes)}")
        severity = {d: i for i, d in enumerate(DECISIONS)}
        rules = []
        for i, spec in enumerate(specs):
            if spec.decision is None and spec.prediction is None:
                raise RuleError(
                    f"rule {spec.name!r} has no outcome: give it a decision (refuse, review, approve), a prediction,"
                    " or both"
                )
            try:
                condition = parse_condition(spec.when, features, label_type)
            except RuleSyntaxError as e:
                raise RuleError(f"rule {spec.name!r}: {e}", "when") from None
            try:
                override = _check_override(spec, label_type)
            except ValueError as e:
                raise RuleError(str(e), "prediction") from None
            rank = severity.get(spec.decision or "", len(DECISIONS)) * len(specs) + i
            reason = spec.reason or f"when: {spec.when}"
            overrides = spec.prediction is not None
            rules.append(_Rule(spec.name, condition, spec.decision, overrides, override, reason, rank))
        return cls(rules)

    def __bool__(self) -> bool:
        return bool(self.rules)

    def apply(self, x: Mapping[str, Any], prediction: Any, proba: Mapping[Any, float] | None) -> Verdict:
        """Evaluates every rule on one event and the champion's answer to it."""
        fired = [r for r in self.rules if r.condition.fn(x, prediction, proba) is True]
        if not fired:
            return _NOTHING
        deciding = min(fired, key=lambda r: r.rank)
        return Verdict(
            deciding.decision, deciding.name, deciding.reason, tuple(r.name for r in fired),
            deciding.overrides, deciding.prediction,
        )

    def outcomes(self) -> dict[str, str]:
        """Each rule's outcome (``refuse``, ``review``, ``approve`` or ``override``), by name."""
        return {r.name: r.outcome for r in self.rules}


def _check_override(spec: RuleSpec, label_type: str) -> Any:
    """The override as the label's type: a class of a classifier, a number of a regressor."""
    value = spec.prediction
    if value is None:
        return None
    where = f"rule {spec.name!r}: prediction {value!r}"
    if label_type == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false: this pipeline's label is a bool")
    elif label_type in ("int", "float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where} must be a number: this pipeline's label is {label_type}")
        if label_type == "int" and value != int(value):
            raise ValueError(f"{where} must be a whole number: this pipeline's label is an int")
        value = int(value) if label_type == "int" else float(value)
    elif not isinstance(value, str):
        raise ValueError(f"{where} must be one of the label's categories (a string)")
    return value
