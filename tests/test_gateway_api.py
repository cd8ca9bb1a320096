"""Gateway API import and export: manifests become applications whose rules, run by the
node's own host table and rule engine, route as Gateway API says; a config becomes
manifests that import back to the same routing. What cannot be translated is reported."""

from __future__ import annotations

import base64
import json
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import trustme
import yaml

from edgeplane.cli import main
from edgeplane.lang.compile import Forward, LocalResponse
from edgeplane.model.config import Retry
from edgeplane.model.gateway_api import (
    GatewayApiError,
    covers,
    export_gateway_api,
    format_endpoints,
    import_gateway_api,
    intersect_hostnames,
    parse_duration,
    parse_endpoints,
    read_manifests,
)
from edgeplane.model.load import dump, parse
from edgeplane.node.endpoints import EndpointRegistry
from edgeplane.node.request import Request
from edgeplane.node.runtime import compile_runtime

from conftest import ENV, Echo, Node, free_port, wait_port

ROOT = Path(__file__).resolve().parent.parent
CONFORMANCE = Path(__file__).parent / "conformance" / "gateway-api"
GROUP = "gateway.networking.k8s.io"
ENDPOINTS = {
    ("shop", "a", 80): [("10.0.0.1", 3000)],
    ("shop", "b", 80): [("10.0.0.2", 3000)],
    ("shop", "c", 80): [("10.0.0.3", 3000)],
    ("other", "d", 80): [("10.0.0.4", 3000)],
}
CA = trustme.CA()
SHOP_CERT = CA.issue_cert("shop.com", "*.shop.com")
OTHER_CERT = CA.issue_cert("other.test", "*.other.test")


# --- manifests and what the node would do with them -----------------------------------


def gateway(*listeners: dict, name: str = "gw", namespace: str = "shop") -> dict:
    return {"apiVersion": f"{GROUP}/v1", "kind": "Gateway", "metadata": {"name": name, "namespace": namespace},
            "spec": {"gatewayClassName": "x", "listeners": list(listeners) or [listener()]}}


def listener(name: str = "http", port: int = 80, hostname: str | None = None, allowed: dict | None = None,
             protocol: str = "HTTP") -> dict:
    spec: dict = {"name": name, "port": port, "protocol": protocol}
    if hostname:
        spec["hostname"] = hostname
    if allowed:
        spec["allowedRoutes"] = {"namespaces": allowed}
    return spec


def route(name: str, *rules: dict, namespace: str = "shop", parents: list | None = None,
          hostnames: list | None = None, created: str | None = None) -> dict:
    spec: dict = {"parentRefs": parents or [{"name": "gw", "namespace": "shop"}], "rules": list(rules)}
    if hostnames:
        spec["hostnames"] = hostnames
    meta = {"name": name, "namespace": namespace}
    if created:
        meta["creationTimestamp"] = created
    return {"apiVersion": f"{GROUP}/v1", "kind": "HTTPRoute", "metadata": meta, "spec": spec}


def rule(*matches: dict, to: str | list | None = "a", filters: list | None = None, **extra) -> dict:
    spec: dict = dict(extra)
    if matches:
        spec["matches"] = list(matches)
    if isinstance(to, str):
        spec["backendRefs"] = [{"name": to, "port": 80}]
    elif to is not None:
        spec["backendRefs"] = to
    if filters:
        spec["filters"] = filters
    return spec


def pem(leaf: trustme.LeafCert) -> tuple[str, str]:
    """(certificate chain, key) as PEM text."""
    return "".join(b.bytes().decode() for b in leaf.cert_chain_pems), leaf.private_key_pem.bytes().decode()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def tls_secret(name: str = "shop-tls", namespace: str = "shop", leaf: trustme.LeafCert = SHOP_CERT) -> dict:
    cert, key = pem(leaf)
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace},
            "type": "kubernetes.io/tls", "data": {"tls.crt": b64(cert), "tls.key": b64(key)}}


def https(name: str = "https", port: int = 443, hostname: str | None = None, secret: str = "shop-tls",
          namespace: str | None = None, **tls) -> dict:
    """An HTTPS listener terminating TLS with the Secret named."""
    ref = {"group": "", "kind": "Secret", "name": secret, **({"namespace": namespace} if namespace else {})}
    return {**listener(name, port, hostname, protocol="HTTPS"), "tls": {"certificateRefs": [ref], **tls}}


def grant(namespace: str, source: str, target: str, name: str | None = None) -> dict:
    """A ReferenceGrant in `namespace` letting `source`s of namespace shop refer to its `target`s."""
    to = {"group": "", "kind": target, **({"name": name} if name else {})}
    return {"apiVersion": f"{GROUP}/v1beta1", "kind": "ReferenceGrant", "metadata": {"name": "g", "namespace": namespace},
            "spec": {"from": [{"group": GROUP, "kind": source, "namespace": "shop"}], "to": [to]}}


def prefix(value: str, **more) -> dict:
    return {"path": {"type": "PathPrefix", "value": value}, **more}


def exact(value: str, **more) -> dict:
    return {"path": {"type": "Exact", "value": value}, **more}


def translate(*documents: dict, ports: dict | None = None):
    return import_gateway_api(list(documents), ENDPOINTS, ports)


