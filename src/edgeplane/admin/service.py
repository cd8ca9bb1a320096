"""The admin's parts wired together over one store, and its first start.

`Admin` holds the store, the secret box, the draft, releases, nodes, auth and the canary
controller; the HTTP layer (`api.py`) and the offline commands (migrate, backup, restore)
use it. The first
start of an empty store creates the `default` partition and cluster and an `admin` user
with a password and a token, printed once: later starts find the user and print nothing.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select

from ..model.config import Cluster, Partition
from . import schema
from .auth import Auth
from .canary import Canaries
from .draft import Draft, Edit
from .nodes import Nodes
from .releases import Releases
from .secrets import SecretBox
from .store import Store, migrate, store_url

BOOTSTRAP_TOKEN_ENV = "EDGEPLANE_BOOTSTRAP_TOKEN"  # `edgeplane up` chooses the first token itself
SYSTEM = "system"


class Admin:
    def __init__(self, store: str | None, data_dir: Path, on_release: Callable[[str, int], None] | None = None):
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(store_url(store, data_dir))
        self.box = SecretBox.from_environment(data_dir / "secret.key")
        self.draft = Draft(self.store, self.box)
        self.releases = Releases(self.draft, on_release or (lambda _p, _v: None))
        self.nodes = Nodes(self.releases)
        self.auth = Auth(self.store)
        self.canaries = Canaries(self.releases, self.nodes)

    def start(self, announce: Callable[[str], None] = lambda text: print(text, file=sys.stderr, flush=True)) -> None:
        migrate(self.store.engine)
        credentials = self.bootstrap()
        if credentials:
            announce("edgeplane admin: first start of this store; the bootstrap credentials follow and are "
                     "shown only this once:\n"
                     f"  user      admin\n  password  {credentials['password']}\n  token     {credentials['token']}\n"
                     "  (edgeplane ... --token TOKEN, or Authorization: Bearer TOKEN)")

    def bootstrap(self) -> dict | None:
        with self.store.transaction() as connection:
            self.store.lock(connection, "draft")
            if connection.execute(select(schema.users.c.name).limit(1)).first() is not None:
                return None
            password = secrets.token_urlsafe(18)
            self.auth.create_user(connection, "admin", password)
            token = self.auth.create_token(connection, "admin", "bootstrap", secret=os.environ.get(BOOTSTRAP_TOKEN_ENV))
            self.auth.bind(connection, "user:admin", "admin", "*")
            if connection.execute(select(schema.objects.c.kind).limit(1)).first() is None:
                self.draft.write_in(connection, SYSTEM, [Edit("partitions", "default", Partition(name="default")),
                                                          Edit("clusters", "default", Cluster(name="default"))])
        return {"password": password, "token": token["token"]}

    def close(self) -> None:
        self.store.close()
