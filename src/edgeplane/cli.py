"""The `edgeplane` command: validate and dump configs, run a node, run the whole platform.

Each subcommand is a thin shell over a role's entry point; errors are printed for people
(what, where, what would be right) and the exit code says whether it worked.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import uvloop

from .model.config import Config, Rule
from .model.load import ConfigError, Problem, dump, load


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
    if (args.config is None) == (args.admin is None):
        print("edgeplane node: give --config FILE (a node on a file) or --admin URL (a node synced with an admin)",
              file=sys.stderr)
        return 2
    access_log = None if args.access_log == "off" else args.access_log
    master = Master(args.config, args.workers, args.bind, args.status, args.partition, access_log, args.data_dir,
                    args.admin, args.token, args.name)
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
    """Every role that exists, in one command: the admin on a data directory, the config
    applied and released, a node joined to the admin (auto-approved), a demo backend."""
    from .quickstart import up
    try:
        config = load(args.config)
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 1
    return up(args, config)


def _read_rules(path: str) -> list[Rule]:
    from .lang.parser import parse_rules
    try:
        with open(path, encoding="utf-8") as file:
            return parse_rules(file.read(), path)
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(path, [Problem("", f"cannot read: {error}")]) from None


def cmd_rules_fmt(args: argparse.Namespace) -> int:
    """Print a rule-language file in its canonical layout (comments are not kept)."""
    from .lang.printer import format_rules
    try:
        sys.stdout.write(format_rules(_read_rules(args.file)))
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 1
    return 0


def cmd_rules_to_yaml(args: argparse.Namespace) -> int:
    """Print a rule-language file as YAML `rules:`, or, with --into, as that whole config with
    the application's rules replaced (validated, so upstream names are checked)."""
    import yaml

    from .model.load import parse
    try:
        rules = [rule.model_dump(mode="json", exclude_defaults=True) for rule in _read_rules(args.file)]
        if not args.into:
            sys.stdout.write(yaml.safe_dump({"rules": rules}, sort_keys=False, allow_unicode=True))
            return 0
        config = load(args.into)
        data = config.model_dump(mode="json", exclude_defaults=True)
        data["applications"][_app_index(config, args.app, args.into)]["rules"] = rules
        sys.stdout.write(dump(parse(yaml.safe_dump(data, sort_keys=False), args.into)))
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 1
    return 0


def cmd_rules_from_yaml(args: argparse.Namespace) -> int:
    """Print an application's rules from a YAML/JSON config in the rule language."""
    from .lang.printer import format_rules
    try:
        config = load(args.file)
        sys.stdout.write(format_rules(config.applications[_app_index(config, args.app, args.file)].rules))
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 1
    return 0


def _app_index(config: Config, name: str | None, source: str) -> int:
    names = [app.name for app in config.applications]
    if name in names:
        return names.index(name)
    if name is None and len(names) == 1:
        return 0
    wanted = f"no application named {name!r}" if name else "several applications"
    raise ConfigError(source, [Problem("applications", f"{wanted}; choose one with --app: {', '.join(names) or '(none)'}")])


def _default_data_dir() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "edgeplane"


def _port_pair(text: str) -> tuple[int, int]:
    gateway, sep, node = text.partition("=")
    if not (sep and gateway.isdigit() and node.isdigit()):
        raise argparse.ArgumentTypeError(f"expected GATEWAY_PORT=NODE_PORT such as 80=8080, got {text!r}")
    return int(gateway), int(node)


def _write_output(path: str | None, text: str) -> None:
    """Write to `path` readable by its owner only (configs and manifests can hold private
    keys), or to stdout."""
    if path:
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as file:
            file.write(text)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()  # before the warnings on stderr


def cmd_import_gateway_api(args: argparse.Namespace) -> int:
    """Translate Gateway API manifests into a config; every part not translated is printed."""
    from .model.gateway_api import import_gateway_api, read_endpoints, read_manifests
    try:
        endpoints = read_endpoints(args.endpoints) if args.endpoints else {}
        config, warnings = import_gateway_api(read_manifests(args.file), endpoints, dict(args.port or []))
        _write_output(args.output, dump(config))
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    rules = sum(len(a.rules) for a in config.applications)
    print(f"imported {len(config.applications)} applications, {rules} rules, {len(config.upstreams)} upstreams; "
          f"{len(warnings)} warning(s)", file=sys.stderr)
    return 0


def cmd_export_gateway_api(args: argparse.Namespace) -> int:
    """Print a config as a Gateway and HTTPRoutes; every part not expressible is printed."""
    import yaml

    from .model.gateway_api import export_gateway_api, format_endpoints
    try:
        documents, endpoints, warnings = export_gateway_api(load(args.file), args.namespace)
        _write_output(args.output, yaml.safe_dump_all(documents, sort_keys=False))
        if args.endpoints:
            _write_output(args.endpoints, yaml.safe_dump(format_endpoints(endpoints), sort_keys=False))
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 1
    except OSError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def cmd_hash_key(args: argparse.Namespace) -> int:
    """A new API key and its digest, or the digest of a key read from standard input."""
    from .node.auth.credentials import hash_api_key, new_api_key
    if args.stdin:
        key = sys.stdin.readline().strip()
        if not key:
            print("edgeplane hash-key --stdin: no key on standard input", file=sys.stderr)
            return 1
        print(hash_api_key(key))
        return 0
    key = new_api_key()
    print(f"key:  {key}")  # for the consumer: it is kept nowhere
    print(f"hash: {hash_api_key(key)}")  # for the consumer's api_keys
    return 0


