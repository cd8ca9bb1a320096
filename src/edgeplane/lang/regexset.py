"""Many regexes, one question: which of them match this text?

Each pattern comes with the bits it stands for; `matches(text)` returns the OR of the bits of
every pattern that finds a match anywhere in the text, with Python `re.search` semantics
whichever engine runs. Patterns are compiled once per config version. Hyperscan scans the
text once for every pattern whose Python meaning it can reproduce exactly; `re` answers for
the others in the same call. This module knows nothing of rules or requests.
"""

from __future__ import annotations

import array
import functools
import re
from collections.abc import Callable, Iterable
from re import _constants as sre  # the opcodes of `re`'s own parser: its tree is a pattern's meaning
from re import _parser

try:
    import hyperscan
except ImportError:  # the `re` engine serves alone
    hyperscan = None

Pattern = tuple[str, bool, int]  # (regex, caseless, bits)
Search = tuple[int, Callable[[str], "re.Match | None"]]
Ranges = tuple[tuple[int, int], ...]  # inclusive code point ranges, sorted and disjoint


def _searches(patterns: list[Pattern]) -> tuple[Search, ...]:
    return tuple((bits, re.compile(pattern, re.IGNORECASE if caseless else 0).search)
                 for pattern, caseless, bits in patterns)


def _search_each(searches: tuple[Search, ...], text: str, mask: int) -> int:
    """`mask` plus the bits of every search that finds something in `text`; a pattern whose
    bits are all set already is not searched."""
    for bits, search in searches:
        if bits & ~mask and search(text) is not None:
            mask |= bits
    return mask


class RegexSet:
    """The `re` engine: each pattern on its own; correct for every Python pattern."""

    engine = "re"

    def __init__(self, patterns: list[Pattern]):
        """`patterns`: (regex, caseless, bits) triples."""
        self.searches = _searches(patterns)
        self.re_patterns = tuple(pattern for pattern, _, _ in patterns)  # those `re` evaluates: all

    def matches(self, text: str) -> int:
        return _search_each(self.searches, text, 0)


class HyperscanSet:
    """The Hyperscan engine: one database and one scan of the text's UTF-8 for every pattern
    `to_hyperscan` translates, `re` for the rest. Not thread-safe: the database owns one
    scratch space (allocated when it is compiled) and one scan runs at a time."""

    engine = "hyperscan"

    def __init__(self, patterns: list[Pattern]):
        """`patterns`: (regex, caseless, bits) triples."""
        self.searches = _searches(patterns)  # also validates every pattern as `re` would
        expressions = [to_hyperscan(pattern, caseless) for pattern, caseless, _ in patterns]
        translated = [i for i, expression in enumerate(expressions) if expression is not None]
        refused = _refused([expressions[i] for i in translated])
        scanned = [i for n, i in enumerate(translated) if n not in refused]
        self.scan = _scanner([expressions[i] for i in scanned], [patterns[i][2] for i in scanned])
        rest = sorted(set(range(len(patterns))) - set(scanned))
        self.rest = tuple(self.searches[i] for i in rest)
        self.re_patterns = tuple(patterns[i][0] for i in rest)  # those `re` evaluates

    def matches(self, text: str) -> int:
        try:
            data = text.encode()
        except UnicodeEncodeError:  # lone surrogates have no UTF-8 form: `re` answers for all
            return _search_each(self.searches, text, 0)
        return _search_each(self.rest, text, self.scan(data))


def regex_set(patterns: list[Pattern]) -> RegexSet | HyperscanSet:
    """The fastest engine this interpreter has; both answer exactly as `re.search` does."""
    return HyperscanSet(patterns) if hyperscan is not None else RegexSet(patterns)


# --- the Hyperscan database ------------------------------------------------------------


def _flags() -> int:
    # No HS_FLAG_CASELESS, HS_FLAG_UCP or HS_FLAG_DOTALL: case, categories and `.` are spelled out
    # by `to_hyperscan` as Python defines them, since Hyperscan's Unicode tables are not Python's.
    return hyperscan.HS_FLAG_SINGLEMATCH | hyperscan.HS_FLAG_UTF8 | hyperscan.HS_FLAG_ALLOWEMPTY


def _database(expressions: list[str], ids: list[int]) -> hyperscan.Database:
    database = hyperscan.Database()
    database.compile(expressions=[e.encode() for e in expressions], ids=ids,
                     elements=len(expressions), flags=_flags())
    return database


