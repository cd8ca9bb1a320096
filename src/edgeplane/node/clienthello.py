"""The TLS ClientHello as the client sent it: server name, ALPN, and the JA4 fingerprint.

Read from bytes peeked before OpenSSL sees them (OpenSSL's own view drops what it does not
know, such as GREASE and newer extensions, which JA4 needs). Pure functions over bytes:
no sockets, no OpenSSL. JA4 follows FoxIO's public specification: GREASE ignored
everywhere, ciphers and extensions sorted, SNI and ALPN left out of the extension hash,
signature algorithms in the order sent, SHA-256 truncated to 12 hex digits.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

HANDSHAKE = 22
CLIENT_HELLO = 1
MAX_HELLO = 64 * 1024  # a ClientHello larger than this is refused
SERVER_NAME, ALPN, SIGNATURE_ALGORITHMS, SUPPORTED_VERSIONS = 0x0000, 0x0010, 0x000D, 0x002B
_VERSIONS = {0x0304: "13", 0x0303: "12", 0x0302: "11", 0x0301: "10", 0x0300: "s3", 0x0200: "s2",
             0x0100: "s1", 0xFEFF: "d1", 0xFEFD: "d2", 0xFEFC: "d3"}
_EMPTY_HASH = "000000000000"


class NotTls(ValueError):
    """The bytes are not a TLS ClientHello (plain HTTP on an HTTPS port, garbage, ...)."""


@dataclass(frozen=True, slots=True)
class ClientHello:
    version: int                  # legacy_version of the hello
    ciphers: tuple[int, ...]
    extensions: tuple[int, ...]   # in the order sent
    server_name: str              # lower case, no trailing dot; "" without SNI
    has_server_name: bool
    alpn: tuple[bytes, ...]
    supported_versions: tuple[int, ...]
    signature_algorithms: tuple[int, ...]


def is_grease(value: int) -> bool:
    return value & 0x0F0F == 0x0A0A and value >> 8 == value & 0xFF


def read_hello(data: bytes) -> ClientHello | int:
    """The ClientHello in `data` (records as received), or how many bytes are needed in all
    before it can be read. Raises `NotTls` for anything else."""
    handshake = bytearray()
    offset = 0
    while True:
        if len(data) < offset + 5:
            return offset + 5
        if data[offset] != HANDSHAKE or data[offset + 1] != 3:
            raise NotTls("not a TLS handshake record")
        length = int.from_bytes(data[offset + 3:offset + 5], "big")
        if not 0 < length <= 16384 + 2048:
            raise NotTls("invalid TLS record length")
        end = offset + 5 + length
        if len(data) < end:
            return end
        handshake += data[offset + 5:end]
        offset = end
        if len(handshake) >= 4:
            if handshake[0] != CLIENT_HELLO:
                raise NotTls("the first handshake message is not a ClientHello")
            size = 4 + int.from_bytes(handshake[1:4], "big")
            if size > MAX_HELLO:
                raise NotTls("ClientHello too large")
            if len(handshake) >= size:
                return parse_hello(bytes(handshake[4:size]))


def parse_hello(body: bytes) -> ClientHello:
    """A ClientHello message body (after its 4-byte handshake header). Offsets by hand: this
    runs for every TLS connection, before the handshake."""
    try:
        version = _U16(body, 0)[0]
        at = _within(body, 35 + body[34], len(body))  # random, session id
        size = _U16(body, at)[0]
        ciphers = struct.unpack_from(f">{size // 2}H", body, at + 2)
        at = _within(body, at + 2 + size, len(body))
        at = _within(body, at + 1 + body[at], len(body))  # compression methods
        extensions: list[int] = []
        name, has_name, alpn, versions, algorithms = "", False, (), (), ()
        if at < len(body):
            stop = _within(body, at + 2 + _U16(body, at)[0], len(body))
            at += 2
            while at < stop:
                kind, size = _U16x2(body, at)
                data = body[at + 4:_within(body, at + 4 + size, stop)]
                at += 4 + size
                extensions.append(kind)
                if kind == SERVER_NAME:
                    has_name, name = True, _server_name(data)
                elif kind == ALPN:
                    alpn = _alpn(data)
                elif kind == SUPPORTED_VERSIONS:
                    versions = _numbers(data[1:_within(data, 1 + data[0], len(data))])
                elif kind == SIGNATURE_ALGORITHMS:
                    algorithms = _numbers(data[2:_within(data, 2 + _U16(data, 0)[0], len(data))])
    except (IndexError, struct.error):
        raise NotTls("truncated ClientHello") from None
    return ClientHello(version, ciphers, tuple(extensions), name, has_name, alpn, versions, algorithms)


_U16 = struct.Struct(">H").unpack_from
_U16x2 = struct.Struct(">HH").unpack_from


def _within(data: bytes, end: int, limit: int) -> int:
    """`end`, if the field ending there fits in the first `limit` bytes (else IndexError)."""
    if end > limit:
        raise IndexError
    return end


def _numbers(data: bytes) -> tuple[int, ...]:
    return struct.unpack(f">{len(data) // 2}H", data[:len(data) // 2 * 2])


def _server_name(data: bytes) -> str:
    stop = _within(data, 2 + _U16(data, 0)[0], len(data))
    at = 2
    while at < stop:
        kind, size = data[at], _U16(data, at + 1)[0]
        end = _within(data, at + 3 + size, stop)
        if kind == 0:
            return data[at + 3:end].decode("ascii", "replace").lower().rstrip(".")
        at = end
    return ""


def _alpn(data: bytes) -> tuple[bytes, ...]:
    stop = _within(data, 2 + _U16(data, 0)[0], len(data))
    at, found = 2, []
    while at < stop:
        end = _within(data, at + 1 + data[at], stop)
        found.append(data[at + 1:end])
        at = end
    return tuple(found)


# --- JA4 ---------------------------------------------------------------------------------


def _hash12(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _alpn_chars(alpn: tuple[bytes, ...]) -> str:
    if not alpn or not alpn[0]:
        return "00"
    first, last = alpn[0][0], alpn[0][-1]
    if chr(first).isascii() and chr(first).isalnum() and chr(last).isascii() and chr(last).isalnum():
        return chr(first) + chr(last)
    hexed = alpn[0].hex()
    return hexed[0] + hexed[-1]


def ja4_parts(hello: ClientHello) -> tuple[str, str, str]:
    """JA4's three parts before hashing: the prefix, the sorted cipher list, and the sorted
    extension list with the signature algorithms (the JA4_r string, split at its parts)."""
    ciphers = sorted(c for c in hello.ciphers if not is_grease(c))
    extensions = [e for e in hello.extensions if not is_grease(e)]
    versions = [v for v in hello.supported_versions if not is_grease(v)]
    version = _VERSIONS.get(max(versions) if versions else hello.version, "00")
    prefix = (f"t{version}{'d' if hello.has_server_name else 'i'}{min(len(ciphers), 99):02d}"
              f"{min(len(extensions), 99):02d}{_alpn_chars(hello.alpn)}")
    cipher_list = ",".join(f"{c:04x}" for c in ciphers)
    extension_list = ",".join(f"{e:04x}" for e in sorted(e for e in extensions if e not in (SERVER_NAME, ALPN)))
    algorithms = ",".join(f"{a:04x}" for a in hello.signature_algorithms if not is_grease(a))
    return prefix, cipher_list, extension_list + (f"_{algorithms}" if algorithms else "")


def ja4(hello: ClientHello) -> str:
    prefix, ciphers, extensions = ja4_parts(hello)
    return (f"{prefix}_{_hash12(ciphers) if ciphers else _EMPTY_HASH}_"
            f"{_hash12(extensions) if extensions and not extensions.startswith('_') else _EMPTY_HASH}")
