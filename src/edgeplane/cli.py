"""The `edgeplane` command: validate and dump configs, run a node, run the whole platform.

Each subcommand is a thin shell over a role's entry point; errors are printed for people
(what, where, what would be right) and the exit code says whether it worked.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys

import uvloop

from .model.load import ConfigError, dump, load


def cmd_validate(args: argparse.Namespace) -> int:
    status = 0
    for path in args.file:
        try:
            config = load(path)
        except ConfigError as error:
            print(error, file=sys.stderr)
            print(f"{path}: {len(error.problems)} problem(s); nothing was applied", file=sys.stderr)
            status = 1
            continue
        rules = sum(len(a.rules) for a in config.applications)
        print(f"{path}: valid ({len(config.applications)} applications, {rules} rules, "
              f"{len(config.upstreams)} upstreams)")
    return status


def cmd_dump(args: argparse.Namespace) -> int:
    try:
        config = load(args.file)
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 1
    sys.stdout.write(dump(config, args.format))
    return 0


def cmd_node(args: argparse.Namespace) -> int:
    from .node.master import Master
    access_log = None if args.access_log == "off" else args.access_log
    master = Master(args.config, args.workers, args.bind, args.status, args.partition, access_log)
    return uvloop.run(master.run())


def cmd_echo(args: argparse.Namespace) -> int:
    from .echo import run
    print(f"echo backend listening on http://{args.listen}/", flush=True)
    try:
        uvloop.run(run(args.listen, args.name))
    except KeyboardInterrupt:
        pass
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    """Every role that exists, in one command: today the node (plus an optional demo backend)."""
    try:
        config = load(args.config)
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 1
    children: list[subprocess.Popen] = []
    if args.demo_backend:
        children.append(subprocess.Popen([sys.executable, "-m", "edgeplane", "echo", "--listen", args.demo_backend]))
    node = subprocess.Popen([sys.executable, "-m", "edgeplane", "node", "--config", args.config,
                             "--workers", str(args.workers), "--bind", args.bind, "--status", args.status,
                             "--access-log", args.access_log])
    children.append(node)
    ports = sorted({p for a in config.applications for p in a.ports})
    domain = next((d for a in config.applications for d in a.domains if "*" not in d), "localhost")
    print("\nedgeplane is starting:", flush=True)
    for port in ports:
        print(f"  node      http://{args.bind}:{port}/   try: curl -H 'Host: {domain}' http://{args.bind}:{port}/")
    print(f"  status    http://{args.status}/status  and  /metrics")
    if args.demo_backend:
        print(f"  demo      http://{args.demo_backend}/ (the upstream the quickstart proxies to)")
    print("  Ctrl-C stops everything.\n", flush=True)
    try:
        return node.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=40)
            except subprocess.TimeoutExpired:
                child.kill()


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="edgeplane", description="Traffic-management platform.")
    sub = top.add_subparsers(dest="command", required=True)

    validate = sub.add_parser("validate", help="check config files; print every problem with its line")
    validate.add_argument("-f", "--file", action="append", required=True, help="YAML or JSON config (repeatable)")
    validate.set_defaults(run=cmd_validate)

    dumper = sub.add_parser("dump", help="print a config normalized (defaults omitted)")
    dumper.add_argument("-f", "--file", required=True)
    dumper.add_argument("--format", choices=("yaml", "json"), default="yaml")
    dumper.set_defaults(run=cmd_dump)

    def node_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", "-c", required=True, help="config file; reloaded when it changes and on SIGHUP")
        p.add_argument("--workers", "-w", type=int, default=int(os.environ.get("EDGEPLANE_WORKERS", "1")))
        p.add_argument("--bind", default="0.0.0.0", help="address the application ports listen on")
        p.add_argument("--status", default="127.0.0.1:9901", help="HOST:PORT of /metrics and /status")
        p.add_argument("--access-log", default="-", help="file, '-' for stdout, or 'off'")

    node = sub.add_parser("node", help="run a gateway node")
    node_flags(node)
    node.add_argument("--partition", default="default", help="serve the applications bound to this partition")
    node.set_defaults(run=cmd_node)

    up = sub.add_parser("up", help="start every role on one machine (the quickstart)")
    node_flags(up)
    up.add_argument("--demo-backend", metavar="HOST:PORT", help="also start the echo backend here")
    up.set_defaults(run=cmd_up)

    echo = sub.add_parser("echo", help="run the echo backend (demo upstream, test server)")
    echo.add_argument("--listen", default="127.0.0.1:9001")
    echo.add_argument("--name", default="demo-backend")
    echo.set_defaults(run=cmd_echo)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
