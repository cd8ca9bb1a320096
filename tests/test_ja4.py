"""JA4 TLS client fingerprints: the published examples, ClientHellos built byte by byte, and
real clients (Python's ssl, openssl s_client) through a node, as a rule variable and a log field."""

from __future__ import annotations

import hashlib
import random
import shutil
import socket
import ssl
import subprocess
import time

import pytest
import trustme

from edgeplane.node.clienthello import ClientHello, NotTls, ja4, parse_hello, read_hello

from conftest import free_port, wait_port

GREASE = 0x3A3A


def values(text: str) -> tuple[int, ...]:
    return tuple(int(v, 16) for v in text.split(","))


# The example of FoxIO's JA4 specification, in the order the client sent it (JA4_ro).
SPEC_CIPHERS = values("1301,1302,1303,c02b,c02f,c02c,c030,cca9,cca8,c013,c014,009c,009d,002f,0035")
SPEC_EXTENSIONS = values("001b,0000,0033,0010,4469,0017,002d,000d,0005,0023,0012,002b,ff01,000b,000a,0015")
SPEC_ALGORITHMS = values("0403,0804,0401,0503,0805,0501,0806,0601")


def spec_hello(**changes: object) -> ClientHello:
    fields = dict(version=0x0303, ciphers=SPEC_CIPHERS, extensions=SPEC_EXTENSIONS, server_name="example.com",
                  has_server_name=True, alpn=(b"h2", b"http/1.1"), supported_versions=(0x0304, 0x0303),
                  signature_algorithms=SPEC_ALGORITHMS)
    return ClientHello(**{**fields, **changes})


def test_the_specifications_example():
    assert ja4(spec_hello()) == "t13d1516h2_8daaf6152771_e5627efa2ab1"


def test_grease_is_ignored_everywhere():
    greased = spec_hello(ciphers=(GREASE, *SPEC_CIPHERS), extensions=(GREASE, *SPEC_EXTENSIONS, 0xFAFA),
                         supported_versions=(0x7A7A, 0x0304, 0x0303))
    assert ja4(greased) == "t13d1516h2_8daaf6152771_e5627efa2ab1"


def test_a_published_chrome_fingerprint_with_newer_extensions():
    chrome = spec_hello(extensions=values("002d,0033,0010,fe0d,0017,44cd,0000,000b,000a,002b,ff01,0023,0012,0005,000d,001b"))
    assert ja4(chrome) == "t13d1516h2_8daaf6152771_d8a2da3f94cd"


def test_no_signature_algorithms_no_sni_no_alpn():
    hello = spec_hello(signature_algorithms=(), has_server_name=False, server_name="", alpn=(),
                       extensions=tuple(e for e in SPEC_EXTENSIONS if e not in (0x0000, 0x0010)))
    assert ja4(hello) == "t13i151400_8daaf6152771_6d807ffa2a79"


def test_tls12_without_supported_versions_and_a_non_alphanumeric_alpn():
    hello = spec_hello(supported_versions=(), alpn=(b"\xab\x01\xcd",))
    assert ja4(hello).startswith("t12d1516ad_")


# --- bytes ------------------------------------------------------------------------------


def extension(kind: int, body: bytes) -> bytes:
    return kind.to_bytes(2, "big") + len(body).to_bytes(2, "big") + body


def vector(body: bytes, size: int) -> bytes:
    return len(body).to_bytes(size, "big") + body


def hello_record(split_at: int | None = None) -> bytes:
    name = b"Bytes.Example.COM."
    extensions = b"".join([
        extension(GREASE, b""),
        extension(0x0000, vector(b"\x00" + vector(name, 2), 2)),
        extension(0x0010, vector(vector(b"http/1.1", 1), 2)),
        extension(0x002B, vector(b"\x0a\x0a\x03\x04\x03\x03", 1)),
        extension(0x000D, vector(b"\x04\x03\x08\x04", 2)),
        extension(0x000A, vector(b"\x00\x1d", 2)),
    ])
    body = (b"\x03\x03" + bytes(32) + vector(b"\x01" * 32, 1) + vector(b"\x0a\x0a\x13\x01\xc0\x2b", 2)
            + vector(b"\x00", 1) + vector(extensions, 2))
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    parts = [handshake] if split_at is None else [handshake[:split_at], handshake[split_at:]]
    return b"".join(b"\x16\x03\x01" + vector(part, 2) for part in parts)


def test_a_client_hello_is_read_from_its_bytes():
    hello = read_hello(hello_record())
    assert hello.server_name == "bytes.example.com" and hello.alpn == (b"http/1.1",)
    assert ja4(hello) == ("t13d0205h1_" + hashlib.sha256(b"1301,c02b").hexdigest()[:12] + "_"
                          + hashlib.sha256(b"000a,000d,002b_0403,0804").hexdigest()[:12])


def test_a_hello_over_two_records_is_read_whole():
    assert read_hello(hello_record(split_at=20)) == read_hello(hello_record())


def test_an_incomplete_hello_says_how_many_bytes_it_needs():
    record = hello_record()
    assert read_hello(record[:3]) == 5
    assert read_hello(record[:40]) == len(record)


