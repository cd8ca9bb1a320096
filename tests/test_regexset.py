"""Regex sets: whichever engine runs, `matches(text)` is the OR of the bits of the patterns
`re.search` finds in the text. With Hyperscan, `re` confirms the hits of the patterns it can
only approximate and searches on every call only for those it refuses."""

from __future__ import annotations

import os
import re
import weakref

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeplane.lang import regexset
from edgeplane.lang.regexset import NEVER, UTF_8, HyperscanSet, RegexSet, regex_set, to_hyperscan

IN_CI = os.environ.get("CI") == "true"
needs_hyperscan = pytest.mark.skipif(regexset.hyperscan is None and not IN_CI,
                                     reason="hyperscan is not installed (CI requires it)")


def searched(patterns: list[tuple[str, bool, int]], text: str) -> int:
    """The answer by definition: each regex alone, with re.search."""
    mask = 0
    for pattern, caseless, bits in patterns:
        if re.search(pattern, text, re.IGNORECASE if caseless else 0):
            mask |= bits
    return mask


def engines(patterns: list[tuple[str, bool, int]]) -> list:
    if regexset.hyperscan is None and not IN_CI:
        return [RegexSet(patterns)]
    return [RegexSet(patterns), HyperscanSet(patterns)]


def assert_engines_agree(patterns: list[tuple[str, bool, int]], texts: list[str]) -> None:
    for engine in engines(patterns):
        for text in texts:
            assert engine.matches(text) == searched(patterns, text), (engine.engine, patterns, text)


def test_ci_runs_with_hyperscan():
    if IN_CI:
        assert regexset.hyperscan is not None, "CI must install hyperscan, a dependency of edgeplane"


@needs_hyperscan
def test_the_factory_picks_hyperscan_when_it_is_installed():
    assert regex_set([("a", False, 1)]).engine == "hyperscan"


def test_the_factory_falls_back_to_re_without_hyperscan(monkeypatch):
    monkeypatch.setattr(regexset, "hyperscan", None)
    monkeypatch.setattr(regexset, "_live", weakref.WeakValueDictionary())
    assert regex_set([("a", False, 1)]).engine == "re"


def test_the_factory_gives_patterns_a_set_in_use_has_that_set():
    patterns = [(r"^/api/v\d+/", False, 1), ("admin", True, 2)]
    in_use = regex_set(patterns)
    assert regex_set(list(patterns)) is in_use
    assert regex_set(patterns + [("x", False, 4)]) is not in_use


# --- what Hyperscan leaves to re ---------------------------------------------------------

@needs_hyperscan
@pytest.mark.parametrize("pattern, texts", [
    (r"/items/(?=\d)", ["/items/4", "/items/x"]),                      # lookahead
    (r"/items/(?!new)", ["/items/new", "/items/old"]),                 # negative lookahead
    (r"(?<=/v1)/items", ["/v1/items", "/v2/items"]),                   # lookbehind
    (r"^/(\w+)/\1$", ["/ab/ab", "/ab/cd"]),                            # backreference
    (r"^(/)?x(?(1)y|z)$", ["/xy", "xz", "xy"]),                        # conditional
    (r"^/a*+a", ["/aaa"]),                                             # possessive repeat
    (r"^/(?>a+)a", ["/aaa"]),                                          # atomic group
    (r"\bcafé\b", ["un café.", "cafés", "un café日"]),                 # Unicode word boundary
    (r"\Bx", ["ax", "x"]),                                             # non-boundary
    (r"(?m)^$", ["/\n", "a\n\nb", "a"]),                                # MULTILINE ^, also after a final newline
])
def test_patterns_hyperscan_can_only_approximate_are_confirmed_by_re_after_a_hit(pattern, texts):
    patterns = [(pattern, False, 1), (r"^/", False, 2)]
    engine = HyperscanSet(patterns)
    assert (engine.narrow.confirmed, engine.narrow.searched) == ((pattern,), ())
    assert engine.re_patterns_wide == (pattern,)
    assert_engines_agree(patterns, texts)


@needs_hyperscan
def test_a_loose_pattern_is_not_searched_without_a_hit():
    engine = HyperscanSet([(r"^/admin/(?!login)", False, 1)])
    engine.narrow.confirms = ((1, lambda text: pytest.fail(f"searched {text!r}")),)
    assert engine.matches("/catalog/shoes") == 0


@needs_hyperscan
def test_patterns_hyperscan_refuses_are_searched_with_re_on_every_call():
    patterns = [(r"a^b", False, 1), (r"^/", False, 2)]
    engine = HyperscanSet(patterns)
    assert (engine.narrow.confirmed, engine.narrow.searched) == ((), ("a^b",))
    assert_engines_agree(patterns, ["a^b", "ab", "/"])


