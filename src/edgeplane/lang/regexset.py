"""Many regexes, one question: which of them match this text?

Each pattern comes with the bits it stands for; `matches(text)` returns the OR of the bits of
every pattern that finds a match anywhere in the text, with Python `re.search` semantics
whichever engine runs. Patterns are compiled once per config version. Hyperscan scans the
text once for every pattern whose Python meaning it reproduces exactly; `re` answers for the
others in the same call. This module knows nothing of rules or requests.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
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
        self.re_patterns = tuple(pattern for pattern, _, _ in patterns)  # what `re` evaluates: all
        self.re_patterns_wide = self.re_patterns

    def matches(self, text: str) -> int:
        return _search_each(self.searches, text, 0)


class HyperscanSet:
    """The Hyperscan engine, with two databases of the same patterns.

    A text whose characters all fit in Latin-1 (hosts, methods, raw URIs, queries, header
    values, most paths) is scanned as Latin-1 bytes, where every Python pattern without
    lookaround, backreferences or Unicode `\\b` has an exact Hyperscan equal. A wider text
    (a decoded path in Cyrillic, say) is scanned as UTF-8 by the patterns that need no
    Unicode tables (no \\d \\w \\s, no case folding); Hyperscan compiles Unicode classes
    slowly (seconds for a hundred `\\w`) and its tables are not Python's.

    Not thread-safe: each database owns one scratch space, allocated when it is compiled.
    """

    engine = "hyperscan"

    def __init__(self, patterns: list[Pattern]):
        """`patterns`: (regex, caseless, bits) triples."""
        self.searches = _searches(patterns)  # also rejects what `re` rejects
        self.narrow = _Scanner(patterns, self.searches, LATIN_1)
        self.wide = _Scanner(patterns, self.searches, UTF_8)
        self.re_patterns = self.narrow.re_patterns  # what `re` evaluates for Latin-1 texts
        self.re_patterns_wide = self.wide.re_patterns  # and for wider ones

    def matches(self, text: str) -> int:
        try:
            data = text.encode("latin-1")
        except UnicodeEncodeError:
            return self._matches_wide(text)
        return _search_each(self.narrow.rest, text, self.narrow.scan(data))

    def _matches_wide(self, text: str) -> int:
        try:
            data = text.encode()
        except UnicodeEncodeError:  # lone surrogates have no UTF-8 form: `re` answers for all
            return _search_each(self.searches, text, 0)
        return _search_each(self.wide.rest, text, self.wide.scan(data))


def regex_set(patterns: list[Pattern]) -> RegexSet | HyperscanSet:
    """The fastest engine this interpreter has; both answer exactly as `re.search` does."""
    return HyperscanSet(patterns) if hyperscan is not None else RegexSet(patterns)


# --- alphabets ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Alphabet:
    """The texts one database scans: their characters, their encoding, how to spell one."""

    name: str
    last: int  # the highest code point
    utf8: bool

    def spell(self, code: int) -> str:
        return "\\x{%x}" % code if self.utf8 else "\\x%02x" % code


LATIN_1 = Alphabet("latin-1", 0xFF, utf8=False)
UTF_8 = Alphabet("utf-8", 0x10FFFF, utf8=True)


# --- databases ---------------------------------------------------------------------------


class _Scanner:
    """One database over one alphabet: `scan(data)` ORs the bits of the patterns it holds
    that match `data`; `rest` are the searches of the others (those no text of the alphabet
    can match are in neither)."""

    def __init__(self, patterns: list[Pattern], searches: tuple[Search, ...], alphabet: Alphabet):
        expressions = [to_hyperscan(pattern, caseless, alphabet) for pattern, caseless, _ in patterns]
        translated = [i for i, e in enumerate(expressions) if isinstance(e, str)]
        refused = _refused([expressions[i] for i in translated], alphabet)
        held = [i for n, i in enumerate(translated) if n not in refused]
        rest = sorted(set(range(len(patterns))) - set(held) - {i for i, e in enumerate(expressions) if e is NEVER})
        self.scan = _scan([expressions[i] for i in held], [patterns[i][2] for i in held], alphabet)
        self.rest = tuple(searches[i] for i in rest)
        self.re_patterns = tuple(patterns[i][0] for i in rest)


def _hs_flags(alphabet: Alphabet) -> int:
    # No HS_FLAG_CASELESS, UCP or DOTALL: case folding, classes and `.` are spelled out by
    # `to_hyperscan` as Python defines them.
    flags = hyperscan.HS_FLAG_SINGLEMATCH | hyperscan.HS_FLAG_ALLOWEMPTY
    return flags | hyperscan.HS_FLAG_UTF8 if alphabet.utf8 else flags


def _database(expressions: list[str], ids: list[int], alphabet: Alphabet) -> hyperscan.Database:
    database = hyperscan.Database()
    database.compile(expressions=[e.encode() for e in expressions], ids=ids,
                     elements=len(expressions), flags=_hs_flags(alphabet))
    return database


def _refused(expressions: list[str], alphabet: Alphabet) -> set[int]:
    """Positions of the expressions Hyperscan will not compile, found by halving the list."""
    if not expressions:
        return set()
    try:
        _database(expressions, list(range(len(expressions))), alphabet)
        return set()
    except hyperscan.error:
        if len(expressions) == 1:
            return {0}
    half = len(expressions) // 2
    return _refused(expressions[:half], alphabet) | {half + n for n in _refused(expressions[half:], alphabet)}


def _scan(expressions: list[str], bits: list[int], alphabet: Alphabet) -> Callable[[bytes], int]:
    if not expressions:
        return lambda _data: 0
    distinct = sorted(set(bits))  # one id per bits value: SINGLEMATCH then reports each once
    id_of = {value: n for n, value in enumerate(distinct)}
    bits_of = tuple(distinct)
    scan = _database(expressions, [id_of[value] for value in bits], alphabet).scan
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


class _Never(Exception):
    """No text of the alphabet can match this part."""


class _NoText:
    def __repr__(self) -> str:
        return "NEVER"


NEVER = _NoText()  # what `to_hyperscan` returns for a pattern no text of the alphabet matches


def to_hyperscan(pattern: str, caseless: bool = False, alphabet: Alphabet = LATIN_1) -> str | _NoText | None:
    """The Hyperscan expression that matches a text of `alphabet` (encoded) exactly when
    `re.search(pattern, text)` does; None when there is none; NEVER when no such text matches.

    Built from the tree `re` parses the pattern into. Each character item (literal, class,
    `.`) becomes the explicit set of characters Python matches with it: asked of `re` for
    each of the 256 Latin-1 characters, read from the pattern as written for UTF-8 (where
    case folding and \\d \\w \\s have no exact equal). Anchors become their Hyperscan equals
    (`\\Z` is `\\z`; `$` allows a final newline in both); lazy repeats become greedy ones, which
    match the same texts. Lookaround, backreferences, conditionals, atomic groups, possessive
    repeats, Unicode `\\b` and MULTILINE `^` have no exact equal.
    """
    try:
        tree = _parser.parse(pattern, re.IGNORECASE if caseless else 0)
        return _sequence(tree, tree.state.flags, alphabet)
    except _Inexact:
        return None
    except _Never:
        return NEVER


def _sequence(items: Iterable, flags: int, alphabet: Alphabet) -> str:
    return "".join(_node(op, av, flags, alphabet) for op, av in items)


def _node(op: object, av: object, flags: int, alphabet: Alphabet) -> str:
    if op in (sre.LITERAL, sre.NOT_LITERAL, sre.ANY, sre.IN):
        return _character_class(_characters(op, av, flags, alphabet), alphabet)
    if op is sre.BRANCH:
        return _alternatives(av[1], flags, alphabet)
    if op is sre.SUBPATTERN:
        _group, add, remove, body = av
        return "(?:" + _sequence(body, (flags | add) & ~remove, alphabet) + ")"
    if op in (sre.MAX_REPEAT, sre.MIN_REPEAT):
        return _repeat(*av, flags, alphabet)
    if op is sre.AT:
        return _anchor(av, flags)
    raise _Inexact(op)


def _alternatives(branches: list, flags: int, alphabet: Alphabet) -> str:
    possible = []
    for branch in branches:
        try:
            possible.append(_sequence(branch, flags, alphabet))
        except _Never:
            pass
    if not possible:
        raise _Never
    return "(?:" + "|".join(possible) + ")"


def _repeat(low: int, high: int, body: list, flags: int, alphabet: Alphabet) -> str:
    try:
        inner = _sequence(body, flags, alphabet)
    except _Never:
        if low == 0:
            return "(?:)"
        raise
    if high == 0:
        return "(?:)"
    return "(?:" + inner + "){%d,%s}" % (low, "" if high == sre.MAXREPEAT else high)


def _anchor(at: object, flags: int) -> str:
    multiline = flags & re.MULTILINE
    if at is sre.AT_BEGINNING and not multiline or at is sre.AT_BEGINNING_STRING:
        return "^"
    if at is sre.AT_END:  # also before a final newline; with MULTILINE before every one
        return "(?m:$)" if multiline else "$"
    if at is sre.AT_END_STRING:
        return r"\z"
    if at is sre.AT_BOUNDARY and flags & re.ASCII:  # Hyperscan's \b without UCP is ASCII's
        return r"\b"
    raise _Inexact(at)  # also MULTILINE `^`, which Hyperscan does not match after a final newline


# --- character sets --------------------------------------------------------------------

_SURROGATES = (0xD800, 0xDFFF)  # never in the UTF-8 of a text
_CATEGORIES = {sre.CATEGORY_DIGIT: r"\d", sre.CATEGORY_NOT_DIGIT: r"\D", sre.CATEGORY_SPACE: r"\s",
               sre.CATEGORY_NOT_SPACE: r"\S", sre.CATEGORY_WORD: r"\w", sre.CATEGORY_NOT_WORD: r"\W"}


def _characters(op: object, av: object, flags: int, alphabet: Alphabet) -> Ranges:
    """The characters of `alphabet` one item of a pattern matches, as Python decides."""
    if alphabet is LATIN_1:
        ranges = _asked(_item_source(op, av), flags & (re.IGNORECASE | re.ASCII | re.DOTALL))
    elif flags & re.IGNORECASE:
        raise _Inexact("case folding by Unicode tables")
    elif op is sre.ANY:
        ranges = ((0, alphabet.last),) if flags & re.DOTALL else ((0, 9), (11, alphabet.last))
    elif op is sre.LITERAL:
        ranges = ((av, av),)
    elif op is sre.NOT_LITERAL:
        ranges = _complement(((av, av),), alphabet.last)
    else:
        ranges = _listed(av, alphabet.last)
    ranges = _without_surrogates(ranges)
    if not ranges:
        raise _Never
    return ranges


@functools.lru_cache(maxsize=4096)
def _asked(source: str, flags: int) -> Ranges:
    """The Latin-1 characters the one-character pattern `source` matches, asked of `re`."""
    match = re.compile(source, flags).fullmatch
    return _merged((code, code) for code in range(0x100) if match(chr(code)))


def _item_source(op: object, av: object) -> str:
    if op is sre.ANY:
        return "."
    if op is sre.LITERAL:
        return _python_char(av)
    if op is sre.NOT_LITERAL:
        return "[^" + _python_char(av) + "]"
    pieces = []
    for item, value in av:
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


def _listed(items: list, last: int) -> Ranges:
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
            raise _Inexact(item)  # \d \w \s: Unicode tables
    ranges = _merged(spans)
    return _complement(ranges, last) if negate else ranges


def _merged(spans: Iterable[tuple[int, int]]) -> Ranges:
    merged: list[tuple[int, int]] = []
    for low, high in sorted(spans):
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(high, merged[-1][1]))
        else:
            merged.append((low, high))
    return tuple(merged)


def _complement(ranges: Ranges, last: int) -> Ranges:
    gaps, start = [], 0
    for low, high in ranges:
        if low > start:
            gaps.append((start, low - 1))
        start = high + 1
    if start <= last:
        gaps.append((start, last))
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


def _character_class(ranges: Ranges, alphabet: Alphabet) -> str:
    spell = alphabet.spell
    if len(ranges) == 1 and ranges[0][0] == ranges[0][1]:
        return spell(ranges[0][0])
    return "[" + "".join(spell(low) if low == high else spell(low) + "-" + spell(high)
                         for low, high in ranges) + "]"
