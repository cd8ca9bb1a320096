"""The kinds of object in a configuration, read off `Config`: what the admin stores and releases.

Every list of named objects in `Config` (applications, upstreams, certificates, ... and
whatever later issues add) is a *collection* kind; every nested model (settings,
global_rules) is a *singleton* kind. Nothing here is written per kind by hand: a field
added to `Config` is manageable through the API as soon as it exists. This module knows
the model only; it never touches the store.
"""

from __future__ import annotations

import hashlib
import typing
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import BaseModel

from .config import Config

SINGLETON_NAME = ""  # the store key of a singleton kind's one object
REGISTRY_KINDS = {"nodes"}  # nodes join and are approved (admin/nodes.py); they are not drafted and released
# Kinds released like any other but written only by a controller of the admin, never by users.
CONTROLLED_KINDS = {"canary_weights": "the canary controller (edgeplane canary pause|resume|promote|abort NAME)"}


@dataclass(frozen=True)
class Kind:
    name: str  # the Config field: "applications", "settings", ...
    model: type[BaseModel]
    singleton: bool
    secret_paths: tuple[tuple[str, ...], ...]  # fields marked secret, as paths ("*" = each list item)
    controlled_by: str | None = None  # who alone writes objects of this kind (CONTROLLED_KINDS)

    @property
    def partitioned(self) -> bool:
        """Objects bound to some partitions by a `partitions` list (applications); the others
        (upstreams, certificates, settings, ...) are shared by every partition."""
        return "partitions" in self.model.model_fields

    def partitions_of(self, data: dict | None) -> set[str] | None:
        """The partitions an object (its JSON) is bound to; None when it reaches every one."""
        if data is None or not self.partitioned:
            return None
        return set(data.get("partitions", self.model.model_fields["partitions"].get_default(call_default_factory=True)))


def _model_of(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """(model class, is a list) of a Config field's annotation."""
    origin = typing.get_origin(annotation)
    if origin is list:
        (item,) = typing.get_args(annotation)
        return (item, True) if isinstance(item, type) and issubclass(item, BaseModel) else (None, True)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    return None, False


def _secret_paths(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = []
    for name, field in model.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if extra.get("secret"):
            paths.append((*prefix, name))
            continue
        annotation = field.annotation
        for candidate in (annotation, *typing.get_args(annotation)):  # X, list[X], X | None
            nested, many = _model_of(candidate)
            if nested is not None:
                paths += _secret_paths(nested, (*prefix, name, *(("*",) if many else ())))
                break
    return paths


def _discover() -> dict[str, Kind]:
    hints = typing.get_type_hints(Config)
    kinds = {}
    for name in Config.model_fields:
        if name in REGISTRY_KINDS:
            continue
        model, many = _model_of(hints[name])
        if model is None or (many and "name" not in model.model_fields):
            continue
        kinds[name] = Kind(name, model, not many, tuple(_secret_paths(model)), CONTROLLED_KINDS.get(name))
    return kinds


KINDS: dict[str, Kind] = _discover()  # in Config's field order: topology first, then what refers to it


def canonical(instance: BaseModel) -> bytes:
    """The stored form of a validated object: JSON without defaults, fields in model order."""
    return orjson.dumps(instance.model_dump(mode="json", exclude_defaults=True))


def digest(data: bytes) -> str:
    """The content hash releases and `apply` compare objects by."""
    return hashlib.sha256(data).hexdigest()


def object_key(kind: str, name: str) -> str:
    return f"{kind}/{name}" if name else kind
