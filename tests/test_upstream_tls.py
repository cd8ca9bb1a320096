"""TLS to upstreams: the server's certificate checked (a CA bundle or the system store), the
SNI name sent, a client certificate for mTLS, and pooled TLS connections reused. One node
proxies to an upstream of each kind, chosen by Host."""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import trustme

from conftest import Node, free_port, wait_port

CA = trustme.CA()
SERVER = CA.issue_cert("backend.test")
NODE_CLIENT = CA.issue_cert("node.client.test", common_name="node.client.test")


class TlsBackend:
    """An HTTPS server on 127.0.0.1 that answers with what it saw: the SNI name, the client
    certificate's subject, and which connection (client port) carried the request."""

    def __init__(self, require_client_cert: bool = False):
        names: dict[int, str] = {}

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                peer = self.connection.getpeercert()
                body = json.dumps({"sni": names.get(self.client_address[1]), "port": self.client_address[1],
                                   "client": dict(x[0] for x in peer["subject"]) if peer else None}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        SERVER.configure_cert(context)
        if require_client_cert:
            context.verify_mode = ssl.CERT_REQUIRED
            CA.configure_trust(context)

        def remember(sslobj: ssl.SSLObject, name: str | None, _context: ssl.SSLContext) -> None:
            names[sslobj.getpeername()[1]] = name
        context.sni_callback = remember
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# name → (backend, upstream tls): one node proxies to each, chosen by Host `<name>.test`
UPSTREAMS = {
    "verified": ("plain", {"ca": CA.cert_pem.bytes().decode(), "server_name": "backend.test"}),
    "unknown-ca": ("plain", {"server_name": "backend.test"}),  # the system store does not know the test CA
    "wrong-name": ("plain", {"ca": CA.cert_pem.bytes().decode(), "server_name": "other.test"}),
    "unverified": ("plain", {"verify": False}),
    "with-cert": ("mtls", {"ca": CA.cert_pem.bytes().decode(), "server_name": "backend.test", "certificate": "to-backend"}),
    "without-cert": ("mtls", {"ca": CA.cert_pem.bytes().decode(), "server_name": "backend.test"}),
    "checked": ("plain", {"ca": CA.cert_pem.bytes().decode(), "server_name": "backend.test"}),
    "checked-wrong-name": ("plain", {"ca": CA.cert_pem.bytes().decode(), "server_name": "other.test"}),
}
CHECK = {"interval": "200ms", "timeout": "2s", "rise": 1, "fall": 1}


@pytest.fixture(scope="module")
def tls_upstreams(tmp_path_factory):
    backends = {"plain": TlsBackend(), "mtls": TlsBackend(require_client_cert=True)}
    port = free_port()
    config = {
        "certificates": [{"name": "to-backend", **pem(NODE_CLIENT)}],
        "upstreams": [{"name": name, "servers": [{"address": "127.0.0.1", "port": backends[backend].port}], "tls": tls,
                       **({"health_check": CHECK} if name.startswith("checked") else {})}
                      for name, (backend, tls) in UPSTREAMS.items()],
        "applications": [{"name": name, "domains": [f"{name}.test"], "ports": [port],
                          "rules": [{"actions": [{"proxy": {"upstream": name}}]}]} for name in UPSTREAMS],
    }
    node = Node(tmp_path_factory.mktemp("upstream-tls"), config)
    wait_port(port)
    yield port, node
    node.stop()
    for backend in backends.values():
        backend.stop()


def pem(cert: trustme.LeafCert) -> dict:
    return {"cert": "".join(b.bytes().decode() for b in cert.cert_chain_pems),
            "key": cert.private_key_pem.bytes().decode()}


def get(port: int, upstream: str, conn: http.client.HTTPConnection | None = None) -> tuple[int, bytes]:
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/", headers={"Host": f"{upstream}.test"})
    response = conn.getresponse()
    return response.status, response.read()


def test_a_verified_tls_upstream_gets_its_name_and_pooled_connections_are_reused(tls_upstreams):
    port, _ = tls_upstreams
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    answers = [json.loads(get(port, "verified", conn)[1]) for _ in range(3)]
    assert {a["sni"] for a in answers} == {"backend.test"}
    assert len({a["port"] for a in answers}) == 1  # one TLS connection carried all three


def test_a_server_the_ca_does_not_vouch_for_is_a_502(tls_upstreams):
    port, _ = tls_upstreams
    assert get(port, "unknown-ca")[0] == 502


def test_a_name_the_certificate_does_not_hold_is_a_502(tls_upstreams):
    port, _ = tls_upstreams
    assert get(port, "wrong-name")[0] == 502


def test_verification_can_be_turned_off(tls_upstreams):
    port, _ = tls_upstreams
    assert get(port, "unverified")[0] == 200


def test_the_node_presents_its_client_certificate_to_an_mtls_upstream(tls_upstreams):
    port, _ = tls_upstreams
    status, body = get(port, "with-cert")
    assert status == 200 and json.loads(body)["client"]["commonName"] == "node.client.test"
    assert get(port, "without-cert")[0] == 502


def test_active_health_checks_of_a_tls_upstream_speak_tls_and_verify_the_server(tls_upstreams):
    _, node = tls_upstreams
    deadline = time.monotonic() + 30
    while True:
        checks = node.status()["health_checks"]
        verdicts = {name: next(iter(checks[name].values())) for name in ("checked", "checked-wrong-name")}
        if all(v["state"] != "unchecked" for v in verdicts.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert verdicts["checked"]["state"] == "healthy"
    assert verdicts["checked-wrong-name"]["state"] == "unhealthy"
    assert "CERTIFICATE_VERIFY_FAILED" in verdicts["checked-wrong-name"]["cause"]
