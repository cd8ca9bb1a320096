"""Rule features beyond routing, each through a real node: splits, mirrors, route timeouts,
CORS, deny, query rewrites, rule variables, clock and location conditions, global rules."""

from __future__ import annotations

import http.client
import json
import time
from collections import Counter
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from test_reload import wait_for

from conftest import free_port


def call(port: int, path: str = "/", method: str = "GET", headers: dict | None = None,
         host: str = "app.test") -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(method, path, headers={"Host": host, **(headers or {})})
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, body


def config(port: int, rules: list[dict], upstreams: list[dict], settings: dict | None = None,
           global_rules: dict | None = None) -> dict:
    result = {"upstreams": upstreams,
              "applications": [{"name": "app", "domains": ["app.test"], "ports": [port], "rules": rules}]}
    if settings:
        result["settings"] = settings
    if global_rules:
        result["global_rules"] = global_rules
    return result


def upstream(name: str, *backends) -> dict:
    return {"name": name, "servers": [b.server() for b in backends]}


def pod(body: bytes) -> str:
    return json.loads(body)["pod"]


# --- split ---------------------------------------------------------------------------

def test_split_shares_requests_by_weight_and_never_sends_to_weight_zero(node, echo):
    a, b, c = echo("a"), echo("b"), echo("c")
    port = free_port()
    rules = [{"actions": [{"split": {"upstreams": [{"upstream": "a", "weight": 70}, {"upstream": "b", "weight": 30},
                                                   {"upstream": "c", "weight": 0}]}}]}]
    node(config(port, rules, [upstream("a", a), upstream("b", b), upstream("c", c)]))
    counts = Counter(pod(call(port)[2]) for _ in range(500))
    assert counts["c"] == 0
    assert abs(counts["a"] / 500 - 0.7) <= 0.05 and abs(counts["b"] / 500 - 0.3) <= 0.05, counts


def test_a_sticky_split_keeps_each_user_on_one_upstream(node, echo):
    a, b = echo("a"), echo("b")
    port = free_port()
    rules = [{"actions": [{"split": {"upstreams": [{"upstream": "a", "weight": 50}, {"upstream": "b", "weight": 50}],
                                     "sticky": "cookie:user"}}]}]
    node(config(port, rules, [upstream("a", a), upstream("b", b)]))
    placement = {}
    for user in range(40):
        seen = {pod(call(port, headers={"Cookie": f"user=u{user}"})[2]) for _ in range(3)}
        assert len(seen) == 1, f"user u{user} moved between {seen}"
        placement[user] = seen.pop()
    assert set(placement.values()) == {"a", "b"}


def test_a_split_whose_weights_are_all_zero_answers_500(node, echo):
    a = echo("a")
    port = free_port()
    rules = [{"actions": [{"split": {"upstreams": [{"upstream": "a", "weight": 0}]}}]}]
    node(config(port, rules, [upstream("a", a)]))
    assert call(port)[0] == 500


# --- mirror --------------------------------------------------------------------------

def mirror_counts(started) -> dict[str, int]:
    counts = {}
    for line in started.metrics().splitlines():
        if line.startswith("edgeplane_mirror_requests_total{"):
            labels, value = line.rsplit(" ", 1)
            counts[labels.split('result="')[1].split('"')[0]] = int(float(value))
    return counts


def test_mirror_sends_a_copy_to_the_shadow_and_answers_from_the_main_upstream(node, echo):
    main, shadow = echo("main"), echo("shadow")
    port = free_port()
    rules = [{"actions": [{"mirror": {"upstream": "shadow"}}, {"proxy": {"upstream": "main"}}]}]
    started = node(config(port, rules, [upstream("main", main), upstream("shadow", shadow)]))
    for _ in range(10):
        status, _, body = call(port, "/copy-me", method="POST", headers={"Content-Length": "0"})
        assert status == 200 and pod(body) == "main"
    wait_for(lambda: mirror_counts(started).get("2xx", 0) >= 10, timeout=15, what="ten copies answered")
    assert mirror_counts(started) == {"2xx": 10}


