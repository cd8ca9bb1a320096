"""Observability: the access log, /metrics and /status tell exactly what the node did.

The access log has one JSON line per request; /metrics is Prometheus text exposition
(checked here by a strict parser of format 0.0.4) merged over workers; /status shows the
config version and each upstream server's state.
"""

from __future__ import annotations

import http.client
import math
import os
import re
import signal
import time

import pytest

from test_reload import get, wait_for

from conftest import app_config, free_port, raw_exchange

# --- a strict parser of the Prometheus text format (0.0.4) -----------------------------

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"'
_SAMPLE = re.compile(rf"^({_NAME})(?:\{{((?:{_LABEL},)*(?:{_LABEL})?)\}})? (\S+)(?: (-?\d+))?$")
_VALUE = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$|^[+-]Inf$|^NaN$")
_TYPES = ("counter", "gauge", "histogram", "summary", "untyped")
_SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count", "")}


def family_of(sample: str, types: dict[str, str]) -> str:
    for name, kind in types.items():
        if sample == name or any(sample == name + suffix for suffix in _SUFFIXES.get(kind, ())):
            return name
    return sample


def parse_prometheus(text: str) -> dict[str, dict]:
    """Parse exposition text into {family: {"type", "help", "samples": {(name, labels): value}}};
    raise AssertionError on anything the format does not allow."""
    assert text.endswith("\n"), "the exposition must end with a newline"
    families: dict[str, dict] = {}
    types: dict[str, str] = {}
    finished: set[str] = set()
    current = None
    for number, line in enumerate(text[:-1].split("\n"), 1):
        where = f"line {number}: {line!r}"
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                name = parts[2]
                assert re.fullmatch(_NAME, name), where
                family = families.setdefault(name, {"type": "untyped", "help": None, "samples": {}})
                assert not family["samples"], f"{where}: {parts[1]} after the family's samples"
                if parts[1] == "TYPE":
                    assert len(parts) == 4 and parts[3] in _TYPES, where
                    assert name not in types, f"{where}: a second TYPE"
                    types[name] = family["type"] = parts[3]
                else:
                    assert family["help"] is None, f"{where}: a second HELP"
                    family["help"] = parts[3] if len(parts) == 4 else ""
            continue
        assert line.strip(), f"line {number} is empty"
        match = _SAMPLE.match(line)
        assert match, f"{where}: not a sample"
        sample_name, labels_text, value = match.group(1), match.group(2), match.group(7)
        assert _VALUE.match(value), f"{where}: bad value"
        labels = tuple(re.findall(_LABEL, labels_text or ""))
        assert len({k for k, _ in labels}) == len(labels), f"{where}: repeated label"
        name = family_of(sample_name, types)
        if name != current:
            assert name not in finished, f"{where}: the samples of {name} are not together"
            if current is not None:
                finished.add(current)
            current = name
        family = families.setdefault(name, {"type": "untyped", "help": None, "samples": {}})
        key = (sample_name, tuple(sorted(labels)))
        assert key not in family["samples"], f"{where}: a repeated series"
        family["samples"][key] = float(value)
    for name, family in families.items():
        if family["type"] == "histogram":
            check_histogram(name, family["samples"])
    return families


def check_histogram(name: str, samples: dict) -> None:
    """Buckets are cumulative, `le` ascending, and +Inf equals _count, for every series."""
    series: dict[tuple, list[tuple[float, float]]] = {}
    for (sample, labels), value in samples.items():
        if sample == name + "_bucket":
            rest = tuple(pair for pair in labels if pair[0] != "le")
            le = dict(labels)["le"]
            series.setdefault(rest, []).append((math.inf if le == "+Inf" else float(le), value))
    for rest, buckets in series.items():
        buckets.sort()
        counts = [count for _, count in buckets]
        assert counts == sorted(counts), f"{name}{rest}: buckets are not cumulative: {buckets}"
        assert buckets[-1][0] == math.inf, f"{name}{rest}: no +Inf bucket"
        assert buckets[-1][1] == samples[(name + "_count", rest)], f"{name}{rest}: +Inf != _count"
        assert (name + "_sum", rest) in samples, f"{name}{rest}: no _sum"


