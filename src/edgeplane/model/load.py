"""Reading and writing configuration files: YAML or JSON in, the typed `Config` out.

Every problem is reported as a `Problem` with the field path, the file line it came from
and what was expected; loading either returns a whole valid `Config` or raises
`ConfigError` with all problems at once. Nothing here compiles or applies configuration.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .config import Config

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


@dataclass(frozen=True)
class Problem:
    path: str
    message: str
    line: int | None = None

    def format(self, source: str) -> str:
        where = f"{source}:{self.line}" if self.line else source
        return f"{where}: {self.path or '(top level)'}: {self.message}"


class ConfigError(Exception):
    def __init__(self, source: str, problems: list[Problem]):
        self.source = source
        self.problems = problems
        super().__init__("\n".join(p.format(source) for p in problems))


def format_path(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def _line_map(node: yaml.Node | None, path: str = "", lines: dict[str, int] | None = None) -> dict[str, int]:
    """Map every field path of a composed YAML document to its 1-based line."""
    lines = {} if lines is None else lines
    if node is None:
        return lines
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            child = f"{path}.{key.value}" if path else str(key.value)
            lines[child] = key.start_mark.line + 1
            _line_map(value, child, lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _line_map(item, f"{path}[{index}]", lines)
    return lines


def line_for(path: str, lines: dict[str, int]) -> int | None:
    while path:
        if path in lines:
            return lines[path]
        cut = max(path.rfind("."), path.rfind("["))
        path = path[:cut] if cut > 0 else ""
    return lines.get("")


def problems_of(errors: list[dict[str, Any]], lines: dict[str, int] | None = None) -> list[Problem]:
    """pydantic error records → problems with field paths (and lines, when known)."""
    lines = lines or {}
    problems = []
    for item in errors:
        # Discriminated unions add the tag (e.g. "proxy") to the location; the YAML path
        # has it too, as the action's single key, so it stays.
        path = format_path(item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        for line in message.splitlines():
            if ": " in line and line.split(": ", 1)[0].startswith(_top_level_fields()):
                sub, text = line.split(": ", 1)
                problems.append(Problem(sub, text, line_for(sub, lines)))
            else:
                full, text = join_relative(path, line)
                problems.append(Problem(full, with_input(text, item), line_for(full, lines)))
    return problems


_RELATIVE = re.compile(r"^([a-z_]*(?:\[\d+\])?): (.*)$", re.DOTALL)


def join_relative(path: str, message: str) -> tuple[str, str]:
    """Fold a validator's relative location ("values[1]: ...") into the field path."""
    match = _RELATIVE.match(message)
    if not match:
        return path, message
    relative, text = match.groups()
    if not relative:
        return path, message
    if relative.startswith("["):
        return path + relative, text
    field = relative.split("[", 1)[0]
    if path == field or path.endswith("." + field):
        path = path[: len(path) - len(field)].rstrip(".")
    return (f"{path}.{relative}" if path else relative), text


def _top_level_fields() -> tuple[str, ...]:
    return tuple(f"{name}{sep}" for name in Config.model_fields for sep in "[.")


def with_input(message: str, item: dict[str, Any]) -> str:
    if item["type"] in ("missing", "extra_forbidden") or "input" not in item:
        return message
    shown = repr(item["input"])
    return message if len(shown) > 60 or isinstance(item["input"], (dict, list)) else f"{message} (got {shown})"


def parse(text: str, source: str = "<config>") -> Config:
    """Validate configuration text (YAML, or JSON, which YAML reads too)."""
    try:
        data = json.loads(text) if source.endswith(".json") else yaml.load(text, Loader=_Loader)
    except (yaml.YAMLError, json.JSONDecodeError) as error:
        line = getattr(getattr(error, "problem_mark", None), "line", None)
        line = line + 1 if line is not None else getattr(error, "lineno", None)
        raise ConfigError(source, [Problem("", f"not valid YAML/JSON: {error}", line)]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, [Problem("", "expected a mapping of partitions, upstreams, applications, ...", 1)])
    try:
        return Config.model_validate(data)
    except ValidationError as error:  # only now the lines are worth finding (composing costs more than loading)
        lines = _line_map(yaml.compose(text, Loader=_Loader))
        raise ConfigError(source, problems_of(error.errors(include_url=False), lines)) from None


def read(path: str | Path) -> str:
    """A config file's text, or `ConfigError` saying why it cannot be read."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(str(path), [Problem("", f"cannot read: {error}")]) from None


def load(path: str | Path) -> Config:
    return parse(read(path), str(path))


def dump(config: Config, fmt: str = "yaml") -> str:
    data = config.model_dump(mode="json", exclude_defaults=True)
    if fmt == "json":
        return json.dumps(data, indent=2) + "\n"
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False)
