"""Ambiguous or malformed requests: the node answers with an error, closes the connection,
and forwards not one byte of them upstream.

"Nothing forwarded" is proven with a recording upstream: after the refusal, a sentinel
request on a fresh connection must be the only thing the upstream received since.
"""

import time

import pytest

from upstreams import Bench, recording_upstream, request, scripted_upstream, wait_for

CHUNKED_HELLO = b"5\r\nhello\r\n0\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
SPOOFED = b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nspoofed"


def head(*lines: str, target: str = "/", method: str = "POST") -> bytes:
    return (f"{method} {target} HTTP/1.1\r\nHost: test.local\r\n" + "".join(f"{line}\r\n" for line in lines)
            + "\r\n").encode("latin-1")


MALFORMED = [
    pytest.param(head("Content-Length: 5", "Transfer-Encoding: chunked") + CHUNKED_HELLO, 400,
                 id="content-length-and-transfer-encoding"),
    pytest.param(head("Transfer-Encoding: chunked", "Content-Length: 5") + CHUNKED_HELLO, 400,
                 id="transfer-encoding-and-content-length"),
    pytest.param(head("Content-Length: 5", "Content-Length: 6") + b"hello!", 400,
                 id="two-different-content-lengths"),
    pytest.param(head("Content-Length: 5", "Content-Length: 5") + b"hello", 400,
                 id="duplicate-identical-content-length"),
    pytest.param(head("Content-Length: +5") + b"hello", 400, id="content-length-with-plus-sign"),
    pytest.param(head("Content-Length: -5") + b"hello", 400, id="content-length-negative"),
    pytest.param(head("Content-Length: 5, 5") + b"hello", 400, id="content-length-list"),
    pytest.param(head("Content-Length: 0x5") + b"hello", 400, id="content-length-hex"),
    pytest.param(head("Transfer-Encoding: gzip") + b"hello", 400, id="transfer-encoding-gzip"),
    pytest.param(head("Transfer-Encoding: gzip, chunked") + CHUNKED_HELLO, 400,
                 id="transfer-encoding-gzip-then-chunked"),
    pytest.param(head("Transfer-Encoding: chunked, gzip") + CHUNKED_HELLO, 400,
                 id="transfer-encoding-chunked-then-gzip"),
    pytest.param(head("Transfer-Encoding: xchunked") + CHUNKED_HELLO, 400, id="transfer-encoding-xchunked"),
    pytest.param(head("Transfer-Encoding: identity") + b"hello", 400, id="transfer-encoding-identity"),
    pytest.param(head("Transfer-Encoding: chunked", "Transfer-Encoding: chunked") + CHUNKED_HELLO, 400,
                 id="transfer-encoding-twice"),
    pytest.param(head("Transfer-Encoding : chunked") + CHUNKED_HELLO, 400, id="space-before-colon"),
    pytest.param(head("X-Bad\x01Name: 1", method="GET"), 400, id="control-character-in-header-name"),
    pytest.param(head("X(Bad): 1", method="GET"), 400, id="separator-in-header-name"),
    pytest.param(head("X Bad: 1", method="GET"), 400, id="space-in-header-name"),
    pytest.param(b"GET / HTTP/1.1\nHost: test.local\n\n", 400, id="bare-lf-line-endings"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: test.local\nX-After-LF: 1\r\n\r\n", 400, id="bare-lf-in-head"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: test.local\rX-After-CR: 1\r\n\r\n", 400, id="bare-cr-in-head"),
    pytest.param(head("X-Folded: one", " two", method="GET"), 400, id="obs-fold-continuation-line"),
    pytest.param(head("X-Nul: a\x00b", method="GET"), 400, id="nul-in-header-value"),
    pytest.param(head("Transfer-Encoding: chunked") + b"zz\r\nhello\r\n0\r\n\r\n", 400, id="bad-chunk-size"),
    pytest.param(head("Transfer-Encoding: chunked") + b"fffffffffffffffffff\r\nhello\r\n0\r\n\r\n", 400,
                 id="overflowing-chunk-size"),
    pytest.param(b"GET / HTTP/1.1\r\nX-No-Host: 1\r\n\r\n", 400, id="http11-without-host"),
    pytest.param(head("Host: other.local", method="GET"), 400, id="two-host-headers"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: bad/host\r\n\r\n", 400, id="invalid-host"),
    pytest.param(b"GET /\r\n\r\n", 400, id="http09-request-line"),
    pytest.param(b"GET / HTTP/2.0\r\nHost: test.local\r\n\r\n", 505, id="http2-request-line"),
    pytest.param(b"CONNECT test.local:443 HTTP/1.1\r\nHost: test.local:443\r\n\r\n", 405, id="connect"),
]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    peers = {
        "recorded": recording_upstream(),
        "length-and-chunked": scripted_upstream(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n" + CHUNKED_HELLO),
        "stray-in-same-packet": scripted_upstream(OK + SPOOFED, hold=True),
        "stray-after-response": scripted_upstream(OK, 0.1, SPOOFED, hold=True),
    }
    upstreams = {name: {"servers": [peer.server()]} for name, peer in peers.items()}
    bench = Bench(tmp_path_factory.mktemp("smuggling"), upstreams, peers)
    yield bench
    bench.stop()


def forwarded_before_sentinel(bench, mark: int) -> bytes:
    """What the upstream received since `mark` and before a sentinel request sent now."""
    with bench.client("recorded") as sentinel:
        assert sentinel.exchange(request("GET", "/sentinel")).status == 200
    before, found, sentinel_head = bench.peers["recorded"].since(mark).partition(b"GET /sentinel ")
    assert found and sentinel_head.endswith(b"\r\n\r\n") and sentinel_head.count(b"\r\n\r\n") == 1
    return before


@pytest.mark.parametrize(("data", "status"), MALFORMED)
def test_malformed_request_is_refused_closed_and_never_forwarded(bench, data, status):
    mark = bench.peers["recorded"].mark()
    with bench.client("recorded") as client:
        client.send(data)
        response = client.response()
        assert response.status == status, response.body
        assert response.get("Connection") == "close"
        assert client.closed()
    assert forwarded_before_sentinel(bench, mark) == b""


def test_valid_request_before_a_malformed_one_is_answered_then_refused_and_closed(bench):
    mark = bench.peers["recorded"].mark()
    smuggled = head("Content-Length: 1", "Content-Length: 2", target="/smuggled") + b"xx"
    with bench.client("recorded") as client:
        client.send(request("GET", "/first") + smuggled)
        first, refused = client.response(), client.response()
        assert first.status == 200 and first.json()["target"] == "/first"
        assert refused.status == 400
        assert client.closed()
    forwarded = forwarded_before_sentinel(bench, mark)
    assert forwarded.startswith(b"GET /first HTTP/1.1\r\n")
    assert b"smuggled" not in forwarded and forwarded.count(b"\r\n\r\n") == 1


def test_bad_chunk_after_the_request_was_forwarded_closes_the_upstream_connection(bench):
    ended = bench.peers["recorded"].ended_count()
    with bench.client("recorded") as client:
        client.send(head("Transfer-Encoding: chunked", target="/streamed") + b"5\r\nhello\r\n")
        wait_for(lambda: b"POST /streamed " in bench.peers["recorded"].since(0))
        client.send(b"zz\r\nsmuggled\r\n0\r\n\r\n")
        assert client.response().status == 400
        assert client.closed()
    wait_for(lambda: bench.peers["recorded"].ended_count() > ended)
    assert b"smuggled" not in bench.peers["recorded"].since(0)


# --- from the upstream side ----------------------------------------------------------


def test_upstream_response_with_both_content_length_and_chunked_gets_502(bench):
    with bench.client("length-and-chunked") as client:
        response = client.exchange(request("GET", "/"))
    assert response.status == 502
    assert b"invalid response from upstream" in response.body


@pytest.mark.parametrize("upstream", ["stray-in-same-packet", "stray-after-response"])
def test_bytes_an_upstream_sends_after_its_response_never_answer_another_request(bench, upstream):
    with bench.client(upstream) as client:
        assert client.exchange(request("GET", "/first")).body == b"ok"
    time.sleep(0.5)  # the stray bytes have reached the node's idle connection by now
    with bench.client(upstream) as client:
        assert client.exchange(request("GET", "/second")).body == b"ok"
