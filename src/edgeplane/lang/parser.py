"""Read the rule language (grammar.lark) into the model's `Rule` objects.

Text → lark tree → fields as written, each remembering its line and column → the model's
own validation. This module owns the language's syntax errors and places every model error
at the line and column of what was written; it decides nothing a rule means (the model
validates, lang/compile.py runs rules) and performs no I/O beyond reading the grammar.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, get_args

from lark import Lark, Token, Transformer, UnexpectedCharacters, UnexpectedInput, UnexpectedToken, v_args
from pydantic import BaseModel, ValidationError

from ..model.config import ACTIONS, NAMED_VARIABLES, Condition, Operator, Rule, Variable
from ..model.load import ConfigError, Problem, format_path, join_relative, line_for, with_input


class RuleLanguageError(ConfigError):
    """A `ConfigError` whose text is one `source:line:column: what` line per problem."""

    def __str__(self) -> str:
        return "\n".join(problem.message for problem in self.problems)


def parse_rules(text: str, source: str = "<rules>", line_offset: int = 0) -> list[Rule]:
    """Parse rules written in the rule language; raise `RuleLanguageError` naming every problem.

    Problem paths are relative to the list of rules (`[0].conditions[1].values[0]`); lines
    are the text's plus `line_offset`, for text embedded in a larger file.
    """
    reader = _Reader(text, source, line_offset)
    try:
        tree = _parser().parse(text)
    except UnexpectedInput as error:
        reader.report(*_syntax_error(error, text))
        raise RuleLanguageError(source, reader.problems) from None
    written = reader.transform(tree)
    rules = [reader.build(index, rule) for index, rule in enumerate(written)]
    if reader.problems:
        raise RuleLanguageError(source, sorted(reader.problems, key=lambda problem: problem.line or 0))
    return rules


@cache
def _parser() -> Lark:
    return Lark(Path(__file__).with_name("grammar.lark").read_text(encoding="utf-8"), parser="lalr",
                lexer="basic", postlex=_KeepWords(), propagate_positions=True, maybe_placeholders=True)


class _KeepWords:
    """Keeps the grammar's WORD terminal, which no rule uses, so a misspelt keyword is one token."""

    always_accept = ("WORD",)

    def process(self, stream: Any) -> Any:
        return stream


# --- what was written, and where ---------------------------------------------------------


@dataclass(frozen=True)
class Spot:
    line: int
    column: int


@dataclass
class _Part:
    """A value as written; `spots` maps paths relative to it ("" is the value itself)."""

    value: Any
    spots: dict[str, Spot]

    def under(self, prefix: str) -> dict[str, Spot]:
        return {prefix + path: spot for path, spot in self.spots.items()}


@dataclass
class _Field:
    name: str
    part: _Part
    spot: Spot | None = None  # where its keyword is, for "given twice"


@dataclass
class _Written:
    """A condition, an action or a rule: model fields and where each was written."""

    kind: str
    spot: Spot
    fields: dict[str, Any] = field(default_factory=dict)
    spots: dict[str, Spot] = field(default_factory=dict)
    conditions: list[_Written] = field(default_factory=list)
    actions: list[_Written] = field(default_factory=list)


# Keywords that stand for a field's value: rule or alias name → (field, value).
_FLAGS = {
    "top": ("top", True), "last": ("last", True), "disabled": ("enabled", False),
    "caseless": ("caseless", True), "drop_query": ("keep_query", False),
    "allow_credentials": ("allow_credentials", True), "no_allow_methods": ("allow_methods", []),
    "include_subdomains": ("include_subdomains", True), "preload": ("preload", True),
    "non_idempotent": ("non_idempotent", True), "no_retry_on": ("retry_on", []),
}
_ESCAPE = re.compile(r'\\(?:([\\"])|([nrt])|x([0-9A-Fa-f]{2})|u([0-9A-Fa-f]{4})|U([0-9A-Fa-f]{8})|(.))')
_CONTROL = {"n": "\n", "r": "\r", "t": "\t"}