def test_the_strict_parser_refuses_what_the_format_does_not_allow():
    valid = '# TYPE a counter\na{x="1"} 2\n'
    assert parse_prometheus(valid)["a"]["samples"] == {("a", (("x", "1"),)): 2.0}
    for broken in ('# TYPE a counter\na{x="1"} 2', 'a{x=1} 2\n', 'a 2\na 3\n', 'a two\n',
                   'a 1\nb 1\na{x="2"} 1\n', 'a 1\n# TYPE a counter\n',
                   '# TYPE h histogram\nh_bucket{le="1"} 2\nh_bucket{le="+Inf"} 1\nh_sum 1\nh_count 1\n',
                   '# TYPE h histogram\nh_bucket{le="+Inf"} 2\nh_sum 1\nh_count 3\n'):
        with pytest.raises(AssertionError):
            parse_prometheus(broken)


def scrape(node) -> dict[str, dict]:
    return parse_prometheus(node.metrics())


def series(families: dict, name: str, sample: str | None = None) -> dict[tuple, float]:
    """{labels: value} of one family's samples named `sample` (the family name by default)."""
    wanted = sample or name
    return {labels: value for (s, labels), value in families[name]["samples"].items() if s == wanted}


# --- access log ------------------------------------------------------------------------

LOG_TYPES = {
    "time": float, "request_id": str, "client": str, "method": str, "host": str, "uri": str,
    "status": int, "bytes_in": int, "bytes_out": int, "application": str, "rule": int,
    "upstream": str, "upstream_addr": str, "upstream_status": int, "duration_ms": (int, float),
    "connect_ms": (int, float), "upstream_ms": (int, float),
}


def test_the_access_log_has_one_line_per_request_with_every_field(node, echo):
    backend = echo()
    port = free_port()
    started = node(app_config([backend.server()], port))
    began = time.time()
    requests = {
        "/slow?delay=50ms": b"GET /slow?delay=50ms HTTP/1.1\r\nHost: Example.Test:8080\r\nConnection: close\r\n\r\n",
        "/upload": b"POST /upload HTTP/1.1\r\nHost: example.test\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        "/status/404": b"GET /status/404 HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n",
    }
    received = {uri: raw_exchange(port, request) for uri, request in requests.items()}
    lines = started.access_log(wait_for=3)
    time.sleep(0.3)  # a flush later, still exactly one line per request
    assert started.access_log() == lines and len(lines) == 3
    by_uri = {line["uri"]: line for line in lines}
    assert set(by_uri) == set(requests)
    for uri, line in by_uri.items():
        for field, kind in LOG_TYPES.items():
            assert isinstance(line[field], kind), f"{field}: {line[field]!r}"
        assert began - 1 < line["time"] < time.time()
        assert line["client"] == "127.0.0.1"
        assert (line["application"], line["rule"], line["upstream"]) == ("app", 0, "up")
        assert line["upstream_addr"] == f"127.0.0.1:{backend.port}"
        assert line["bytes_out"] == len(received[uri])
        assert 0 <= line["connect_ms"] <= line["duration_ms"] and 0 <= line["upstream_ms"] <= line["duration_ms"]
    slow, upload, missing = by_uri["/slow?delay=50ms"], by_uri["/upload"], by_uri["/status/404"]
    assert len({line["request_id"] for line in lines}) == 3
    assert (slow["method"], slow["host"], slow["uri"], slow["status"]) == ("GET", "example.test", "/slow?delay=50ms", 200)
    assert slow["upstream_ms"] >= 50
    assert (upload["method"], upload["bytes_in"], upload["status"]) == ("POST", 5, 200)
    assert (missing["status"], missing["upstream_status"], missing["bytes_in"]) == (404, 404, 0)


# --- metrics ---------------------------------------------------------------------------


def test_metrics_are_valid_prometheus_text_with_the_documented_types(node, echo):
    port = free_port()
    started = node(app_config([echo().server()], port), workers=2)
    get(port)
    families = scrape(started)
    documented = {
        "edgeplane_requests_total": "counter", "edgeplane_upstream_response_seconds": "histogram",
        "edgeplane_active_connections": "gauge", "edgeplane_workers": "gauge",
        "edgeplane_worker_restarts_total": "counter", "edgeplane_config_info": "gauge",
        "edgeplane_access_log_dropped_total": "counter",
    }
    assert {name: families[name]["type"] for name in documented if name in families} == documented


