"""The quickstart path: one node in front of the echo backend answers and logs."""

import http.client
import json

from conftest import app_config, free_port


def test_proxies_a_request_to_the_upstream_and_logs_it(node, echo):
    backend = echo("smoke")
    port = free_port()
    started = node(app_config([backend.server()], port))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/hello?x=1", headers={"Host": "example.test"})
    response = conn.getresponse()
    body = json.loads(response.read())
    assert response.status == 200
    assert body["path"] == "/hello?x=1"
    assert body["pod"] == "smoke"
    assert body["headers"]["X-Forwarded-For"] == ["127.0.0.1"]
    log = started.access_log(wait_for=1)
    assert log[-1]["status"] == 200 and log[-1]["upstream"] == "up"