def decide(config, target: str = "/", host: str = "example.com", method: str = "GET",
           headers: dict | None = None, port: int = 80, scheme: str = "http"):
    """What a node running `config` does with a request: ("proxy", upstream, request) or
    (status, response headers, request); 404 when no application or rule takes it."""
    runtime = compile_runtime(config, EndpointRegistry())
    app = runtime.lookup(port, host)
    request = Request()
    request.method, request.host, request.port, request.scheme = method, host, port, scheme
    request.headers = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    path, _, query = target.partition("?")
    request.set_target(path, query)
    if app is None:
        return 404, {}, request
    ops: list = []
    _, outcome = app.route(request, ops)
    if isinstance(outcome, Forward):
        return "proxy", outcome.upstream.name, request
    if isinstance(outcome, LocalResponse):
        return outcome.status, {k.decode().lower(): v.decode() for k, v in outcome.headers}, request
    return 404, {}, request


def upstream_of(config, target: str = "/", **request) -> str | int:
    verdict = decide(config, target, **request)
    return verdict[1].split(".")[0] if verdict[0] == "proxy" else verdict[0]


def fields(warnings) -> list[str]:
    return [f"{w.kind} {w.name}: {w.field}" for w in warnings]


# --- matching ------------------------------------------------------------------------


@pytest.mark.parametrize("target, expected", [
    ("/foo", "a"), ("/foo/", "a"), ("/foo/bar", "a"), ("/foobar", 404), ("/Foo", 404), ("/", 404),
])
def test_path_prefix_matches_whole_segments(target, expected):
    config, _ = translate(gateway(), route("r", rule(prefix("/foo/"))))
    assert upstream_of(config, target) == expected


@pytest.mark.parametrize("target, expected", [("/one", "a"), ("/one/", 404), ("/One", 404), ("/one/two", 404)])
def test_exact_path_matches_only_itself(target, expected):
    config, _ = translate(gateway(), route("r", rule(exact("/one"))))
    assert upstream_of(config, target) == expected


def test_regular_expressions_match_the_whole_value():
    match = {"path": {"type": "RegularExpression", "value": r"/item/\d+"},
             "headers": [{"type": "RegularExpression", "name": "x-team", "value": "blue|red"}]}
    config, _ = translate(gateway(), route("r", rule(match)))
    assert upstream_of(config, "/item/42", headers={"X-Team": "red"}) == "a"
    assert upstream_of(config, "/item/42/more", headers={"X-Team": "red"}) == 404
    assert upstream_of(config, "/item/42", headers={"X-Team": "reddish"}) == 404


def test_header_query_and_method_matches_all_must_hold():
    match = prefix("/", headers=[{"name": "Version", "value": "two"}], queryParams=[{"name": "animal", "value": "whale"}],
                   method="POST")
    config, _ = translate(gateway(), route("r", rule(match)))
    assert upstream_of(config, "/?animal=whale", method="POST", headers={"version": "two"}) == "a"
    assert upstream_of(config, "/?animal=whale", method="GET", headers={"version": "two"}) == 404
    assert upstream_of(config, "/?ANIMAL=whale", method="POST", headers={"version": "two"}) == 404
    assert upstream_of(config, "/?animal=whale", method="POST", headers={"version": "Two"}) == 404


def test_matches_of_a_rule_are_alternatives():
    config, _ = translate(gateway(), route("r", rule(exact("/x"), prefix("/", headers=[{"name": "v", "value": "1"}]))))
    assert upstream_of(config, "/x") == "a"
    assert upstream_of(config, "/y", headers={"v": "1"}) == "a"
    assert upstream_of(config, "/y") == 404


# --- precedence ----------------------------------------------------------------------


def test_precedence_exact_then_longest_prefix_then_regex_across_routes():
    config, _ = translate(
        gateway(),
        route("regex", rule({"path": {"type": "RegularExpression", "value": "/shop/.*"}}, to="c")),
        route("short", rule(prefix("/shop"), to="b")),
        route("long", rule(prefix("/shop/cart"), to="a"), rule(exact("/shop/cart/x"), to="c")))
    assert upstream_of(config, "/shop/cart/x") == "c"
    assert upstream_of(config, "/shop/cart/y") == "a"
    assert upstream_of(config, "/shop/other") == "b"


def test_precedence_method_then_most_headers_then_most_query_params():
    config, _ = translate(gateway(), route(
        "r",
        rule(prefix("/", queryParams=[{"name": "q", "value": "1"}]), to="c"),
        rule(prefix("/", headers=[{"name": "h", "value": "1"}]), to="b"),
        rule(prefix("/", headers=[{"name": "h", "value": "1"}, {"name": "g", "value": "1"}]), to="c"),
        rule(prefix("/", method="PUT"), to="a")))
    assert upstream_of(config, "/?q=1", method="PUT", headers={"h": "1", "g": "1"}) == "a"
    assert upstream_of(config, "/?q=1", headers={"h": "1", "g": "1"}) == "c"
    assert upstream_of(config, "/?q=1", headers={"h": "1"}) == "b"
    assert upstream_of(config, "/?q=1") == "c"


def test_ties_go_to_the_oldest_route_then_the_first_by_namespace_and_name():
    same = rule(prefix("/"))
    young = route("aaa", {**same, "backendRefs": [{"name": "b", "port": 80}]}, created="2024-05-01T00:00:00Z")
    old = route("zzz", same, created="2024-01-01T00:00:00Z")
    config, _ = translate(gateway(), young, old)
    assert upstream_of(config) == "a"
    config, _ = translate(gateway(), route("zzz", same), route("aaa", {**same, "backendRefs": [{"name": "b", "port": 80}]}))
    assert upstream_of(config) == "b"


