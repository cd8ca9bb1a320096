"""TLS termination on HTTPS ports: certificates chosen by SNI, https as the scheme, and
certificates that change with a reload, without a restart."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import ssl
import time

import pytest
import trustme

from edgeplane.model import ConfigError, parse

from conftest import free_port, wait_port

CA = trustme.CA()
SHOP = CA.issue_cert("shop.test", "*.shop.test")
API = CA.issue_cert("api.test")
ROTATED = CA.issue_cert("api.test", organization_name="rotated")
ROOT = trustme.CA()  # the only CA the chain test's clients trust
INTERMEDIATE = ROOT.create_child_ca()


def pem(cert: trustme.LeafCert) -> dict:
    return {"cert": "".join(b.bytes().decode() for b in cert.cert_chain_pems),
            "key": cert.private_key_pem.bytes().decode()}


def tls_config(https: int, upstream_port: int, api_cert: trustme.LeafCert = API, plain: int | None = None) -> dict:
    return {
        "certificates": [{"name": "shop", **pem(SHOP)}, {"name": "api", **pem(api_cert)}],
        "upstreams": [{"name": "up", "servers": [{"address": "127.0.0.1", "port": upstream_port}]}],
        "applications": [
            {"name": "shop", "domains": ["shop.test", "*.shop.test"], "ports": [plain] if plain else [],
             "https_ports": [https], "certificates": ["shop"],
             "rules": [{"conditions": [{"var": "path", "op": "eq", "values": ["/sni"]}],
                        "actions": [{"respond": {"body": "placeholder"}}]},
                       {"conditions": [{"var": "path", "op": "eq", "values": ["/go"]}],
                        "actions": [{"redirect": {"path": "/gone"}}]},
                       {"actions": [{"proxy": {"upstream": "up"}}]}]},
            {"name": "api", "domains": ["api.test"], "ports": [], "https_ports": [https], "certificates": ["api"],
             "rules": [{"conditions": [{"var": "tls-sni", "op": "eq", "values": ["api.test"]}],
                        "actions": [{"respond": {"body": "sni api.test"}}]}]},
        ],
    }


def client_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    CA.configure_trust(context)
    return context


def peer_names(port: int, server_name: str | None) -> tuple[str, ...]:
    context = client_context()
    if server_name is None:
        context.check_hostname = False
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=server_name) as tls:
            return tuple(value for _, value in tls.getpeercert()["subjectAltName"])


class NamedConnection(http.client.HTTPSConnection):
    """HTTPS to 127.0.0.1, with SNI and the certificate check for `server_name`."""

    def __init__(self, port: int, server_name: str):
        super().__init__("127.0.0.1", port, timeout=5, context=client_context())
        self.server_name = server_name

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)
        self.sock = self._context.wrap_socket(self.sock, server_hostname=self.server_name)


def get(port: int, host: str, path: str = "/") -> tuple[int, dict, bytes]:
    conn = NamedConnection(port, host)
    conn.request("GET", path, headers={"Host": host})
    response = conn.getresponse()
    result = response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    conn.close()
    return result


@pytest.fixture
def https(node, echo):
    backend = echo("tls-backend")
    port = free_port()
    started = node(tls_config(port, backend.port))
    wait_port(port)
    return port, started, backend


def test_the_certificate_is_chosen_by_server_name(https):
    port, _, _ = https
    assert peer_names(port, "shop.test") == ("shop.test", "*.shop.test")
    assert peer_names(port, "www.shop.test") == ("shop.test", "*.shop.test")
    assert peer_names(port, "api.test") == ("api.test",)


def test_a_client_without_sni_or_with_a_name_nobody_serves_gets_the_first_applications_certificate(https):
    port, _, _ = https
    assert peer_names(port, None) == ("shop.test", "*.shop.test")
    context = client_context()
    context.check_hostname = False
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="unknown.test") as tls:
            assert ("DNS", "shop.test") in tls.getpeercert()["subjectAltName"]


def test_proxied_requests_carry_https_as_the_forwarded_proto(https):
    port, _, _ = https
    status, _, body = get(port, "shop.test", "/hello")
    echoed = json.loads(body)
    assert status == 200 and echoed["headers"]["X-Forwarded-Proto"] == ["https"]


def test_redirects_on_an_https_port_keep_the_https_scheme(https):
    port, _, _ = https
    status, headers, _ = get(port, "shop.test", "/go")
    assert status == 302 and headers["location"] == f"https://shop.test:{port}/gone"


def test_rules_can_test_the_tls_server_name(https):
    port, _, _ = https
    assert get(port, "api.test")[2] == b"sni api.test"


def test_a_reload_changes_the_certificate_for_new_handshakes_without_a_restart(https):
    port, started, backend = https
    pids = {w["pid"] for w in started.status()["workers"]}
    old = started.versions()
    conn = NamedConnection(port, "shop.test")
    conn.request("GET", "/before", headers={"Host": "shop.test"})
    assert conn.getresponse().read()
    started.write_config(tls_config(port, backend.port, api_cert=ROTATED))
    started.wait_version_change(old)
    context = client_context()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="api.test") as tls:
            subject = dict(item[0] for item in tls.getpeercert()["subject"])
    assert subject.get("organizationName") == "rotated"
    conn.request("GET", "/after", headers={"Host": "shop.test"})  # the open connection goes on
    assert json.loads(conn.getresponse().read())["path"] == "/after"
    conn.close()
    assert {w["pid"] for w in started.status()["workers"]} == pids


def test_a_port_can_turn_to_tls_with_a_reload(node, echo):
    backend = echo("b")
    port, other = free_port(), free_port()
    config = tls_config(other, backend.port, plain=port)
    started = node(config)
    wait_port(port)
    plain = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    plain.request("GET", "/", headers={"Host": "shop.test"})
    assert plain.getresponse().status == 200
    plain.close()
    old = started.versions()
    config["applications"][0]["ports"] = []
    config["applications"][0]["https_ports"] = [other, port]
    config["applications"][1]["https_ports"] = [other, port]
    started.write_config(config)
    started.wait_version_change(old)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            assert get(port, "shop.test")[0] == 200
            break
        except (ssl.SSLError, ConnectionError):
            time.sleep(0.1)
    else:
        pytest.fail("the port did not start speaking TLS after the reload")


def test_a_key_that_does_not_match_the_certificate_is_refused():
    config = {"certificates": [{"name": "bad", "cert": pem(SHOP)["cert"], "key": pem(API)["key"]}]}
    with pytest.raises(ConfigError, match=r"certificates\[0\]\.key: does not belong to the first certificate"):
        parse(json.dumps(config), "bad.json")


def test_text_that_is_not_pem_is_refused():
    config = {"certificates": [{"name": "bad", "cert": "hello", "key": pem(API)["key"]}]}
    with pytest.raises(ConfigError, match="cert: not a PEM certificate chain"):
        parse(json.dumps(config), "bad.json")


def test_https_ports_need_a_certificate_and_a_port_is_plain_or_https():
    config = {"applications": [{"name": "a", "domains": ["a.test"], "https_ports": [8443]},
                               {"name": "b", "domains": ["b.test"], "ports": [8080]}]}
    with pytest.raises(ConfigError, match="https_ports need certificates"):
        parse(json.dumps(config), "x.json")
    config = {"certificates": [{"name": "api", **pem(API)}],
              "applications": [{"name": "a", "domains": ["a.test"], "ports": [], "https_ports": [8443],
                                "certificates": ["api"]},
                               {"name": "b", "domains": ["b.test"], "ports": [8443]}]}
    with pytest.raises(ConfigError, match="port 8443 is HTTPS for application 'a'; a port is one or the other"):
        parse(json.dumps(config), "x.json")


def test_an_unreadable_certificate_file_refuses_the_config_and_keeps_the_old(https, tmp_path):
    port, started, backend = https
    old = started.versions()
    config = tls_config(port, backend.port)
    config["certificates"][1] = {"name": "api", "cert_file": str(tmp_path / "none.pem"), "key_file": str(tmp_path / "none.key")}
    started.write_config(config)
    deadline = time.monotonic() + 5
    while "cannot compile" not in started.stderr_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "cannot compile" in started.stderr_text()
    assert started.versions() == old and peer_names(port, "api.test") == ("api.test",)


def test_each_domain_gets_the_applications_certificate_valid_for_it(node, echo):
    backend = echo("multi")
    port = free_port()
    b, c = CA.issue_cert("b.test"), CA.issue_cert("c.test")
    star = CA.issue_cert("*.zone.test")
    config = {
        "certificates": [{"name": "b", **pem(b)}, {"name": "c", **pem(c)}, {"name": "star", **pem(star)}],
        "upstreams": [{"name": "up", "servers": [{"address": "127.0.0.1", "port": backend.port}]}],
        "applications": [
            {"name": "bc", "domains": ["b.test", "c.test"], "ports": [], "https_ports": [port],
             "certificates": ["b", "c"], "rules": [{"actions": [{"proxy": {"upstream": "up"}}]}]},
            {"name": "rest", "domains": ["*"], "ports": [], "https_ports": [port], "certificates": ["star"],
             "rules": [{"actions": [{"respond": {"body": "rest"}}]}]},
        ],
    }
    node(config)
    wait_port(port)
    assert peer_names(port, "b.test") == ("b.test",)
    assert peer_names(port, "c.test") == ("c.test",)
    assert peer_names(port, "z.zone.test") == ("*.zone.test",)  # nobody claims it: the catch-all's
    assert get(port, "z.zone.test")[2] == b"rest"


def test_a_certificate_chain_is_served_complete_from_inline_pem_and_from_files(node, tmp_path):
    """Clients trust only the root: a handshake verifies only if the node sends the
    intermediate it was given; a certificate given without its chain shows the difference."""
    port = free_port()
    inline, from_files, leaf_only = (INTERMEDIATE.issue_cert(f"{name}.test") for name in ("inline", "files", "bare"))
    (tmp_path / "chain.pem").write_text(pem(from_files)["cert"])  # leaf, then the intermediate
    (tmp_path / "leaf.key").write_text(pem(from_files)["key"])
    config = {
        "certificates": [{"name": "inline", **pem(inline)},
                         {"name": "files", "cert_file": str(tmp_path / "chain.pem"),
                          "key_file": str(tmp_path / "leaf.key")},
                         {"name": "bare", "cert": leaf_only.cert_chain_pems[0].bytes().decode(),
                          "key": leaf_only.private_key_pem.bytes().decode()}],
        "applications": [{"name": name, "domains": [f"{name}.test"], "ports": [], "https_ports": [port],
                          "certificates": [name], "rules": [{"actions": [{"respond": {"body": name}}]}]}
                         for name in ("inline", "files", "bare")],
    }
    node(config)
    wait_port(port)
    context = ssl.create_default_context()
    ROOT.configure_trust(context)
    for name in ("inline", "files"):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname=f"{name}.test") as tls:
                assert tls.getpeercert()["subjectAltName"] == (("DNS", f"{name}.test"),)
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer certificate"):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            context.wrap_socket(raw, server_hostname="bare.test")


def test_a_client_that_stops_in_the_middle_of_its_handshake_is_dropped(node):
    port = free_port()
    config = tls_config(port, free_port())
    config["settings"] = {"limits": {"client_header_timeout": "1s"}}
    node(config)
    wait_port(port)
    hello_out = ssl.MemoryBIO()
    client = client_context().wrap_bio(ssl.MemoryBIO(), hello_out, server_hostname="api.test")
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    with socket.create_connection(("127.0.0.1", port), timeout=15) as raw:
        raw.sendall(hello_out.read())  # the ClientHello, then nothing: the server's flight is never answered
        with contextlib.suppress(ConnectionResetError):
            while raw.recv(65536):
                pass  # the node closes the connection (recv would time out after 15 s otherwise)