@needs_hyperscan
@pytest.mark.parametrize("pattern, caseless", [(r"^/items/\d+$", False), (r"\.php$", True), (r"(?i:x)", False)])
def test_patterns_needing_unicode_tables_are_exact_for_latin_1_texts_only(pattern, caseless):
    patterns = [(pattern, caseless, 1)]
    engine = HyperscanSet(patterns)
    assert (engine.re_patterns, engine.wide.confirmed) == ((), (pattern,))
    assert_engines_agree(patterns, ["/items/42", "/items/\u0664\u0662", "/a.PHP", "/日.php", "X", "X日"])


@needs_hyperscan
def test_a_pattern_no_latin_1_text_can_match_is_never_searched_for_one():
    patterns = [("^/новости/", False, 1), (r"[\ud800-\udbff]", False, 2)]
    engine = HyperscanSet(patterns)
    assert engine.re_patterns == engine.re_patterns_wide == ()
    assert_engines_agree(patterns, ["/новости/1", "/news/1", "\ud800"])


@needs_hyperscan
@pytest.mark.parametrize("pattern", [
    r"^/api/v\d+/(items|users)/[^/]+$", r"\.(?:jpe?g|png|gif)$", r"^/a{2,4}?b*?", r"(?s)a.b",
    r"(?m)x$", r"(?a)\bword\b", r"\Aabc\Z", r"[^\W\d]", r"(?x) a  b # comment", r"", r"x*", r"(?i)straße",
])
def test_regular_patterns_are_exact_in_hyperscan_for_latin_1_texts(pattern):
    assert HyperscanSet([(pattern, False, 1)]).re_patterns == ()


@needs_hyperscan
def test_hyperscan_expressions_spell_python_semantics_out():
    assert to_hyperscan(r"c\Z") == (r"\x63\z", True)
    assert to_hyperscan(r"c$") == (r"\x63$", True)
    assert to_hyperscan("\u212a", caseless=True) == (r"[\x4b\x6b]", True)  # the Kelvin sign folds to k
    assert to_hyperscan("é.", alphabet=UTF_8) == (r"\x{e9}[\x{0}-\x{9}\x{b}-\x{d7ff}\x{e000}-\x{10ffff}]", True)
    assert to_hyperscan("k", caseless=True, alphabet=UTF_8) == (r"[\x{4b}\x{6b}\x{100}-\x{d7ff}\x{e000}-\x{10ffff}]", False)
    assert to_hyperscan("日本|ok") == (r"(?:\x6f\x6b)", True)
    assert to_hyperscan("日") == (NEVER, True)
    assert to_hyperscan(r"/(?!new)") == (r"\x2f", False)


# --- semantics both engines keep ---------------------------------------------------------

def test_dollar_allows_a_final_newline_and_backslash_z_does_not():
    assert_engines_agree([(r"c$", False, 1), (r"c\Z", False, 2), (r"(?m)c$", False, 4)],
                         ["abc", "abc\n", "abc\n\n", "c\nd"])


def test_lazy_repeats_match_the_texts_greedy_ones_do():
    assert_engines_agree([(r"^x(?:ab)??y", False, 1), (r"^/a{2,3}?$", False, 2), (r"b+?c", False, 4)],
                         ["xy", "xaby", "xababy", "/a", "/aa", "/aaa", "/aaaa", "bbc", "c"])


def test_dot_matches_a_newline_only_with_dotall():
    assert_engines_agree([(r"a.b", False, 1), (r"(?s)a.b", False, 2), (r"a(?s:.)b", False, 4)], ["a\nb", "axb"])


def test_caseless_patterns_fold_case_as_python_does():
    patterns = [("k", True, 1), ("s", True, 2), ("i", True, 4), ("straße", True, 8), ("(?i:a)b", False, 16)]
    assert_engines_agree(patterns, ["K", "\u212a", "\u017f", "\u0130", "\u0131", "STRASSE", "STRAẞE", "Ab", "aB"])


def test_patterns_that_match_the_empty_string_match_every_text():
    patterns = [("", False, 1), ("a*", False, 2), ("^$", False, 4), ("(?:x|)", False, 8)]
    assert_engines_agree(patterns, ["", "\n", "b", "/api"])


def test_non_ascii_text_is_matched_by_characters_not_bytes():
    patterns = [(r"^/caf.$", False, 1), (r"\d{3}", False, 2), (r"^\w+$", False, 4), (r"[é-ř]", False, 8),
                (r"\s", False, 16), (r"[^\x00-\x7f]", False, 32)]
    assert_engines_agree(patterns, ["/café", "/caf\u00c3\u00a9", "\u0663\u0664\u0665", "日本語", "\u2003", "ab\U0001f600"])


def test_a_text_with_a_lone_surrogate_is_searched_with_re():
    assert_engines_agree([("x", False, 1), (".", False, 2)], ["\udc80x", "\ud800"])


def test_bits_of_matching_patterns_are_ored_and_shared_bits_count_once():
    patterns = [("a", False, 1), ("b", False, 1), ("c", False, 1 << 3), ("z", False, 1 << 100), ("q", False, 0)]
    for engine in engines(patterns):
        assert engine.matches("abc") == 0b1001
        assert engine.matches("zq") == 1 << 100
        assert engine.matches("") == 0


