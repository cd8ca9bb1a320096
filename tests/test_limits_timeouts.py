"""Limits and timeouts on both sides of the node: oversized heads and bodies, clients too
slow or idle, and upstreams that refuse, hang, or are all down.

One node with short limits serves the module; each upstream behaviour has its own
application and port, so a server marked down by one test never answers another.
"""

import re
import time

import pytest

from upstreams import (
    Bench,
    FullBacklog,
    chunked_body,
    recording_upstream,
    refused_server,
    request,
    scripted_upstream,
    silent_upstream,
)

LIMITS = {
    "max_header_size": "4k", "max_body_size": "1k", "client_header_timeout": "500ms",
    "client_body_timeout": "500ms", "keepalive_timeout": "500ms",
}
SLOW_BODY = (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\n",
             b"a", 0.3, b"b", 0.3, b"c", 0.3, b"d", 0.3, b"e")


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    peers = {"recorded": recording_upstream(), "silent": silent_upstream(),
             "slow": scripted_upstream(*SLOW_BODY), "backlog": FullBacklog()}
    upstreams = {
        "recorded": {"servers": [peers["recorded"].server()]},
        "refused": {"servers": [refused_server()]},
        "silent": {"servers": [peers["silent"].server()], "timeouts": {"read": "500ms"}},
        "slow": {"servers": [peers["slow"].server()], "timeouts": {"read": "700ms"}},
        "backlog": {"servers": [peers["backlog"].server()], "timeouts": {"connect": "300ms"}},
        "all-down": {"servers": [refused_server(max_fails=1, fail_timeout="1m"),
                                 refused_server(max_fails=1, fail_timeout="1m")]},
    }
    bench = Bench(tmp_path_factory.mktemp("limits"), upstreams, peers, settings={"limits": LIMITS})
    yield bench
    bench.stop()


def request_id_in(body: bytes) -> str:
    match = re.search(rb"\(request id ([^)]+)\)", body)
    assert match, f"no request id in {body!r}"
    return match.group(1).decode()


# --- sizes ---------------------------------------------------------------------------


def test_request_head_larger_than_max_header_size_gets_431(bench):
    with bench.client("recorded") as client:
        response = client.exchange(request("GET", "/", "X-Big: " + "a" * 5000))
        assert response.status == 431
        assert client.closed()


def test_request_head_growing_past_max_header_size_in_pieces_gets_431_before_it_ends(bench):
    with bench.client("recorded") as client:
        client.send(b"GET / HTTP/1.1\r\nHost: test.local\r\nX-Endless: ")
        for _ in range(5):
            client.send(b"e" * 1000)
            time.sleep(0.05)  # each piece in its own packet
        assert client.response().status == 431
        assert client.closed()


def test_request_head_within_max_header_size_is_accepted_when_it_arrives_in_pieces(bench):
    data = request("GET", "/pieces", *(f"X-Part-{n}: {'p' * 900}" for n in range(3)))
    assert len(data) < 4096
    with bench.client("recorded") as client:
        for start in range(0, len(data), 1000):
            client.send(data[start:start + 1000])
            time.sleep(0.05)  # each piece in its own packet
        assert client.response().status == 200


def test_content_length_above_max_body_size_gets_413(bench):
    with bench.client("recorded") as client:
        response = client.exchange(request("POST", "/", body=b"x" * 2000))
        assert response.status == 413
        assert client.closed()


def test_chunked_body_growing_past_max_body_size_gets_413(bench):
    with bench.client("recorded") as client:
        client.send(request("POST", "/", "Transfer-Encoding: chunked") + b"258\r\n" + b"x" * 600 + b"\r\n")
        client.send(chunked_body(b"y" * 600))
        assert client.response().status == 413
        assert client.closed()


# --- slow and idle clients -----------------------------------------------------------


def test_client_stalling_in_its_headers_gets_408_and_is_disconnected(bench):
    with bench.client("recorded") as client:
        client.send(b"GET / HTTP/1.1\r\nHost: test.local\r\n")
        assert client.response().status == 408
        assert client.closed()


def test_trickled_header_bytes_do_not_extend_the_header_deadline(bench):
    trickle = b"".join(b"X-Slow-%d: a\r\n" % n for n in range(5))  # a byte per 200ms: 12s
    with bench.client("recorded") as client:
        client.send(b"GET / HTTP/1.1\r\nHost: test.local\r\n")
        for byte in trickle:
            if client.readable(within=0.2):
                break
            client.send(bytes([byte]))
        else:
            pytest.fail("the node was still waiting for headers when the trickle ended")
        assert client.response().status == 408
        assert client.closed()


def test_client_stalling_mid_body_is_cut_after_client_body_timeout(bench):
    with bench.client("recorded") as client:
        client.send(request("POST", "/", "Content-Length: 100") + b"only ten b")
        assert client.response().status == 408
        assert client.closed()


def test_idle_keep_alive_connection_is_closed_after_keepalive_timeout(bench):
    with bench.client("recorded") as client:
        response = client.exchange(request("GET", "/then-idle"))
        assert response.status == 200 and response.get("Connection") is None
        assert client.closed(within=5.0)


# --- upstream failures ---------------------------------------------------------------


def test_refused_upstream_connection_gets_502_naming_the_cause_and_request_id(bench):
    with bench.client("refused") as client:
        response = client.exchange(request("GET", "/refused"))
    assert response.status == 502
    assert b"refused" in response.body.lower()
    assert request_id_in(response.body) == response.get("X-Request-Id")
    assert bench.log_record(response.get("X-Request-Id"))["status"] == 502


def test_upstream_that_never_answers_gets_504_after_the_read_timeout(bench):
    with bench.client("silent") as client:
        response = client.exchange(request("GET", "/silence"))
    assert response.status == 504
    assert b"did not answer within 0.5s" in response.body


def test_upstream_read_timeout_measures_silence_not_the_whole_response(bench):
    with bench.client("slow") as client:
        response = client.exchange(request("GET", "/slow"))
    assert (response.status, response.body) == (200, b"abcde")


def test_upstream_connect_timeout_gets_504(bench):
    if not bench.peers["backlog"].connects_hang():
        pytest.skip("this kernel answers connects to a listener with a full backlog")
    with bench.client("backlog") as client:
        response = client.exchange(request("GET", "/connect"))
    assert response.status == 504
    assert b"connect timed out" in response.body


def test_upstream_with_every_server_down_gets_503(bench):
    with bench.client("all-down") as client:
        assert client.exchange(request("GET", "/marks-them-down")).status == 502
        response = client.exchange(request("GET", "/all-down"))
    assert response.status == 503
    assert b"no available server" in response.body
