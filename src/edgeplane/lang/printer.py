"""Write model `Rule`s in the rule language, in its one canonical layout.

`parse_rules(format_rules(rules)) == rules` for every valid list of rules: every field is
written unless it holds its default, strings are quoted so they read back unchanged, and
numbers so they parse to the same value. Comments are not part of the model, so they are
not written. This module only formats; it never validates.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from ..model.config import CLOCK_VARIABLES, NAMED_VARIABLES, ORDERING_OPERATORS, Action, Condition, Rule
from ..model.types import parse_duration

INDENT = "    "


def format_rules(rules: list[Rule]) -> str:
    """The canonical text of `rules`: one block per rule, a blank line between blocks."""
    return "\n".join(format_rule(rule) for rule in rules)


def format_rule(rule: Rule) -> str:
    head = ["rule"]
    if rule.name is not None:
        head.append(quote(rule.name))
    head += [word for word, on in (("top", rule.top), ("last", rule.last)) if on]
    if rule.order:
        head.append(f"order {rule.order}")
    if not rule.enabled:
        head.append("disabled")
    lines = [" ".join(head) + " {"]
    lines += _clause("when", [format_condition(c) for c in rule.conditions])
    lines += _clause("then", [format_action(a) for a in rule.actions])
    return "\n".join(lines) + "\n}\n"


def _clause(keyword: str, items: list[str]) -> list[str]:
    return [f"{INDENT}{keyword if i == 0 else ' and'} {item}" for i, item in enumerate(items)]


def format_condition(condition: Condition) -> str:
    variable = condition.var
    if condition.var in NAMED_VARIABLES:
        variable += f"({quote(condition.name or '')})"
    words = [variable, condition.op] + (["caseless"] if condition.caseless else [])
    numeric = condition.op in ORDERING_OPERATORS and condition.var not in CLOCK_VARIABLES
    if condition.values:
        words.append(", ".join(v if numeric and is_number(v) else quote(v) for v in condition.values))
    if condition.tz is not None:
        words.append(f"tz {quote(condition.tz)}")
    return " ".join(words)


def format_action(action: Action) -> str:
    words = [action.kind] + [text for part in LAYOUT[action.kind] if (text := part.write(action))]
    return " ".join(words)


# --- scalars -----------------------------------------------------------------------------


def quote(text: str) -> str:
    """A string literal reading back as `text`: single quotes (no escapes) when it has a
    backslash and nothing single quotes cannot hold, else double quotes with escapes."""
    if "\\" in text and "'" not in text and text.isprintable():
        return f"'{text}'"
    return '"' + "".join(_ESCAPES.get(c) or (c if c.isprintable() else _code(c)) for c in text) + '"'


_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _code(char: str) -> str:
    point = ord(char)
    return f"\\x{point:02x}" if point < 0x100 else f"\\u{point:04x}" if point < 0x10000 else f"\\U{point:08x}"


def number(value: float) -> str:
    """A number as the grammar's NUMBER writes it (no exponent), parsing back to `value`."""
    if value == int(value):
        return str(int(value))
    return format(Decimal(repr(value)), "f")


def duration(seconds: float) -> str:
    """The first of 1h, 1m, 1s, 500ms that reads back as exactly `seconds`; else N.NNNs."""
    if not math.isfinite(seconds):
        raise ValueError(f"a duration of {seconds} seconds has no written form")
    candidates = [f"{number(seconds)}s"]
    if seconds == int(seconds):
        whole = int(seconds)
        candidates[:0] = [f"{whole // size}{unit}" for unit, size in (("h", 3600), ("m", 60))
                          if whole and whole % size == 0]
    else:
        candidates.insert(0, f"{round(seconds * 1000)}ms")
    return next(c for c in candidates if parse_duration(c) == seconds)


def is_number(text: str) -> bool:
    """Whether `text` is a NUMBER of the grammar, so a value can be written without quotes."""
    return _NUMBER.fullmatch(text) is not None


_NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")


# --- how each action is written: its parts in canonical order ----------------------------


@dataclass(frozen=True)
class Part:
    """One field of an action: positional (no keyword), or an option written unless default."""

    field: str
    keyword: str | None = None
    render: Callable[[Any], str] = quote
    always: bool = False

    def write(self, action: Action) -> str:
        value = getattr(action, self.field)
        if not self.always and value == type(action).model_fields[self.field].get_default(call_default_factory=True):
            return ""
        return f"{self.keyword} {self.render(value)}" if self.keyword else self.render(value)


