"""The configuration model: what it accepts, what it refuses, and how it says so."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from edgeplane.model import ConfigError, dump, parse
from edgeplane.model.types import parse_duration, parse_size

from conftest import ENV

VALID = textwrap.dedent("""\
    upstreams:
      - name: api
        servers:
          - {address: 127.0.0.1, port: 9001, weight: 3}
          - {address: backend.internal, port: 9002, backup: true}
        balance: hash
        hash_key: "cookie:session"
        timeouts: {connect: 500ms, read: 1m}
    applications:
      - name: shop
        domains: [shop.example.com, "*.shop.example.com"]
        ports: [8080, 8081]
        rules:
          - conditions:
              - {var: path, op: prefix, values: /api/}
              - {var: header, name: X-Canary, op: eq, values: ["on"], caseless: true}
            actions:
              - set-request-header: {name: X-Api, value: "1"}
              - rewrite-path: {prefix: /api/, replacement: /}
              - proxy: {upstream: api}
          - actions:
              - respond: {status: 404, body: nothing here}
    """)


def problems_of(text: str, source: str = "config.yaml") -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse(text, source)
    return str(caught.value).splitlines()


def test_a_valid_config_loads_with_units_converted():
    config = parse(VALID)
    upstream = config.upstreams[0]
    assert upstream.timeouts.connect == 0.5 and upstream.timeouts.read == 60.0
    assert config.applications[0].rules[0].actions[-1].upstream == "api"


def test_dump_then_parse_gives_the_same_config():
    config = parse(VALID)
    assert parse(dump(config)) == config
    assert parse(dump(config, "json"), "x.json") == config


def test_json_files_load_like_yaml():
    config = parse(VALID)
    text = json.dumps(config.model_dump(mode="json"))
    assert parse(text, "config.json") == config


def test_every_field_error_is_reported_with_path_and_line():
    lines = problems_of(textwrap.dedent("""\
        upstreams:
          - name: api
            servers:
              - {address: "not a host!", port: 70000, weight: 0}
        applications:
          - name: shop
            domains: ["bad_domain!"]
        """))
    assert "config.yaml:4: upstreams[0].servers[0].address: expected an IP address or a host name (got 'not a host!')" in lines
    assert any(line.startswith("config.yaml:4: upstreams[0].servers[0].port:") and "65535" in line for line in lines)
    assert any(line.startswith("config.yaml:4: upstreams[0].servers[0].weight:") for line in lines)
    assert any(line.startswith("config.yaml:7: applications[0].domains[0]:") for line in lines)
    assert len(lines) == 4


def test_unknown_fields_are_refused_by_name():
    lines = problems_of("applications:\n  - name: a\n    domains: [a.com]\n    portz: [80]\n")
    assert lines == ["config.yaml:4: applications[0].portz: Extra inputs are not permitted"]


def test_an_unknown_action_lists_the_known_ones():
    lines = problems_of(textwrap.dedent("""\
        applications:
          - name: a
            domains: [a.com]
            rules:
              - actions:
                  - frobnicate: {}
        """))
    assert lines[0].startswith("config.yaml:6: applications[0].rules[0].actions[0]: expected one of: proxy,")


def test_a_reference_to_a_missing_upstream_names_the_known_ones():
    lines = problems_of(textwrap.dedent("""\
        upstreams:
          - name: api
            servers: [{address: 127.0.0.1, port: 1}]
        applications:
          - name: a
            domains: [a.com]
            rules:
              - actions:
                  - proxy: {upstream: apx}
        """))
    assert lines == ["config.yaml:9: applications[0].rules[0].actions[0].proxy.upstream: "
                     "no upstream named 'apx'; known: ['api']"]


def test_two_applications_cannot_claim_the_same_domain_and_port():
    lines = problems_of(textwrap.dedent("""\
        applications:
          - {name: a, domains: [x.com], ports: [80]}
          - {name: b, domains: [y.com, x.com], ports: [80]}
        """))
    assert lines == ["config.yaml:3: applications[1].domains[1]: x.com:80 is already served by application 'a'"]


def test_duplicate_names_are_refused():
    lines = problems_of("upstreams:\n  - {name: u, servers: [{address: 127.0.0.1, port: 1}]}\n"
                        "  - {name: u, servers: [{address: 127.0.0.1, port: 2}]}\n")
    assert lines == ["config.yaml:3: upstreams[1].name: 'u' is already used by upstreams[0]"]


@pytest.mark.parametrize("condition, message", [
    ("{var: header, op: eq, values: [x]}", "variable 'header' needs a name"),
    ("{var: path, name: x, op: eq, values: [x]}", "variable 'path' takes no name"),
    ("{var: path, op: regex, values: ['(']}", "values[0]: invalid regex"),
    ("{var: client-ip, op: cidr, values: [10.0.0.0/33]}", "expected a CIDR"),
    ("{var: path, op: exists, values: [x]}", "operator 'exists' takes no values"),
    ("{var: path, op: eq}", "operator 'eq' needs at least one value"),
    ("{var: arg, name: n, op: gt, values: [ten]}", "expected a number"),
    ("{var: path, op: like, values: [x]}", "Input should be"),
])
def test_bad_conditions_are_explained(condition, message):
    text = f"applications:\n  - name: a\n    domains: [a.com]\n    rules:\n      - conditions: [{condition}]\n        actions: [{{respond: {{}}}}]\n"
    lines = problems_of(text)
    assert len(lines) == 1 and message in lines[0], lines
    assert lines[0].startswith("config.yaml:5: applications[0].rules[0].conditions[0]")


def test_a_terminal_action_must_come_last_and_alone():
    lines = problems_of(textwrap.dedent("""\
        upstreams: [{name: u, servers: [{address: 127.0.0.1, port: 1}]}]
        applications:
          - name: a
            domains: [a.com]
            rules:
              - actions: [{respond: {}}, {proxy: {upstream: u}}]
              - actions: [{proxy: {upstream: u}}, {set-request-header: {name: X, value: y}}]
        """))
    assert "a rule can end in one of proxy, split, redirect, respond, deny" in lines[0]
    assert "'proxy' must be the rule's last action" in lines[1]


def test_header_values_cannot_carry_line_breaks():
    lines = problems_of("applications:\n  - name: a\n    domains: [a.com]\n    rules:\n"
                        "      - actions: [{set-response-header: {name: X, value: \"a\\r\\nEvil: 1\"}}]\n")
    assert "applications[0].rules[0].actions[0].set-response-header.value" in lines[0]


def test_hash_balancing_needs_a_key_and_an_upstream_needs_a_primary():
    lines = problems_of("upstreams:\n  - name: u\n    balance: hash\n    servers: [{address: 127.0.0.1, port: 1}]\n"
                        "  - name: v\n    servers: [{address: 127.0.0.1, port: 1, backup: true}]\n")
    assert "balance 'hash' needs hash_key" in lines[0]
    assert "at least one server must not be a backup" in lines[1]


def test_broken_yaml_is_reported_with_its_line():
    lines = problems_of("upstreams:\n  - name: [unclosed\n")
    assert lines[0].startswith("config.yaml:") and "not valid YAML/JSON" in lines[0]


def test_a_config_that_is_not_a_mapping_is_refused():
    assert "expected a mapping" in problems_of("- a\n- b\n")[0]


@pytest.mark.parametrize("text, seconds", [("500ms", 0.5), ("2s", 2.0), ("1m", 60.0), (3, 3.0), ("1.5", 1.5)])
def test_durations_accept_human_units(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text, size", [("8k", 8192), ("10m", 10 * 1024**2), ("1g", 1024**3), (512, 512), ("64KiB", 65536)])
def test_sizes_accept_human_units(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["fast", "-1s", True, "1 parsec"])
def test_bad_durations_say_what_is_expected(bad):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeplane", *args], env=ENV, capture_output=True, text=True, timeout=60)


def test_validate_command_passes_the_quickstart(tmp_path):
    result = run_cli("validate", "-f", "examples/quickstart.yaml")
    assert result.returncode == 0
    assert "valid (1 applications, 3 rules, 1 upstreams)" in result.stdout


def test_validate_command_prints_every_problem_and_fails(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("upstreams:\n  - name: u\n    servers: [{address: 127.0.0.1, port: 0}]\napplications:\n  - {name: a, domains: []}\n")
    result = run_cli("validate", "-f", str(bad))
    assert result.returncode == 1
    assert f"{bad}:3: upstreams[0].servers[0].port:" in result.stderr
    assert f"{bad}:5: applications[0].domains:" in result.stderr
    assert "2 problem(s); nothing was applied" in result.stderr


def test_dump_command_prints_the_normalized_config():
    result = run_cli("dump", "-f", "examples/quickstart.yaml", "--format", "json")
    assert result.returncode == 0
    assert json.loads(result.stdout)["applications"][0]["name"] == "quickstart"