def test_a_dead_mirror_never_reaches_the_client(node, echo, refused_port):
    main = echo("main")
    port = free_port()
    dead = {"name": "dead", "servers": [{"address": "127.0.0.1", "port": refused_port()}],
            "timeouts": {"connect": "200ms"}}
    rules = [{"actions": [{"mirror": {"upstream": "dead"}}, {"proxy": {"upstream": "main"}}]}]
    started = node(config(port, rules, [upstream("main", main), dead]))
    assert all(call(port)[0] == 200 for _ in range(5))

    def failed() -> int:
        counts = mirror_counts(started)
        return counts.get("connect-failed", 0) + counts.get("no-server", 0)
    wait_for(lambda: failed() >= 5, timeout=15, what="five failed copies counted")
    assert failed() == 5, mirror_counts(started)


def test_mirror_percent_zero_sends_no_copy(node, echo):
    main, shadow = echo("main"), echo("shadow")
    port = free_port()
    rules = [{"actions": [{"mirror": {"upstream": "shadow", "percent": 0}}, {"proxy": {"upstream": "main"}}]}]
    started = node(config(port, rules, [upstream("main", main), upstream("shadow", shadow)]))
    for _ in range(5):
        call(port)
    time.sleep(0.2)
    assert mirror_counts(started) == {}


# --- route timeouts ------------------------------------------------------------------

def test_a_route_timeout_answers_504_when_the_upstream_is_slower(node, echo):
    slow = echo("slow")
    port = free_port()
    rules = [{"actions": [{"proxy": {"upstream": "slow", "timeout": "300ms"}}]}]
    node(config(port, rules, [upstream("slow", slow)]))
    status, _, body = call(port, "/?delay=2s")  # a 200 would mean the node waited for the answer
    assert status == 504 and b"300ms" not in body and b"0.3s timeout" in body
    assert call(port, "/?delay=10ms")[0] == 200


def test_a_backend_timeout_bounds_each_attempt(node, echo):
    slow = echo("slow")
    port = free_port()
    rules = [{"actions": [{"proxy": {"upstream": "slow", "backend_timeout": "300ms"}}]}]
    node(config(port, rules, [upstream("slow", slow)]))
    status, _, body = call(port, "/?delay=2s")
    assert status == 504 and b"backend timeout" in body


# --- CORS ----------------------------------------------------------------------------

@pytest.fixture
def cors_port(node, echo):
    backend = echo("api")
    port = free_port()
    rules = [{"actions": [
        {"cors": {"allow_origins": ["https://www.foo.com", "https://*.bar.com"], "allow_methods": ["GET", "PUT"],
                  "allow_headers": ["x-a"], "expose_headers": ["x-b"], "allow_credentials": True, "max_age": 600}},
        {"proxy": {"upstream": "api"}}]}]
    node(config(port, rules, [upstream("api", backend)]))
    return port


def test_cors_preflight_from_an_allowed_origin_is_answered_by_the_node(cors_port):
    status, headers, _ = call(cors_port, "/", "OPTIONS", {"Origin": "https://a.b.bar.com",
                                                          "Access-Control-Request-Method": "PUT"})
    assert status == 204
    assert headers["access-control-allow-origin"] == "https://a.b.bar.com"
    assert headers["access-control-allow-methods"] == "GET, PUT"
    assert headers["access-control-allow-headers"] == "x-a"
    assert headers["access-control-max-age"] == "600"
    assert headers["access-control-allow-credentials"] == "true"


def test_cors_headers_are_added_to_responses_for_allowed_origins_only(cors_port):
    _, allowed, body = call(cors_port, "/", headers={"Origin": "https://www.foo.com"})
    assert allowed["access-control-allow-origin"] == "https://www.foo.com"
    assert allowed["access-control-expose-headers"] == "x-b"
    assert pod(body) == "api"
    _, refused, _ = call(cors_port, "/", headers={"Origin": "https://evil.com"})
    assert "access-control-allow-origin" not in refused


def test_a_preflight_from_a_refused_origin_gets_no_cors_headers(cors_port):
    _, headers, _ = call(cors_port, "/", "OPTIONS", {"Origin": "https://bar.com.evil.com",
                                                     "Access-Control-Request-Method": "GET"})
    assert "access-control-allow-origin" not in headers


