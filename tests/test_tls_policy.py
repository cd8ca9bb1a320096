"""TLS policy per application (versions, ciphers, ALPN), session resumption with ticket keys
shared by the node's workers and rotated, HTTPS redirects and HSTS as rule actions."""

from __future__ import annotations

import http.client
import socket
import ssl
import time

import pytest
import trustme

from conftest import free_port, wait_port

CA = trustme.CA()
MODERN = CA.issue_cert("modern.test")
LEGACY = CA.issue_cert("legacy.test")
AES128 = ["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256"]
ROTATE, OVERLAP = 2.0, 9.0  # seconds: ticket keys of the test node


def pem(cert: trustme.LeafCert) -> dict:
    return {"cert": "".join(b.bytes().decode() for b in cert.cert_chain_pems),
            "key": cert.private_key_pem.bytes().decode()}


def client(**options: object) -> ssl.SSLContext:
    context = ssl.create_default_context()
    CA.configure_trust(context)
    for name, value in options.items():
        setattr(context, name, value)
    return context


def handshake(port: int, name: str, context: ssl.SSLContext, session: ssl.SSLSession | None = None,
              request: bool = False) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    tls = context.wrap_socket(raw, server_hostname=name, session=session)
    if request:  # a TLS 1.3 ticket arrives after the handshake: read an answer to get it
        tls.sendall(f"GET /resume HTTP/1.1\r\nHost: {name}\r\n\r\n".encode())
        assert tls.recv(65536).startswith(b"HTTP/1.1 200")
    return tls


def policy_config(https: int, plain: int, tickets: dict) -> dict:
    ok = [{"actions": [{"respond": {"body": "ok"}}]}]
    return {
        "settings": {"tls": {"session_tickets": tickets}},
        "certificates": [{"name": "modern", **pem(MODERN)}, {"name": "legacy", **pem(LEGACY)}],
        "global_rules": {"before": [{"actions": [{"https-redirect": {"status": 308, "port": https}},
                                                 {"hsts": {"max_age": 600, "include_subdomains": True}}]}]},
        "applications": [
            {"name": "modern", "domains": ["modern.test"], "ports": [plain], "https_ports": [https],
             "certificates": ["modern"], "tls": {"min_version": "1.3"}, "rules": ok},
            {"name": "legacy", "domains": ["legacy.test"], "ports": [], "https_ports": [https],
             "certificates": ["legacy"], "tls": {"max_version": "1.2", "ciphers": ":".join(AES128)}, "rules": ok},
        ],
    }


@pytest.fixture(scope="module")
def tls_node(tmp_path_factory):
    from conftest import Node
    https, plain = free_port(), free_port()
    started = Node(tmp_path_factory.mktemp("tls-policy"),
                   policy_config(https, plain, {"rotate": f"{ROTATE:g}s", "overlap": f"{OVERLAP:g}s"}), workers=2)
    wait_port(https)
    yield https, plain, started
    started.stop()


def test_each_application_gets_its_own_minimum_and_maximum_version(tls_node):
    https, _, _ = tls_node
    assert handshake(https, "modern.test", client()).version() == "TLSv1.3"
    with pytest.raises(ssl.SSLError):
        handshake(https, "modern.test", client(maximum_version=ssl.TLSVersion.TLSv1_2))
    assert handshake(https, "legacy.test", client()).version() == "TLSv1.2"
    with pytest.raises(ssl.SSLError):
        handshake(https, "legacy.test", client(minimum_version=ssl.TLSVersion.TLSv1_3))


def test_an_application_cipher_policy_is_what_the_handshake_uses(tls_node):
    https, _, _ = tls_node
    assert handshake(https, "legacy.test", client()).cipher()[0] in AES128
    chacha = client(maximum_version=ssl.TLSVersion.TLSv1_2)
    chacha.set_ciphers("ECDHE-RSA-CHACHA20-POLY1305:ECDHE-ECDSA-CHACHA20-POLY1305")
    with pytest.raises(ssl.SSLError):
        handshake(https, "legacy.test", chacha)


def test_alpn_offers_only_http1(tls_node):
    https, _, _ = tls_node
    both = client()
    both.set_alpn_protocols(["h2", "http/1.1"])
    assert handshake(https, "modern.test", both).selected_alpn_protocol() == "http/1.1"
    h2_only = client()
    h2_only.set_alpn_protocols(["h2"])
    assert handshake(https, "modern.test", h2_only).selected_alpn_protocol() is None


@pytest.mark.parametrize("name", ["modern.test", "legacy.test"])  # TLS 1.3 (PSK) and TLS 1.2 (tickets)
def test_a_session_resumes_on_every_worker_of_the_node(tls_node, name):
    https, _, started = tls_node
    context = client()
    session = handshake(https, name, context, request=True).session
    before = len(started.access_log())
    for _ in range(16):
        tls = handshake(https, name, context, session=session, request=True)
        assert tls.session_reused
        tls.close()
    workers = {line["worker"] for line in started.access_log(wait_for=before + 16)[before:]}
    assert workers == {0, 1}


@pytest.mark.parametrize("name", ["modern.test", "legacy.test"])  # TLS 1.3 (PSK) and TLS 1.2 (tickets)
def test_a_ticket_outlives_its_keys_rotation_for_the_overlap_and_no_longer(tls_node, name):
    https, _, _ = tls_node
    context = client()
    before = time.time()
    session = handshake(https, name, context, request=True).session
    after = time.time()
    # The issuing key took over at some `start` in (before - ROTATE, after] and opens tickets
    # until start + ROTATE + OVERLAP: in force no longer after `after + ROTATE`, still
    # accepted before `before + OVERLAP`, refused from `after + ROTATE + OVERLAP` on.
    time.sleep(max(0.0, after + ROTATE - time.time()))
    assert handshake(https, name, context, session=session).session_reused
    assert time.time() < before + OVERLAP, "the machine was too slow for this test to say anything"
    time.sleep(max(0.0, after + ROTATE + OVERLAP + 0.2 - time.time()))
    assert not handshake(https, name, context, session=session).session_reused


def test_plain_http_is_redirected_to_https_with_the_same_url(tls_node):
    https, plain, _ = tls_node
    conn = http.client.HTTPConnection("127.0.0.1", plain, timeout=5)
    conn.request("GET", "/a/b?x=1", headers={"Host": "modern.test"})
    response = conn.getresponse()
    assert response.status == 308
    assert response.getheader("Location") == f"https://modern.test:{https}/a/b?x=1"
    assert response.getheader("Strict-Transport-Security") is None  # never over plain HTTP


def test_https_responses_carry_hsts(tls_node):
    https, _, _ = tls_node
    tls = handshake(https, "modern.test", client())
    tls.sendall(b"GET / HTTP/1.1\r\nHost: modern.test\r\nConnection: close\r\n\r\n")
    head = tls.recv(65536).split(b"\r\n\r\n")[0]
    assert head.startswith(b"HTTP/1.1 200")
    assert b"Strict-Transport-Security: max-age=600; includeSubDomains" in head.split(b"\r\n")