def _refused(expressions: list[str]) -> set[int]:
    """Positions of the expressions Hyperscan will not compile (found by halving the list)."""
    if not expressions:
        return set()
    try:
        _database(expressions, list(range(len(expressions))))
        return set()
    except hyperscan.error:
        if len(expressions) == 1:
            return {0}
    half = len(expressions) // 2
    return _refused(expressions[:half]) | {half + n for n in _refused(expressions[half:])}


def _scanner(expressions: list[str], bits: list[int]) -> Callable[[bytes], int]:
    """scan(data) -> OR of the bits of the expressions that match somewhere in data."""
    if not expressions:
        return lambda _data: 0
    distinct = sorted(set(bits))  # one id per bits value: SINGLEMATCH then reports each once
    id_of = {value: n for n, value in enumerate(distinct)}
    bits_of = tuple(distinct)
    scan = _database(expressions, [id_of[value] for value in bits]).scan
    found = 0

    def on_match(id_: int, _start: int, _end: int, _flags: int, _context: object) -> None:
        nonlocal found
        found |= bits_of[id_]

    def scan_once(data: bytes) -> int:
        nonlocal found
        found = 0
        scan(data, on_match)
        return found
    return scan_once


# --- Python patterns as Hyperscan expressions --------------------------------------------


class _Inexact(Exception):
    """Hyperscan cannot reproduce this construct's Python meaning exactly."""


def to_hyperscan(pattern: str, caseless: bool = False) -> str | None:
    """The Hyperscan expression (UTF-8 mode) that matches a text exactly when
    `re.search(pattern, text)` does, or None when there is none.

    Built from the tree `re` parses the pattern into: every character class, case-insensitive
    character and `.` becomes an explicit set of code points computed by `re` itself; anchors
    become their Hyperscan equals (`\\Z` is `\\z`, `$` allows a final newline in both); lazy
    repeats become greedy ones (they match the same texts). Lookaround, backreferences,
    conditionals, atomic groups, possessive repeats and Unicode `\\b` have no exact equal.
    """
    try:
        tree = _parser.parse(pattern, re.IGNORECASE if caseless else 0)
        return _sequence(tree, tree.state.flags)
    except _Inexact:
        return None


def _sequence(items: Iterable, flags: int) -> str:
    return "".join(_node(op, av, flags) for op, av in items)


def _node(op: object, av: object, flags: int) -> str:
    if op in (sre.LITERAL, sre.NOT_LITERAL, sre.ANY, sre.IN):
        return _character_class(_code_points(op, av, flags))
    if op is sre.BRANCH:
        return "(?:" + "|".join(_sequence(branch, flags) for branch in av[1]) + ")"
    if op is sre.SUBPATTERN:
        _group, add, remove, body = av
        return "(?:" + _sequence(body, (flags | add) & ~remove) + ")"
    if op in (sre.MAX_REPEAT, sre.MIN_REPEAT):
        low, high, body = av
        if high == 0:
            return "(?:)"
        return "(?:" + _sequence(body, flags) + "){%d,%s}" % (low, "" if high == sre.MAXREPEAT else high)
    if op is sre.AT:
        return _anchor(av, flags)
    raise _Inexact(op)


def _anchor(at: object, flags: int) -> str:
    multiline = flags & re.MULTILINE
    if at is sre.AT_BEGINNING:
        return "(?m:^)" if multiline else "^"
    if at is sre.AT_BEGINNING_STRING:
        return "^"
    if at is sre.AT_END:
        return "(?m:$)" if multiline else "$"
    if at is sre.AT_END_STRING:
        return r"\z"
    if at is sre.AT_BOUNDARY and flags & re.ASCII:  # Hyperscan's \b without UCP is ASCII's
        return r"\b"
    raise _Inexact(at)


# --- character sets --------------------------------------------------------------------

_LAST = 0x10FFFF
_SURROGATES = (0xD800, 0xDFFF)  # never in the UTF-8 of a text
_CATEGORIES = {sre.CATEGORY_DIGIT: r"\d", sre.CATEGORY_NOT_DIGIT: r"\D", sre.CATEGORY_SPACE: r"\s",
               sre.CATEGORY_NOT_SPACE: r"\S", sre.CATEGORY_WORD: r"\w", sre.CATEGORY_NOT_WORD: r"\W"}
_LEARNING_FLAGS = re.IGNORECASE | re.ASCII  # what changes which characters an item matches