# --- deny, query, variables ---------------------------------------------------------------

def test_deny_refuses_with_its_status(node):
    port = free_port()
    rules = [{"conditions": [{"var": "path", "op": "prefix", "values": ["/admin"]}], "actions": [{"deny": {}}]},
             {"actions": [{"respond": {"body": "open"}}]}]
    node(config(port, rules, []))
    assert call(port, "/admin/x")[0] == 403
    assert call(port, "/%61dmin")[0] == 403
    assert call(port, "/public")[2] == b"open"


def test_rewrite_query_sets_adds_and_removes_arguments(node, echo):
    backend = echo("q")
    port = free_port()
    rules = [{"actions": [{"rewrite-query": {"set": {"lang": "en"}, "add": {"via": "edge"}, "remove": ["debug"]}},
                          {"proxy": {"upstream": "q"}}]}]
    node(config(port, rules, [upstream("q", backend)]))
    echoed = json.loads(call(port, "/p?lang=fr&debug=1&x=1")[2])
    assert echoed["path"] == "/p?x=1&lang=en&via=edge"


def test_set_var_is_visible_to_later_rules(node):
    port = free_port()
    rules = [{"conditions": [{"var": "header", "name": "X-Plan", "op": "eq", "values": ["gold"]}],
              "actions": [{"set-var": {"name": "tier", "value": "premium"}}]},
             {"conditions": [{"var": "var", "name": "tier", "op": "eq", "values": ["premium"]}],
              "actions": [{"respond": {"body": "premium"}}]},
             {"actions": [{"respond": {"body": "basic"}}]}]
    node(config(port, rules, []))
    assert call(port, headers={"X-Plan": "gold"})[2] == b"premium"
    assert call(port)[2] == b"basic"


# --- clock, random, location, trusted proxies ---------------------------------------------