def test_anything_else_is_not_tls():
    with pytest.raises(NotTls):
        read_hello(b"GET / HTTP/1.1\r\n\r\n")


def test_a_cut_or_damaged_hello_is_read_or_refused_as_not_tls_and_nothing_else():
    body = hello_record()[9:]  # after the record and handshake headers
    damaged = [body[:cut] for cut in range(len(body))]
    rng = random.Random(6)
    for _ in range(3000):
        copy = bytearray(body)
        for _ in range(rng.randint(1, 3)):
            copy[rng.randrange(len(copy))] = rng.randrange(256)
        damaged.append(bytes(copy))
    for data in damaged:
        try:
            assert isinstance(parse_hello(data), ClientHello)
        except NotTls:
            pass


# --- through a node ---------------------------------------------------------------------

CA = trustme.CA()
CERT = CA.issue_cert("ja4.test")


@pytest.fixture(scope="module")
def ja4_node(tmp_path_factory):
    from conftest import Node
    port = free_port()
    config = {
        "certificates": [{"name": "c", "cert": "".join(b.bytes().decode() for b in CERT.cert_chain_pems),
                          "key": CERT.private_key_pem.bytes().decode()}],
        "applications": [{"name": "a", "domains": ["ja4.test"], "ports": [], "https_ports": [port],
                          "certificates": ["c"], "rules": [
                              {"conditions": [{"var": "ja4", "op": "prefix", "values": ["t13d"]}],
                               "actions": [{"respond": {"body": "tls 1.3 client with sni"}}]},
                              {"actions": [{"respond": {"body": "other"}}]}]}],
    }
    started = Node(tmp_path_factory.mktemp("ja4"), config)
    wait_port(port)
    yield port, started
    started.stop()


def python_client() -> ssl.SSLContext:
    context = ssl.create_default_context()
    CA.configure_trust(context)
    return context


def captured_hello(send) -> bytes:
    """The ClientHello bytes a client sends, caught by a plain socket."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        send(listener.getsockname()[1])
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(5)
            data = b""
            while not isinstance(read_hello(data), ClientHello):
                data += conn.recv(65536)
            return data


def test_the_python_clients_fingerprint_is_a_rule_variable_and_a_log_field(ja4_node):
    port, started = ja4_node
    context = python_client()

    def send(target: int) -> None:
        raw = socket.create_connection(("127.0.0.1", target))
        raw.setblocking(False)
        try:
            context.wrap_socket(raw, server_hostname="ja4.test", do_handshake_on_connect=False).do_handshake()
        except ssl.SSLWantReadError:
            pass
    expected = ja4(read_hello(captured_hello(send)))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="ja4.test") as tls:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: ja4.test\r\nConnection: close\r\n\r\n")
            assert tls.recv(65536).endswith(b"tls 1.3 client with sni")
    assert expected.startswith("t13d") and expected.endswith(expected.split("_")[2])
    assert started.access_log(wait_for=1)[-1]["ja4"] == expected


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl command not installed")
def test_openssl_s_client_with_known_settings(ja4_node):
    port, started = ja4_node
    arguments = ["-servername", "ja4.test", "-alpn", "http/1.1", "-ciphersuites", "TLS_AES_128_GCM_SHA256",
                 "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256", "-sigalgs", "ecdsa_secp256r1_sha256:rsa_pss_rsae_sha256",
                 "-quiet", "-ign_eof"]
    request = b"GET / HTTP/1.1\r\nHost: ja4.test\r\nConnection: close\r\n\r\n"

    def s_client(target: int) -> subprocess.CompletedProcess:
        return subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{target}", *arguments],
                              input=request, capture_output=True, timeout=10)
    hello = read_hello(captured_hello(lambda target: subprocess.Popen(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{target}", *arguments],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
    fingerprint = ja4(hello)
    # What the flags fix: TLS 1.3 with SNI, one suite + one cipher + the renegotiation SCSV,
    # ALPN http/1.1, and the two signature algorithms in this order.
    prefix, ciphers, _ = fingerprint.split("_")
    assert prefix.startswith("t13d03") and prefix.endswith("h1")
    assert ciphers == hashlib.sha256(b"00ff,1301,c02b").hexdigest()[:12]
    assert hello.signature_algorithms == (0x0403, 0x0804)
    before = len(started.access_log())
    assert s_client(port).stdout.endswith(b"tls 1.3 client with sni")
    assert started.access_log(wait_for=before + 1)[-1]["ja4"] == fingerprint


def test_a_hello_split_across_packets_with_a_pause_is_waited_for(ja4_node):
    port, _ = ja4_node
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = python_client().wrap_bio(incoming, outgoing, server_hostname="ja4.test")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(hello[:60])
        time.sleep(0.3)
        sock.sendall(hello[60:])
        while True:
            incoming.write(sock.recv(65536))
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(outgoing.read())
        tls.write(b"GET / HTTP/1.1\r\nHost: ja4.test\r\nConnection: close\r\n\r\n")
        sock.sendall(outgoing.read())
        answer = b""
        while not answer.endswith(b"tls 1.3 client with sni"):
            incoming.write(sock.recv(65536))
            try:
                answer += tls.read(65536)
            except ssl.SSLWantReadError:
                continue
