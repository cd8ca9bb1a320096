"""Many regexes, one question: which of them match this text?

Each pattern comes with the bits it stands for; `matches(text)` returns the OR of the bits of
every pattern that finds a match anywhere in the text, with Python `re.search` semantics
whichever engine runs. Patterns are compiled once per config version. Hyperscan scans the
text once for all patterns; `re` confirms the hits of patterns Hyperscan can only
approximate, and searches for the few it cannot take at all. This module knows nothing of
rules or requests.
"""

from __future__ import annotations

import functools
import re
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from re import _constants as sre  # the opcodes of `re`'s own parser: its tree is a pattern's meaning
from re import _parser
from typing import Any

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
        self.re_patterns = tuple(pattern for pattern, _, _ in patterns)  # searched on every call: all
        self.re_patterns_wide = self.re_patterns

    def matches(self, text: str) -> int:
        return _search_each(self.searches, text, 0)


class HyperscanSet:
    """The Hyperscan engine, with two databases of the same patterns.

    A text whose characters all fit in Latin-1 (hosts, methods, raw URIs, queries, header
    values, most paths) is scanned as Latin-1 bytes: there every pattern without lookaround,
    backreferences, atomic groups, possessive repeats, Unicode `\\b` or MULTILINE `^` has an
    exact Hyperscan equal. A wider text (a decoded path in Cyrillic, say) is scanned as
    UTF-8, where case folding and \\d \\w \\s are exact only for Latin-1 characters: Hyperscan's
    Unicode tables are not Python's, and it compiles Unicode classes slowly (seconds for a
    hundred `\\w`); that database is compiled when the first such text comes. A pattern
    without an exact equal is scanned as a looser one that matches at least its texts, and
    `re` confirms each hit.

    Not thread-safe: each database owns one scratch space, allocated when it is compiled.
    """

    engine = "hyperscan"

    def __init__(self, patterns: list[Pattern]):
        """`patterns`: (regex, caseless, bits) triples."""
        self.patterns = list(patterns)
        self.searches = _searches(patterns)  # also rejects what `re` rejects
        self.narrow = _Scanner(patterns, self.searches, LATIN_1)
        self._wide: _Scanner | None = None
        self.re_patterns = self.narrow.confirmed + self.narrow.searched  # evaluated by `re`, on a hit or always

    @property
    def wide(self) -> _Scanner:
        """Compiled on the first wider text: hosts, methods, raw URIs and queries never are."""
        if self._wide is None:
            self._wide = _Scanner(self.patterns, self.searches, UTF_8)
        return self._wide

    @property
    def re_patterns_wide(self) -> tuple[str, ...]:
        """Evaluated by `re` for wider texts (compiles their database if no such text came yet)."""
        return self.wide.confirmed + self.wide.searched

    def matches(self, text: str) -> int:
        try:
            data = text.encode("latin-1")
        except UnicodeEncodeError:
            return self._matches_wide(text)
        return self.narrow.matches(data, text)

    def _matches_wide(self, text: str) -> int:
        try:
            data = text.encode()
        except UnicodeEncodeError:  # lone surrogates have no UTF-8 form: `re` answers for all
            return _search_each(self.searches, text, 0)
        return self.wide.matches(data, text)


_live: weakref.WeakValueDictionary[tuple[Pattern, ...], RegexSet | HyperscanSet] = weakref.WeakValueDictionary()


