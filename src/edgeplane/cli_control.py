"""The control-plane commands of `edgeplane`: run the admin, and talk to it through the SDK.

`admin` runs (or migrates, backs up, restores) an admin; `apply`, `diff`, `pending`,
`discard`, `release`, `rollback`, `reviews`, `status`, `nodes`, `approve`, `join-token` and
`login` call a running one. The admin's address and token come from --admin/--token,
$EDGEPLANE_ADMIN/$EDGEPLANE_TOKEN, or the file `login` and `up` write
(~/.config/edgeplane/cli.json). Each prints what it did, or what was wrong and where.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .model.load import ConfigError
from .sdk import ApiError, Client

DEFAULT_ADMIN = "http://127.0.0.1:9900"
DEFAULT_LISTEN = "127.0.0.1:9900"


def cli_config_path() -> Path:
    if os.environ.get("EDGEPLANE_CLI_CONFIG"):
        return Path(os.environ["EDGEPLANE_CLI_CONFIG"])
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "edgeplane" / "cli.json"


def save_cli_config(admin: str, token: str) -> Path:
    path = cli_config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump({"admin": admin, "token": token}, handle)
    return path


def client(args: argparse.Namespace) -> Client:
    saved: dict = {}
    path = cli_config_path()
    if path.exists():
        saved = json.loads(path.read_text())
    admin = args.admin or os.environ.get("EDGEPLANE_ADMIN") or saved.get("admin") or DEFAULT_ADMIN
    token = args.token or os.environ.get("EDGEPLANE_TOKEN") or saved.get("token")
    return Client(admin, token)


def calling(run: Callable[[argparse.Namespace, Client], int]) -> Callable[[argparse.Namespace], int]:
    """Run a command against the admin; API errors and unreachable admins become messages."""
    import httpx

    def command(args: argparse.Namespace) -> int:
        try:
            with client(args) as admin:
                return run(args, admin)
        except ApiError as error:
            print(f"error: {error}", file=sys.stderr)
            for problem in error.problems:
                print(f"  {problem['path'] or '(top level)'}: {problem['message']}", file=sys.stderr)
            if error.status == 401:
                print("  (log in with `edgeplane login`, or pass --token / $EDGEPLANE_TOKEN)", file=sys.stderr)
            return 1
        except httpx.HTTPError as error:
            print(f"error: cannot reach the admin: {error} (is it running? --admin / $EDGEPLANE_ADMIN)", file=sys.stderr)
            return 1
        except ConfigError as error:
            print(error, file=sys.stderr)
            print(f"{error.source}: {len(error.problems)} problem(s); nothing was applied", file=sys.stderr)
            return 1
    return command


def table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    cells = [[title for title, _ in columns]] + [[_cell(row.get(key)) for _, key in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in cells) + "\n"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def ago(moment: float | None) -> str:
    if not moment:
        return "never"
    seconds = time.time() - moment
    return f"{seconds:.0f}s ago" if seconds < 120 else f"{seconds / 60:.0f}m ago" if seconds < 7200 else \
        f"{seconds / 3600:.0f}h ago"


# --- admin ---------------------------------------------------------------------------------


def cmd_admin(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir)
    action = args.admin_command or "serve"
    if action == "serve":
        from .admin.server import serve
        return serve(args.store, data_dir, args.listen)
    from .admin.backup import backup, restore
    from .admin.store import Store, migrate, store_url
    store = Store(store_url(args.store, data_dir))
    try:
        if action == "migrate":
            migrate(store.engine)
            print(f"store migrated: {store.engine.url.render_as_string(hide_password=True)}")
        elif action == "backup":
            migrate(store.engine)
            data = backup(store)
            Path(args.file).write_bytes(data) if args.file != "-" else sys.stdout.buffer.write(data)
            print(f"backup written to {args.file} ({len(data)} bytes); keep the secret key "
                  f"({data_dir / 'secret.key'} or $EDGEPLANE_SECRET_KEY) with it", file=sys.stderr)
        else:
            counts = restore(store, Path(args.file).read_bytes())
            print(f"restored {sum(counts.values())} rows: " + ", ".join(f"{k} {v}" for k, v in counts.items() if v))
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0


# --- objects, changes and releases ---------------------------------------------------------


def cmd_apply(args: argparse.Namespace, admin: Client) -> int:
    from .declarative import plan, read
    config, mentioned = read(Path(args.file))
    items = plan(config, mentioned, admin.objects(), args.prune)
    for item in items:
        print(f"  {item['op']:<7} {item['kind']}/{item['name']}" if item["name"] else f"  {item['op']:<7} {item['kind']}")
    if not items:
        print(f"{args.file}: no changes; the admin already has all of it")
        return 0
    if args.dry_run:
        print(f"{len(items)} change(s) would be recorded (dry run: nothing sent)")
        return 0
    result = admin.batch([{k: v for k, v in item.items() if k != "op"} for item in items])
    print(f"{result['changes']} change(s) recorded as pending; see them with `edgeplane pending`, "
          "release them with `edgeplane release`")
    return 0


def cmd_diff(args: argparse.Namespace, admin: Client) -> int:
    if args.file:
        from .declarative import plan, read
        config, mentioned = read(Path(args.file))
        items = plan(config, mentioned, admin.objects(), args.prune)
        print("\n".join(f"{i['op']} {i['kind']}/{i['name']}" for i in items) or "no differences")
        return 0
    old, new = (args.versions + [None, None])[:2]
    if len(args.versions) == 1:  # one release: compare it with the one before it
        old, new = None, args.versions[0]
        previous = [r["version"] for r in admin.releases(limit=1000) if r["version"] < new
                    and r["partition"] == admin.release_snapshot(new)["partition"]]
        old = max(previous) if previous else None
    result = admin.diff(args.partition if new is None else None, old, new, text=not args.json)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        sys.stdout.write(result or "no differences\n")
    return 0


def cmd_pending(args: argparse.Namespace, admin: Client) -> int:
    pending = admin.pending(args.partition)
    if not pending["changes"] and not pending["diff"]:
        print(f"partition {args.partition}: nothing pending; the draft is what was last released")
        return 0
    print(table([{**c, "object": f"{c['kind']}/{c['name']}" if c["name"] else c["kind"], "when": ago(c["at"])}
                 for c in pending["changes"]],
                [("CHANGE", "id"), ("OP", "op"), ("OBJECT", "object"), ("BY", "actor"), ("WHEN", "when")]), end="")
    print(f"{len(pending['diff'])} object(s) differ from the last release of {args.partition}; "
          "`edgeplane diff` shows how, `edgeplane release` releases them, `edgeplane discard` drops them")
    return 0


def cmd_discard(args: argparse.Namespace, admin: Client) -> int:
    result = admin.discard(args.partition)
    print(f"partition {args.partition}: discarded {result['discarded']} change(s); "
          f"{result['restored']} object(s) put back to the last release")
    return 0


def _released(release: dict) -> str:
    return (f"release {release['version']} of partition {release['partition']} "
            f"({release['objects']} objects){' — ' + release['note'] if release.get('note') else ''}")


def cmd_release(args: argparse.Namespace, admin: Client) -> int:
    result = admin.release(args.partition, args.message or "")
    if "review" in result:
        print(f"partition {args.partition} requires review: release request {result['review']['id']} waits for "
              f"another user with release permission (`edgeplane reviews approve {result['review']['id']}`)")
        return 0
    print(f"released: {_released(result)}; nodes pick it up now (`edgeplane status`)")
    return 0


def cmd_rollback(args: argparse.Namespace, admin: Client) -> int:
    partition = args.partition or admin.release_snapshot(args.version)["partition"]
    result = admin.rollback(args.version, partition, args.message or "")
    if "review" in result:
        print(f"rollback requested: release request {result['review']['id']} waits for review")
        return 0
    print(f"rolled back: {_released(result)}, equal to release {args.version}")
    return 0


def cmd_reviews(args: argparse.Namespace, admin: Client) -> int:
    if args.action == "list":
        rows = [{**r, "when": ago(r["at"])} for r in admin.reviews(args.state)]
        print(table(rows, [("ID", "id"), ("PARTITION", "partition"), ("BY", "requested_by"), ("STATE", "state"),
                           ("WHEN", "when"), ("RELEASE", "release"), ("NOTE", "note")]), end="")
        return 0
    if args.id is None:
        print(f"error: `edgeplane reviews {args.action}` needs the release request's id", file=sys.stderr)
        return 2
    if args.action == "approve":
        print(f"approved: {_released(admin.approve_review(args.id))}")
    else:
        admin.reject_review(args.id)
        print(f"rejected release request {args.id}")
    return 0


# --- nodes and status ----------------------------------------------------------------------


def cmd_status(args: argparse.Namespace, admin: Client) -> int:
    status = admin.status()
    for partition, entry in sorted(status["partitions"].items()):
        print(f"partition {partition}: latest release {entry['latest']}")
        print(table([{**r, "when": ago(r["at"])} for r in entry["releases"]],
                    [("  RELEASE", "version"), ("NODES", "nodes"), ("BY", "actor"), ("WHEN", "when"),
                     ("NOTE", "note")]), end="")
    if not status["partitions"]:
        print("no release yet: `edgeplane apply -f FILE` then `edgeplane release`")
    print()
    print(_node_table(status["nodes"]) if status["nodes"] else "no nodes: start one with "
          "`edgeplane node --admin URL --token $(edgeplane join-token)`")
    return 0


def _node_table(nodes: list[dict]) -> str:
    rows = [{**n, "contact": ago(n["last_contact"]) + ("" if n["reachable"] else " (unreachable)"),
             "error": (n["report"].get("last_error") or "")[:60]} for n in nodes]
    return table(rows, [("NODE", "name"), ("CLUSTER", "cluster"), ("PARTITION", "partition"), ("STATE", "state"),
                        ("VERSION", "version"), ("LATEST", "latest"), ("LAG", "lag"), ("LAST CONTACT", "contact"),
                        ("ERROR", "error")])


def cmd_nodes(args: argparse.Namespace, admin: Client) -> int:
    if args.action == "list":
        print(_node_table(admin.nodes()), end="")
        return 0
    if not args.node:
        print(f"error: `edgeplane nodes {args.action}` needs a node name or id", file=sys.stderr)
        return 2
    for node in args.node:
        if args.action == "remove":
            admin.remove_node(node)
            print(f"removed node {node}")
        else:
            changed = admin.offline(node) if args.action == "offline" else admin.online(node)
            print(f"node {changed['name']}: {changed['state']}")
    return 0


def cmd_approve(args: argparse.Namespace, admin: Client) -> int:
    for node in args.node:
        changed = admin.approve_node(node)
        print(f"approved node {changed['name']} (cluster {changed['cluster']}, partition {changed['partition']})")
    return 0


def cmd_join_token(args: argparse.Namespace, admin: Client) -> int:
    token = admin.join_token(args.cluster)
    print(token["token"])
    print(f"join token for cluster {args.cluster}: edgeplane node --admin {admin.admin} --token {token['token']}",
          file=sys.stderr)
    return 0


def cmd_login(args: argparse.Namespace) -> int:
    admin = args.admin or os.environ.get("EDGEPLANE_ADMIN") or DEFAULT_ADMIN
    if args.token:
        token = args.token
    else:
        password = os.environ.get("EDGEPLANE_PASSWORD") or getpass.getpass(f"password for {args.user}: ")
        try:
            with Client(admin) as anonymous:
                token = anonymous.login(args.user, password)["token"]
        except ApiError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    with Client(admin, token) as checked:
        try:
            who = checked.whoami()
        except ApiError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    path = save_cli_config(admin, token)
    print(f"logged in to {admin} as {who['name']}; saved in {path}")
    return 0


# --- the parser ----------------------------------------------------------------------------


def add_commands(sub: argparse._SubParsersAction) -> None:
    def connected(name: str, help_text: str, run: Callable[[argparse.Namespace, Client], int]) -> argparse.ArgumentParser:
        parser = sub.add_parser(name, help=help_text)
        parser.add_argument("--admin", help=f"admin URL (default $EDGEPLANE_ADMIN, the saved login, {DEFAULT_ADMIN})")
        parser.add_argument("--token", help="API token (default $EDGEPLANE_TOKEN or the saved login)")
        parser.set_defaults(run=calling(run))
        return parser

    def partition_flag(parser: argparse.ArgumentParser, default: str | None = "default") -> None:
        parser.add_argument("--partition", "-p", default=default, help="the partition (default: %(default)s)")

    admin = sub.add_parser("admin", help="run the admin (control plane), or migrate, back up, restore its store")
    admin.add_argument("admin_command", nargs="?", choices=("serve", "migrate", "backup", "restore"),
                       help="serve (the default), migrate, backup FILE or restore FILE")
    admin.add_argument("file", nargs="?", default="-", help="backup/restore file ('-' is stdout for backup)")
    admin.add_argument("--store", help="postgresql://USER@HOST/DB (default: SQLite in the data directory)")
    admin.add_argument("--data-dir", default=os.environ.get("EDGEPLANE_DATA", "edgeplane-data"),
                       help="SQLite store and secret key (default: %(default)s)")
    admin.add_argument("--listen", default=DEFAULT_LISTEN, help="HOST:PORT of the API (default: %(default)s)")
    admin.set_defaults(run=cmd_admin)

    apply = connected("apply", "record the difference between config files and the admin as pending changes", cmd_apply)
    apply.add_argument("-f", "--file", required=True, help="a YAML/JSON config file or a directory of them")
    apply.add_argument("--prune", action="store_true", help="delete objects of the kinds in the files that they omit")
    apply.add_argument("--dry-run", action="store_true", help="print what would change, record nothing")

    diff = connected("diff", "what changed: draft vs last release, two releases, or files vs the admin", cmd_diff)
    diff.add_argument("versions", nargs="*", type=int, help="FROM TO releases, or one release (vs the one before)")
    diff.add_argument("-f", "--file", help="compare these config files with the admin instead")
    diff.add_argument("--prune", action="store_true", help="with -f: also list objects apply --prune would delete")
    diff.add_argument("--json", action="store_true", help="the structured diff instead of text")
    partition_flag(diff)

    pending = connected("pending", "changes recorded but not released", cmd_pending)
    partition_flag(pending)
    discard = connected("discard", "drop pending changes: the draft returns to the last release", cmd_discard)
    partition_flag(discard)

    release = connected("release", "release the draft of a partition as a new numbered version", cmd_release)
    partition_flag(release)
    release.add_argument("-m", "--message", help="a note kept with the release")

    rollback = connected("rollback", "make a new release equal to an older one", cmd_rollback)
    rollback.add_argument("version", type=int)
    partition_flag(rollback, None)
    rollback.add_argument("-m", "--message", help="a note kept with the release")

    reviews = connected("reviews", "release requests of partitions that require review", cmd_reviews)
    reviews.add_argument("action", nargs="?", choices=("list", "approve", "reject"), default="list")
    reviews.add_argument("id", nargs="?", type=int)
    reviews.add_argument("--state", choices=("open", "released", "rejected"))

    connected("status", "per release how many nodes run it; per node version, lag, last contact", cmd_status)
    nodes = connected("nodes", "list nodes, or mark them offline/online, or remove them", cmd_nodes)
    nodes.add_argument("action", nargs="?", choices=("list", "offline", "online", "remove"), default="list")
    nodes.add_argument("node", nargs="*", help="node names or ids")
    approve = connected("approve", "approve candidate nodes: they start serving their partition", cmd_approve)
    approve.add_argument("node", nargs="+", help="node names or ids")
    join = connected("join-token", "print a token nodes join a cluster with", cmd_join_token)
    join.add_argument("cluster", nargs="?", default="default")
    from .cli_canary import add_command
    add_command(connected)

    login = sub.add_parser("login", help="log in to an admin and save the token for later commands")
    login.add_argument("--admin", help=f"admin URL (default $EDGEPLANE_ADMIN or {DEFAULT_ADMIN})")
    login.add_argument("--user", default="admin")
    login.add_argument("--token", help="save this API token instead of asking for a password")
    login.set_defaults(run=cmd_login)
