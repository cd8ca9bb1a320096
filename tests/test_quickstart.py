"""`make run`'s command and the shipped examples: what a newcomer runs first must work."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.request import urlopen

import pytest

from edgeplane.model import load

from conftest import ENV, ROOT, free_port, wait_port

EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_is_a_valid_config(example: Path):
    load(example)


def test_up_starts_the_admin_releases_the_quickstart_to_a_joined_node_and_stops_on_ctrl_c(tmp_path):
    port, backend, status, admin = free_port(), free_port(), free_port(), free_port()
    text = (ROOT / "examples/quickstart.yaml").read_text()
    config = tmp_path / "quickstart.yaml"
    config.write_text(text.replace("port: 9001", f"port: {backend}").replace("[8080]", f"[{port}]"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeplane", "up", "--config", str(config), "--bind", "127.0.0.1",
         "--status", f"127.0.0.1:{status}", "--demo-backend", f"127.0.0.1:{backend}", "--access-log", "off",
         "--data-dir", str(tmp_path / "data"), "--admin-listen", f"127.0.0.1:{admin}"],
        env={**ENV, "XDG_CONFIG_HOME": str(tmp_path / "config")}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_port(port, timeout=30, proc=proc)
        wait_port(backend, timeout=30, proc=proc)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/hello", headers={"Host": "localhost"})
        response = conn.getresponse()
        echoed = json.loads(response.read())
        assert response.status == 200
        assert echoed["pod"] == "demo-backend" and echoed["headers"]["X-Via"] == ["edgeplane"]
        assert response.getheader("X-Served-By") == "edgeplane"
        conn.request("GET", "/healthz", headers={"Host": "localhost"})
        assert conn.getresponse().read() == b"ok\n"
        status_page = json.loads(urlopen(f"http://127.0.0.1:{status}/status", timeout=5).read())
        assert status_page["config_version"] == "1" and status_page["sync"]["state"] == "approved"
        cli = subprocess.run([sys.executable, "-m", "edgeplane", "status"], capture_output=True, text=True,
                             env={**ENV, "XDG_CONFIG_HOME": str(tmp_path / "config")}, timeout=30)
        assert "partition default: latest release 1" in cli.stdout, cli.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=60)[0].decode()
    assert f"curl -H 'Host: localhost' http://127.0.0.1:{port}/" in output
    assert "bootstrap credentials" in output and "password" in output
    time.sleep(0.2)
    for closed in (port, backend, admin):
        with pytest.raises(OSError):
            wait_port(closed, timeout=0.5)
