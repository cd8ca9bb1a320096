"""The few OpenSSL calls Python's `ssl` does not offer, made on the `SSL_CTX` behind an
`ssl.SSLContext`: session-ticket keys chosen by the node (a callback), the session id
context, and TLS 1.3 cipher suites.

Symbols come from the very libssl the `_ssl` module is linked with, and the pointer
behind a context is checked (its options must read back the same) before it is used, so a
Python built differently fails loudly at start instead of corrupting memory. Nothing here
decides policy: `tickets.py` says which key, `tls.py` which context.
"""

from __future__ import annotations

import _ssl
import ctypes
import os
import ssl
from collections.abc import Callable

_lib = ctypes.CDLL(_ssl.__file__)  # dlsym on it also searches the libssl/libcrypto it links

_lib.SSL_CTX_get_options.restype = ctypes.c_uint64
_lib.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
_lib.SSL_CTX_set_session_id_context.restype = ctypes.c_int
_lib.SSL_CTX_set_session_id_context.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint]
_lib.SSL_CTX_set_ciphersuites.restype = ctypes.c_int
_lib.SSL_CTX_set_ciphersuites.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
_lib.EVP_CIPHER_fetch.restype = ctypes.c_void_p
_lib.EVP_CIPHER_fetch.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
for _name in ("EVP_EncryptInit_ex", "EVP_DecryptInit_ex"):
    getattr(_lib, _name).restype = ctypes.c_int
    getattr(_lib, _name).argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p,
                                     ctypes.c_void_p]
_lib.EVP_MAC_CTX_set_params.restype = ctypes.c_int
_lib.EVP_MAC_CTX_set_params.argtypes = [ctypes.c_void_p, ctypes.c_void_p]

# (SSL *, key name, iv, EVP_CIPHER_CTX *, EVP_MAC_CTX *, encrypt): plain addresses, the cheapest to pass
TICKET_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                   ctypes.c_void_p, ctypes.c_int)
_lib.SSL_CTX_set_tlsext_ticket_key_evp_cb.restype = ctypes.c_int
_lib.SSL_CTX_set_tlsext_ticket_key_evp_cb.argtypes = [ctypes.c_void_p, TICKET_CALLBACK]

# Fetched once: the EVP_aes_256_cbc() of OpenSSL 3 would be looked up again at every ticket.
_AES_256_CBC = _lib.EVP_CIPHER_fetch(None, b"AES-256-CBC", None)
IV_SIZE = 16
NAME_SIZE = 16


class _Param(ctypes.Structure):
    """OSSL_PARAM: what EVP_MAC_CTX_set_params reads."""

    _fields_ = [("key", ctypes.c_char_p), ("data_type", ctypes.c_uint), ("data", ctypes.c_void_p),
                ("data_size", ctypes.c_size_t), ("return_size", ctypes.c_size_t)]


_UTF8_STRING, _OCTET_STRING, _UNMODIFIED = 4, 5, ctypes.c_size_t(-1).value
_SHA256 = ctypes.create_string_buffer(b"SHA256")


def context_pointer(context: ssl.SSLContext) -> int:
    """The `SSL_CTX *` of a context (the first field after the object header)."""
    pointer = ctypes.c_void_p.from_address(id(context) + object.__basicsize__).value
    if not pointer or _lib.SSL_CTX_get_options(pointer) != context.options:
        raise RuntimeError("this Python's ssl module lays out SSLContext differently; "
                           "session tickets and session id contexts cannot be set")
    return pointer


def set_session_id_context(context: ssl.SSLContext, value: bytes) -> None:
    """Sessions (and tickets) resume only on a context with the same value: one per application."""
    value = value[:32]
    if not _lib.SSL_CTX_set_session_id_context(context_pointer(context), value, len(value)):
        raise RuntimeError("SSL_CTX_set_session_id_context failed")


def set_ciphersuites(context: ssl.SSLContext, suites: str) -> None:
    if not _lib.SSL_CTX_set_ciphersuites(context_pointer(context), suites.encode()):
        raise ValueError(f"no TLS 1.3 cipher suite in {suites!r}")


KeyLookup = Callable[[bytes | None], "tuple[bytes, bytes, bytes, bool] | None"]
"""`lookup(None)` → the key to encrypt with; `lookup(name)` → that key if still accepted.
A key is (name, hmac key, aes key, is the current one)."""


class _PreparedKey:
    """One ticket key as the callback hands it to OpenSSL: its HMAC parameters built once."""

    __slots__ = ("name", "aes", "hmac", "params")

    def __init__(self, name: bytes, hmac: bytes, aes: bytes):
        self.name, self.aes = name, aes
        self.hmac = ctypes.create_string_buffer(hmac, len(hmac))  # kept alive: params points into it
        self.params = (_Param * 3)(
            _Param(b"digest", _UTF8_STRING, ctypes.cast(_SHA256, ctypes.c_void_p), 6, _UNMODIFIED),
            _Param(b"key", _OCTET_STRING, ctypes.cast(self.hmac, ctypes.c_void_p), len(hmac), _UNMODIFIED),
            _Param(None, 0, None, 0, 0))


def ticket_callback(lookup: KeyLookup) -> ctypes._CFuncPtr:
    """An OpenSSL ticket-key callback over `lookup`; keep a reference while contexts use it.
    Each key's OpenSSL parameters are prepared at its first use, not at every handshake."""
    prepared: dict[tuple[bytes, bytes, bytes], _PreparedKey] = {}
    encrypt_init, decrypt_init, set_params = _lib.EVP_EncryptInit_ex, _lib.EVP_DecryptInit_ex, _lib.EVP_MAC_CTX_set_params
    memmove, urandom = ctypes.memmove, os.urandom

    def prepare(key: tuple[bytes, bytes, bytes, bool]) -> _PreparedKey:
        found = prepared.get(key[:3])
        if found is None:
            if len(prepared) >= 16:  # keys rotate: forget the old ones now and then
                prepared.clear()
            found = prepared[key[:3]] = _PreparedKey(*key[:3])
        return found

    def callback(_ssl: int, name: int, iv: int, cipher: int, mac: int, encrypt: int) -> int:
        try:
            if encrypt:
                key = lookup(None)
                if key is None:
                    return 0  # no key: no ticket
                ready = prepare(key)
                memmove(name, ready.name, NAME_SIZE)
                memmove(iv, urandom(IV_SIZE), IV_SIZE)
                initialised = encrypt_init(cipher, _AES_256_CBC, None, ready.aes, iv)
            else:
                key = lookup(ctypes.string_at(name, NAME_SIZE))
                if key is None:
                    return 0  # unknown or expired: a full handshake, and a fresh ticket
                ready = prepare(key)
                initialised = decrypt_init(cipher, _AES_256_CBC, None, ready.aes, iv)
            if not initialised or not set_params(mac, ready.params):
                return -1
            return 1 if encrypt or key[3] else 2  # 2: accepted, but issue a ticket under the current key
        except Exception:  # an exception must never cross into OpenSSL
            return -1
    return TICKET_CALLBACK(callback)


def set_ticket_callback(context: ssl.SSLContext, callback: ctypes._CFuncPtr) -> None:
    if not _lib.SSL_CTX_set_tlsext_ticket_key_evp_cb(context_pointer(context), callback):
        raise RuntimeError("SSL_CTX_set_tlsext_ticket_key_evp_cb failed")