def test_clock_conditions_use_the_configured_time_zone(node):
    zone = "Asia/Tokyo"
    now = datetime.now(ZoneInfo(zone))
    weekday = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")[now.weekday()]
    other_days = [d for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun") if d != weekday]
    port = free_port()
    rules = [{"conditions": [{"var": "weekday", "op": "in", "values": other_days}],
              "actions": [{"respond": {"body": "wrong day"}}]},
             {"conditions": [{"var": "date", "op": "eq", "values": [now.strftime("%Y-%m-%d")]},
                             {"var": "time", "op": "ge", "values": ["00:00"]}],
              "actions": [{"respond": {"body": "today in tokyo"}}]},
             {"actions": [{"respond": {"body": "no match"}}]}]
    node(config(port, rules, [], settings={"timezone": zone}))
    body = call(port)[2]
    if datetime.now(ZoneInfo(zone)).date() != now.date():  # midnight passed during the test
        pytest.skip("the date changed in Tokyo during the test")
    assert body == b"today in tokyo"


def test_random_percentages_split_roughly(node):
    port = free_port()
    rules = [{"conditions": [{"var": "random", "op": "lt", "values": ["30"]}], "actions": [{"respond": {"body": "in"}}]},
             {"actions": [{"respond": {"body": "out"}}]}]
    node(config(port, rules, []))
    counts = Counter(call(port)[2] for _ in range(400))
    assert 0.2 <= counts[b"in"] / 400 <= 0.4, counts


def test_location_comes_from_the_most_specific_configured_network(node):
    port = free_port()
    rules = [{"conditions": [{"var": "location", "op": "eq", "values": ["lab"]}], "actions": [{"respond": {"body": "lab"}}]},
             {"conditions": [{"var": "location", "op": "eq", "values": ["loopback"]}], "actions": [{"respond": {"body": "lo"}}]},
             {"actions": [{"respond": {"body": "elsewhere"}}]}]
    settings = {"locations": [{"cidr": "127.0.0.0/8", "location": "loopback"}, {"cidr": "127.0.0.1/32", "location": "lab"}]}
    node(config(port, rules, [], settings=settings))
    assert call(port)[2] == b"lab"


def test_the_client_address_is_taken_from_x_forwarded_for_only_behind_a_trusted_proxy(node):
    port = free_port()
    rules = [{"conditions": [{"var": "client-ip", "op": "cidr", "values": ["203.0.113.0/24"]}],
              "actions": [{"respond": {"body": "office"}}]},
             {"actions": [{"respond": {"body": "elsewhere"}}]}]
    started = node(config(port, rules, [], settings={"trusted_proxies": ["127.0.0.0/8", "10.0.0.0/8"]}))
    assert call(port, headers={"X-Forwarded-For": "203.0.113.7, 10.1.1.1"})[2] == b"office"
    assert call(port, headers={"X-Forwarded-For": "203.0.113.7, 198.51.100.9"})[2] == b"elsewhere"
    log = started.access_log(wait_for=2)
    assert log[0]["client"] == "203.0.113.7" and log[1]["client"] == "198.51.100.9"


def test_x_forwarded_for_is_ignored_without_trusted_proxies(node):
    port = free_port()
    rules = [{"conditions": [{"var": "client-ip", "op": "eq", "values": ["203.0.113.7"]}],
              "actions": [{"respond": {"body": "spoofed"}}]},
             {"actions": [{"respond": {"body": "real"}}]}]
    node(config(port, rules, []))
    assert call(port, headers={"X-Forwarded-For": "203.0.113.7"})[2] == b"real"


# --- global rules ----------------------------------------------------------------------

def test_global_rules_run_before_and_after_each_applications_own(node):
    port = free_port()
    config_ = {
        "global_rules": {
            "before": [{"conditions": [{"var": "path", "op": "prefix", "values": ["/.git"]}], "actions": [{"deny": {"status": 404}}]},
                       {"actions": [{"set-response-header": {"name": "X-Frame-Options", "value": "DENY"}}]}],
            "after": [{"actions": [{"respond": {"status": 404, "body": "global fallback"}}]}],
        },
        "applications": [{"name": name, "domains": [f"{name}.test"], "ports": [port],
                          "rules": [{"conditions": [{"var": "path", "op": "eq", "values": ["/"]}],
                                     "actions": [{"respond": {"body": name}}]}]} for name in ("one", "two")],
    }
    started = node(config_)
    for name in ("one", "two"):
        status, headers, body = call(port, "/", host=f"{name}.test")
        assert (status, body, headers["x-frame-options"]) == (200, name.encode(), "DENY")
        assert call(port, "/.git/config", host=f"{name}.test")[0] == 404
        assert call(port, "/missing", host=f"{name}.test")[2] == b"global fallback"
    rules_logged = [entry["rule"] for entry in started.access_log(wait_for=6)]
    assert rules_logged[:3] == [0, "global.before[0]", "global.after[0]"]


def test_location_falls_back_to_the_geoip_database_country(node, tmp_path):
    import netaddr
    from mmdb_writer import MMDBWriter
    writer = MMDBWriter(ip_version=4, database_type="GeoIP2-Country")
    writer.insert_network(netaddr.IPSet(["127.0.0.0/8"]), {"country": {"iso_code": "ZZ"}})
    database = tmp_path / "country.mmdb"
    writer.to_db_file(str(database))
    port = free_port()
    rules = [{"conditions": [{"var": "location", "op": "eq", "values": ["ZZ"]}], "actions": [{"respond": {"body": "zz"}}]},
             {"actions": [{"respond": {"body": "unknown"}}]}]
    node(config(port, rules, [], settings={"geoip_database": str(database),
                                           "locations": [{"cidr": "10.0.0.0/8", "location": "office"}]}))
    assert call(port)[2] == b"zz"


def test_an_unreadable_geoip_database_refuses_the_config_and_keeps_the_old(node, tmp_path):
    port = free_port()
    rules = [{"actions": [{"respond": {"body": "v1"}}]}]
    started = node(config(port, rules, []))
    before = started.versions()
    started.write_config(config(port, [{"actions": [{"respond": {"body": "v2"}}]}], [],
                                settings={"geoip_database": str(tmp_path / "missing.mmdb")}))
    deadline = time.monotonic() + 5
    while "cannot compile" not in started.stderr_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "cannot compile" in started.stderr_text()
    assert started.versions() == before and call(port)[2] == b"v1"
