"""`edgeplane apply`: config files in, the objects to create, replace and delete out.

A file or a directory of YAML/JSON files (lists of the same kind concatenated) is
validated as one `Config`, then compared with the admin's objects by content hash: an
unchanged object is left alone, so applying the same files twice records nothing. Only
the kinds the files mention are managed (never those a controller writes: canary_weights);
with `prune`, objects of those kinds that the files no longer name are deleted. This
module computes; the SDK does the calls.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .model.config import Config
from .model.kinds import KINDS, SINGLETON_NAME, canonical, digest
from .model.load import ConfigError, Problem, load, problems_of

SUFFIXES = (".yaml", ".yml", ".json")


def read(path: Path) -> tuple[Config, set[str]]:
    """The validated config of a file or directory, and the kinds it mentions."""
    if path.is_file():
        config = load(path)
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        return config, set(raw)
    files = sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file())
    if not files:
        raise ConfigError(str(path), [Problem("", f"no {', '.join(SUFFIXES)} files here")])
    merged: dict[str, Any] = {}
    for file in files:
        load_error = None
        try:
            raw = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as error:
            load_error = error
        if load_error is not None or not isinstance(raw, dict):
            raise ConfigError(str(file), [Problem("", f"not a YAML/JSON mapping: {load_error or type(raw).__name__}")])
        for key, value in raw.items():
            if isinstance(value, list):
                merged.setdefault(key, []).extend(value)
            elif key in merged:
                raise ConfigError(str(file), [Problem(key, "given in two files; keep it in one")])
            else:
                merged[key] = value
    try:
        return Config.model_validate(merged), set(merged)
    except ValidationError as error:
        raise ConfigError(str(path), problems_of(error.errors(include_url=False))) from None


def plan(config: Config, mentioned: set[str], current: list[dict], prune: bool = False) -> list[dict]:
    """Batch items (kind, name, data or None) taking the admin's objects to the config's."""
    have = {(o["kind"], o["name"]): o["hash"] for o in current}
    items, wanted = [], set()
    mentioned = {k for k in mentioned if k in KINDS and KINDS[k].controlled_by is None}  # e.g. a release's dump
    for kind in (k for k in KINDS if k in mentioned):
        value = getattr(config, kind)
        for instance in ([value] if KINDS[kind].singleton else value):
            name = SINGLETON_NAME if KINDS[kind].singleton else instance.name
            wanted.add((kind, name))
            data = canonical(instance)
            if have.get((kind, name)) != digest(data):
                items.append({"kind": kind, "name": name, "data": instance.model_dump(mode="json", exclude_defaults=True),
                              "op": "update" if (kind, name) in have else "create"})
    if prune:
        items += [{"kind": kind, "name": name, "data": None, "op": "delete"} for kind, name in sorted(have)
                  if kind in mentioned and not KINDS[kind].singleton and (kind, name) not in wanted]
    return items