@dataclass(frozen=True)
class Flag(Part):
    """A keyword alone, written when the field holds `value`."""

    value: Any = True

    def write(self, action: Action) -> str:
        return str(self.keyword) if getattr(action, self.field) == self.value else ""


@dataclass(frozen=True)
class Replacement(Part):
    """rewrite-path's `to`: always after a prefix or a regex, after a path only when given."""

    def write(self, action: Action) -> str:
        unused = action.replacement == "" and action.path is not None
        return "" if unused else f"to {quote(action.replacement)}"


@dataclass(frozen=True)
class NoneWhenEmpty(Part):
    """A list whose default is not empty (cors's `allow-methods`, retry's `on`): an empty one
    is written `KEYWORD none`."""

    def write(self, action: Action) -> str:
        return f"{self.keyword} none" if getattr(action, self.field) == [] else super().write(action)


def _option(field: str, render: Callable[[Any], str] = quote, keyword: str | None = None) -> Part:
    return Part(field, keyword or field.replace("_", "-"), render)


def _strings(values: list[str]) -> str:
    return ", ".join(quote(v) for v in values)


def _pairs(pairs: dict[str, str]) -> str:
    return ", ".join(f"{quote(k)} {quote(v)}" for k, v in pairs.items())


def _weighted(upstreams: list[Any]) -> str:
    return ", ".join(f"{quote(u.upstream)} {u.weight}" for u in upstreams)


def _retry(retry: Any) -> str:
    """A retry policy: its attempts, then the options that differ from their defaults."""
    options = (NoneWhenEmpty("retry_on", "on", _strings), _option("statuses", lambda codes: ", ".join(map(str, codes))),
               _option("backoff", duration), _option("max_backoff", duration),
               Flag("non_idempotent", "non-idempotent"), _option("replay_limit", str))
    return " ".join([str(retry.attempts)] + [text for part in options if (text := part.write(retry))])


_EXCHANGE = (_option("timeout", duration), _option("backend_timeout", duration), _option("retry", _retry))
_NAME_VALUE = (Part("name", always=True), Part("value", always=True))

LAYOUT: dict[str, tuple[Part, ...]] = {
    "proxy": (Part("upstream", always=True), *_EXCHANGE),
    "split": (Part("upstreams", render=_weighted, always=True), _option("sticky"), _option("cookie"),
              _option("cookie_max_age", duration), *_EXCHANGE),
    "mirror": (Part("upstream", always=True), _option("percent", number)),
    "deny": (Part("status", render=str, always=True), Part("body")),
    "set-request-header": _NAME_VALUE,
    "add-request-header": _NAME_VALUE,
    "remove-request-header": _NAME_VALUE[:1],
    "set-response-header": _NAME_VALUE,
    "add-response-header": _NAME_VALUE,
    "remove-response-header": _NAME_VALUE[:1],
    "rewrite-path": (_option("path"), _option("prefix"), _option("regex"), Replacement("replacement")),
    "rewrite-query": (_option("query"), _option("set", _pairs), _option("add", _pairs), _option("remove", _strings)),
    "redirect": (Part("status", render=str, always=True), _option("scheme"), _option("host"),
                 _option("port", str), _option("prefix"), _option("path", keyword="to"),
                 Flag("keep_query", "drop-query", value=False)),
    "respond": (Part("status", render=str, always=True), Part("body"), _option("content_type"),
                _option("headers", _pairs)),
    "cors": (Part("allow_origins", render=_strings, always=True), NoneWhenEmpty("allow_methods", "allow-methods", _strings),
             _option("allow_headers", _strings), _option("expose_headers", _strings),
             Flag("allow_credentials", "allow-credentials"), _option("max_age", str)),
    "set-var": _NAME_VALUE,
    "https-redirect": (Part("status", render=str, always=True), _option("port", str)),
    "hsts": (_option("max_age", str), Flag("include_subdomains", "include-subdomains"), Flag("preload", "preload")),
    "authenticate": (Part("provider", always=True),),
    "rate-limit": (Part("policy", always=True),),
}