class _Reader(Transformer):
    """Turns the tree into `_Written` objects, then validates them with the model."""

    def __init__(self, text: str, source: str, line_offset: int):
        super().__init__(visit_tokens=False)
        self.text, self.source, self.line_offset = text, source, line_offset
        self.problems: list[Problem] = []

    def report(self, spot: Spot, message: str, path: str = "") -> None:
        line = spot.line + self.line_offset
        self.problems.append(Problem(path, f"{self.source}:{line}:{spot.column}: {message}", line))

    # -- the tree's shape

    def start(self, rules: list[_Written]) -> list[_Written]:
        return rules

    @v_args(meta=True)
    def rule(self, meta: Any, children: list[Any]) -> _Written:
        rule = self._assemble("rule", meta, [c for c in children if isinstance(c, _Field)])
        for clause in children:
            if isinstance(clause, tuple):
                setattr(rule, *clause)
        return rule

    def when(self, conditions: list[_Written]) -> tuple[str, list[_Written]]:
        return "conditions", conditions

    def then(self, actions: list[_Written]) -> tuple[str, list[_Written]]:
        return "actions", actions

    @v_args(meta=True)
    def condition(self, meta: Any, children: list[Any]) -> _Written:
        fields = [f for child in children if child is not None for f in (child if isinstance(child, list) else [child])]
        return self._assemble("condition", meta, fields)

    def plain_variable(self, children: list[Token]) -> _Field:
        return _Field("var", self._leaf(children[0]))

    def named_variable(self, children: list[_Field]) -> list[_Field]:
        return children

    def named_kind(self, children: list[Token]) -> _Field:
        return _Field("var", self._leaf(children[0]))

    def op(self, children: list[Token]) -> _Field:
        return _Field("op", self._leaf(children[0]))

    def number_text(self, children: list[Token]) -> _Part:
        return _Part(str(children[0]), {"": self._spot(children[0])})

    def values(self, children: list[Any]) -> _Field:
        return _Field("values", self.strings(children))

    def strings(self, children: list[Any]) -> _Part:
        return self._list([child if isinstance(child, _Part) else self._leaf(child) for child in children])

    def numbers(self, children: list[Token]) -> _Part:
        return self.strings(children)

    @v_args(meta=True)
    def retry(self, meta: Any, children: list[_Field]) -> _Field:
        """A route's retry policy: its options are the fields of one nested object."""
        written = self._assemble("retry", meta, children)
        spots = {("." + path if path else path): spot for path, spot in written.spots.items()}
        return _Field("retry", _Part(written.fields, spots), Spot(meta.line, meta.column))

    def upstreams(self, children: list[_Part]) -> _Field:
        return _Field("upstreams", self._list(children))

    @v_args(meta=True)
    def weighted(self, meta: Any, children: list[_Field | None]) -> _Part:
        entry = _Part({}, {"": Spot(meta.line, meta.column)})
        for item in filter(None, children):
            entry.value[item.name] = item.part.value
            entry.spots.update(item.part.under("." + item.name))
        return entry

    def pairs(self, children: list[tuple[Token, Token]]) -> _Part:
        pairs = _Part({}, {"": self._spot(children[0][0])})
        for key_token, value_token in children:
            key, value = self._leaf(key_token), self._leaf(value_token)
            if key.value in pairs.value:
                self.report(key.spots[""], f"{key_token} is given twice")
            pairs.value[key.value] = value.value
            pairs.spots["." + key.value] = key.spots[""]
        return pairs

    def pair(self, children: list[Token]) -> tuple[Token, Token]:
        return children[0], children[1]

    def __default__(self, data: Any, children: list[Any], meta: Any) -> Any:
        """Every action, every flag and every field (rules named after the model's fields)."""
        name = str(data)
        if name.replace("_", "-") in ACTIONS:
            return self._assemble(name.replace("_", "-"), meta, [c for c in children if c is not None])
        if name in _FLAGS:
            target, value = _FLAGS[name]
            return _Field(target, _Part(value, {"": Spot(meta.line, meta.column)}))
        (child,) = [c for c in children if c is not None]
        return _Field(name, child if isinstance(child, _Part) else self._leaf(child), Spot(meta.line, meta.column))

    # -- pieces

    def _assemble(self, kind: str, meta: Any, fields: list[_Field]) -> _Written:
        written = _Written(kind, Spot(meta.line, meta.column))
        for item in fields:
            if item.name in written.fields:
                spot = item.spot or item.part.spots[""]
                self.report(spot, f"{self._word_at(spot)!r} is given twice")
            written.fields[item.name] = item.part.value
            written.spots.update(item.part.under(item.name))
        written.spots[""] = written.spot
        return written

    def _list(self, items: list[_Part]) -> _Part:
        listed = _Part([item.value for item in items], {"": items[0].spots[""]})
        for index, item in enumerate(items):
            listed.spots.update(item.under(f"[{index}]"))
        return listed

    def _leaf(self, token: Token) -> _Part:
        spot = self._spot(token)
        if token.type == "DOUBLE_QUOTED":
            return _Part(self._unescape(token, spot), {"": spot})
        if token.type == "SINGLE_QUOTED":
            return _Part(token[1:-1], {"": spot})
        if token.type == "NUMBER":
            return _Part(float(token) if "." in token else int(token), {"": spot})
        return _Part(str(token), {"": spot})

    def _unescape(self, token: Token, spot: Spot) -> str:
        def replace(match: re.Match[str]) -> str:
            quoted, control, *codes = match.groups()[:-1]
            code = next((c for c in codes if c), None)
            if quoted or control:
                return quoted or _CONTROL[control]
            if code and int(code, 16) <= 0x10FFFF:
                return chr(int(code, 16))
            where = Spot(spot.line, spot.column + 1 + match.start())
            self.report(where, f"unknown escape '{match.group()}': in double quotes write \\\\ for a "
                               f"backslash, or use single quotes, which keep backslashes: '^/p/(\\d+)$'")
            return match.group()
        return _ESCAPE.sub(replace, token[1:-1])

    def _spot(self, token: Token) -> Spot:
        return Spot(token.line, token.column)

    def _word_at(self, spot: Spot) -> str:
        line = self.text.split("\n")[spot.line - 1]
        return _WORD.match(line, spot.column - 1).group()

    # -- validation by the model

    def build(self, index: int, rule: _Written) -> Rule | None:
        conditions = [self._validate(Condition, written, f"[{index}].conditions[{number}]")
                      for number, written in enumerate(rule.conditions)]
        actions = [self._validate(ACTIONS[written.kind], written, f"[{index}].actions[{number}].{written.kind}")
                   for number, written in enumerate(rule.actions)]
        if None in conditions or None in actions:
            return None
        rule.fields.update(conditions=conditions, actions=actions)
        return self._validate(Rule, rule, f"[{index}]")

    def _validate(self, model: type[BaseModel], written: _Written, path: str) -> Any:
        try:
            return model.model_validate(written.fields)
        except ValidationError as error:
            for item in error.errors(include_url=False):
                for line in item["msg"].removeprefix("Value error, ").splitlines():
                    where, message = join_relative(format_path(item["loc"]), line)
                    self.report(line_for(where, written.spots), with_input(message, item),
                                f"{path}.{where}" if where else path)
            return None


