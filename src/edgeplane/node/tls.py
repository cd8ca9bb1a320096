"""TLS termination: which certificate and policy serve a name, and the contexts that do it.

Compiling a config builds only a name table per HTTPS port (`DomainTable` of `Site`s:
dictionary lookups, whatever the number of certificates). An `SSLContext` is built the
first time a site is used and kept in a bounded per-worker `ContextCache` that outlives
config versions, so a reload reuses every context whose certificate and policy did not
change. Certificate names (subjectAltName) are parsed only for applications that must
choose among several certificates, and remembered by content. Private keys given inline
never touch a disk: OpenSSL reads them from an anonymous memory file of this process.
This module opens no sockets (`listener.py` accepts and hands over).
"""

from __future__ import annotations

import hashlib
import os
import ssl
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from ..model.config import Application, Certificate, Server, TlsPolicy, Upstream, UpstreamTls
from .acme import acme_paths
from .clienthello import ClientHello, ja4
from .domains import DomainTable
from .openssl import set_session_id_context, set_ticket_callback

ALPN = ["http/1.1"]  # what the node speaks; never offer more
VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


@dataclass(frozen=True, slots=True)
class Source:
    """Where a certificate's PEM comes from; equal sources give the same context. `stamp`
    (inode, mtime, size of each file) makes a replaced file a new source."""

    cert: str | None
    key: str | None
    cert_file: str | None
    key_file: str | None
    stamp: tuple = ()


@dataclass(frozen=True, slots=True)
class Site:
    """What a TLS name resolves to: an application's policy with the certificate for it."""

    source: Source
    policy_key: str                                      # the policy (and application), as text
    application: str = field(compare=False)
    policy: TlsPolicy = field(compare=False)


