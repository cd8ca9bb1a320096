"""`edgeplane up`: the admin, a node joined to it and a demo backend, on one machine.

The admin keeps its store under the data directory (SQLite); its first start prints the
bootstrap credentials, and the token is kept there too (0600) and saved as the CLI's
login, so `edgeplane status` works from another terminal. The config is applied and
released as a user would; the node joins the default cluster, which this command makes
auto-approving. Ctrl-C stops every process it started.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from .cli_control import save_cli_config
from .model.config import Config
from .sdk import ApiError, Client

TOKEN_FILE = "admin.token"  # in the data directory: the token `up` talks to its admin with


def wait_admin(url: str, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the admin exited with code {process.returncode}; see its messages above")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the admin did not answer on {url} within {timeout:.0f}s")


def admin_token(data_dir: Path) -> tuple[str, bool]:
    """The token `up` uses: kept from an earlier run, or a new one the admin's first start adopts."""
    path = data_dir / TOKEN_FILE
    if path.exists():
        return path.read_text().strip(), False
    return "ep_" + secrets.token_urlsafe(32), True


def keep_token(data_dir: Path, token: str) -> None:
    descriptor = os.open(data_dir / TOKEN_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(token + "\n")


def publish(admin: Client, config_path: str) -> str:
    """Apply the config, make the default cluster auto-approve, release if anything changed."""
    from .declarative import plan, read
    config, mentioned = read(Path(config_path))
    items = plan(config, mentioned, admin.objects())
    cluster = admin.get("clusters", "default")
    if not cluster.get("auto_approve"):
        items.append({"kind": "clusters", "name": "default", "data": {**cluster, "auto_approve": True}})
    if items:
        admin.batch([{k: v for k, v in item.items() if k != "op"} for item in items])
    if admin.pending("default")["diff"]:
        release = admin.release("default", note=f"edgeplane up: {config_path}")
        return f"release {release['version']}"
    return f"release {admin.releases('default', limit=1)[0]['version']} (unchanged)"


def up(args: argparse.Namespace, config: Config) -> int:
    data_dir = Path(args.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    url = f"http://{args.admin_listen}"
    token, first = admin_token(data_dir)
    children: list[subprocess.Popen] = []
    python = [sys.executable, "-m", "edgeplane"]
    try:
        if args.demo_backend:
            children.append(subprocess.Popen([*python, "echo", "--listen", args.demo_backend]))
        admin_env = {**os.environ, "EDGEPLANE_BOOTSTRAP_TOKEN": token} if first else dict(os.environ)
        admin_process = subprocess.Popen([*python, "admin", "--data-dir", str(data_dir / "admin"),
                                          "--listen", args.admin_listen], env=admin_env)
        children.append(admin_process)
        wait_admin(url, admin_process)
        if first:
            keep_token(data_dir, token)
        with Client(url, token) as admin:
            released = publish(admin, args.config)
            node_dir = data_dir / "node"
            joined = (node_dir / "node.json").exists()
            join = [] if joined else ["--token", admin.join_token("default")["token"]]
        cli_config = save_cli_config(url, token)
        node = subprocess.Popen([*python, "node", "--admin", url, *join, "--data-dir", str(node_dir),
                                 "--workers", str(args.workers), "--bind", args.bind, "--status", args.status,
                                 "--access-log", args.access_log])
        children.append(node)
        print_summary(args, config, url, released, cli_config)
        return node.wait()
    except (RuntimeError, ApiError, httpx.HTTPError) as error:
        print(f"edgeplane up: {error}", file=sys.stderr)
        if isinstance(error, ApiError) and error.status == 401:
            print(f"  the admin's store in {data_dir / 'admin'} was made with another token: remove {data_dir} "
                  "to start afresh, or `edgeplane login` and run the parts yourself", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stop(children)


def print_summary(args: argparse.Namespace, config: Config, url: str, released: str, cli_config: Path) -> None:
    ports = sorted({p for a in config.applications for p in a.ports})
    domain = next((d for a in config.applications for d in a.domains if "*" not in d), "localhost")
    print("\nedgeplane is starting:", flush=True)
    print(f"  admin     {url}/api/v1   docs: {url}/docs   ({released} of {args.config})")
    for port in ports:
        print(f"  node      http://{args.bind}:{port}/   try: curl -H 'Host: {domain}' http://{args.bind}:{port}/")
    print(f"  status    http://{args.status}/status  and  /metrics")
    if args.demo_backend:
        print(f"  demo      http://{args.demo_backend}/ (the upstream the quickstart proxies to)")
    print(f"  CLI       logged in ({cli_config}): try `edgeplane status`, `edgeplane pending`")
    print("  Ctrl-C stops everything.\n", flush=True)


def stop(children: list[subprocess.Popen]) -> None:
    for child in reversed(children):
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children:
        try:
            child.wait(timeout=40)
        except subprocess.TimeoutExpired:
            child.kill()