# --- syntax errors ------------------------------------------------------------------------

_WORD = re.compile(r"[A-Za-z0-9_.:/-]+|\S")
_STRING_TERMINALS = {"DOUBLE_QUOTED", "SINGLE_QUOTED"}
_DESCRIBED = {"DOUBLE_QUOTED": "a string", "SINGLE_QUOTED": "a string", "NUMBER": "a number",
              "DURATION": "a duration such as 5s, 500ms or 1m", "$END": "the end of the text"}


def _groups() -> list[tuple[str, list[str], list[str]]]:
    """Keyword sets an error names as one thing, listing them in the model's order."""
    variables = [f'{v}("NAME")' if v in NAMED_VARIABLES else v for v in get_args(Variable)]
    return [("a variable", list(get_args(Variable)), variables),
            ("an operator", list(get_args(Operator)), list(get_args(Operator))),
            ("an action", list(ACTIONS), list(ACTIONS))]


def _syntax_error(error: UnexpectedInput, text: str) -> tuple[Spot, str]:
    if isinstance(error, UnexpectedCharacters):
        spot, stop = Spot(error.line, error.column), error.pos_in_stream
        if error.char in "\"'":
            return spot, (f"unterminated string: a string ends with {error.char} on the line it starts "
                          r"(write \n for a line break)")
        got = repr(_WORD.match(text, stop).group())
    else:
        assert isinstance(error, UnexpectedToken)
        token = error.token
        if token.type == "$END":
            lines = text.split("\n")
            spot, stop, got = Spot(len(lines), len(lines[-1]) + 1), len(text), "the end of the text"
        else:
            spot, stop = Spot(token.line, token.column), token.start_pos
            got = str(token) if token.type in _STRING_TERMINALS else repr(str(token))
    return spot, f"expected {_expected(_acceptable(text, stop))}, got {got}"


def _acceptable(text: str, stop: int) -> set[str]:
    """The terminals the parser takes at offset `stop`, found by parsing again up to there.

    The error's own set can be wider: LALR merges states, so it may list what follows the
    same token elsewhere in the grammar. Errors are rare; parsing twice costs nothing.
    """
    interactive = _parser().parse_interactive(text)
    try:
        for token in interactive.iter_parse():
            if token.start_pos >= stop:
                break
    except UnexpectedInput:
        pass
    return interactive.accepts()


def _expected(terminals: Any) -> str:
    parser = _parser()
    words, things = set(), []
    for name in terminals:
        if name in _DESCRIBED:
            things.append(_DESCRIBED[name])
        else:
            words.add(parser.get_terminal(name).pattern.value)
    named = []
    for what, keywords, shown in _groups():
        if words.issuperset(keywords):
            words.difference_update(keywords)
            named.append(f"{what} ({', '.join(shown)})")
    choices = named + [repr(word) for word in sorted(words)] + sorted(set(things))
    return choices[0] if len(choices) == 1 else f"{', '.join(choices[:-1])} or {choices[-1]}"