# --- both engines equal re.search, on any pattern ----------------------------------------

LITERALS = ["a", "b", "k", "s", "i", "x", "K", "S", "I", "/", ".", "-", "?", "=", " ", "1", "4", "\n",
            "é", "É", "ß", "ẞ", "İ", "ı", "ſ", "\u212a", "\u0663", "σ", "ς", "日"]
CLASSES = [r"\d", r"\w", r"\s", r"\D", r"\W", r"\S", ".", "[a-z]", "[^/]", "[0-9a-f]", "[A-Z_]",
           "[^a-z0-9]", "[é-ř]", r"[\w.-]", r"[^\s/]"]
ANCHORS = ["^", "$", r"\A", r"\Z", r"\b", r"\B"]
QUANTIFIERS = ["?", "*", "+", "{2}", "{1,3}", "{0,2}", "{2,}", "*?", "+?", "??", "{1,2}?"]
WRAPPERS = ["({})", "(?:{})", "(?i:{})", "(?m:{})", "(?s:{})", "(?a:{})", "(?-i:{})"]
# constructs Hyperscan cannot reproduce: drawn less often, so most sets mix both kinds
INEXACT = ["(?={})", "(?!{})", "(?<=a){}", "(?<!/){}", "(?>{})", "(?:{})*+", "({})\\1"]

literals, classes, anchors = st.sampled_from(LITERALS).map(re.escape), st.sampled_from(CLASSES), st.sampled_from(ANCHORS)
atoms = st.one_of(literals, literals, literals, classes, classes, anchors)


def composed(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    sequence = st.lists(inner, min_size=2, max_size=5).map("".join)
    return st.one_of(
        sequence,
        sequence,
        st.lists(inner, min_size=2, max_size=3).map(lambda alternatives: "(?:" + "|".join(alternatives) + ")"),
        st.lists(inner, min_size=2, max_size=3).map("|".join),
        st.tuples(inner, st.sampled_from(QUANTIFIERS)).map(lambda t: f"(?:{t[0]}){t[1]}"),
        st.tuples(st.sampled_from(WRAPPERS * 3 + INEXACT), inner).map(lambda t: t[0].format(t[1])),
    )


def compiles(pattern: str) -> bool:
    try:
        re.compile(pattern)
    except re.error:
        return False
    return True


regexes = st.tuples(st.sampled_from(["", "", "", "(?i)", "(?m)", "(?s)", "(?a)", "(?ms)"]),
                    st.recursive(atoms, composed, max_leaves=12)).map("".join).filter(compiles)
pattern_sets = st.lists(st.tuples(regexes, st.booleans()), min_size=1, max_size=8).map(
    lambda drawn: [(regex, caseless, 1 << 10 * n) for n, (regex, caseless) in enumerate(drawn)])

PATHS = ["/", "/api/v1/items/42?x=1", "/api/v2/users/abc/", "/static/app.min.js", "/Café/ß", "/a/b\n",
         "/index.PHP", "/KELVIN/\u212a", "/\u0663\u0664", "/日本/語"]
TEXT_CHARS = LITERALS + ["A", "0", "9", "_", "%", "\t", "\U0001f600", "Σ"]
texts = st.one_of(
    st.sampled_from(PATHS),
    st.text(st.sampled_from(TEXT_CHARS), max_size=12),
    st.tuples(st.sampled_from(PATHS), st.text(st.sampled_from(TEXT_CHARS), max_size=4)).map("".join),
    st.text(max_size=8),
)


def matching(patterns: list[tuple[str, bool, int]]) -> st.SearchStrategy[str]:
    """Texts one of the patterns matches."""
    def texts_of(entry: tuple[str, bool, int]) -> st.SearchStrategy[str]:
        pattern = re.compile(entry[0], re.IGNORECASE if entry[1] else 0)
        return st.from_regex(pattern, alphabet=st.sampled_from(TEXT_CHARS))
    return st.sampled_from(patterns).flatmap(texts_of)


def near(text: str) -> list[str]:
    """The text and its near misses: a character doubled, dropped or made a newline, a newline
    inserted, an end cut or added."""
    edits = [text, text[:-1], text[1:], text + "\n", text + "\n\n", text + "\nx", text + "\udc80"]
    for at in range(min(len(text), 12)):
        before, after = text[:at], text[at + 1:]
        edits += [before + text[at] * 2 + after, before + after, before + "\n" + after, before + "\n" + text[at:]]
    return edits


@needs_hyperscan
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(patterns=pattern_sets, data=st.data())
def test_both_engines_equal_each_regex_searched_alone(patterns, data):
    drawn = data.draw(st.lists(st.one_of(texts, matching(patterns)), min_size=1, max_size=4))
    assert_engines_agree(patterns, [edit for text in drawn for edit in near(text)])
