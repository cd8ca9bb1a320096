"""Upstream keep-alive pooling, as the upstream server sees it: connections are reused
across requests and client connections, retired after `max_requests`, closed after
`idle_timeout`, and a pooled connection the server dropped costs a GET nothing and a POST
a 502. Connections are counted at the upstream, never taken from the node's own report.
"""

import http.client
import json
import time

from backends import AFTER_RESPONSE, ON_NEXT_REQUEST, Backend
from conftest import app_config, free_port


def proxy(node, upstream: Backend, pool: dict | None = None) -> int:
    """A one-worker node in front of `upstream`; its listener port."""
    port = free_port()
    node(app_config([upstream.server()], port, upstream={"pool": pool} if pool else None))
    return port


def ask(conn: http.client.HTTPConnection, method: str = "GET", body: bytes | None = None) -> tuple[int, bytes]:
    conn.request(method, "/", body=body)
    response = conn.getresponse()
    return response.status, response.read()


def served_by(conn: http.client.HTTPConnection) -> int:
    """Which of the backend's connections (numbered from 1 as accepted) answered a GET."""
    status, body = ask(conn)
    assert status == 200, body
    return json.loads(body)["connection"]


def client(port: int) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", port, timeout=10)


def statuses(port: int, clients: int = 4, each: int = 50) -> list[int]:
    """Statuses of `each` sequential GETs on each of `clients` client connections in turn."""
    answered = []
    for _ in range(clients):
        conn = client(port)
        answered += [ask(conn)[0] for _ in range(each)]
        conn.close()
    return answered


def test_sequential_requests_over_several_client_connections_reuse_one_upstream_connection(node, backend):
    upstream = backend()
    port = proxy(node, upstream)
    for _ in range(5):
        conn = client(port)
        for _ in range(40):
            assert ask(conn)[0] == 200
        conn.close()
    stats = upstream.stats()
    assert stats["requests"] == 200
    # One worker, one request at a time: the connection opened first serves every request.
    assert stats["connects"] == 1


def test_an_upstream_connection_is_shared_by_client_connections_open_at_once(node, backend):
    upstream = backend()
    port = proxy(node, upstream)
    first, second = client(port), client(port)
    connections = [served_by(conn) for _ in range(10) for conn in (first, second)]
    assert connections == [1] * 20
    assert upstream.stats()["connects"] == 1


def test_max_requests_retires_a_connection_after_that_many_requests(node, backend):
    upstream = backend()
    port = proxy(node, upstream, pool={"max_requests": 10})
    conn = client(port)
    connections = [served_by(conn) for _ in range(95)]
    assert connections == [number for number in range(1, 11) for _ in range(10)][:95]
    assert upstream.stats()["connects"] == 10


def test_idle_timeout_closes_an_idle_pooled_connection(node, backend):
    upstream = backend()
    port = proxy(node, upstream, pool={"idle_timeout": "1s"})
    assert ask(client(port))[0] == 200
    answered = time.monotonic()
    assert upstream.stats()["open"] == 1
    while upstream.stats()["closed"] == 0:
        assert time.monotonic() - answered < 3, "the idle connection outlived idle_timeout"
        time.sleep(0.05)
    assert time.monotonic() - answered >= 1.0
    assert ask(client(port))[0] == 200
    assert upstream.stats()["connects"] == 2


def test_a_get_sent_on_a_pooled_connection_the_server_dropped_is_retried_on_a_fresh_one(node, backend):
    # The backend answers one request per connection without saying `Connection: close`, and
    # closes the connection, unanswered, when the next request arrives on it: every request
    # after the first goes out on a dead pooled connection first.
    upstream = backend(one_shot=ON_NEXT_REQUEST)
    port = proxy(node, upstream)
    assert statuses(port) == [200] * 200
    stats = upstream.stats()
    assert (stats["requests"], stats["dropped"], stats["connects"]) == (200, 199, 200)


def test_gets_racing_a_server_that_closes_after_every_response_all_succeed(node, backend):
    # Here the server closes each connection right after its response (again without
    # `Connection: close`): the node sees that close either before it reuses the connection
    # or only after it wrote the next request on it; either way the client must not notice.
    upstream = backend(one_shot=AFTER_RESPONSE)
    port = proxy(node, upstream)
    assert statuses(port) == [200] * 200
    assert upstream.stats()["requests"] == 200


def test_a_post_on_a_pooled_connection_the_server_dropped_is_not_retried(node, backend):
    # Scenario: the first POST opens a connection and is answered; the connection goes back
    # to the pool looking healthy. The second POST is written to it, and the server closes
    # it without answering. A POST may have had effects, so the node must not send it again:
    # the client gets 502 and the server sees no second attempt.
    upstream = backend(one_shot=ON_NEXT_REQUEST)
    port = proxy(node, upstream)
    conn = client(port)
    assert ask(conn, "POST", b"order=1")[0] == 200
    status, body = ask(conn, "POST", b"order=2")
    assert status == 502, body
    time.sleep(0.3)  # a retry, had there been one, would have reached the server by now
    stats = upstream.stats()
    assert (stats["connects"], stats["requests"], stats["dropped"]) == (1, 1, 1)