def test_within_a_route_the_first_of_equal_rules_wins():
    config, _ = translate(gateway(), route("r", rule(prefix("/x"), to="b"), rule(prefix("/x"), to="a")))
    assert upstream_of(config, "/x") == "b"


# --- hostnames and attachment --------------------------------------------------------


@pytest.mark.parametrize("pattern, host, expected", [
    ("*", "a.com", True), ("*.a.com", "x.a.com", True), ("*.a.com", "x.y.a.com", True), ("*.a.com", "a.com", False),
    ("*.a.com", "*.x.a.com", True), ("*.x.a.com", "*.a.com", False), ("a.com", "a.com", True), ("a.com", "b.com", False),
])
def test_hostname_coverage(pattern, host, expected):
    assert covers(pattern, host) is expected


@pytest.mark.parametrize("listener_host, route_hosts, expected", [
    (None, [], ["*"]),
    ("a.com", [], ["a.com"]),
    (None, ["a.com", "b.com"], ["a.com", "b.com"]),
    ("*.a.com", ["x.a.com", "a.com", "b.com"], ["x.a.com"]),
    ("x.a.com", ["*.a.com"], ["x.a.com"]),
    ("*.a.com", ["*.x.a.com"], ["*.x.a.com"]),
    ("*.x.a.com", ["*.a.com"], ["*.x.a.com"]),
    ("a.com", ["b.com", "*.c.com"], []),
])
def test_route_hostnames_intersect_the_listener_hostname(listener_host, route_hosts, expected):
    assert intersect_hostnames(listener_host, route_hosts) == expected


def test_a_request_belongs_to_the_most_specific_listener():
    config, _ = translate(
        gateway(listener("exact", hostname="foo.bar.com"), listener("wild", hostname="*.bar.com")),
        route("wild", rule(), parents=[{"name": "gw", "sectionName": "wild"}]))
    assert upstream_of(config, host="baz.bar.com") == "a"
    assert upstream_of(config, host="foo.bar.com") == 404  # its own listener has no route
    assert upstream_of(config, host="bar.com") == 404


def test_rules_of_the_more_specific_route_hostname_come_first():
    config, _ = translate(
        gateway(),
        route("wild", rule(exact("/x"), to="b"), hostnames=["*.shop.com"]),
        route("exact", rule(prefix("/"), to="a"), hostnames=["www.shop.com"]))
    assert upstream_of(config, "/x", host="www.shop.com") == "a"
    assert upstream_of(config, "/x", host="api.shop.com") == "b"


def test_route_without_intersecting_hostname_is_not_attached_and_reported():
    config, warnings = translate(gateway(listener(hostname="a.com")), route("r", rule(), hostnames=["b.com"]))
    assert upstream_of(config, host="b.com") == 404
    assert "HTTPRoute shop/r: spec.parentRefs[0]" in fields(warnings)
    assert "no hostname of the route intersects 'a.com'" in str(warnings[0])


def test_parent_refs_select_listeners_by_section_name_and_port():
    docs = [gateway(listener("one", 80), listener("two", 8080), listener("three", 8090)),
            route("by-section", rule(to="a"), parents=[{"name": "gw", "sectionName": "two"}]),
            route("by-port", rule(to="b"), parents=[{"name": "gw", "port": 8090}])]
    config, _ = translate(*docs)
    assert [upstream_of(config, port=port) for port in (80, 8080, 8090)] == [404, "a", "b"]


@pytest.mark.parametrize("allowed, namespace_labels, attached", [
    ({"from": "Same"}, {}, False),
    ({"from": "All"}, {}, True),
    ({"from": "Selector", "selector": {"matchLabels": {"team": "web"}}}, {"team": "web"}, True),
    ({"from": "Selector", "selector": {"matchLabels": {"team": "web"}}}, {"team": "ops"}, False),
    ({"from": "Selector", "selector": {"matchExpressions": [{"key": "team", "operator": "In", "values": ["web"]}]}},
     {"team": "web"}, True),
])
def test_allowed_routes_decide_which_namespaces_may_attach(allowed, namespace_labels, attached):
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other", "labels": namespace_labels}}
    docs = [namespace, gateway(listener(allowed=allowed)),
            route("r", rule(to="d"), namespace="other", parents=[{"name": "gw", "namespace": "shop"}])]
    config, warnings = translate(*docs)
    assert (upstream_of(config) == "d") is attached
    assert any("does not accept routes from namespace 'other'" in str(w) for w in warnings) is not attached


def test_listener_ports_can_be_served_on_other_node_ports():
    config, _ = translate(gateway(listener(port=80)), route("r", rule(prefix("/old"), to=None, filters=[
        {"type": "RequestRedirect", "requestRedirect": {"hostname": "new.com"}}])), ports={80: 18080})
    assert upstream_of(config, "/old", port=80) == 404
    status, headers, _ = decide(config, "/old", port=18080)
    assert (status, headers["location"]) == (302, "http://new.com/old")  # the Gateway's port, 80, is implied


# --- backends --------------------------------------------------------------------------


def test_weights_become_a_split_and_weight_zero_gets_nothing():
    refs = [{"name": "a", "port": 80, "weight": 70}, {"name": "b", "port": 80, "weight": 30},
            {"name": "c", "port": 80, "weight": 0}]
    config, _ = translate(gateway(), route("r", rule(to=refs)))
    split = config.applications[0].rules[0].actions[-1]
    assert [(w.upstream.split(".")[0], w.weight) for w in split.upstreams] == [("a", 70), ("b", 30)]