def regex_set(patterns: list[Pattern]) -> RegexSet | HyperscanSet:
    """The fastest engine this interpreter has; both answer exactly as `re.search` does.
    Patterns a set in use already has (another application's, the serving config's while a
    reload compiles) get that set instead of a new compilation."""
    key = tuple(patterns)
    found = _live.get(key)
    if found is None:
        found = _live[key] = HyperscanSet(patterns) if hyperscan is not None else RegexSet(patterns)
    return found


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
    """One database over one alphabet. Each pattern is held exactly (a hit sets its bits),
    held loosely (a hit makes `re` confirm it), searched with `re` on every call (Hyperscan
    refused it), or skipped (no text of the alphabet matches it)."""

    def __init__(self, patterns: list[Pattern], searches: tuple[Search, ...], alphabet: Alphabet):
        exact, loose, searched, expression_of = [], [], [], {}
        for i, (pattern, caseless, _) in enumerate(patterns):
            translation = to_hyperscan(pattern, caseless, alphabet)
            if translation is None:
                searched.append(i)
            elif translation[0] is not NEVER:
                expression_of[i] = translation[0]
                (exact if translation[1] else loose).append(i)
        # Exact patterns share an id per bits value (SINGLEMATCH then reports each value once);
        # each loose one has its own id, whose hit sets a bit above every pattern's bits.
        own = sorted({patterns[i][2] for i in exact})
        self.shift = max((bits.bit_length() for _, _, bits in patterns), default=0)
        self.own_bits = (1 << self.shift) - 1
        position = {bits: n for n, bits in enumerate(own)}
        id_of = {i: position[patterns[i][2]] for i in exact} | {i: len(own) + n for n, i in enumerate(loose)}
        held = exact + loose
        database, refused = _compiled([expression_of[i] for i in held], [id_of[i] for i in held], alphabet)
        searched += [held[n] for n in sorted(refused)]
        self.scan = _scan(database, tuple(own) + tuple(1 << (self.shift + n) for n in range(len(loose))))
        self.confirms = tuple(searches[i] for i in loose)  # by loose id
        self.rest = tuple(searches[i] for i in searched)
        self.confirmed = tuple(patterns[i][0] for i in loose if i not in searched)  # by `re` after a hit
        self.searched = tuple(patterns[i][0] for i in searched)  # by `re` on every call

    def matches(self, data: bytes, text: str) -> int:
        found = self.scan(data)
        mask = found & self.own_bits
        suspects = found >> self.shift
        while suspects:
            low = suspects & -suspects
            suspects ^= low
            bits, search = self.confirms[low.bit_length() - 1]
            if bits & ~mask and search(text) is not None:
                mask |= bits
        return _search_each(self.rest, text, mask)


def _hs_flags(alphabet: Alphabet) -> int:
    # No HS_FLAG_CASELESS, UCP or DOTALL: case folding, classes and `.` are spelled out by
    # `to_hyperscan` as Python defines them.
    flags = hyperscan.HS_FLAG_SINGLEMATCH | hyperscan.HS_FLAG_ALLOWEMPTY
    return flags | hyperscan.HS_FLAG_UTF8 if alphabet.utf8 else flags


def _database(expressions: list[str], ids: list[int], alphabet: Alphabet) -> hyperscan.Database:
    """Compiled with the one scratch space its scans will use."""
    database = hyperscan.Database()
    database.compile(expressions=[e.encode() for e in expressions], ids=ids,
                     elements=len(expressions), flags=_hs_flags(alphabet))
    return database


def _compiled(expressions: list[str], ids: list[int], alphabet: Alphabet) -> tuple[hyperscan.Database | None, set[int]]:
    """The database of the expressions Hyperscan accepts, and the positions of those it refuses."""
    if not expressions:
        return None, set()
    try:
        return _database(expressions, ids, alphabet), set()
    except hyperscan.error:
        refused = _refused(expressions, alphabet)
    kept = [n for n in range(len(expressions)) if n not in refused]
    database = _database([expressions[n] for n in kept], [ids[n] for n in kept], alphabet) if kept else None
    return database, refused


def _refused(expressions: list[str], alphabet: Alphabet) -> set[int]:
    """Positions of the expressions Hyperscan will not compile, found by halving the list."""
    try:
        _database(expressions, [0] * len(expressions), alphabet)
        return set()
    except hyperscan.error:
        if len(expressions) == 1:
            return {0}
    half = len(expressions) // 2
    return _refused(expressions[:half], alphabet) | {half + n for n in _refused(expressions[half:], alphabet)}


