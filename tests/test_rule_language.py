"""The rule language: every construct parses to the model, text and model round-trip, and
mistakes are reported with file:line:column and what was expected."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeplane.cli import main
from edgeplane.lang.parser import RuleLanguageError, parse_rules
from edgeplane.lang.printer import LAYOUT, format_rules
from edgeplane.model.config import (
    ACTIONS,
    CLOCK_VARIABLES,
    NAMED_VARIABLES,
    ORDERING_OPERATORS,
    RESERVED_HEADERS,
    TERMINAL_ACTIONS,
    VALUELESS_OPERATORS,
    WEEKDAYS,
    AddRequestHeader,
    AddResponseHeader,
    Authenticate,
    Condition,
    Cors,
    Deny,
    HashKey,
    HeaderName,
    Hsts,
    HttpsRedirect,
    Mirror,
    Operator,
    Proxy,
    RateLimitAction,
    Redirect,
    RemoveRequestHeader,
    RemoveResponseHeader,
    Respond,
    Retry,
    RetryCondition,
    RewritePath,
    RewriteQuery,
    Rule,
    SetRequestHeader,
    SetResponseHeader,
    SetVar,
    Split,
    Variable,
    WeightedUpstream,
)
from edgeplane.model.load import load
from edgeplane.model.types import Name

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def one_rule(text: str) -> Rule:
    (rule,) = parse_rules(text)
    return rule


def condition(text: str) -> Condition:
    return one_rule(f"rule {{ when {text} then deny }}").conditions[0]


def action(text: str) -> Any:
    return one_rule(f"rule {{ then {text} }}").actions[0]


def error_of(text: str, source: str = "rules.edge", line_offset: int = 0) -> str:
    with pytest.raises(RuleLanguageError) as caught:
        parse_rules(text, source, line_offset)
    return str(caught.value)


# --- conditions ------------------------------------------------------------------------

SAMPLE_VALUE = {"time": '"20:00"', "date": '"2024-12-24"', "weekday": '"mon"', "random": "10",
                "client-ip": '"10.0.0.0/8"'}
DEFAULT_VALUE = '"v"'


@pytest.mark.parametrize("variable", get_args(Variable))
def test_every_variable_parses(variable: str) -> None:
    written = f'{variable}("X-Name")' if variable in NAMED_VARIABLES else variable
    op = "lt" if variable == "random" else "eq"
    parsed = condition(f"{written} {op} {SAMPLE_VALUE.get(variable, DEFAULT_VALUE)}")
    assert (parsed.var, parsed.name) == (variable, "X-Name" if variable in NAMED_VARIABLES else None)


SAMPLE_VALUES = {"exists": ("", []), "missing": ("", []), "regex": ('"^/a", "^/b"', ["^/a", "^/b"]),
                 "cidr": ('"10.0.0.0/8", "2001:db8::/32"', ["10.0.0.0/8", "2001:db8::/32"]),
                 "not-cidr": ('"192.168.0.0/16"', ["192.168.0.0/16"]), "gt": ("10", ["10"]),
                 "ge": ("10.5", ["10.5"]), "lt": ("-3", ["-3"]), "le": ('"7"', ["7"])}


@pytest.mark.parametrize("op", get_args(Operator))
def test_every_operator_parses(op: str) -> None:
    variable = "client-ip" if "cidr" in op else 'header("X-N")'
    written, values = SAMPLE_VALUES.get(op, ('"a", "b"', ["a", "b"]))
    assert condition(f"{variable} {op} {written}") == Condition(
        var="client-ip" if "cidr" in op else "header", name=None if "cidr" in op else "X-N", op=op, values=values)


def test_caseless_and_several_values() -> None:
    assert condition('header("X-Canary") eq caseless "on", "yes"') == Condition(
        var="header", name="X-Canary", op="eq", values=["on", "yes"], caseless=True)


def test_clock_conditions_take_a_time_zone() -> None:
    assert condition('weekday in "sat", "sun" tz "Europe/Paris"') == Condition(
        var="weekday", op="in", values=["sat", "sun"], tz="Europe/Paris")
    assert condition('time exists tz "UTC"') == Condition(var="time", op="exists", tz="UTC")


def test_numbers_are_values_as_written() -> None:
    assert condition("random lt 12.50").values == ["12.50"]
    assert condition('cookie("n") eq 007').values == ["007"]


# --- actions ---------------------------------------------------------------------------

EVERY_ACTION = [
    ('proxy "api"', Proxy(upstream="api")),
    ('proxy "api" timeout 5s backend-timeout 500ms', Proxy(upstream="api", timeout=5, backend_timeout=0.5)),
    ('proxy "api" backend-timeout 1m timeout 1.5s', Proxy(upstream="api", timeout=1.5, backend_timeout=60)),
    ('split "v1" 90, "v2" 10', Split(upstreams=[WeightedUpstream(upstream="v1", weight=90),
                                                WeightedUpstream(upstream="v2", weight=10)])),
    ('split "a", "b" 0 sticky "cookie:user" timeout 2s backend-timeout 1h',
     Split(upstreams=[WeightedUpstream(upstream="a"), WeightedUpstream(upstream="b", weight=0)],
           sticky="cookie:user", timeout=2, backend_timeout=3600)),
    ('proxy "api" retry 3 on "5xx", "reset" statuses 429, 503 backoff 10ms max-backoff 1s non-idempotent '
     'replay-limit 1024',
     Proxy(upstream="api", retry=Retry(attempts=3, retry_on=["5xx", "reset"], statuses=[429, 503], backoff=0.01,
                                       max_backoff=1, non_idempotent=True, replay_limit=1024))),
    ('split "a", "b" retry 2 on none statuses 503 timeout 2s cookie "version" cookie-max-age 24h',
     Split(upstreams=[WeightedUpstream(upstream="a"), WeightedUpstream(upstream="b")], timeout=2,
           retry=Retry(attempts=2, retry_on=[], statuses=[503]), cookie="version", cookie_max_age=86400)),
    ('mirror "shadow"', Mirror(upstream="shadow")),
    ('mirror "shadow" percent 12.5', Mirror(upstream="shadow", percent=12.5)),
    ("deny", Deny()),
    ('deny 451 "gone"', Deny(status=451, body="gone")),
    ('set-request-header "X-A" "1"', SetRequestHeader(name="X-A", value="1")),
    ('add-request-header "X-A" "1"', AddRequestHeader(name="X-A", value="1")),
    ('remove-request-header "Cookie"', RemoveRequestHeader(name="Cookie")),
    ('set-response-header "X-A" "1"', SetResponseHeader(name="X-A", value="1")),
    ('add-response-header "X-A" "1"', AddResponseHeader(name="X-A", value="1")),
    ('remove-response-header "Server"', RemoveResponseHeader(name="Server")),
    ('rewrite-path path "/new"', RewritePath(path="/new")),
    ('rewrite-path prefix "/api/" to "/v2/"', RewritePath(prefix="/api/", replacement="/v2/")),
    ("rewrite-path regex '^/p/(\\d+)$' to '/product?id=\\1'",
     RewritePath(regex="^/p/(\\d+)$", replacement="/product?id=\\1")),
    ('rewrite-query query "a=1"', RewriteQuery(query="a=1")),
    ('rewrite-query set "page" "2", "lang" "en" add "tag" "x" remove "utm_source", "utm_medium"',
     RewriteQuery(set={"page": "2", "lang": "en"}, add={"tag": "x"}, remove=["utm_source", "utm_medium"])),
    ("redirect", Redirect()),
    ('redirect 301 scheme "https" host "example.com" port 8443 prefix "/old/" to "/new/" drop-query',
     Redirect(status=301, scheme="https", host="example.com", port=8443, prefix="/old/", path="/new/",
              keep_query=False)),
    ("respond", Respond()),
    ('respond 404 "no\\n" content-type "application/json" headers "X-A" "1", "X-B" "2"',
     Respond(status=404, body="no\n", content_type="application/json", headers={"X-A": "1", "X-B": "2"})),
    ('cors "https://app.example.com", "https://*.example.com"',
     Cors(allow_origins=["https://app.example.com", "https://*.example.com"])),
    ('cors "*" allow-methods "GET", "PUT" allow-headers "X-A" expose-headers "X-B", "X-C" '
     'allow-credentials max-age 600',
     Cors(allow_origins=["*"], allow_methods=["GET", "PUT"], allow_headers=["X-A"],
          expose_headers=["X-B", "X-C"], allow_credentials=True, max_age=600)),
    ('cors "*" allow-methods none', Cors(allow_origins=["*"], allow_methods=[])),
    ('set-var "tier" "gold"', SetVar(name="tier", value="gold")),
    ("https-redirect", HttpsRedirect()),
    ("https-redirect 308 port 8443", HttpsRedirect(status=308, port=8443)),
    ("hsts", Hsts()),
    ("hsts max-age 600 include-subdomains preload", Hsts(max_age=600, include_subdomains=True, preload=True)),
    ('authenticate "corp-jwt"', Authenticate(provider="corp-jwt")),
    ('rate-limit "api"', RateLimitAction(policy="api")),
]


@pytest.mark.parametrize(("text", "expected"), EVERY_ACTION, ids=[t for t, _ in EVERY_ACTION])
def test_every_action_parses(text: str, expected: Any) -> None:
    assert action(text) == expected


def test_the_action_examples_set_every_field_of_every_action() -> None:
    written = {kind: set() for kind in ACTIONS}
    for _, expected in EVERY_ACTION:
        written[expected.kind] |= expected.model_fields_set
    assert written == {kind: set(cls.model_fields) for kind, cls in ACTIONS.items()}


def test_the_printer_writes_every_field_of_every_action() -> None:
    assert {kind: {part.field for part in parts} for kind, parts in LAYOUT.items()} == {
        kind: set(cls.model_fields) for kind, cls in ACTIONS.items()}


def test_actions_run_in_the_order_written() -> None:
    rule = one_rule('rule { then set-var "a" "1" and remove-request-header "Cookie" and proxy "api" }')
    assert [a.kind for a in rule.actions] == ["set-var", "remove-request-header", "proxy"]


# --- rules -----------------------------------------------------------------------------


def test_rule_options() -> None:
    rule = one_rule('rule "admin" top last order -5 disabled { then deny }')
    assert rule == Rule(name="admin", top=True, last=True, order=-5, enabled=False, actions=[Deny()])


def test_a_rule_needs_neither_name_nor_conditions() -> None:
    assert one_rule('rule { then proxy "api" }') == Rule(actions=[Proxy(upstream="api")])


def test_options_come_in_any_order() -> None:
    assert one_rule("rule order 3 last { then deny }") == one_rule("rule last order 3 { then deny }")


def test_empty_text_has_no_rules() -> None:
    assert parse_rules("# only a comment\n\n") == []


def test_strings_escapes_and_raw_single_quotes() -> None:
    assert condition(r'path eq "tab\there \"quoted\" \\ \x41\u00e9\U0001F600"').values == [
        'tab\there "quoted" \\ Aé\U0001F600']
    assert condition(r"path regex '^/(\d+)\.html$'").values == [r"^/(\d+)\.html$"]
    assert condition('path eq "日本"').values == ["日本"]


# --- equality with YAML and round trips -------------------------------------------------


def test_the_example_equals_the_yaml_example() -> None:
    yaml_rules = load(EXAMPLES / "rules.yaml").applications[0].rules
    assert parse_rules((EXAMPLES / "rules.edge").read_text(), "rules.edge") == yaml_rules


def test_yaml_rules_round_trip_through_text() -> None:
    yaml_rules = load(EXAMPLES / "rules.yaml").applications[0].rules
    assert parse_rules(format_rules(yaml_rules)) == yaml_rules


CANONICAL = textwrap.dedent('''\
    rule "admin-after-hours" top last order 10 disabled {
        when path prefix "/admin"
         and client-ip not-cidr "10.0.0.0/8"
         and weekday in "mon", "tue" tz "Europe/Paris"
         and header("X-Canary") eq caseless "on"
         and random lt 10
        then deny 403
    }

    rule {
        then rewrite-path regex "^/p/([0-9]+)$" to '/product?id=\\1'
         and split "v1" 90, "v2" 10 sticky "cookie:user" timeout 5s
    }
    ''')


def test_canonical_text_round_trips_unchanged() -> None:
    assert format_rules(parse_rules(CANONICAL)) == CANONICAL


def test_formatting_makes_any_layout_canonical() -> None:
    messy = CANONICAL.replace("\n     and", " and").replace("    ", "\t") + "# trailing comment\n"
    assert format_rules(parse_rules(messy)) == CANONICAL


def test_defaults_are_not_written() -> None:
    rules = parse_rules('rule order 0 { then redirect 302 to "/x" }  rule { then mirror "m" percent 100 and deny 403 "" }')
    assert format_rules(rules) == 'rule {\n    then redirect 302 to "/x"\n}\n\nrule {\n    then mirror "m"\n     and deny 403\n}\n'


def _pattern(metadata: Any) -> str:
    return next(m.pattern for m in metadata if getattr(m, "pattern", None))


def _literals(annotation: Any) -> list[Any]:
    if get_origin(annotation) is Literal:
        return list(get_args(annotation))
    return [value for arg in get_args(annotation) for value in _literals(arg)]


TEXT = st.text(max_size=8)
REGEX = st.sampled_from(["^/a", r"^/p/(\d+)$", "x|y", r"\.(js|css)$", "(?i)abc", "[a-z]+"])
NAMES = st.from_regex(_pattern(get_args(Name)[1].metadata), fullmatch=True)
TOKENS = st.from_regex(_pattern(get_args(HeaderName)[1].metadata), fullmatch=True).filter(
    lambda name: name.lower() not in RESERVED_HEADERS)
URI_PARTS = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=8)
HOSTS = st.from_regex(r"\A[A-Za-z0-9.-]{1,12}\Z", fullmatch=True)
HEADER_VALUES = st.text(st.characters(blacklist_characters="\r\n\x00", blacklist_categories=("Cs",)), max_size=8)
DURATIONS = st.none() | st.integers(0, 10**7).map(lambda ms: ms / 1000) | st.floats(0, 1e9)
CIDRS = st.builds("{}/{}".format, st.ip_addresses(v=4), st.integers(0, 32)) | st.builds(
    "{}/{}".format, st.ip_addresses(v=6), st.integers(0, 128))
NUMBERS = st.integers().map(str) | st.floats().map(str) | st.sampled_from(["007", "-0.50", "1e3"])
CLOCK = {"time": st.builds("{:02}:{:02}".format, st.integers(0, 23), st.integers(0, 59)),
         "date": st.dates().map(lambda d: f"{d.year:04}-{d.month:02}-{d.day:02}"),
         "weekday": st.sampled_from(WEEKDAYS)}


NAMES_OF_FIELDS = st.text(st.characters(blacklist_categories=("Cc", "Zs", "Zl", "Zp", "Cs")), min_size=1, max_size=8)


@st.composite
def conditions(draw: Any) -> Condition:
    var = draw(st.sampled_from(get_args(Variable)))
    operators = [op for op in get_args(Operator) if (var != "random" or op in ORDERING_OPERATORS)
                 and (var not in CLOCK_VARIABLES or "cidr" not in op)]
    op = draw(st.sampled_from(operators))
    if op in VALUELESS_OPERATORS:
        values = st.just([])
    elif var in CLOCK_VARIABLES:
        values = st.lists(CLOCK[var], min_size=1, max_size=3)
    else:
        one = CIDRS if "cidr" in op else REGEX if "regex" in op else NUMBERS if op in ORDERING_OPERATORS else TEXT
        values = st.lists(one, min_size=1, max_size=3)
    return Condition(var=var, op=op, values=draw(values), caseless=draw(st.booleans()),
                     name=draw(NAMES_OF_FIELDS) if var in NAMED_VARIABLES else None,
                     tz=draw(st.none() | st.sampled_from(["UTC", "Europe/Paris"])) if var in CLOCK_VARIABLES else None)


def _maybe(strategy: Any) -> Any:
    return st.none() | strategy


HEADER_CHANGE = {"name": TOKENS, "value": HEADER_VALUES}
MILLISECONDS = st.integers(0, 10**6).map(lambda ms: ms / 1000)
RETRIES = _maybe(st.builds(
    lambda backoff, extra, **fields: Retry(backoff=backoff, max_backoff=None if extra is None else backoff + extra,
                                           **fields),
    MILLISECONDS, _maybe(MILLISECONDS), attempts=st.integers(1, 10),
    retry_on=st.lists(st.sampled_from(get_args(RetryCondition)), max_size=4),
    statuses=st.lists(st.integers(400, 599), max_size=3), non_idempotent=st.booleans(),
    replay_limit=st.integers(0, 10**7)))
ACTION_STRATEGIES = {
    "proxy": st.builds(Proxy, upstream=NAMES, timeout=DURATIONS, backend_timeout=DURATIONS, retry=RETRIES),
    "split": st.builds(Split, upstreams=st.lists(st.builds(WeightedUpstream, upstream=NAMES, weight=st.integers(0, 10000)),
                                                 min_size=1, max_size=3),
                       sticky=_maybe(st.from_regex(_pattern(get_args(HashKey)[1].metadata), fullmatch=True)),
                       cookie=_maybe(TOKENS), timeout=DURATIONS, backend_timeout=DURATIONS, retry=RETRIES)
    .filter(lambda split: split.cookie is not None or split.cookie_max_age is None),
    "mirror": st.builds(Mirror, upstream=NAMES, percent=st.floats(0, 100)),
    "deny": st.builds(Deny, status=st.integers(400, 599), body=TEXT),
    "set-request-header": st.builds(SetRequestHeader, **HEADER_CHANGE),
    "add-request-header": st.builds(AddRequestHeader, **HEADER_CHANGE),
    "remove-request-header": st.builds(RemoveRequestHeader, name=TOKENS),
    "set-response-header": st.builds(SetResponseHeader, **HEADER_CHANGE),
    "add-response-header": st.builds(AddResponseHeader, **HEADER_CHANGE),
    "remove-response-header": st.builds(RemoveResponseHeader, name=TOKENS),
    "rewrite-path": st.one_of(st.builds(RewritePath, path=URI_PARTS.map("/".__add__)),
                              st.builds(RewritePath, prefix=URI_PARTS, replacement=URI_PARTS),
                              st.builds(RewritePath, regex=REGEX, replacement=URI_PARTS.map(lambda t: t.replace("\\", "")))),
    "rewrite-query": st.builds(RewriteQuery, query=_maybe(TEXT), set=st.dictionaries(TEXT, TEXT, max_size=2),
                               add=st.dictionaries(TEXT, TEXT, max_size=2), remove=st.lists(TEXT, max_size=2)),
    "redirect": st.builds(Redirect, status=st.sampled_from(_literals(Redirect.model_fields["status"].annotation)),
                          scheme=_maybe(st.sampled_from(_literals(Redirect.model_fields["scheme"].annotation))),
                          host=_maybe(HOSTS), port=_maybe(st.integers(1, 65535)), path=_maybe(URI_PARTS),
                          keep_query=st.booleans())
    | st.builds(Redirect, prefix=URI_PARTS, path=URI_PARTS),
    "respond": st.builds(Respond, status=st.integers(200, 599), body=TEXT, content_type=HEADER_VALUES,
                         headers=st.dictionaries(TOKENS, HEADER_VALUES, max_size=2)),
    "cors": st.builds(Cors, allow_origins=st.lists(st.just("*") | st.from_regex(
                          r"\A[a-z][a-z0-9+.-]*://(\*\.)?[A-Za-z0-9.-]+(:\d+)?\Z"), min_size=1, max_size=2),
                      allow_methods=st.lists(TEXT, max_size=2), allow_headers=st.lists(TEXT, max_size=2),
                      expose_headers=st.lists(TEXT, max_size=2), allow_credentials=st.booleans(),
                      max_age=_maybe(st.integers(0, 10**6))),
    "set-var": st.builds(SetVar, name=st.from_regex(_pattern(SetVar.model_fields["name"].metadata), fullmatch=True),
                         value=TEXT),
    "https-redirect": st.builds(HttpsRedirect, status=st.sampled_from(_literals(HttpsRedirect.model_fields["status"].annotation)),
                                port=_maybe(st.integers(1, 65535))),
    "hsts": st.builds(Hsts, max_age=st.integers(0, 10**9), include_subdomains=st.booleans(), preload=st.booleans()),
    "authenticate": st.builds(Authenticate, provider=NAMES),
    "rate-limit": st.builds(RateLimitAction, policy=NAMES),
}


@st.composite
def rules(draw: Any) -> Rule:
    steps = draw(st.lists(st.sampled_from([k for k in ACTIONS if k not in TERMINAL_ACTIONS]), max_size=3))
    steps += draw(st.lists(st.sampled_from(TERMINAL_ACTIONS), max_size=1, min_size=0 if steps else 1))
    return Rule(name=draw(_maybe(TEXT)), conditions=draw(st.lists(conditions(), max_size=3)),
                actions=[draw(ACTION_STRATEGIES[kind]) for kind in steps], order=draw(st.integers()),
                top=draw(st.booleans()), last=draw(st.booleans()), enabled=draw(st.booleans()))


def test_the_property_test_generates_every_action() -> None:
    assert set(ACTION_STRATEGIES) == set(ACTIONS)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(rules(), max_size=3))
def test_any_valid_rules_round_trip_through_text(generated: list[Rule]) -> None:
    text = format_rules(generated)
    assert parse_rules(text) == generated
    assert format_rules(parse_rules(text)) == text


def test_the_documented_examples_mean_their_yaml() -> None:
    doc = (EXAMPLES.parent / "docs" / "rule-language.md").read_text()
    for section, rule in (("## Conditions", "rule {{ when {} then deny }}"), ("## Actions", "rule {{ then {} }}")):
        table = doc.split(section)[1].split("\n## ")[0]
        for written, in_yaml in re.findall(r"^\| `(.+?)` \| `(.+?)`", table, re.MULTILINE):
            parsed = one_rule(rule.format(written))
            data = yaml.safe_load(in_yaml)
            if section == "## Actions":
                assert parsed.actions == [ACTIONS[next(iter(data))].model_validate(data)], written
            else:
                assert parsed.conditions == [Condition.model_validate(data)], written


# --- errors ----------------------------------------------------------------------------

OPERATORS = ", ".join(get_args(Operator))
ACTION_KINDS = ", ".join(ACTIONS)


def test_unknown_operator() -> None:
    assert error_of('rule {\n    when path equals "/x"\n    then deny\n}') == (
        f"rules.edge:2:15: expected an operator ({OPERATORS}), got 'equals'")


def test_missing_then() -> None:
    assert error_of('rule "x" {\n    when path prefix "/x"\n}') == (
        "rules.edge:3:1: expected ',', 'and', 'then' or 'tz', got '}'")


def test_missing_actions() -> None:
    assert error_of("rule { }") == "rules.edge:1:8: expected 'then' or 'when', got '}'"


def test_unterminated_string() -> None:
    assert error_of('rule {\n    then deny 403 "forbidden\n}') == (
        'rules.edge:2:19: unterminated string: a string ends with " on the line it starts '
        "(write \\n for a line break)")


def test_bad_regex_names_the_value() -> None:
    with pytest.raises(RuleLanguageError) as caught:
        parse_rules('rule {\n    when path regex "^/a", "(" then deny\n}', "rules.edge")
    assert str(caught.value) == "rules.edge:2:28: invalid regex: missing ), unterminated subpattern at position 0"
    (problem,) = caught.value.problems
    assert (problem.path, problem.line) == ("[0].conditions[0].values[1]", 2)


def test_unknown_action() -> None:
    assert error_of('rule { then forward "api" }') == (
        f"rules.edge:1:13: expected an action ({ACTION_KINDS}), got 'forward'")


def test_value_of_the_wrong_shape() -> None:
    assert error_of('rule { when time ge "8pm" then deny }') == (
        "rules.edge:1:21: expected HH:MM such as 20:00, got '8pm'")
    assert error_of('rule { then redirect port "443" }') == 'rules.edge:1:27: expected a number, got "443"'
    assert error_of('rule { then proxy "api" timeout 5sec }') == (
        "rules.edge:1:33: expected a duration such as 5s, 500ms or 1m, got '5sec'")


def test_value_out_of_range_points_at_the_value() -> None:
    assert error_of('rule { then split "a" 1, "b" -1 }') == (
        "rules.edge:1:30: Input should be greater than or equal to 0 (got -1)")


def test_unknown_variable() -> None:
    message = error_of('rule { when url eq "/" then deny }')
    assert message.startswith("rules.edge:1:13: expected a variable (host, scheme, method, uri, path, query, "
                              'arg("NAME"), header("NAME"), cookie("NAME"), client-ip,')
    assert message.endswith("), got 'url'")


def test_a_named_variable_needs_its_name() -> None:
    assert error_of('rule { when header eq "x" then deny }') == "rules.edge:1:20: expected '(', got 'eq'"


def test_an_option_given_twice() -> None:
    assert error_of('rule { then proxy "api" timeout 1s timeout 2s }') == (
        "rules.edge:1:36: 'timeout' is given twice")


def test_unknown_escape_suggests_single_quotes() -> None:
    assert error_of(r'rule { when path regex "^/(\d+)$" then deny }') == (
        r"rules.edge:1:28: unknown escape '\d': in double quotes write \\ for a backslash, "
        r"or use single quotes, which keep backslashes: '^/p/(\d+)$'")


def test_terminal_action_not_last() -> None:
    assert error_of('rule "r" {\n    then proxy "api" and set-var "a" "b"\n}') == (
        "rules.edge:1:1: 'proxy' must be the rule's last action")


def test_every_problem_is_reported_at_once() -> None:
    assert error_of('rule { then deny 99 }\nrule { then respond 700 }') == (
        "rules.edge:1:18: Input should be greater than or equal to 400 (got 99)\n"
        "rules.edge:2:21: Input should be less than or equal to 599 (got 700)")


def test_line_offset_moves_every_line() -> None:
    with pytest.raises(RuleLanguageError) as caught:
        parse_rules('rule {\n  then deny 99\n}', "config.yaml", line_offset=10)
    assert str(caught.value) == "config.yaml:12:13: Input should be greater than or equal to 400 (got 99)"
    assert caught.value.problems[0].line == 12
    assert error_of("rule x", "config.yaml", 10).startswith("config.yaml:11:6: expected")


# --- the command line ------------------------------------------------------------------


def test_cli_fmt_prints_canonical_text(tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / "rules.edge"
    path.write_text(CANONICAL.replace("\n     and", " and"))
    assert main(["rules", "fmt", "-f", str(path)]) == 0
    assert capsys.readouterr().out == CANONICAL


def test_cli_fmt_reports_errors(tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / "rules.edge"
    path.write_text('rule { then forward "api" }')
    assert main(["rules", "fmt", "-f", str(path)]) == 1
    assert capsys.readouterr().err.startswith(f"{path}:1:13: expected an action")


def test_cli_to_yaml_and_from_yaml_agree_with_the_examples(capsys: Any) -> None:
    assert main(["rules", "to-yaml", "-f", str(EXAMPLES / "rules.edge")]) == 0
    written = yaml.safe_load(capsys.readouterr().out)["rules"]
    assert [Rule.model_validate(rule) for rule in written] == load(EXAMPLES / "rules.yaml").applications[0].rules
    assert main(["rules", "from-yaml", "-f", str(EXAMPLES / "rules.yaml"), "--app", "shop"]) == 0
    assert capsys.readouterr().out == format_rules(parse_rules((EXAMPLES / "rules.edge").read_text()))


def test_cli_to_yaml_into_a_config_checks_upstreams(tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / "rules.edge"
    path.write_text('rule { then proxy "nowhere" }')
    assert main(["rules", "to-yaml", "-f", str(path), "--into", str(EXAMPLES / "rules.yaml")]) == 1
    assert "no upstream named 'nowhere'" in capsys.readouterr().err