@pytest.mark.parametrize("refs", [None, [], [{"name": "a", "port": 80, "weight": 0}]])
def test_a_rule_with_no_usable_weight_answers_500(refs):
    config, _ = translate(gateway(), route("r", rule(to=refs)))
    assert upstream_of(config) == 500


def test_a_service_in_another_namespace_needs_a_reference_grant():
    ref = [{"name": "d", "namespace": "other", "port": 80}]
    config, warnings = translate(gateway(), route("r", rule(to=ref)))
    assert upstream_of(config) == 500
    assert "no ReferenceGrant in 'other'" in str(warnings[0])
    config, warnings = translate(gateway(), route("r", rule(to=ref)), grant("other", "HTTPRoute", "Service", "d"))
    assert upstream_of(config) == "d" and not warnings


def test_backends_that_differ_in_filters_or_validity_are_drawn_rule_by_rule():
    refs = [{"name": "a", "port": 80, "weight": 1,
             "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "B", "value": "a"}]}}]},
            {"name": "missing", "port": 80, "weight": 1}, {"name": "b", "port": 80, "weight": 2}]
    config, warnings = translate(gateway(), route("r", rule(to=refs)))
    rules = config.applications[0].rules
    assert [r.conditions[-1].values if r.conditions else None for r in rules] == [["25"], ["33.33333333"], None]
    assert [r.actions[-1].kind for r in rules] == ["proxy", "respond", "proxy"]
    assert rules[0].actions[0].kind == "set-request-header"
    assert "no endpoints for Service shop/missing:80" in str(warnings[0])


def test_endpoints_file_maps_service_ports_to_servers():
    data = {"services": {"shop/api:8080": ["10.0.0.5:3000", "[::1]:3001"], "web:80": "10.0.0.6:80"}}
    endpoints = parse_endpoints(data)
    assert endpoints == {("shop", "api", 8080): [("10.0.0.5", 3000), ("::1", 3001)],
                         ("default", "web", 80): [("10.0.0.6", 80)]}
    assert parse_endpoints(format_endpoints(endpoints)) == endpoints


def test_endpoints_file_errors_name_the_entry():
    with pytest.raises(GatewayApiError, match=r"e.yaml: services.shop/api:8080\[0\]: 'nowhere' is not ADDRESS:PORT"):
        parse_endpoints({"services": {"shop/api:8080": ["nowhere"]}}, "e.yaml")
    with pytest.raises(GatewayApiError, match="'shop/api' is not NAMESPACE/NAME:PORT"):
        parse_endpoints({"services": {"shop/api": ["10.0.0.1:80"]}})


# --- filters and timeouts -------------------------------------------------------------


def test_header_modifiers_set_add_and_remove():
    filters = [{"type": "RequestHeaderModifier", "requestHeaderModifier": {
        "set": [{"name": "X-Set", "value": "s"}], "add": [{"name": "X-Add", "value": "2"}], "remove": ["X-Gone"]}},
        {"type": "ResponseHeaderModifier", "responseHeaderModifier": {"add": [{"name": "X-Out", "value": "o"}]}}]
    config, _ = translate(gateway(), route("r", rule(filters=filters)))
    _, _, request = decide(config, headers={"X-Set": "old", "X-Add": "1", "X-Gone": "x"})
    assert request.header("x-set") == ["s"] and request.header("x-add") == ["1", "2"] and not request.header("x-gone")
    assert [a.kind for a in config.applications[0].rules[0].actions][-2:] == ["add-response-header", "proxy"]


@pytest.mark.parametrize("redirect, location", [
    ({"hostname": "example.org"}, "http://example.org/a/b?q=1"),
    ({"port": 8083}, "http://example.com:8083/a/b?q=1"),
    ({"scheme": "https"}, "https://example.com/a/b?q=1"),
    ({"scheme": "https", "port": 8443}, "https://example.com:8443/a/b?q=1"),
    ({"path": {"type": "ReplaceFullPath", "replaceFullPath": "/new"}}, "http://example.com/new?q=1"),
    ({"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/z"}}, "http://example.com/z/b?q=1"),
])
def test_request_redirect_builds_the_location(redirect, location):
    config, _ = translate(gateway(), route("r", rule(prefix("/a"), to=None,
                                                     filters=[{"type": "RequestRedirect", "requestRedirect": redirect}])))
    status, headers, _ = decide(config, "/a/b?q=1")
    assert (status, headers["location"]) == (302, location)


def test_redirect_without_scheme_or_port_keeps_the_listener_port():
    config, _ = translate(gateway(listener(port=8080)), route("r", rule(to=None, filters=[
        {"type": "RequestRedirect", "requestRedirect": {"statusCode": 301}}])))
    assert decide(config, "/x", port=8080)[:2] == (301, {"location": "http://example.com:8080/x"})


def test_url_rewrite_changes_host_and_path_prefix():
    config, _ = translate(gateway(), route("r", rule(prefix("/api/"), filters=[{"type": "URLRewrite", "urlRewrite": {
        "hostname": "internal", "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/v2"}}}])))
    _, _, request = decide(config, "/api/items?x=1")
    assert (request.host_header, request.target) == (b"internal", b"/v2/items?x=1")


def test_mirror_percent_and_fraction():
    def mirror(**share):
        return {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "b", "port": 80}, **share}}
    config, _ = translate(gateway(), route("r", rule(exact("/p"), filters=[mirror(percent=20)]),
                                           rule(exact("/f"), filters=[mirror(fraction={"numerator": 1, "denominator": 8})])))
    assert [r.actions[0].percent for r in config.applications[0].rules] == [20.0, 12.5]