def _scan(database: hyperscan.Database | None, values: tuple[int, ...]) -> Callable[[bytes], int]:
    """scan(data) -> the OR of the values of the ids that match somewhere in data."""
    if database is None:
        return lambda _data: 0
    scan = database.scan
    found = 0

    def on_match(id_: int, _start: int, _end: int, _flags: int, _context: object) -> None:
        nonlocal found
        found |= values[id_]

    def scan_once(data: bytes) -> int:
        nonlocal found
        found = 0
        scan(data, on_match)
        return found
    return scan_once


# --- Python patterns as Hyperscan expressions --------------------------------------------


class _Unknown(Exception):
    """A construct this translation does not know (a newer `re`, say)."""


class _Never(Exception):
    """No text of the alphabet can match this part."""


class _NoText:
    def __repr__(self) -> str:
        return "NEVER"


NEVER = _NoText()  # the expression of a pattern no text of the alphabet matches


def to_hyperscan(pattern: str, caseless: bool = False,
                 alphabet: Alphabet = LATIN_1) -> tuple[str | _NoText, bool] | None:
    """(expression, exact): a Hyperscan expression that matches a text of `alphabet`
    (encoded) whenever `re.search(pattern, text)` does, and only then when `exact`; NEVER
    when no such text matches; None for a construct this translation does not know.

    Built from the tree `re` parses the pattern into. Each character item (literal, class,
    `.`) becomes the set of characters Python matches with it, asked of `re` for the 256
    Latin-1 characters, read as written beyond them. Anchors become their Hyperscan equals
    (`\\Z` is `\\z`; `$` allows a final newline in both); lazy repeats become greedy ones,
    which match the same texts. Loosened: lookaround and Unicode `\\b`, `\\B`, MULTILINE `^`
    are dropped, backreferences match any text, atomic groups and possessive repeats
    backtrack, case folding and \\d \\w \\s allow every character beyond Latin-1.
    """
    translation = _Translation(alphabet)
    try:
        tree = _parser.parse(pattern, re.IGNORECASE if caseless else 0)
        return translation.sequence(tree, tree.state.flags), translation.exact
    except _Never:
        return NEVER, True
    except _Unknown:
        return None


