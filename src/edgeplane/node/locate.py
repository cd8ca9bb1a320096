"""Client addresses: where they are (location) and who they really are (trusted proxies).

Both are prepared at compile time into per-prefix-length tables, so a lookup is one dict
hit per distinct prefix length instead of a walk over every network.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable


class PrefixTable:
    """Longest-prefix match of an address against networks, each with a value."""

    def __init__(self, entries: list[tuple[str, str]]):
        by_length: dict[tuple[int, int], dict[int, str]] = {}
        for cidr, value in entries:
            network = ipaddress.ip_network(cidr, strict=False)
            by_length.setdefault((network.version, network.prefixlen), {})[int(network.network_address)] = value
        bits = {4: 32, 6: 128}
        self.tables = [(version, ((1 << bits[version]) - 1) ^ ((1 << (bits[version] - length)) - 1), table)
                       for (version, length), table in sorted(by_length.items(), key=lambda item: -item[0][1])]

    def lookup(self, address: str) -> str | None:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return None
        number = int(ip)
        for version, mask, table in self.tables:
            if version == ip.version:
                value = table.get(number & mask)
                if value is not None:
                    return value
        return None

    def __bool__(self) -> bool:
        return bool(self.tables)


def locator(entries: list[tuple[str, str]], geoip_database: str | None) -> Callable[[str], str]:
    """Address → location: the configured table first, then the MaxMind database's country."""
    table = PrefixTable(entries)
    reader = None
    if geoip_database:
        import maxminddb  # optional: only a config that names a database needs it
        reader = maxminddb.open_database(geoip_database)

    def locate(address: str) -> str:
        found = table.lookup(address) if table else None
        if found is None and reader is not None:
            try:
                record = reader.get(address)
            except ValueError:
                record = None
            found = ((record or {}).get("country") or {}).get("iso_code")
        return found or ""
    return locate


def real_client(peer: str, forwarded_for: bytes, trusted: PrefixTable) -> str:
    """The first address, from the right of X-Forwarded-For, that is not a trusted proxy."""
    if not trusted or trusted.lookup(peer) is None:
        return peer
    for hop in reversed(forwarded_for.decode("latin-1").split(",")):
        hop = hop.strip()
        if hop and trusted.lookup(hop) is None:
            try:
                ipaddress.ip_address(hop)
            except ValueError:
                return peer
            return hop
    return peer