def test_cors_filter_answers_preflights_with_max_age_defaulting_to_5():
    config, _ = translate(gateway(), route("r", rule(filters=[{"type": "CORS", "cors": {
        "allowOrigins": ["https://*.shop.com"], "allowMethods": ["GET", "PUT"]}}])))
    status, headers, _ = decide(config, method="OPTIONS", headers={
        "Origin": "https://www.shop.com", "Access-Control-Request-Method": "PUT"})
    assert status == 204 and headers["access-control-max-age"] == "5"
    assert headers["access-control-allow-methods"] == "GET, PUT"


@pytest.mark.parametrize("text, seconds", [("500ms", 0.5), ("10s", 10), ("1h30m", 5400), ("1m0s500ms", 60.5),
                                           ("0s", None), (None, None)])
def test_gateway_durations(text, seconds):
    assert parse_duration(text) == seconds


def test_timeouts_bound_the_proxy_and_zero_disables():
    config, _ = translate(gateway(), route("r", rule(prefix("/a"), timeouts={"request": "2s", "backendRequest": "500ms"}),
                                           rule(prefix("/b"), timeouts={"request": "0s"})))
    first, second = (r.actions[-1] for r in config.applications[0].rules)
    assert (first.timeout, first.backend_timeout, second.timeout) == (2.0, 0.5, None)


def test_rules_are_named_after_route_and_rule():
    config, _ = translate(gateway(), route("r", rule(exact("/a"), name="checkout"), rule(exact("/b"))))
    assert [r.name for r in config.applications[0].rules] == ["shop/r/checkout", "shop/r/rules[1]"]


# --- HTTPS listeners -------------------------------------------------------------------


def test_an_https_listener_terminates_tls_with_its_secret_certificate():
    config, warnings = translate(gateway(https()), route("r", rule()), tls_secret())
    assert not warnings
    app = config.applications[0]
    assert (app.ports, app.https_ports, app.certificates) == ([], [443], ["shop-tls"])
    assert [(c.name, c.cert, c.key) for c in config.certificates] == [("shop-tls", *pem(SHOP_CERT))]
    assert upstream_of(config, port=443, scheme="https") == "a"


def test_secret_string_data_is_pem_text_and_wins_over_data():
    secret = tls_secret(leaf=OTHER_CERT)
    cert, key = pem(SHOP_CERT)
    secret["stringData"] = {"tls.crt": cert, "tls.key": key}
    config, warnings = translate(gateway(https()), route("r", rule()), secret)
    assert not warnings and (config.certificates[0].cert, config.certificates[0].key) == (cert, key)


def test_a_missing_secret_is_reported_and_only_its_listener_skipped():
    config, warnings = translate(gateway(https(), listener()), route("r", rule()))
    assert fields(warnings)[0] == "Gateway shop/gw: spec.listeners[0].tls.certificateRefs[0]"
    assert str(warnings[0]).endswith("HTTPS listener 'https' on port 443 skipped: no Secret shop/shop-tls among the "
                                     "manifests")
    assert [(app.ports, app.https_ports) for app in config.applications] == [([80], [])]
    assert not config.certificates


_CERT, _KEY = pem(SHOP_CERT)


@pytest.mark.parametrize("change, field, problem", [
    ({"type": "Opaque"}, "type", "type is 'Opaque'; a certificateRef needs a Secret of type kubernetes.io/tls"),
    ({"data": {"tls.crt": b64(_CERT)}}, "data.tls.key", "missing; a kubernetes.io/tls Secret holds tls.crt and tls.key"),
    ({"data": {"tls.crt": "PEM, not base64", "tls.key": b64(_KEY)}}, "data.tls.crt", "not base64 of PEM text"),
    ({"data": {"tls.crt": b64("junk"), "tls.key": b64(_KEY)}}, "data.tls.crt", "not a PEM certificate chain"),
    ({"data": {"tls.crt": b64(_CERT), "tls.key": b64(pem(OTHER_CERT)[1])}}, "data.tls.key",
     "does not belong to the first certificate of cert"),
    ({"data": None, "stringData": {"tls.crt": _CERT, "tls.key": "junk"}}, "stringData.tls.key",
     "not an unencrypted PEM private key"),
])
def test_a_malformed_secret_is_reported_where_it_is_wrong_and_its_listener_skipped(change, field, problem):
    config, warnings = translate(gateway(https()), route("r", rule()), {**tls_secret(), **change})
    assert fields(warnings)[0] == f"Secret shop/shop-tls: {field}"
    assert problem in warnings[0].message
    assert warnings[0].message.endswith("; HTTPS listener 'https' on port 443 of Gateway shop/gw skipped")
    assert not config.applications and not config.certificates


def test_a_secret_in_another_namespace_needs_a_reference_grant_for_gateways():
    documents = [gateway(https(namespace="certs")), route("r", rule()), tls_secret(namespace="certs")]
    for refused in ([], [grant("certs", "HTTPRoute", "Secret")], [grant("certs", "Gateway", "Secret", "other")]):
        config, warnings = translate(*documents, *refused)
        assert "no ReferenceGrant in 'certs' lets Gateways of 'shop' refer to it" in str(warnings[0])
        assert not config.applications
    config, warnings = translate(*documents, grant("certs", "Gateway", "Secret", "shop-tls"))
    assert not warnings and config.applications[0].certificates == ["shop-tls.certs"]


