"""Lookup by host name, the one way every part of the node does it.

An exact name first, then the longest matching wildcard (`*.example.com` covers names at
any depth below it), then the catch-all `*`. Used for applications by Host and for
certificates by SNI; the first entry for a name wins.
"""

from __future__ import annotations

from typing import Generic, TypeVar

Value = TypeVar("Value")


class DomainTable(Generic[Value]):
    __slots__ = ("exact", "wildcards", "default", "catch_all", "first_is_default")

    def __init__(self, first_is_default: bool = False):
        """`first_is_default`: without a catch-all, answer unknown names with the first value."""
        self.exact: dict[str, Value] = {}
        self.wildcards: dict[str, Value] = {}
        self.default: Value | None = None
        self.catch_all = False
        self.first_is_default = first_is_default

    def add(self, domain: str, value: Value) -> None:
        if domain == "*":
            if not self.catch_all:
                self.default, self.catch_all = value, True
            return
        if self.first_is_default and self.default is None:
            self.default = value
        if domain.startswith("*."):
            self.wildcards.setdefault(domain[1:], value)
        else:
            self.exact.setdefault(domain, value)

    def lookup(self, name: str) -> Value | None:
        """`name` lower case, without port or trailing dot."""
        value = self.exact.get(name)
        if value is not None:
            return value
        if self.wildcards:
            dot = name.find(".")
            while dot >= 0:
                value = self.wildcards.get(name[dot:])
                if value is not None:
                    return value
                dot = name.find(".", dot + 1)
        return self.default
