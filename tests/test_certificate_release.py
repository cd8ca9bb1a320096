"""Certificates uploaded to the admin as PEM (chain and key): the private key sealed in every
file the admin keeps, the certificate served complete by the nodes its release reaches,
and a replacement uploaded later served without restarting a worker."""

from __future__ import annotations

import json
import socket
import ssl
import stat

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from admin_harness import AdminProcess, SyncedNode
from conftest import free_port, wait_port

ROOT = trustme.CA()  # the only CA clients trust: the intermediate must come from the node
INTERMEDIATE = ROOT.create_child_ca()


def upload(leaf: trustme.LeafCert) -> dict:
    return {"name": "secure", "cert": "".join(b.bytes().decode() for b in leaf.cert_chain_pems),
            "key": leaf.private_key_pem.bytes().decode()}


def key_forms(leaf: trustme.LeafCert) -> list[bytes]:
    """What would give the private key away in a file: its DER, and each line of its PEM body."""
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None)
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return [der] + [line for line in leaf.private_key_pem.bytes().splitlines() if b"-----" not in line]


def served_serial(port: int) -> int:
    context = ssl.create_default_context()
    ROOT.configure_trust(context)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="secure.test") as tls:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: secure.test\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := tls.recv(65536):
                answer += chunk
            assert answer.endswith(b"\r\n\r\nsecure")
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number


@pytest.fixture
def processes():
    """Admin and node processes the test starts, stopped afterwards (the node first)."""
    started: list = []
    yield started
    for process in reversed(started):
        process.stop()


def test_an_uploaded_certificate_is_sealed_at_rest_and_served_complete_by_the_nodes(processes, tmp_path):
    (tmp_path / "admin").mkdir()
    (tmp_path / "n1").mkdir()
    admin = AdminProcess(tmp_path / "admin", None)
    processes.append(admin)
    sdk = admin.sdk()
    port = free_port()
    first = INTERMEDIATE.issue_cert("secure.test")
    sdk.patch("clusters", "default", {"auto_approve": True})
    sdk.create("certificates", upload(first))
    sdk.create("applications", {"name": "secure", "domains": ["secure.test"], "ports": [], "https_ports": [port],
                                "certificates": ["secure"], "partitions": ["default"],
                                "rules": [{"actions": [{"respond": {"body": "secure"}}]}]})
    first_version = version = sdk.release()["version"]
    node = SyncedNode(tmp_path / "n1", admin.url, sdk.join_token()["token"], "n1")
    processes.append(node)
    node.wait_serving(version)
    wait_port(port)
    assert served_serial(port) == x509.load_pem_x509_certificate(first.cert_chain_pems[0].bytes()).serial_number

    assert sdk.get("certificates", "secure")["key"] == "(secret)"

    pids = {w["pid"] for w in node.status()["workers"]}
    second = INTERMEDIATE.issue_cert("secure.test")
    sdk.put("certificates", "secure", upload(second))
    version = sdk.release()["version"]
    node.wait_serving(version)
    assert served_serial(port) == x509.load_pem_x509_certificate(second.cert_chain_pems[0].bytes()).serial_number
    assert {w["pid"] for w in node.status()["workers"]} == pids

    # Both keys, in every file the admin keeps (store, write-ahead log, secret key) and in what
    # its API shows of changes, releases and their diff: nowhere in the clear.
    forms = key_forms(first) + key_forms(second)
    kept = [path for path in (tmp_path / "admin").rglob("*") if path.is_file()]
    assert any(path.name.endswith(".db") for path in kept), "the admin's SQLite store is where this test looks"
    for path in kept:
        content = path.read_bytes()
        assert b"PRIVATE KEY" not in content and not any(form in content for form in forms), path.name
    answers = json.dumps([sdk.changes(), sdk.release_snapshot(version), sdk.diff(old=first_version, new=version)])
    assert "secure" in answers and not any(form.decode("latin-1") in answers for form in forms)
    assert stat.S_IMODE((tmp_path / "n1" / "node.db").stat().st_mode) == 0o600  # the node's copy: 0600