def test_metrics_count_requests_by_application_and_status_class_exactly(node, echo):
    port = free_port()
    started = node(app_config([echo().server()], port), workers=2)
    statuses = [get(port)[0] for _ in range(7)] + [get(port, "/status/404")[0] for _ in range(3)]
    assert statuses == [200] * 7 + [404] * 3
    counted = series(scrape(started), "edgeplane_requests_total")
    assert counted == {
        (("application", "app"), ("status_class", "2xx")): 7,
        (("application", "app"), ("status_class", "4xx")): 3,
    }


def test_upstream_latency_histogram_puts_each_response_in_its_bucket(node, echo):
    port = free_port()
    started = node(app_config([echo().server()], port))
    for _ in range(4):
        get(port)
    get(port, "/?delay=300ms")
    families = scrape(started)
    name = "edgeplane_upstream_response_seconds"
    assert families[name]["type"] == "histogram"
    buckets = {dict(labels)["le"]: value for labels, value in series(families, name, name + "_bucket").items()
               if dict(labels)["upstream"] == "up"}
    assert buckets["0.25"] == 4 and buckets["0.5"] == 5 and buckets["+Inf"] == 5
    assert series(families, name, name + "_count") == {(("upstream", "up"),): 5}
    assert 0.3 <= series(families, name, name + "_sum")[(("upstream", "up"),)] < 1.0


def test_active_connections_gauge_follows_open_client_connections(node, echo):
    port = free_port()
    started = node(app_config([echo().server()], port), workers=2)
    clients = [http.client.HTTPConnection("127.0.0.1", port, timeout=5) for _ in range(3)]
    for client in clients:
        client.request("GET", "/", headers={"Host": "example.test"})
        client.getresponse().read()

    def active() -> float:
        return series(scrape(started), "edgeplane_active_connections")[()]
    assert active() == 3
    for client in clients:
        client.close()
    wait_for(lambda: active() == 0, what="the gauge falling to 0")


def test_metrics_show_the_config_version_of_every_worker(node, echo):
    port = free_port()
    backend = echo()
    started = node(app_config([backend.server()], port), workers=2)

    def versions() -> dict[str, str]:
        info = series(scrape(started), "edgeplane_config_info")
        assert set(info.values()) == {1}
        return {dict(labels)["worker"]: dict(labels)["version"] for labels in info}
    [before] = started.versions()
    assert versions() == {"0": before, "1": before}
    started.write_config(app_config([backend.server()], port, domains=["example.test"]))
    started.reload()
    [after] = started.wait_version_change({before})
    assert versions() == {"0": after, "1": after}


def test_config_info_labels_each_worker_by_its_own_index_while_another_restarts(node, echo):
    started = node(app_config([echo().server()], free_port()), workers=2)
    [version] = started.versions()
    pids = {w["worker"]: w["pid"] for w in started.status()["workers"]}
    os.kill(pids[0], signal.SIGKILL)

    def only_worker_1_answers() -> dict | None:
        families = scrape(started)
        return families if series(families, "edgeplane_workers")[()] == 1 else None
    families = wait_for(only_worker_1_answers, what="a scrape while worker 0 restarts")
    assert list(series(families, "edgeplane_config_info")) == [(("version", version), ("worker", "1"))]


# --- status ----------------------------------------------------------------------------


def test_status_shows_the_config_version_and_upstream_servers(node, echo):
    backend = echo()
    port = free_port()
    started = node(app_config([backend.server()], port), workers=2)
    assert get(port)[0] == 200
    status = started.status()
    assert status["config_version"] == status["workers"][0]["version"] == status["workers"][1]["version"]
    [server] = status["upstreams"]["up"]
    assert server["address"] == f"127.0.0.1:{backend.port}" and server["state"] == "up"
    served = [s for servers in status["upstreams_by_worker"].values() for s in servers["up"]]
    assert sum(s["requests"] for s in served) == 1 and sum(s["connects"] for s in served) == 1


def test_status_marks_a_server_down_after_a_connect_failure(node, echo):
    backend = echo()
    closed = free_port()  # nothing listens here
    port = free_port()
    started = node(app_config([{"address": "127.0.0.1", "port": closed, "fail_timeout": "30s"}, backend.server()],
                              port))
    assert [get(port)[0] for _ in range(2)] == [200, 200]  # round robin tries the closed one, then retries
    servers = {s["address"]: s for s in started.status()["upstreams"]["up"]}
    assert servers[f"127.0.0.1:{closed}"]["state"] == "down"
    assert 20 < servers[f"127.0.0.1:{closed}"]["down_for"] <= 30
    assert servers[f"127.0.0.1:{backend.port}"]["state"] == "up"

