"""HTTP/1.1 on both sides of the node, end to end: connection management, message framing,
interim responses and the headers a proxy must strip, add or replace.

One node serves the whole module; each upstream behaviour has its own application and port,
and every upstream here is a raw peer from `upstreams.py` that reports what it received.
"""

import hashlib
import os

import pytest

from conftest import free_port
from upstreams import Bench, chunked_body, recording_upstream, request, scripted_upstream

CHUNKED_RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n"
                    b"Connection: close\r\n\r\n" + chunked_body(b"alpha-", b"beta-", b"gamma"))
CLOSE_DELIMITED_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the upstream closes"
EARLY_HINTS = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
FINAL_AFTER_HINTS = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nfinal"
HOP_BY_HOP_RESPONSE = (b"HTTP/1.1 200 OK\r\nConnection: close, X-Upstream-Hop\r\nKeep-Alive: timeout=5\r\n"
                       b"X-Upstream-Hop: secret\r\nProxy-Connection: keep-alive\r\nTrailer: X-Checksum\r\n"
                       b"Upgrade: h2c\r\nTE: trailers\r\nX-End-To-End: kept\r\nContent-Length: 2\r\n\r\nok")


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    peers = {
        "recorded": recording_upstream(),
        "api": recording_upstream(),
        "chunked": scripted_upstream(CHUNKED_RESPONSE),
        "close-delimited": scripted_upstream(CLOSE_DELIMITED_RESPONSE),
        "hints": scripted_upstream(EARLY_HINTS, 0.2, FINAL_AFTER_HINTS),
        "hop-by-hop": scripted_upstream(HOP_BY_HOP_RESPONSE),
    }
    upstreams = {name: {"servers": [peer.server()]} for name, peer in peers.items()}
    upstreams["rewritten"] = {"servers": [peers["recorded"].server()], "host": "backend.internal"}
    shared_port = free_port()
    by_host = [{"name": name, "domains": domains, "ports": [shared_port],
                "rules": [{"actions": [{"proxy": {"upstream": upstream}}]}]}
               for name, upstream, domains in (("api-by-host", "api", ["api.example"]),
                                               ("by-host", "recorded", ["*"]))]
    bench = Bench(tmp_path_factory.mktemp("protocol"), upstreams, peers,
                  settings={"limits": {"max_body_size": "1m"}}, applications=by_host)
    yield bench
    bench.stop()


def sent(bench, peer: str = "recorded"):
    return bench.peers[peer].last_request()


# --- connections ---------------------------------------------------------------------


def test_keep_alive_serves_several_requests_on_one_connection(bench):
    with bench.client("recorded") as client:
        for path in ("/first", "/second", "/third"):
            response = client.exchange(request("GET", path))
            assert response.status == 200
            assert response.json()["target"] == path
            assert response.get("Connection") is None