def _code_points(op: object, av: object, flags: int) -> Ranges:
    """The characters one item of a pattern matches, as Python decides with `flags`."""
    flags &= _LEARNING_FLAGS | re.DOTALL
    if op is sre.ANY:
        ranges = ((0, _LAST),) if flags & re.DOTALL else ((0, 9), (11, _LAST))
    elif op in (sre.LITERAL, sre.NOT_LITERAL) and flags & re.IGNORECASE:
        ranges = _caseless(av, flags & _LEARNING_FLAGS)
        ranges = _complement(ranges) if op is sre.NOT_LITERAL else ranges
    elif op is sre.LITERAL:
        ranges = ((av, av),)
    elif op is sre.NOT_LITERAL:
        ranges = _complement(((av, av),))
    elif flags & re.IGNORECASE or any(item is sre.CATEGORY for item, _ in av):
        ranges = _learned(_class_source(av), flags & _LEARNING_FLAGS)
    else:
        ranges = _listed(av)
    ranges = _without_surrogates(ranges)
    if not ranges:
        raise _Inexact("a set no character of a UTF-8 text is in")
    return ranges


def _listed(items: list) -> Ranges:
    """A case-sensitive class of literals and ranges, read as written."""
    negate, spans = False, []
    for item, value in items:
        if item is sre.NEGATE:
            negate = True
        elif item is sre.LITERAL:
            spans.append((value, value))
        elif item is sre.RANGE:
            spans.append(value)
        else:
            raise _Inexact(item)
    ranges = _merged(spans)
    return _complement(ranges) if negate else ranges


def _class_source(items: list) -> str:
    pieces = []
    for item, value in items:
        if item is sre.NEGATE:
            pieces.append("^")
        elif item is sre.LITERAL:
            pieces.append(_python_char(value))
        elif item is sre.RANGE:
            pieces.append(_python_char(value[0]) + "-" + _python_char(value[1]))
        elif item is sre.CATEGORY and value in _CATEGORIES:
            pieces.append(_CATEGORIES[value])
        else:
            raise _Inexact(item)
    return "[" + "".join(pieces) + "]"


def _python_char(code: int) -> str:
    return f"\\U{code:08x}"


@functools.cache
def _universe() -> str:
    """Every code point once, surrogates included, each at its own index."""
    return array.array("I", range(_LAST + 1)).tobytes().decode("utf-32-le", "surrogatepass")


@functools.lru_cache(maxsize=4096)
def _learned(source: str, flags: int) -> Ranges:
    """The characters the one-character pattern `source` matches, asked of `re` for each one."""
    runs = re.finditer(f"(?:{source})+", _universe(), flags)
    return tuple((run.start(), run.end() - 1) for run in runs)


_caseless_known: dict[tuple[int, int], Ranges] = {}
_PRINTABLE_ASCII = range(0x20, 0x7F)


def _caseless(code: int, flags: int) -> Ranges:
    """The characters a case-insensitive literal matches. Learned in batches: one pass over
    every code point finds all characters any of the batch matches (a class matches what each
    of its members matches), then each member keeps those it matches itself."""
    if (code, flags) not in _caseless_known:
        batch = {code, *(c for c in _PRINTABLE_ASCII if (c, flags) not in _caseless_known)}
        candidates = [c for low, high in _learned(_class_source([(sre.LITERAL, c) for c in sorted(batch)]), flags)
                      for c in range(low, high + 1)]
        for member in batch:
            matches = re.compile(_python_char(member), flags).fullmatch
            _caseless_known[member, flags] = _merged((c, c) for c in candidates if matches(chr(c)))
    return _caseless_known[code, flags]


def _merged(spans: Iterable[tuple[int, int]]) -> Ranges:
    merged: list[tuple[int, int]] = []
    for low, high in sorted(spans):
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(high, merged[-1][1]))
        else:
            merged.append((low, high))
    return tuple(merged)


def _complement(ranges: Ranges) -> Ranges:
    gaps, start = [], 0
    for low, high in ranges:
        if low > start:
            gaps.append((start, low - 1))
        start = high + 1
    if start <= _LAST:
        gaps.append((start, _LAST))
    return tuple(gaps)


def _without_surrogates(ranges: Ranges) -> Ranges:
    first, last = _SURROGATES
    kept = []
    for low, high in ranges:
        if low < first:
            kept.append((low, min(high, first - 1)))
        if high > last:
            kept.append((max(low, last + 1), high))
    return tuple(kept)


def _character_class(ranges: Ranges) -> str:
    if len(ranges) == 1 and ranges[0][0] == ranges[0][1]:
        return "\\x{%x}" % ranges[0][0]
    return "[" + "".join("\\x{%x}" % low if low == high else "\\x{%x}-\\x{%x}" % (low, high)
                         for low, high in ranges) + "]"
