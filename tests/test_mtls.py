"""mTLS from clients, per application: each application's own CAs, required or optional; the
verified identity as rule variables, a header to the upstream and access-log fields; and an
identity-based authorization rule end to end, as examples/mtls.yaml writes it."""

from __future__ import annotations

import datetime
import hashlib
import json
import socket
import ssl
import time
from pathlib import Path

import pytest
import trustme
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from conftest import free_port, wait_port

SERVER_CA = trustme.CA()
SERVER = SERVER_CA.issue_cert("db.test", "pub.test", "who.test")
CORP = trustme.CA(organization_name="corp")
OTHER = trustme.CA(organization_name="other")


def mint(ca: trustme.CA, cn: str, uri: str | None = None, dns: str | None = None) -> tuple[bytes, bytes]:
    """A client certificate (PEM, PEM key) signed by `ca`, with a URI SAN (a SPIFFE ID) and/or a DNS SAN."""
    ca_key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), None)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    names = ([x509.UniformResourceIdentifier(uri)] if uri else []) + ([x509.DNSName(dns)] if dns else [])
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
               .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


REPORTING = mint(CORP, "reporting", uri="spiffe://corp/reporting")
BILLING = mint(CORP, "billing", uri="spiffe://corp/billing", dns="billing.corp")
OUTSIDER = mint(OTHER, "outsider")
DNS_ONLY = mint(CORP, "dns-only", dns="batch.corp")
CN_ONLY = mint(CORP, "cn-only")


def fingerprint(identity: tuple[bytes, bytes]) -> str:
    return hashlib.sha256(x509.load_pem_x509_certificate(identity[0]).public_bytes(serialization.Encoding.DER)).hexdigest()


def answer_when(var: str, value: str, body: str) -> dict:
    return {"conditions": [{"var": var, "op": "eq", "values": [value]}], "actions": [{"respond": {"body": body}}]}


EXAMPLE = Path(__file__).parent.parent / "examples" / "mtls.yaml"


@pytest.fixture(scope="module")
def mtls(tmp_path_factory, echo_module):
    """examples/mtls.yaml (the database application) on the certificates minted here, and a
    public application beside it on the same port, with an optional certificate of another CA."""
    from conftest import Node
    port, files = free_port(), tmp_path_factory.mktemp("mtls-files")
    (files / "db.crt").write_text("".join(b.bytes().decode() for b in SERVER.cert_chain_pems))
    (files / "db.key").write_text(SERVER.private_key_pem.bytes().decode())
    (files / "corp-ca.crt").write_text(CORP.cert_pem.bytes().decode())
    config = yaml.safe_load(EXAMPLE.read_text().replace("/tmp/edgeplane-mtls/", f"{files}/"))
    config["upstreams"][0]["servers"] = [echo_module.server()]
    config["applications"][0]["https_ports"] = [port]
    config["applications"].append(
        {"name": "public", "domains": ["pub.test"], "ports": [], "https_ports": [port], "certificates": ["database"],
         "tls": {"client_auth": {"mode": "optional", "ca": OTHER.cert_pem.bytes().decode()}},
         "rules": [{"conditions": [{"var": "tls-client-cn", "op": "eq", "values": ["outsider"]}],
                    "actions": [{"respond": {"body": "hello outsider"}}]},
                   {"actions": [{"respond": {"body": "hello anonymous"}}]}]})
    config["applications"].append(  # each identity variable decides one answer
        {"name": "who", "domains": ["who.test"], "ports": [], "https_ports": [port], "certificates": ["database"],
         "tls": {"client_auth": {"mode": "optional", "ca": CORP.cert_pem.bytes().decode()}},
         "rules": [{"conditions": [{"var": "path", "op": "eq", "values": ["/forwarded"]}],
                    "actions": [{"proxy": {"upstream": "database"}}]},
                   answer_when("tls-client-fingerprint", fingerprint(REPORTING), "reporting, by fingerprint"),
                   answer_when("tls-client-dns", "billing.corp", "billing, by DNS name"),
                   answer_when("tls-client-identity", "batch.corp", "identity: the DNS name without a URI"),
                   answer_when("tls-client-identity", "cn-only", "identity: the CN without names"),
                   {"actions": [{"respond": {"body": "nobody known"}}]}]})
    started = Node(tmp_path_factory.mktemp("mtls"), config)
    wait_port(port)
    yield port, started
    started.stop()


@pytest.fixture(scope="module")
def echo_module():
    from conftest import Echo
    server = Echo("db-backend")
    yield server
    server.stop()


def client(identity: tuple[bytes, bytes] | None, tmp_path) -> ssl.SSLContext:
    context = ssl.create_default_context()
    SERVER_CA.configure_trust(context)
    if identity is not None:
        cert, key = tmp_path / f"{hashlib.sha1(identity[0]).hexdigest()}.pem", tmp_path / "key.pem"
        cert.write_bytes(identity[0])
        key.write_bytes(identity[1])
        context.load_cert_chain(cert, key)
    return context