@pytest.mark.parametrize("spec, field, problem", [
    (https(mode="Passthrough"), "spec.listeners[0].tls.mode", "mode Passthrough is not supported"),
    (https(frontendValidation={"caCertificateRefs": [{"kind": "ConfigMap", "name": "ca"}]}),
     "spec.listeners[0].tls.frontendValidation", "client certificate validation is not supported"),
    ({**https(), "tls": {"mode": "Terminate"}}, "spec.listeners[0].tls.certificateRefs", "needs certificateRefs"),
    (https(secret="ca", kind="ConfigMap") | {"tls": {"certificateRefs": [{"kind": "ConfigMap", "name": "ca"}]}},
     "spec.listeners[0].tls.certificateRefs[0]", "is not a Secret"),
    (listener("tls", protocol="TLS"), "spec.listeners[0].protocol", "no TLS passthrough"),
])
def test_tls_the_node_cannot_terminate_is_reported_and_its_listener_skipped(spec, field, problem):
    config, warnings = translate(gateway(spec), route("r", rule()), tls_secret())
    assert fields(warnings)[0] == f"Gateway shop/gw: {field}" and problem in str(warnings[0])
    assert not config.applications


def test_a_port_serves_plain_http_or_https_not_both():
    config, warnings = translate(gateway(listener("http", 443), https(hostname="shop.com")), route("r", rule()),
                                 tls_secret())
    assert fields(warnings)[0] == "Gateway shop/gw: spec.listeners[1].protocol"
    assert "the port is plain HTTP for shop/gw listener 'http'; a port serves one or the other" in str(warnings[0])
    assert [(app.ports, app.https_ports) for app in config.applications] == [([443], [])]


def test_plain_and_https_listeners_of_the_same_routes_share_an_application():
    config, _ = translate(gateway(listener(), https()), route("r", rule()), tls_secret())
    assert [(a.ports, a.https_ports, a.certificates) for a in config.applications] == [([80], [443], ["shop-tls"])]


def test_each_host_keeps_its_listeners_certificate_and_the_catch_all_comes_first():
    """The node presents, to names no application claims, the first application's certificate."""
    config, _ = translate(gateway(https("shop", hostname="*.shop.com"), https("any", secret="other-tls")),
                          route("r", rule()), tls_secret(), tls_secret("other-tls", leaf=OTHER_CERT))
    assert [(a.domains, a.certificates) for a in config.applications] == [(["*"], ["other-tls"]),
                                                                           (["*.shop.com"], ["shop-tls"])]


def test_a_redirect_on_an_https_listener_keeps_https_and_the_listener_port():
    config, _ = translate(gateway(https()), route("r", rule(to=None, filters=[
        {"type": "RequestRedirect", "requestRedirect": {"hostname": "new.com"}}])), tls_secret(), ports={443: 18443})
    assert decide(config, "/x", port=18443, scheme="https")[:2] == (302, {"location": "https://new.com/x"})


def tls_get(port: int, host: str, target: str = "/") -> tuple[tuple[str, ...], bytes]:
    """(names of the certificate presented, the whole answer) of one request over TLS, SNI `host`."""
    context = ssl.create_default_context()
    CA.configure_trust(context)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            tls.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            answer = b""
            while chunk := tls.recv(65536):
                answer += chunk
            return tuple(name for _, name in tls.getpeercert()["subjectAltName"]), answer


def test_https_listeners_serve_their_routes_over_tls_with_the_certificate_of_each_listener(tmp_path):
    echo = Echo("web-1")
    port = free_port()
    try:
        config, warnings = import_gateway_api(
            [gateway(https("shop", hostname="*.shop.com"), https("any", secret="other-tls")), route("r", rule()),
             tls_secret(), tls_secret("other-tls", leaf=OTHER_CERT)], {("shop", "a", 80): [("127.0.0.1", echo.port)]},
            {443: port})
        assert not warnings
        node = Node(tmp_path, dump(config), access_log=False)
        try:
            names, answer = tls_get(port, "www.shop.com", "/x")
            assert names == ("shop.com", "*.shop.com")
            echo_saw = json.loads(answer.split(b"\r\n\r\n", 1)[1])
            assert echo_saw["path"] == "/x" and echo_saw["headers"]["X-Forwarded-Proto"] == ["https"]
            assert tls_get(port, "www.other.test")[0] == ("other.test", "*.other.test")
        finally:
            node.stop()
    finally:
        echo.stop()


# --- what is reported ------------------------------------------------------------------


def test_everything_untranslated_is_reported_with_kind_name_and_field():
    docs = [gateway(listener("web", 443, protocol="TLS")),
            {"apiVersion": f"{GROUP}/v1", "kind": "GRPCRoute", "metadata": {"name": "g", "namespace": "shop"}},
            route("r", rule(sessionPersistence={"sessionName": "s"},
                            filters=[{"type": "ExtensionRef", "extensionRef": {"name": "x"}}]),
                  parents=[{"name": "gw"}, {"name": "nope"}])]
    _, warnings = translate(*docs)
    assert fields(warnings) == [
        "GRPCRoute shop/g: ",
        "Gateway shop/gw: spec.listeners[0].protocol",
        "HTTPRoute shop/r: spec.parentRefs[0]",
        "HTTPRoute shop/r: spec.parentRefs[1]",
    ]
    docs[0] = gateway()
    _, warnings = translate(*docs)
    assert "HTTPRoute shop/r: spec.rules[0].sessionPersistence" in fields(warnings)
    assert "HTTPRoute shop/r: spec.rules[0].filters[0].type" in fields(warnings)


