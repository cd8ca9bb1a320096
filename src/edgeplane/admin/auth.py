"""Who is calling and what they may do: users, API tokens, groups, roles and their scopes.

Passwords are hashed with scrypt (salted, parameters stored with the hash); API tokens are
random and stored as their SHA-256 (a token is as strong as a key, so one hash suffices).
A role bound to a user or a group at a scope (`*`, `partition:NAME`, `application:NAME`)
grants permissions; a call asks for one permission on the scopes that would allow it, and
a refusal names the permission, the scope and what the caller holds. Nothing here knows
HTTP.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field

from sqlalchemy import Connection, select

from . import schema
from .draft import NotFound
from .store import Store

ROLES: dict[str, frozenset[str]] = {
    "viewer": frozenset({"read"}),
    "editor": frozenset({"read", "write"}),
    "releaser": frozenset({"read", "release"}),
    "admin": frozenset({"read", "write", "release", "admin"}),
}
GLOBAL = "*"
TOKEN_PREFIX = "ep_"
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, **_SCRYPT, dklen=32)
    return "scrypt${n}${r}${p}${salt}${digest}".format(**_SCRYPT, salt=base64.b64encode(salt).decode(),
                                                      digest=base64.b64encode(digest).decode())


def check_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    computed = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=32)
    return hmac.compare_digest(computed, base64.b64decode(digest))


def new_secret() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Forbidden(Exception):
    def __init__(self, principal: Principal, permission: str, scopes: list[str]):
        self.permission = permission
        self.scopes = scopes
        held = ", ".join(f"{role} on {scope}" for role, scope in principal.grants) or "no role"
        wanted = " or ".join(_scope_text(s) for s in scopes)
        super().__init__(f"{principal.name!r} lacks permission {permission!r} on {wanted} (holds: {held})")


class Unauthorized(Exception):
    pass


def _scope_text(scope: str) -> str:
    if scope == GLOBAL:
        return "everything (*)"
    kind, _, name = scope.partition(":")
    return f"{kind} {name!r}"


@dataclass(frozen=True)
class Principal:
    name: str
    grants: tuple[tuple[str, str], ...] = ()  # (role, scope)
    groups: tuple[str, ...] = field(default=())

    def may(self, permission: str, scope: str) -> bool:
        return any(permission in ROLES[role] and s in (GLOBAL, scope) for role, s in self.grants)

    def require(self, permission: str, scopes: list[str]) -> None:
        """Allowed when the permission is held on every one of `scopes` (or globally)."""
        if not all(self.may(permission, scope) for scope in scopes or [GLOBAL]):
            raise Forbidden(self, permission, [s for s in scopes if not self.may(permission, s)] or [GLOBAL])

    def require_any(self, permission: str, scopes: list[str]) -> None:
        """Allowed when the permission is held on one of `scopes` (or globally)."""
        if not any(self.may(permission, scope) for scope in [GLOBAL, *scopes]):
            raise Forbidden(self, permission, scopes or [GLOBAL])

    def holds_anywhere(self, permission: str) -> bool:
        return any(permission in ROLES[role] for role, _ in self.grants)


class Auth:
    def __init__(self, store: Store):
        self.store = store

    # --- authentication ----------------------------------------------------------------

    def by_token(self, token: str) -> Principal:
        with self.store.reading() as connection:
            row = connection.execute(select(schema.tokens).where(schema.tokens.c.hash == secret_hash(token))).first()
            if row is None or (row.expires is not None and row.expires < time.time()):
                raise Unauthorized("unknown or expired token")
            return self.principal(connection, row.user)

    def by_password(self, user: str, password: str) -> Principal:
        with self.store.reading() as connection:
            row = connection.execute(select(schema.users).where(schema.users.c.name == user)).first()
            if row is None or not check_password(password, row.password_hash):
                raise Unauthorized("wrong user name or password")
            return self.principal(connection, user)

    def principal(self, connection: Connection, user: str) -> Principal:
        groups = tuple(connection.execute(select(schema.group_members.c.group)
                                          .where(schema.group_members.c.user == user)).scalars())
        subjects = [f"user:{user}", *(f"group:{g}" for g in groups)]
        bindings = connection.execute(select(schema.role_bindings.c.role, schema.role_bindings.c.scope)
                                      .where(schema.role_bindings.c.subject.in_(subjects))).all()
        return Principal(user, tuple((b.role, b.scope) for b in bindings), groups)

    # --- users, tokens, groups, bindings -------------------------------------------------

    def users(self) -> list[dict]:
        with self.store.reading() as connection:
            rows = connection.execute(select(schema.users.c.name, schema.users.c.at)).all()
            return [{"name": r.name, "created": r.at, **_principal_view(self.principal(connection, r.name))}
                    for r in rows]

    def create_user(self, connection: Connection, name: str, password: str) -> None:
        connection.execute(schema.users.insert().values(name=name, password_hash=hash_password(password),
                                                        at=time.time()))

    def set_password(self, name: str, password: str) -> None:
        with self.store.transaction() as connection:
            connection.execute(schema.users.update().where(schema.users.c.name == name)
                               .values(password_hash=hash_password(password)))

    def create_token(self, connection: Connection, user: str, label: str = "", ttl: float | None = None,
                     secret: str | None = None) -> dict:
        secret = secret or new_secret()
        values = {"user": user, "hash": secret_hash(secret), "label": label, "at": time.time(),
                  "expires": time.time() + ttl if ttl else None}
        token_id = connection.execute(schema.tokens.insert().values(**values)).inserted_primary_key[0]
        return {"id": token_id, "user": user, "label": label, "expires": values["expires"], "token": secret}

    def remove(self, subject: str, name: str) -> None:
        """Delete a user or a group with its memberships, role bindings (and a user's tokens)."""
        table, members = (schema.users, schema.group_members.c.user) if subject == "user" else \
            (schema.groups, schema.group_members.c.group)
        with self.store.transaction() as connection:
            connection.execute(schema.group_members.delete().where(members == name))
            if subject == "user":
                connection.execute(schema.tokens.delete().where(schema.tokens.c.user == name))
            connection.execute(schema.role_bindings.delete().where(schema.role_bindings.c.subject == f"{subject}:{name}"))
            if not connection.execute(table.delete().where(table.c.name == name)).rowcount:
                raise NotFound(f"no {subject} {name!r}")

    def bind(self, connection: Connection, subject: str, role: str, scope: str) -> dict:
        values = {"subject": subject, "role": role, "scope": scope}
        binding_id = connection.execute(schema.role_bindings.insert().values(**values)).inserted_primary_key[0]
        return {"id": binding_id, **values}


def _principal_view(principal: Principal) -> dict:
    return {"groups": list(principal.groups), "roles": [{"role": r, "scope": s} for r, s in principal.grants]}


def principal_view(principal: Principal) -> dict:
    return {"name": principal.name, **_principal_view(principal)}


def check_role(role: str) -> str:
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
    return role


def check_scope(scope: str) -> str:
    kind, sep, name = scope.partition(":")
    if scope != GLOBAL and not (sep and kind in ("partition", "application") and name):
        raise ValueError(f"unknown scope {scope!r}; expected *, partition:NAME or application:NAME")
    return scope