def request(port: int, host: str, context: ssl.SSLContext, method: str = "GET", path: str = "/metrics",
            headers: str = "", session: ssl.SSLSession | None = None) -> tuple[int, bytes]:
    """Status and body; a refused client certificate (at the handshake or, in TLS 1.3, at the
    first read) raises ssl.SSLError or ConnectionError."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=host, session=session) as tls:
            tls.sendall(f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{headers}Connection: close\r\n\r\n".encode())
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    if not data:
        raise ConnectionError("closed without an answer")
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def wait_for_line(node, uri: str, timeout: float = 10.0) -> dict:
    """The access-log line of a request, once written (lines of other tests may come first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in node.access_log():
            if line["uri"] == uri:
                return line
        time.sleep(0.05)
    raise AssertionError(f"no access-log line for {uri}")


def refused(port: int, host: str, context: ssl.SSLContext) -> bool:
    try:
        request(port, host, context)
    except (ssl.SSLError, ConnectionError):
        return True
    return False


def test_the_reporting_identity_may_get_metrics_and_the_upstream_learns_who_it_is(mtls, tmp_path):
    port, started = mtls
    forged = "X-Forwarded-Client-Cert: URI=spiffe://corp/admin\r\n"
    status, body = request(port, "db.test", client(REPORTING, tmp_path), path="/metrics?from=reporting",
                           headers=forged)
    assert status == 200
    forwarded = json.loads(body)["headers"]["X-Forwarded-Client-Cert"]
    assert forwarded == [f'Hash={fingerprint(REPORTING)};Subject="CN=reporting";URI=spiffe://corp/reporting']
    line = wait_for_line(started, "/metrics?from=reporting")
    assert line["tls_client_identity"] == "spiffe://corp/reporting"
    assert line["tls_client_fingerprint"] == fingerprint(REPORTING)


@pytest.mark.parametrize(("method", "path"), [("POST", "/metrics"), ("GET", "/tables"), ("DELETE", "/metrics")])
def test_anything_else_the_reporting_identity_asks_is_denied(mtls, tmp_path, method, path):
    port, _ = mtls
    assert request(port, "db.test", client(REPORTING, tmp_path), method, path)[0] == 403


def test_another_identity_of_the_same_ca_is_denied_metrics(mtls, tmp_path):
    port, _ = mtls
    assert request(port, "db.test", client(BILLING, tmp_path))[0] == 403


def test_required_client_auth_refuses_no_certificate_and_certificates_of_other_cas(mtls, tmp_path):
    port, _ = mtls
    assert refused(port, "db.test", client(None, tmp_path))
    assert refused(port, "db.test", client(OUTSIDER, tmp_path))  # valid for the other application only


def test_each_application_enforces_its_own_ca(mtls, tmp_path):
    port, _ = mtls
    assert request(port, "pub.test", client(OUTSIDER, tmp_path), path="/")[1] == b"hello outsider"
    assert refused(port, "pub.test", client(REPORTING, tmp_path))  # corp's CA is the database's, not public's


def test_optional_client_auth_lets_clients_without_a_certificate_in(mtls, tmp_path):
    port, _ = mtls
    assert request(port, "pub.test", client(None, tmp_path), path="/")[1] == b"hello anonymous"


def test_a_session_of_one_application_never_skips_anothers_certificate_check(mtls, tmp_path):
    port, _ = mtls
    context = client(OUTSIDER, tmp_path)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="pub.test") as tls:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: pub.test\r\n\r\n")
            assert tls.recv(65536).endswith(b"hello outsider")
            session = tls.session
    try:
        request(port, "db.test", context, session=session)
        pytest.fail("a public session opened the database")
    except (ssl.SSLError, ConnectionError):
        pass


@pytest.mark.parametrize(("identity", "answer"), [
    (REPORTING, b"reporting, by fingerprint"), (BILLING, b"billing, by DNS name"),
    (DNS_ONLY, b"identity: the DNS name without a URI"), (CN_ONLY, b"identity: the CN without names"),
    (None, b"nobody known")])
def test_each_identity_variable_is_a_rule_variable(mtls, tmp_path, identity, answer):
    port, _ = mtls
    assert request(port, "who.test", client(identity, tmp_path), path="/") == (200, answer)


def test_the_upstream_gets_every_uri_and_dns_name_of_the_certificate(mtls, tmp_path):
    port, _ = mtls
    status, body = request(port, "who.test", client(BILLING, tmp_path), path="/forwarded")
    assert status == 200
    assert json.loads(body)["headers"]["X-Forwarded-Client-Cert"] == [
        f'Hash={fingerprint(BILLING)};Subject="CN=billing";URI=spiffe://corp/billing;DNS=billing.corp']
