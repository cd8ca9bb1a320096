"""TLS termination: one server context per certificate, chosen by SNI per HTTPS port.

Each HTTPS listener keeps one front context for its whole life; its SNI callback asks the
worker's current runtime which certificate serves the name, so a reload changes
certificates for new handshakes without rebinding the port or touching open connections.
A private key given inline never touches a disk: OpenSSL reads it from an anonymous
memory file of this process.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable

from ..model.config import Application, Certificate
from .domains import DomainTable

SNI_ATTRIBUTE = "edgeplane_sni"  # where the callback leaves the name a client asked for


def certificate_context(certificate: Certificate) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    if certificate.cert_file is not None and certificate.key_file is not None:
        context.load_cert_chain(certificate.cert_file, certificate.key_file)
        return context
    # OpenSSL reads only paths: inline PEM goes through anonymous memory files, never a disk.
    descriptors = []
    try:
        paths = []
        for pem, path in ((certificate.cert, certificate.cert_file), (certificate.key, certificate.key_file)):
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
    return context


def certificate_names(certificate: Certificate) -> list[str]:
    """The DNS names the certificate is valid for (its subjectAltName), lower case."""
    from cryptography import x509
    if certificate.cert is not None:
        pem = certificate.cert.encode()
    else:
        with open(certificate.cert_file or "", "rb") as handle:
            pem = handle.read()
    leaf = x509.load_pem_x509_certificates(pem)[0]
    try:
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [name.lower() for name in names.get_values_for_type(x509.DNSName)]


def covers(names: list[str], domain: str) -> bool:
    """Whether a certificate for `names` is valid for `domain` (a name or *.wildcard)."""
    if domain in names:
        return True
    parent = domain.partition(".")[2]
    return not domain.startswith("*.") and bool(parent) and f"*.{parent}" in names


def compile_tls(applications: list[Application], certificates: list[Certificate]) -> dict[int, DomainTable[ssl.SSLContext]]:
    """The TLS ports of these applications; each domain gets the application's certificate
    that is valid for it (the first one when none is). A name no domain claims gets the
    catch-all application's certificate, else the first application's."""
    by_name = {c.name: c for c in certificates}
    contexts: dict[str, tuple[ssl.SSLContext, list[str]]] = {}
    ports: dict[int, DomainTable[ssl.SSLContext]] = {}
    for app in applications:
        if not app.https_ports:
            continue
        chosen = []
        for name in app.certificates:
            if name not in contexts:
                contexts[name] = (certificate_context(by_name[name]), certificate_names(by_name[name]))
            chosen.append(contexts[name])
        for domain in app.domains:
            context = next((c for c, names in chosen if covers(names, domain)), chosen[0][0])
            for port in app.https_ports:
                ports.setdefault(port, DomainTable(first_is_default=True)).add(domain, context)
    return ports


def front_context(current: Callable[[], dict[int, DomainTable[ssl.SSLContext]]], port: int, ) -> ssl.SSLContext:
    """The context a listener is created with: it only picks the real one by SNI."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])

    def choose(ssl_object: ssl.SSLObject, server_name: str | None, _front: ssl.SSLContext) -> int | None:
        table = current().get(port)
        name = server_name.lower().rstrip(".") if server_name else ""
        selected = table.lookup(name) if table is not None else None
        if selected is None:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        setattr(ssl_object, SNI_ATTRIBUTE, server_name or "")
        ssl_object.context = selected
        return None
    context.sni_callback = choose
    return context