class _Translation:
    """One pattern into one alphabet; `exact` turns False at the first loosening."""

    def __init__(self, alphabet: Alphabet):
        self.alphabet = alphabet
        self.exact = True

    def loosen(self, expression: str) -> str:
        self.exact = False
        return expression

    def sequence(self, items: Iterable, flags: int) -> str:
        return "".join(self.node(op, av, flags) for op, av in items)

    def node(self, op: object, av: Any, flags: int) -> str:
        if op in (sre.LITERAL, sre.NOT_LITERAL, sre.ANY, sre.IN):
            return _character_class(self.characters(op, av, flags), self.alphabet)
        if op is sre.BRANCH:
            return self.alternatives(av[1], flags)
        if op is sre.SUBPATTERN:
            _group, add, remove, body = av
            return "(?:" + self.sequence(body, (flags | add) & ~remove) + ")"
        if op in (sre.MAX_REPEAT, sre.MIN_REPEAT):  # lazy or greedy: the same texts match
            return self.repeat(*av, flags)
        if op is sre.AT:
            return self.anchor(av, flags)
        if op is sre.POSSESSIVE_REPEAT:
            return self.loosen(self.repeat(*av, flags))
        if op is sre.ATOMIC_GROUP:
            return self.loosen("(?:" + self.sequence(av, flags) + ")")
        if op in (sre.ASSERT, sre.ASSERT_NOT):
            return self.loosen("")
        if op is sre.GROUPREF:
            return self.loosen(_character_class(_within(((0, self.alphabet.last),)), self.alphabet) + "*")
        if op is sre.GROUPREF_EXISTS:
            _group, yes, no = av
            return self.loosen(self.alternatives([yes, no or []], flags))
        raise _Unknown(op)

    def alternatives(self, branches: list, flags: int) -> str:
        possible = []
        for branch in branches:
            try:
                possible.append(self.sequence(branch, flags))
            except _Never:
                pass
        if not possible:
            raise _Never
        return "(?:" + "|".join(possible) + ")"

    def repeat(self, low: int, high: int, body: list, flags: int) -> str:
        try:
            inner = self.sequence(body, flags)
        except _Never:
            if low == 0:
                return "(?:)"
            raise
        if high == 0:
            return "(?:)"
        return "(?:" + inner + "){%d,%s}" % (low, "" if high == sre.MAXREPEAT else high)

    def anchor(self, at: object, flags: int) -> str:
        multiline = flags & re.MULTILINE
        if at is sre.AT_BEGINNING and not multiline or at is sre.AT_BEGINNING_STRING:
            return "^"
        if at is sre.AT_END:  # also before a final newline; with MULTILINE before every one
            return "(?m:$)" if multiline else "$"
        if at is sre.AT_END_STRING:
            return r"\z"
        if at is sre.AT_BOUNDARY and flags & re.ASCII:  # Hyperscan's \b without UCP is ASCII's
            return r"\b"
        if at in (sre.AT_BEGINNING, sre.AT_BOUNDARY, sre.AT_NON_BOUNDARY):
            return self.loosen("")  # Hyperscan's MULTILINE ^ misses the end after a final newline
        raise _Unknown(at)

    def characters(self, op: object, av: Any, flags: int) -> Ranges:
        """The characters of the alphabet one item of a pattern matches, as Python decides
        for Latin-1 ones; beyond them, as written or (case folding, \\d \\w \\s) all."""
        latin_1 = _asked(_item_source(op, av), flags & (re.IGNORECASE | re.ASCII | re.DOTALL))
        if self.alphabet is LATIN_1:
            ranges = latin_1
        elif op is sre.ANY:
            ranges = ((0, self.alphabet.last),) if flags & re.DOTALL else ((0, 9), (11, self.alphabet.last))
        elif flags & re.IGNORECASE or op is sre.IN and any(item is sre.CATEGORY for item, _ in av):
            ranges = self.loosen_set(latin_1 + ((0x100, self.alphabet.last),))
        elif op is sre.LITERAL:
            ranges = ((av, av),)
        elif op is sre.NOT_LITERAL:
            ranges = _complement(((av, av),), self.alphabet.last)
        else:
            ranges = _listed(av, self.alphabet.last)
        ranges = _within(ranges)
        if not ranges:
            raise _Never
        return ranges

    def loosen_set(self, ranges: Ranges) -> Ranges:
        self.exact = False
        return _merged(ranges)


# --- character sets --------------------------------------------------------------------

_SURROGATES = (0xD800, 0xDFFF)  # never in the UTF-8 of a text
_CATEGORIES = {sre.CATEGORY_DIGIT: r"\d", sre.CATEGORY_NOT_DIGIT: r"\D", sre.CATEGORY_SPACE: r"\s",
               sre.CATEGORY_NOT_SPACE: r"\S", sre.CATEGORY_WORD: r"\w", sre.CATEGORY_NOT_WORD: r"\W"}


@functools.lru_cache(maxsize=4096)
def _asked(source: str, flags: int) -> Ranges:
    """The Latin-1 characters the one-character pattern `source` matches, asked of `re`."""
    match = re.compile(source, flags).fullmatch
    return _merged((code, code) for code in range(0x100) if match(chr(code)))


def _item_source(op: object, av: Any) -> str:
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
            raise _Unknown(item)
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
            raise _Unknown(item)
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


def _within(ranges: Ranges) -> Ranges:
    """Without the surrogates, which no text with a UTF-8 form contains."""
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