def cmd_hash_password(args: argparse.Namespace) -> int:
    """The scrypt hash of a password read from standard input (or asked for on a terminal)."""
    from .node.auth.credentials import hash_password
    if sys.stdin.isatty():
        import getpass
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            print("edgeplane hash-password: the two passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("edgeplane hash-password: empty password", file=sys.stderr)
        return 1
    print(hash_password(password))
    return 0


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

    def node_flags(p: argparse.ArgumentParser, config_required: bool) -> None:
        p.add_argument("--config", "-c", required=config_required,
                       help="config file; reloaded when it changes and on SIGHUP")
        p.add_argument("--workers", "-w", type=int, default=int(os.environ.get("EDGEPLANE_WORKERS", "1")))
        p.add_argument("--bind", default="0.0.0.0", help="address the application ports listen on")
        p.add_argument("--status", default="127.0.0.1:9901", help="HOST:PORT of /metrics and /status")
        p.add_argument("--access-log", default="-", help="file, '-' for stdout, or 'off'")

    node = sub.add_parser("node", help="run a gateway node, on a config file or synced with an admin")
    node_flags(node, config_required=False)
    node.add_argument("--partition", default="default", help="with --config: serve the applications of this partition")
    node.add_argument("--admin", metavar="URL", help="sync with this admin instead of reading a file")
    node.add_argument("--token", help="the join token (first start only; the node keeps its credential)")
    node.add_argument("--data-dir", default=os.environ.get("EDGEPLANE_DATA_DIR", "edgeplane-data"),
                      help="what the node keeps itself: the local store and credential of a synced node, "
                           "ACME account and certificates (default: %(default)s)")
    node.add_argument("--name", help="node name (default: host name and a digest of the data directory)")
    node.set_defaults(run=cmd_node)

    up = sub.add_parser("up", help="start every role on one machine (the quickstart)")
    node_flags(up, config_required=True)
    up.add_argument("--demo-backend", metavar="HOST:PORT", help="also start the echo backend here")
    up.add_argument("--data-dir", default=os.environ.get("EDGEPLANE_DATA", str(_default_data_dir())),
                    help="the admin's store and the node's local store (default: %(default)s)")
    up.add_argument("--admin-listen", default="127.0.0.1:9900", help="HOST:PORT of the admin API")
    up.set_defaults(run=cmd_up)

    echo = sub.add_parser("echo", help="run the echo backend (demo upstream, test server)")
    echo.add_argument("--listen", default="127.0.0.1:9001")
    echo.add_argument("--name", default="demo-backend")
    echo.set_defaults(run=cmd_echo)
    rules = sub.add_parser("rules", help="the rule language: format, convert to and from YAML")
    rules_sub = rules.add_subparsers(dest="rules_command", required=True)
    fmt = rules_sub.add_parser("fmt", help="print a rules file in canonical form")
    fmt.add_argument("-f", "--file", required=True, help="rules in the rule language (.edge)")
    fmt.set_defaults(run=cmd_rules_fmt)
    to_yaml = rules_sub.add_parser("to-yaml", help="print a rules file as YAML")
    to_yaml.add_argument("-f", "--file", required=True, help="rules in the rule language (.edge)")
    to_yaml.add_argument("--into", metavar="CONFIG", help="print this config with --app's rules replaced")
    to_yaml.add_argument("--app", help="the application of --into (needed when it has several)")
    to_yaml.set_defaults(run=cmd_rules_to_yaml)
    from_yaml = rules_sub.add_parser("from-yaml", help="print an application's rules in the rule language")
    from_yaml.add_argument("-f", "--file", required=True, help="YAML or JSON config")
    from_yaml.add_argument("--app", help="the application (needed when the config has several)")
    from_yaml.set_defaults(run=cmd_rules_from_yaml)
    importer = sub.add_parser("import", help="translate other formats into a config")
    import_sub = importer.add_subparsers(dest="import_format", required=True)
    gateway_in = import_sub.add_parser("gateway-api", help="Kubernetes Gateway API manifests → config")
    gateway_in.add_argument("-f", "--file", action="append", required=True,
                            help="manifest file or directory (repeatable)")
    gateway_in.add_argument("--endpoints", help="YAML file: services: {NAMESPACE/NAME:PORT: [ADDRESS:PORT, ...]}")
    gateway_in.add_argument("--port", action="append", type=_port_pair, metavar="GATEWAY=NODE",
                            help="serve a Gateway listener port on another node port (repeatable)")
    gateway_in.add_argument("-o", "--output", help="write the config here instead of stdout")
    gateway_in.set_defaults(run=cmd_import_gateway_api)
    exporter = sub.add_parser("export", help="translate a config into other formats")
    export_sub = exporter.add_subparsers(dest="export_format", required=True)
    gateway_out = export_sub.add_parser("gateway-api", help="config → Gateway and HTTPRoute manifests")
    gateway_out.add_argument("-f", "--file", required=True, help="YAML or JSON config")
    gateway_out.add_argument("--namespace", default="default", help="namespace of the manifests")
    gateway_out.add_argument("--endpoints", metavar="FILE", help="also write the endpoints file of the Services")
    gateway_out.add_argument("-o", "--output", help="write the manifests here instead of stdout")
    gateway_out.set_defaults(run=cmd_export_gateway_api)
    hash_key = sub.add_parser("hash-key", help="make an API key and the digest a consumer's api_keys holds")
    hash_key.add_argument("--stdin", action="store_true", help="print the digest of a key read from standard input")
    hash_key.set_defaults(run=cmd_hash_key)
    hash_pw = sub.add_parser("hash-password", help="the scrypt hash of a password, for basic auth consumers")
    hash_pw.set_defaults(run=cmd_hash_password)
    from .cli_control import add_commands
    add_commands(sub)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
