"""ACME (RFC 8555): certificates issued and renewed for the node, proved over HTTP-01.

The `AcmeManager` runs once per node (in the master; nothing in it depends on being
there, so the control plane can host it later): it keeps an account key and the issued
certificates in the node's data directory (0600), renews them `renew_before` their
expiry, and tells the workers when a certificate changed. Workers answer
`/.well-known/acme-challenge/TOKEN` on plain ports, before any rule, from the files the
manager writes while an order is pending.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ..model.config import Acme, Certificate

CHALLENGE_PREFIX = "/.well-known/acme-challenge/"
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,256}$")


def challenge_directory(data_dir: Path) -> Path:
    return data_dir / "acme" / "challenges"


def acme_paths(data_dir: Path, name: str) -> tuple[Path, Path]:
    """Where an issued certificate (full chain) and its key are kept."""
    base = data_dir / "acme" / "certs"
    return base / f"{name}.crt", base / f"{name}.key"


def challenge_answer(directory: Path, path: str) -> bytes | None:
    """The key authorization for an HTTP-01 request path, if an order is waiting for it."""
    token = path[len(CHALLENGE_PREFIX):]
    if not _TOKEN.match(token):
        return None
    try:
        return (directory / token).read_bytes()
    except OSError:
        return None


# --- the manager: one per node ------------------------------------------------------------

ORDER_TIMEOUT = 120.0  # seconds an order may take from creation to its certificate


def write_private(path: Path, data: bytes) -> None:
    """Write a file only its owner can read, atomically (a reader never sees half of it)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(path.name + ".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
    os.replace(temporary, path)


def expires(cert_path: Path) -> float | None:
    """When an issued certificate expires (POSIX time), None if there is none readable."""
    try:
        leaf = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
    except (OSError, ValueError):
        return None
    return leaf.not_valid_after_utc.timestamp()


class AcmeManager:
    """Issues and renews the `acme: true` certificates of a config into `data_dir`.

    `check(settings, certificates)` is synchronous (the `acme` client is) and returns the
    names of certificates it issued and how many it could not; the caller runs it off its
    event loop, tells the workers, and tries the failed ones again soon. Failures are logged
    per certificate."""

    def __init__(self, data_dir: Path, log: Callable[..., None]):
        self.data_dir = data_dir
        self.log = log
        self.challenges = challenge_directory(data_dir)

    def due(self, settings: Acme, certificates: list[Certificate], now: float | None = None) -> list[Certificate]:
        now = time.time() if now is None else now
        due = []
        for certificate in certificates:
            if not certificate.acme:
                continue
            cert_path, _ = acme_paths(self.data_dir, certificate.name)
            until = expires(cert_path)
            if until is None or until - settings.renew_before <= now or self.domains_changed(certificate):
                due.append(certificate)
        return due

    def domains_changed(self, certificate: Certificate) -> bool:
        cert_path, _ = acme_paths(self.data_dir, certificate.name)
        try:
            leaf = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
            names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except (OSError, ValueError, x509.ExtensionNotFound):
            return True
        return set(names.get_values_for_type(x509.DNSName)) != {d.lower() for d in certificate.domains}

    def check(self, settings: Acme, certificates: list[Certificate]) -> tuple[list[str], int]:
        due = self.due(settings, certificates)
        if not due:
            return [], 0
        try:
            client = self.client(settings)
        except Exception as error:  # the directory is down, the account refused: try at the next check
            self.log("acme_failed", directory=settings.directory, error=f"{type(error).__name__}: {error}")
            return [], len(due)
        issued = []
        for certificate in due:
            try:
                self.issue(client, certificate)
            except Exception as error:
                self.log("acme_failed", certificate=certificate.name, domains=certificate.domains,
                         error=f"{type(error).__name__}: {error}")
                continue
            issued.append(certificate.name)
            self.log("acme_issued", certificate=certificate.name, domains=certificate.domains)
        return issued, len(due) - len(issued)

    # --- the protocol ---------------------------------------------------------------------

    def client(self, settings: Acme):  # -> acme.client.ClientV2
        # The ACME client (requests, josepy) is imported only where certificates are issued,
        # never by workers.
        import josepy as jose
        from acme import client as acme_client
        from acme import messages
        key_path = self.data_dir / "acme" / "account.key"
        account_path = self.data_dir / "acme" / f"account-{hashlib.sha256(settings.directory.encode()).hexdigest()[:16]}.json"
        if not key_path.exists():
            write_private(key_path, ec.generate_private_key(ec.SECP256R1()).private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        key = jose.JWKEC(key=serialization.load_pem_private_key(key_path.read_bytes(), None))
        network = acme_client.ClientNetwork(key, alg=jose.ES256, verify_ssl=settings.ca_bundle or True,
                                            user_agent="edgeplane")
        directory = acme_client.ClientV2.get_directory(settings.directory, network)
        client = acme_client.ClientV2(directory, network)
        if account_path.exists():
            network.account = messages.RegistrationResource.json_loads(account_path.read_text())
        else:
            registration = messages.NewRegistration.from_data(email=settings.email, terms_of_service_agreed=True)
            account = client.new_account(registration)
            write_private(account_path, account.json_dumps().encode())
        return client

    def issue(self, client, certificate: Certificate) -> None:
        from acme import challenges, crypto_util, messages
        key_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        order = client.new_order(crypto_util.make_csr(key_pem, certificate.domains))
        written = []
        try:
            for authorization in order.authorizations:
                if authorization.body.status == messages.STATUS_VALID:
                    continue
                offer = next((c for c in authorization.body.challenges if isinstance(c.chall, challenges.HTTP01)), None)
                if offer is None:
                    raise RuntimeError(f"no HTTP-01 challenge offered for {authorization.body.identifier.value}")
                response, validation = offer.response_and_validation(client.net.key)
                answer = self.challenges / offer.chall.encode("token")
                write_private(answer, validation.encode())
                answer.chmod(0o644)  # workers read it
                written.append(answer)
                client.answer_challenge(offer, response)
            deadline = datetime.datetime.now() + datetime.timedelta(seconds=ORDER_TIMEOUT)
            order = client.poll_and_finalize(order, deadline)
        finally:
            for path in written:
                path.unlink(missing_ok=True)
        cert_path, key_path = acme_paths(self.data_dir, certificate.name)
        write_private(key_path, key_pem)
        write_private(cert_path, order.fullchain_pem.encode())
