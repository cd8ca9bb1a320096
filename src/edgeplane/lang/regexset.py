"""Many regexes, one question: which of them match this text?

Each pattern comes with the bits it stands for; `RegexSet.matches(text)` returns the OR of
the bits of every pattern that finds a match anywhere in the text (Python `re.search`
semantics). Patterns are compiled once per config version.
This module knows nothing of rules or requests.
"""

from __future__ import annotations

import re


class RegexSet:
    """The `re` engine: each pattern on its own; correct for every Python pattern."""

    engine = "re"

    def __init__(self, patterns: list[tuple[str, bool, int]]):
        """`patterns`: (regex, caseless, bits) triples."""
        self.compiled = [(bits, re.compile(pattern, re.IGNORECASE if caseless else 0).search)
                         for pattern, caseless, bits in patterns]

    def matches(self, text: str) -> int:
        mask = 0
        for bit, search in self.compiled:
            if search(text) is not None:
                mask |= bit
        return mask


def regex_set(patterns: list[tuple[str, bool, int]]) -> RegexSet:
    return RegexSet(patterns)