def _stamp(*paths: str) -> tuple:
    stamps = []
    for path in paths:
        st = os.stat(path)
        stamps.append((st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(stamps)


def source_of(certificate: Certificate, data_dir: Path | None) -> Source | None:
    """The certificate's source now; None for an ACME certificate not issued yet."""
    if certificate.acme:
        if data_dir is None:
            return None
        cert_path, key_path = (str(p) for p in acme_paths(data_dir, certificate.name))
        try:
            return Source(None, None, cert_path, key_path, _stamp(cert_path, key_path))
        except FileNotFoundError:
            return None
    files = [p for p in (certificate.cert_file, certificate.key_file) if p is not None]
    return Source(certificate.cert, certificate.key, certificate.cert_file, certificate.key_file, _stamp(*files))


def load_chain(context: ssl.SSLContext, source: Source) -> None:
    """Load a certificate chain and key into a context, from files or from inline PEM."""
    if source.cert is None and source.key is None:
        context.load_cert_chain(source.cert_file, source.key_file)
        return
    descriptors = []
    try:
        paths = []
        for pem, path in ((source.cert, source.cert_file), (source.key, source.key_file)):
            if path is None:
                descriptor = os.memfd_create("edgeplane-tls", os.MFD_CLOEXEC)
                descriptors.append(descriptor)
                os.write(descriptor, (pem or "").encode())
                path = f"/proc/self/fd/{descriptor}"
            paths.append(path)
        context.load_cert_chain(paths[0], paths[1])
    finally:
        for descriptor in descriptors:
            os.close(descriptor)


def source_names(source: Source) -> list[str]:
    """The DNS names the certificate is valid for (its subjectAltName), lower case."""
    from cryptography import x509
    if source.cert is not None:
        pem = source.cert.encode()
    else:
        with open(source.cert_file or "", "rb") as handle:
            pem = handle.read()
    leaf = x509.load_pem_x509_certificates(pem)[0]
    try:
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [name.lower() for name in names.get_values_for_type(x509.DNSName)]


def name_index(sources: list[Source], names: NameCache) -> dict[str, tuple[int, Source]]:
    """Each name (or *.wildcard) certificates are valid for → the first of them, with its position."""
    index: dict[str, tuple[int, Source]] = {}
    for position, source in enumerate(sources):
        for name in names.get(source):
            index.setdefault(name, (position, source))
    return index


def first_covering(index: dict[str, tuple[int, Source]], domain: str) -> Source | None:
    """The first certificate valid for `domain`: for its exact name, or by a wildcard one
    level up (a wildcard domain needs the same wildcard)."""
    exact = index.get(domain)
    parent = domain.partition(".")[2]
    wildcard = index.get(f"*.{parent}") if parent and not domain.startswith("*.") else None
    found = min((entry for entry in (exact, wildcard) if entry is not None), default=None, key=lambda e: e[0])
    return found[1] if found is not None else None


TlsTable = dict[int, DomainTable[Site]]


class NameCache:
    """What compiling TLS settings made, kept from one compile to the next (only what is
    still used): certificate names by source, upstream client contexts by settings."""

    def __init__(self) -> None:
        self.names: dict[Source, list[str]] = {}
        self.next: dict[Source, list[str]] = {}
        self.upstreams: dict[tuple, ssl.SSLContext] = {}
        self.next_upstreams: dict[tuple, ssl.SSLContext] = {}

    def upstream(self, settings: UpstreamTls, client: Certificate | None) -> ssl.SSLContext:
        key = (settings, source_of(client, None) if client is not None else None)
        context = self.next_upstreams.get(key) or self.upstreams.get(key) or upstream_context(settings, client)
        self.next_upstreams[key] = context
        return context

    def get(self, source: Source) -> list[str]:
        names = self.next.get(source)
        if names is None:
            names = self.names.get(source)
            if names is None:
                names = source_names(source)
            self.next[source] = names
        return names

    def done(self) -> None:
        self.names, self.next = self.next, {}
        self.upstreams, self.next_upstreams = self.next_upstreams, {}


def compile_tls(applications: list[Application], certificates: list[Certificate], data_dir: Path | None,
                names: NameCache) -> TlsTable:
    """The HTTPS ports of these applications; each domain gets the application's certificate
    valid for it (the first one when none is). A name no domain claims gets the catch-all
    application's site, else the first application's."""
    by_name = {c.name: c for c in certificates}
    sources: dict[str, Source | None] = {}
    ports: TlsTable = {}
    for app in applications:
        if not app.https_ports:
            continue
        for name in app.certificates:
            if name not in sources:
                sources[name] = source_of(by_name[name], data_dir)
        chosen = [sources[n] for n in app.certificates if sources[n] is not None]
        if not chosen:
            continue  # only ACME certificates, none issued yet: its names are not served over TLS
        policy_key = f"{app.name}\x00{app.tls.model_dump_json()}"
        sites = {id(source): Site(source, policy_key, app.name, app.tls) for source in chosen}
        valid_for = name_index(chosen, names) if len(chosen) > 1 else {}
        for domain in app.domains:
            site = sites[id(first_covering(valid_for, domain) or chosen[0])]
            for port in app.https_ports:
                ports.setdefault(port, DomainTable(first_is_default=True)).add(domain, site)
    return ports


class ContextCache:
    """Server contexts by site, built at first use, least recently used ones dropped past
    `limit`. Kept by the worker across config versions."""

    def __init__(self, ticket_callback: object | None, limit: int = 10000):
        self.ticket_callback = ticket_callback  # None: session tickets off
        self.limit = limit
        self.contexts: OrderedDict[Site, ssl.SSLContext] = OrderedDict()
        self.built = 0

    def get(self, site: Site) -> ssl.SSLContext:
        contexts = self.contexts
        context = contexts.get(site)
        if context is not None:
            contexts.move_to_end(site)
            return context
        context = contexts[site] = server_context(site, self.ticket_callback)
        self.built += 1
        while len(contexts) > self.limit:
            contexts.popitem(last=False)
        return context

    def configure(self, ticket_callback: object | None, limit: int) -> None:
        """A new config: different ticket settings make every context stale."""
        if ticket_callback is not self.ticket_callback:
            self.contexts.clear()
        self.ticket_callback, self.limit = ticket_callback, limit
        while len(self.contexts) > limit:
            self.contexts.popitem(last=False)


def server_context(site: Site, ticket_callback: object | None) -> ssl.SSLContext:
    policy = site.policy
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = VERSIONS[policy.min_version]
    context.maximum_version = VERSIONS[policy.max_version]
    if policy.ciphers:
        context.set_ciphers(policy.ciphers)
    context.set_alpn_protocols(ALPN)
    load_chain(context, site.source)
    auth = policy.client_auth
    if auth is not None:
        context.verify_mode = ssl.CERT_REQUIRED if auth.mode == "required" else ssl.CERT_OPTIONAL
        context.load_verify_locations(cafile=auth.ca_file, cadata=auth.ca)
    # A session resumes only within its application and policy (never across client CAs).
    set_session_id_context(context, hashlib.sha256(site.policy_key.encode()).digest())
    if ticket_callback is None:
        context.options |= ssl.OP_NO_TICKET
        context.num_tickets = 0
    else:
        # One TLS 1.3 ticket per handshake, as Go's servers send: our tickets can be used again
        # (stateless), so a second one would only cost another encryption per handshake.
        context.num_tickets = 1
        set_ticket_callback(context, ticket_callback)
    return context


# --- the verified client certificate ----------------------------------------------------


class TlsSession:
    """What a TLS connection's requests can ask about it; the client certificate is read at
    the first question."""

    __slots__ = ("hello", "sni", "ssl_object", "_ja4", "_identity")

    def __init__(self, hello: ClientHello, client_auth: bool = False):
        self.hello = hello
        self.sni = hello.server_name
        self.ssl_object: ssl.SSLObject | None = None
        self._ja4 = ""
        self._identity: Identity | None = None if client_auth else NO_IDENTITY

    @property
    def ja4(self) -> str:
        if not self._ja4:
            self._ja4 = ja4(self.hello)
        return self._ja4

    @property
    def version(self) -> str:
        return (self.ssl_object.version() or "") if self.ssl_object is not None else ""

    @property
    def identity(self) -> Identity:
        if self._identity is None:
            der = self.ssl_object.getpeercert(binary_form=True) if self.ssl_object is not None else None
            self._identity = identity_of(der) if der else NO_IDENTITY
        return self._identity


@dataclass(frozen=True, slots=True)
class Identity:
    """A verified client certificate: its names and SHA-256 fingerprint."""

    uris: list[str]
    dns: list[str]
    cn: str
    fingerprint: str
    header: bytes  # X-Forwarded-Client-Cert, Envoy's format

    @property
    def primary(self) -> str:
        """The name rules usually want: the first URI SAN (a SPIFFE ID), else DNS SAN, else CN."""
        return (self.uris or self.dns or [self.cn])[0]


NO_IDENTITY = Identity([], [], "", "", b"")


def identity_of(der: bytes) -> Identity:
    from cryptography import x509
    from cryptography.x509.oid import NameOID
    certificate = x509.load_der_x509_certificate(der)
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        dns = san.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        uris, dns = [], []
    cns = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = str(cns[0].value) if cns else ""
    fingerprint = hashlib.sha256(der).hexdigest()
    subject = certificate.subject.rfc4514_string().replace('"', '\\"')
    parts = [f"Hash={fingerprint}", f'Subject="{subject}"'] + [f"URI={u}" for u in uris] + [f"DNS={d}" for d in dns]
    header = ";".join(parts).encode("latin-1", "replace")
    return Identity(uris, dns, cn, fingerprint, header)


# --- TLS to upstreams -------------------------------------------------------------------


def upstream_server_name(upstream: Upstream, server: Server) -> str:
    """The name a TLS upstream's server is asked for (SNI) and verified against: the one
    configured, else the upstream's Host, else the server's address."""
    return upstream.tls.server_name or upstream.host or server.address


def upstream_context(settings: UpstreamTls, client: Certificate | None) -> ssl.SSLContext:
    """The client context for an upstream's servers: verification on unless turned off."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = VERSIONS[settings.min_version]
    context.set_alpn_protocols(ALPN)
    if settings.verify:
        if settings.ca is None and settings.ca_file is None:
            context.load_default_certs()
        else:
            context.load_verify_locations(cafile=settings.ca_file, cadata=settings.ca)
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if client is not None:
        load_chain(context, source_of(client, None))
    return context