def test_pipelined_requests_are_answered_in_order(bench):
    body = b"the body of the second request"
    with bench.client("recorded") as client:
        client.send(request("GET", "/one") + request("POST", "/two", body=body) + request("GET", "/three"))
        answers = [client.response().json() for _ in range(3)]
    assert [a["target"] for a in answers] == ["/one", "/two", "/three"]
    assert answers[1]["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_connection_close_from_the_client_is_honoured(bench):
    with bench.client("recorded") as client:
        response = client.exchange(request("GET", "/bye", "Connection: close"))
        assert response.status == 200
        assert response.get("Connection") == "close"
        assert client.closed()


def test_requests_pipelined_after_connection_close_are_neither_answered_nor_forwarded(bench):
    mark = bench.peers["recorded"].mark()
    with bench.client("recorded") as client:
        client.send(request("GET", "/last", "Connection: close") + request("GET", "/never"))
        assert client.response().json()["target"] == "/last"
        assert client.closed()
    with bench.client("recorded") as fence:
        fence.exchange(request("GET", "/fence"))
    assert b"/never" not in bench.peers["recorded"].since(mark)


def test_http10_client_connection_closes_after_the_response_by_default(bench):
    with bench.client("recorded") as client:
        response = client.exchange(request("GET", "/old", version="HTTP/1.0"))
        assert response.status == 200
        assert response.get("Connection") == "close"
        assert client.closed()


def test_http10_client_asking_for_keep_alive_keeps_the_connection(bench):
    with bench.client("recorded") as client:
        for path in ("/old-1", "/old-2"):
            response = client.exchange(request("GET", path, "Connection: keep-alive", version="HTTP/1.0"))
            assert response.status == 200
            assert response.get("Connection") == "keep-alive"
            assert response.json()["target"] == path


def test_chunked_upstream_response_reaches_http10_client_unchunked_then_closes(bench):
    with bench.client("chunked") as client:
        response = client.exchange(request("GET", "/", "Connection: keep-alive", version="HTTP/1.0"))
        assert response.status == 200
        assert response.values("Transfer-Encoding") == []
        assert response.body == b"alpha-beta-gamma"  # read until the node closed


def test_head_response_has_headers_and_no_body_and_the_connection_stays_usable(bench):
    with bench.client("recorded") as client:
        head = client.exchange(request("HEAD", "/resource"))
        assert head.status == 200
        assert int(head.get("Content-Length")) > 0
        assert head.get("Content-Type") == "application/json"
        after = client.exchange(request("GET", "/after-head"))
        assert after.status == 200 and after.json()["target"] == "/after-head"


# --- bodies and framing --------------------------------------------------------------


def test_expect_100_continue_gets_continue_before_the_body_is_sent(bench):
    body = b"sent only after 100"
    with bench.client("recorded") as client:
        client.send(request("POST", "/expect", "Expect: 100-continue", f"Content-Length: {len(body)}"))
        interim = client.response()
        assert (interim.status, interim.reason) == (100, "Continue")
        client.send(body)
        final = client.response()
    assert final.status == 200
    assert final.json()["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_expect_100_continue_with_too_large_a_body_gets_413_and_no_continue(bench):
    with bench.client("recorded") as client:
        client.send(request("POST", "/too-big", "Expect: 100-continue", f"Content-Length: {2 * 1024 * 1024}"))
        response = client.response()
        assert response.status == 413
        assert client.closed()


def test_upstream_103_early_hints_reach_the_client_before_the_final_response(bench):
    with bench.client("hints") as client:
        client.send(request("GET", "/page"))
        hints = client.response()
        final = client.response()
    assert hints.status == 103
    assert hints.get("Link") == "</style.css>; rel=preload"
    assert (final.status, final.body) == (200, b"final")


def test_interim_responses_are_not_sent_to_http10_clients(bench):
    with bench.client("hints") as client:
        response = client.exchange(request("GET", "/page", version="HTTP/1.0"))
    assert (response.status, response.body) == (200, b"final")


def test_content_length_request_body_arrives_intact_upstream(bench):
    body = os.urandom(300 * 1024)
    with bench.client("recorded") as client:
        answer = client.exchange(request("POST", "/upload", body=body)).json()
    assert (answer["body_length"], answer["body_sha256"]) == (len(body), hashlib.sha256(body).hexdigest())
    assert sent(bench).values("Content-Length") == [str(len(body))]


def test_chunked_request_body_arrives_intact_upstream(bench):
    chunks = [os.urandom(size) for size in (1, 4096, 100_000, 7)]
    with bench.client("recorded") as client:
        client.send(request("POST", "/stream", "Transfer-Encoding: chunked"))
        for chunk in chunks:
            client.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        client.send(b"0\r\n\r\n")
        answer = client.response().json()
    whole = b"".join(chunks)
    assert (answer["body_length"], answer["body_sha256"]) == (len(whole), hashlib.sha256(whole).hexdigest())


def test_chunked_upstream_response_is_relayed_chunked(bench):
    with bench.client("chunked") as client:
        response = client.exchange(request("GET", "/"))
    assert response.chunked
    assert response.body == b"alpha-beta-gamma"


def test_close_delimited_upstream_response_becomes_chunked_and_keeps_the_client(bench):
    with bench.client("close-delimited") as client:
        first = client.exchange(request("GET", "/"))
        assert first.chunked and first.get("Content-Length") is None
        assert first.body == b"until the upstream closes"
        second = client.exchange(request("GET", "/again"))
        assert second.body == b"until the upstream closes"


# --- proxy headers -------------------------------------------------------------------


def test_hop_by_hop_request_headers_are_not_forwarded(bench):
    with bench.client("recorded") as client:
        client.exchange(request(
            "GET", "/hop", "Connection: keep-alive, X-Client-Hop", "Keep-Alive: timeout=5", "TE: trailers",
            "Trailer: X-Checksum", "Proxy-Connection: keep-alive", "X-Client-Hop: secret",
            "X-End-To-End: kept"))
    names = {name.lower() for name, _ in sent(bench).headers}
    assert names.isdisjoint({"connection", "keep-alive", "te", "trailer", "proxy-connection", "x-client-hop"})
    assert sent(bench).values("X-End-To-End") == ["kept"]


def test_a_non_websocket_upgrade_goes_on_as_a_plain_request_without_upgrade_headers(bench):
    with bench.client("recorded") as client:
        client.send(request("GET", "/ws", "Connection: Upgrade", "Upgrade: foo/1") + request("GET", "/next"))
        upgraded, following = client.response(), client.response()
    assert upgraded.status == 200 and following.json()["target"] == "/next"
    headers = upgraded.json()["headers"]
    assert not [name for name, _ in headers if name.lower() in ("upgrade", "connection")]


def test_hop_by_hop_response_headers_are_not_relayed(bench):
    with bench.client("hop-by-hop") as client:
        response = client.exchange(request("GET", "/"))
    names = {name.lower() for name, _ in response.headers}
    assert names.isdisjoint({"connection", "keep-alive", "proxy-connection", "trailer", "upgrade", "te",
                             "x-upstream-hop"})
    assert response.get("X-End-To-End") == "kept"
    assert response.body == b"ok"


def test_x_forwarded_for_is_appended_to_the_clients_value(bench):
    with bench.client("recorded") as client:
        client.exchange(request("GET", "/xff", "X-Forwarded-For: 203.0.113.7"))
    assert sent(bench).values("X-Forwarded-For") == ["203.0.113.7, 127.0.0.1"]


def test_x_forwarded_proto_is_set_by_the_node_replacing_the_clients(bench):
    with bench.client("recorded") as client:
        client.exchange(request("GET", "/xfp", "X-Forwarded-Proto: https"))
    assert sent(bench).values("X-Forwarded-Proto") == ["http"]


def test_x_forwarded_host_is_the_clients_host_replacing_the_clients_header(bench):
    with bench.client("recorded") as client:
        client.exchange(request("GET", "/xfh", "X-Forwarded-Host: spoofed.example", host="shop.example:8443"))
    assert sent(bench).values("X-Forwarded-Host") == ["shop.example:8443"]


def test_request_id_is_generated_when_absent_and_logged(bench):
    with bench.client("recorded") as client:
        client.exchange(request("GET", "/rid-generated"))
    (request_id,) = sent(bench).values("X-Request-Id")
    assert request_id
    assert bench.log_record(request_id)["uri"] == "/rid-generated"


def test_request_id_from_the_client_is_kept_and_logged(bench):
    with bench.client("recorded") as client:
        client.exchange(request("GET", "/rid-kept", "X-Request-Id: client-chosen-42"))
    assert sent(bench).values("X-Request-Id") == ["client-chosen-42"]
    assert bench.log_record("client-chosen-42")["uri"] == "/rid-kept"


def test_host_is_forwarded_as_the_client_sent_it(bench):
    with bench.client("recorded") as client:
        client.exchange(request("GET", "/host", host="Shop.Example:8080"))
    assert sent(bench).values("Host") == ["Shop.Example:8080"]


def test_host_is_rewritten_when_the_upstream_sets_one(bench):
    with bench.client("rewritten") as client:
        client.exchange(request("GET", "/rewritten", host="shop.example"))
    assert sent(bench).values("Host") == ["backend.internal"]
    assert sent(bench).values("X-Forwarded-Host") == ["shop.example"]


def test_absolute_form_target_is_routed_by_its_host_and_forwarded_in_origin_form(bench):
    with bench.client("by-host") as client:
        response = client.exchange(b"GET http://api.example/items?q=1 HTTP/1.1\r\nHost: other.example\r\n\r\n")
    assert response.status == 200
    assert sent(bench, "api").start == b"GET /items?q=1 HTTP/1.1"
    assert sent(bench, "api").values("Host") == ["api.example"]
