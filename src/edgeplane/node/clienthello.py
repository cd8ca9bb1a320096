"""The TLS ClientHello as the client sent it: server name, ALPN, and the JA4 fingerprint.

Read from bytes peeked before OpenSSL sees them (OpenSSL's own view drops what it does not
know, such as GREASE and newer extensions, which JA4 needs). Pure functions over bytes:
no sockets, no OpenSSL. JA4 follows FoxIO's public specification: GREASE ignored
everywhere, ciphers and extensions sorted, SNI and ALPN left out of the extension hash,
signature algorithms in the order sent, SHA-256 truncated to 12 hex digits.
"""

from __future__ import annotations

import hashlib
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
    """A ClientHello message body (after its 4-byte handshake header)."""
    try:
        reader = _Reader(body)
        version = reader.number(2)
        reader.skip(32)
        reader.skip(reader.number(1))
        suites = reader.block(2)
        ciphers = tuple(int.from_bytes(suites[i:i + 2], "big") for i in range(0, len(suites) - 1, 2))
        reader.skip(reader.number(1))
        extensions: list[int] = []
        name, has_name, alpn, versions, algorithms = "", False, (), (), ()
        if reader.left():
            block = _Reader(reader.block(2))
            while block.left():
                kind = block.number(2)
                data = block.block(2)
                extensions.append(kind)
                if kind == SERVER_NAME:
                    has_name, name = True, _server_name(data)
                elif kind == ALPN:
                    alpn = _alpn(data)
                elif kind == SUPPORTED_VERSIONS:
                    versions = _numbers(_Reader(data).block(1))
                elif kind == SIGNATURE_ALGORITHMS:
                    algorithms = _numbers(_Reader(data).block(2))
    except IndexError:
        raise NotTls("truncated ClientHello") from None
    return ClientHello(version, ciphers, tuple(extensions), name, has_name, alpn, versions, algorithms)


class _Reader:
    __slots__ = ("data", "at")

    def __init__(self, data: bytes):
        self.data, self.at = data, 0

    def left(self) -> int:
        return len(self.data) - self.at

    def number(self, size: int) -> int:
        if self.at + size > len(self.data):
            raise IndexError
        value = int.from_bytes(self.data[self.at:self.at + size], "big")
        self.at += size
        return value

    def skip(self, size: int) -> None:
        if self.at + size > len(self.data):
            raise IndexError
        self.at += size

    def block(self, length_size: int) -> bytes:
        size = self.number(length_size)
        self.skip(size)
        return self.data[self.at - size:self.at]


def _numbers(data: bytes) -> tuple[int, ...]:
    return tuple(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data) - 1, 2))


def _server_name(data: bytes) -> str:
    names = _Reader(_Reader(data).block(2))
    while names.left():
        kind, name = names.number(1), names.block(2)
        if kind == 0:
            return name.decode("ascii", "replace").lower().rstrip(".")
    return ""


def _alpn(data: bytes) -> tuple[bytes, ...]:
    protocols = _Reader(_Reader(data).block(2))
    found = []
    while protocols.left():
        found.append(protocols.block(1))
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
