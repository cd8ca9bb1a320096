"""ACME end to end against pebble (Debian's ACME test server, installed by `make test`):
a certificate issued over HTTP-01 answered by the node, kept 0600 in the data directory,
served without a restart, and renewed when it is due."""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import stat
import subprocess
import time

import pytest
import trustme
from cryptography import x509

from conftest import free_port, wait_port

PEBBLE = shutil.which("pebble")
CHALLTESTSRV = shutil.which("pebble-challtestsrv")
if PEBBLE is None or CHALLTESTSRV is None:
    if os.environ.get("CI") == "true":
        raise RuntimeError("pebble and pebble-challtestsrv are missing: `make test` installs them (apt-get install pebble)")
    pytest.skip("pebble is not installed: run `make test`, or `apt-get install pebble`", allow_module_level=True)


@pytest.fixture
def pebble(tmp_path):
    """pebble on 127.0.0.1, resolving every name to 127.0.0.1 through pebble-challtestsrv's DNS;
    its HTTP-01 validations go to the node's plain port (yielded, not yet listening)."""
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "pebble-ca.pem"))
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "pebble.crt"))
    leaf.private_key_pem.write_to_path(str(tmp_path / "pebble.key"))
    dns, directory, management, plain, resolver_management = (free_port() for _ in range(5))
    (tmp_path / "pebble.json").write_text(json.dumps({"pebble": {
        "listenAddress": f"127.0.0.1:{directory}", "managementListenAddress": f"127.0.0.1:{management}",
        "certificate": str(tmp_path / "pebble.crt"), "privateKey": str(tmp_path / "pebble.key"),
        "httpPort": plain, "tlsPort": free_port(), "ocspResponderURL": "", "externalAccountBindingRequired": False}}))
    log = open(tmp_path / "pebble.log", "wb")
    resolver = subprocess.Popen([CHALLTESTSRV, "-dns01", f"127.0.0.1:{dns}", "-http01", "", "-https01", "",
                                 "-tlsalpn01", "", "-management", f"127.0.0.1:{resolver_management}",
                                 "-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""], stdout=log, stderr=log)
    server = subprocess.Popen([PEBBLE, "-config", str(tmp_path / "pebble.json"), "-dnsserver", f"127.0.0.1:{dns}"],
                              stdout=log, stderr=log, env={**os.environ, "PEBBLE_VA_NOSLEEP": "1",
                                                           "PEBBLE_WFE_NONCEREJECT": "0"})
    try:
        wait_port(resolver_management, proc=resolver)
        wait_port(directory, proc=server)
        yield {"directory": f"https://127.0.0.1:{directory}/dir", "ca_bundle": str(tmp_path / "pebble-ca.pem")}, plain
    finally:
        for proc in (server, resolver):
            proc.kill()
            proc.wait()
        log.close()


def acme_config(acme: dict, plain: int, https: int, renew_before: str = "30d") -> dict:
    return {
        "settings": {"acme": {**acme, "email": "ops@acme.test", "renew_before": renew_before}},
        "certificates": [{"name": "site", "acme": True, "domains": ["acme.test", "www.acme.test"]}],
        "global_rules": {"before": [{"actions": [{"https-redirect": {"port": https}}]}]},
        "applications": [{"name": "site", "domains": ["acme.test", "www.acme.test"], "ports": [plain],
                          "https_ports": [https], "certificates": ["site"],
                          "rules": [{"actions": [{"respond": {"body": "secure"}}]}]}],
    }


def served_certificate(port: int, name: str) -> x509.Certificate | None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # issued by pebble's own root
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname=name) as tls:
                return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
    except (OSError, ssl.SSLError):
        return None


def wait_for_certificate(port: int, other_than: int | None = None, timeout: float = 60.0) -> x509.Certificate:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = served_certificate(port, "acme.test")
        if found is not None and found.serial_number != other_than:
            return found
        time.sleep(0.2)
    raise TimeoutError("no certificate from pebble was served")


def test_a_certificate_is_issued_over_http01_served_without_restart_and_renewed(pebble, node, tmp_path):
    acme, plain = pebble
    https = free_port()
    started = node(acme_config(acme, plain, https))
    data_dir = started.tmp / "data"
    pids = {w["pid"] for w in started.status()["workers"]}

    issued = wait_for_certificate(https)
    names = issued.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(names.get_values_for_type(x509.DNSName)) == {"acme.test", "www.acme.test"}
    assert "Pebble" in issued.issuer.rfc4514_string()
    for kept in ("acme/account.key", "acme/certs/site.key", "acme/certs/site.crt"):
        assert stat.S_IMODE((data_dir / kept).stat().st_mode) == 0o600, kept
    assert not any((data_dir / "acme" / "challenges").iterdir())  # answers are removed once used

    # Renewal is due as soon as the certificate is within renew_before of its expiry.
    old = started.versions()
    started.write_config(acme_config(acme, plain, https, renew_before="36500d"))
    started.wait_version_change(old)
    renewed = wait_for_certificate(https, other_than=issued.serial_number)
    assert renewed.serial_number != issued.serial_number
    assert {w["pid"] for w in started.status()["workers"]} == pids
    assert '"acme_issued"' in started.stderr_text()