def test_a_malformed_rule_answers_500_and_is_reported():
    bad = rule(filters=[{"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "Bad Name", "value": "x"}]}}])
    config, warnings = translate(gateway(), route("r", bad))
    assert upstream_of(config) == 500
    assert "spec.rules[0]" in fields(warnings)[0] and "requests it matches get 500" in str(warnings[0])


# --- export ----------------------------------------------------------------------------


def without_names(config) -> dict:
    data = config.model_dump(mode="json", exclude_defaults=True)
    for app in data.get("applications", []):
        for item in app.get("rules", []):
            item.pop("name", None)
    return data


@pytest.mark.parametrize("manifest", ["httproute-matching-across-routes.yaml", "httproute-method-matching.yaml",
                                      "httproute-listener-hostname-matching.yaml", "httproute-rewrite-path.yaml",
                                      "httproute-request-mirror.yaml", "httproute-cors.yaml",
                                      "httproute-redirect-port-and-scheme.yaml", "httproute-weight.yaml",
                                      "httproute-retry.yaml", "httproute-retry-with-timeouts.yaml"])
def test_export_then_import_routes_the_same(manifest):
    """With the Secret the HTTPS listeners of the base manifests name: they serve too."""
    endpoints = {("gateway-conformance-infra", f"infra-backend-v{i}", 8080): [("127.0.0.1", 9000 + i)] for i in (1, 2, 3)}
    documents = read_manifests([CONFORMANCE / "base-manifests.yaml", CONFORMANCE / "tests" / manifest])
    secret = tls_secret("tls-validity-checks-certificate", "gateway-conformance-infra")
    config, _ = import_gateway_api([*documents, secret], endpoints)
    assert any(app.https_ports for app in config.applications)
    exported, exported_endpoints, warnings = export_gateway_api(config)
    again, again_warnings = import_gateway_api(exported, exported_endpoints)
    assert not warnings and not again_warnings
    assert without_names(again) == without_names(config)


def test_export_writes_certificates_as_secrets_named_by_https_listeners():
    cert, key = pem(SHOP_CERT)
    config = parse(yaml.safe_dump({
        "certificates": [{"name": "Shop_TLS", "cert": cert, "key": key}, {"name": "unused", "cert": cert, "key": key}],
        "upstreams": [{"name": "api", "servers": [{"address": "10.0.0.1", "port": 80}]}],
        "applications": [{"name": "shop", "domains": ["shop.com"], "ports": [80], "https_ports": [443],
                          "certificates": ["Shop_TLS"], "rules": [{"actions": [{"proxy": {"upstream": "api"}}]}]}]}))
    documents, endpoints, warnings = export_gateway_api(config, "web")
    assert not warnings
    assert documents[0]["spec"]["listeners"][1] == {
        "name": "https-1", "port": 443, "protocol": "HTTPS", "hostname": "shop.com",
        "tls": {"mode": "Terminate", "certificateRefs": [{"kind": "Secret", "name": "shop-tls"}]}}
    secrets = [doc for doc in documents if doc["kind"] == "Secret"]
    assert [(s["metadata"], s["type"]) for s in secrets] == [({"name": "shop-tls", "namespace": "web"}, "kubernetes.io/tls")]
    assert base64.b64decode(secrets[0]["data"]["tls.key"]).decode() == key
    again, again_warnings = import_gateway_api(documents, endpoints)
    assert not again_warnings
    assert [(c.name, c.cert) for c in again.certificates] == [("shop-tls", cert)]
    assert [(a.ports, a.https_ports, a.certificates) for a in again.applications] == [([80], [443], ["shop-tls"])]


def test_export_leaves_certificates_read_from_files_for_the_operator_to_store():
    config = parse(yaml.safe_dump({
        "certificates": [{"name": "shop", "cert_file": "/etc/tls/shop.crt", "key_file": "/etc/tls/shop.key"}],
        "applications": [{"name": "shop", "domains": ["shop.com"], "ports": [], "https_ports": [443],
                          "certificates": ["shop"]}]}))
    documents, _, warnings = export_gateway_api(config)
    assert [str(w) for w in warnings] == ["Certificate shop: cert_file: the node reads it from files; create Secret "
                                          "default/shop of type kubernetes.io/tls from them"]
    assert [doc["kind"] for doc in documents] == ["Gateway"]
    assert documents[0]["spec"]["listeners"][0]["tls"]["certificateRefs"] == [{"kind": "Secret", "name": "shop"}]


def test_a_retry_policy_exports_as_retries_and_codes_and_reports_what_it_cannot_say():
    config = parse(yaml.safe_dump({
        "upstreams": [{"name": "api", "servers": [{"address": "10.0.0.1", "port": 80}]}],
        "applications": [{"name": "shop", "domains": ["shop.com"], "rules": [{"actions": [{"proxy": {
            "upstream": "api", "retry": {"attempts": 3, "retry_on": ["gateway-error"], "statuses": [429],
                                         "non_idempotent": True, "backoff": "50ms"}}}]}]}]}))
    documents, endpoints, warnings = export_gateway_api(config)
    assert documents[1]["spec"]["rules"][0]["retry"] == {"attempts": 2, "backoff": "50ms", "codes": [429, 502, 503, 504]}
    assert [str(w) for w in warnings] == [
        "Application shop: rules[0].actions: retry: non_idempotent cannot be said in Gateway API (it always "
        "retries connection errors and timeouts); exported without"]
    again, _ = import_gateway_api(documents, endpoints)
    assert again.applications[0].rules[0].actions[0].retry == Retry(
        attempts=3, retry_on=["connect-failure", "reset"], statuses=[429, 502, 503, 504], backoff=0.05)


def test_export_reports_what_gateway_api_cannot_express():
    config = parse(yaml.safe_dump({
        "upstreams": [{"name": "api", "servers": [{"address": "10.0.0.1", "port": 80}], "balance": "least-conn"}],
        "global_rules": {"before": [{"actions": [{"deny": {}}]}]},
        "applications": [{"name": "shop", "domains": ["shop.com"], "rules": [
            {"conditions": [{"var": "cookie", "name": "beta", "op": "exists"}], "actions": [{"proxy": {"upstream": "api"}}]},
            {"actions": [{"rewrite-query": {"set": {"a": "1"}}}, {"proxy": {"upstream": "api"}}]},
            {"actions": [{"set-request-header": {"name": "X", "value": "1"}}]},
        ]}]}))
    documents, endpoints, warnings = export_gateway_api(config)
    assert [str(w) for w in warnings] == [
        "Upstream api: balance have no Gateway API equivalent; not exported",
        "Config global_rules: global rules have no Gateway API equivalent; not exported",
        "Application shop: rules[0]: condition cookie exists has no HTTPRouteMatch equivalent; rule not exported",
        "Application shop: rules[1].actions[0]: rewrite-query has no Gateway API equivalent; dropped",
        "Application shop: rules[2]: it decides nothing (no proxy, split, redirect or respond); Gateway API rules "
        "always decide; rule not exported",
    ]
    route_doc = documents[1]
    assert route_doc["spec"]["rules"] == [{"matches": [{}], "backendRefs": [{"name": "api", "port": 80}]}]
    assert documents[0]["spec"]["listeners"] == [{"name": "http-0", "port": 8080, "protocol": "HTTP",
                                                  "hostname": "shop.com"}]
    assert endpoints == {("default", "api", 80): [("10.0.0.1", 80)]}


# --- the command and the example ---------------------------------------------------------


def test_import_command_writes_the_config_and_prints_warnings(tmp_path, capsys):
    (tmp_path / "endpoints.yaml").write_text(yaml.safe_dump(format_endpoints(ENDPOINTS)))
    (tmp_path / "routes.yaml").write_text(yaml.safe_dump_all([gateway(), route("r", rule(sessionPersistence={}))]))
    code = main(["import", "gateway-api", "-f", str(tmp_path / "routes.yaml"), "--endpoints",
                 str(tmp_path / "endpoints.yaml"), "--port", "80=8081", "-o", str(tmp_path / "out.yaml")])
    assert code == 0
    config = parse((tmp_path / "out.yaml").read_text())
    assert config.applications[0].ports == [8081]
    assert ("warning: HTTPRoute shop/r: spec.rules[0].sessionPersistence: sessionPersistence is not supported"
            in capsys.readouterr().err)


def test_export_command_writes_manifests_and_endpoints(tmp_path):
    config_path = ROOT / "examples" / "quickstart.yaml"
    code = main(["export", "gateway-api", "-f", str(config_path), "-o", str(tmp_path / "routes.yaml"),
                 "--endpoints", str(tmp_path / "endpoints.yaml")])
    assert code == 0
    kinds = [doc["kind"] for doc in yaml.safe_load_all((tmp_path / "routes.yaml").read_text())]
    assert kinds[0] == "Gateway" and "HTTPRoute" in kinds
    assert parse_endpoints(yaml.safe_load((tmp_path / "endpoints.yaml").read_text()))


def test_import_command_reports_unreadable_input(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("kind: [unclosed\n")
    assert main(["import", "gateway-api", "-f", str(tmp_path / "bad.yaml")]) == 1
    assert "bad.yaml:2: not valid YAML" in capsys.readouterr().err


def test_the_example_imports_cleanly_and_serves(tmp_path):
    example = ROOT / "examples" / "gateway-api"
    documents = read_manifests([example / "manifests.yaml"])
    declared = parse_endpoints(yaml.safe_load((example / "endpoints.yaml").read_text()))
    backends, endpoints = [], {}
    try:
        for key in declared:  # the same Services, on echo backends at free ports
            port = free_port()
            backends.append(subprocess.Popen([sys.executable, "-m", "edgeplane", "echo", "--listen",
                                              f"127.0.0.1:{port}", "--name", f"{key[1]}-1"], env=ENV,
                                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            wait_port(port, proc=backends[-1])
            endpoints[key] = [("127.0.0.1", port)]
        node_port = free_port()
        config, warnings = import_gateway_api(documents, endpoints, {8080: node_port})
        assert not warnings
        node = Node(tmp_path, dump(config), access_log=False)
        try:
            import http.client
            conn = http.client.HTTPConnection("127.0.0.1", node_port, timeout=5)
            conn.request("GET", "/api/items", headers={"Host": "shop.localhost"})
            echo = json.loads(conn.getresponse().read())
            assert echo["pod"] == "api-1" and echo["headers"]["X-Api-Version"] == ["2"]
            conn.request("GET", "/old/page", headers={"Host": "shop.localhost"})
            response = conn.getresponse()
            response.read()
            assert (response.status, response.getheader("Location")) == (301, "http://shop.localhost:8080/new/page")
            conn.request("GET", "/apix", headers={"Host": "shop.localhost"})
            assert json.loads(conn.getresponse().read())["pod"] == "web-1"
        finally:
            node.stop()
    finally:
        for proc in backends:
            proc.kill()
            proc.wait()
