"""TLS server contexts for the HTTP port (HTTPS and WSS) and SIP over TLS,
and the development certificate of ``callbridge certs dev``.

:func:`load_server_context` checks a certificate and key pair before
handing it to OpenSSL, so that ``callbridge serve`` fails at start-up with
a sentence naming the file and the fault (missing, unreadable, not PEM, a
key that is not the certificate's, outside its validity period) rather
than with OpenSSL's error codes at the first handshake.
:func:`reload_server_context` re-runs ``load_cert_chain`` on the same
context: connections already open keep their session, new handshakes get
the new certificate (OpenSSL copies the context's certificate into each
connection when the connection is created). A bad new pair is refused
before the context is touched, so the old certificate stays in use.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = [
    "CertificateInfo", "TlsError", "check_pair", "load_server_context", "reload_server_context",
    "write_dev_certificate", "spki_sha256", "DEV_CERT_DAYS", "DEV_CERT_ORGANIZATION",
]

#: Days a development certificate is valid.
DEV_CERT_DAYS = 90
#: The organization named in a development certificate's subject.
DEV_CERT_ORGANIZATION = "callbridge development certificate"


class TlsError(ValueError):
    """A certificate or key that cannot be used; the text names the file
    and says what is wrong."""


@dataclass(frozen=True)
class CertificateInfo:
    """What the engine logs about the certificate it serves."""

    subject: str
    serial: int
    not_before: datetime.datetime
    not_after: datetime.datetime
    #: Issued by itself (its own key verifies its signature): nothing a
    #: browser or a phone trusts by default.
    self_signed: bool


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise TlsError(f"{what} {path}: no such file") from None
    except OSError as exc:
        raise TlsError(f"{what} {path}: cannot read it: {exc.strerror}") from None


def _is_self_signed(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def check_pair(cert_path: Path, key_path: Path, *, now: datetime.datetime | None = None) -> CertificateInfo:
    """Check that ``cert_path`` holds a PEM certificate (its chain may
    follow it) valid at ``now`` and ``key_path`` the private key of that
    certificate.

    :param now: the time the validity period is checked at (default: now, UTC).
    :raises TlsError: naming the file and the fault.
    """
    cert_pem = _read(cert_path, "TLS certificate")
    key_pem = _read(key_path, "TLS key")
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise TlsError(f"TLS certificate {cert_path}: not a PEM certificate") from None
    cert = chain[0]
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise TlsError(f"TLS key {key_path}: the key is encrypted; give an unencrypted key"
                       " (mode 0600)") from None
    except (ValueError, UnsupportedAlgorithm):
        raise TlsError(f"TLS key {key_path}: not a PEM private key") from None
    if key.public_key() != cert.public_key():
        raise TlsError(f"TLS key {key_path} does not match the certificate {cert_path}"
                       " (it is the private key of another certificate)")
    now = now or datetime.datetime.now(datetime.timezone.utc)
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    if now < start:
        raise TlsError(f"TLS certificate {cert_path} is not valid yet: valid from"
                       f" {start:%Y-%m-%d %H:%M:%S} UTC")
    if now > end:
        raise TlsError(f"TLS certificate {cert_path} has expired: valid until"
                       f" {end:%Y-%m-%d %H:%M:%S} UTC")
    return CertificateInfo(
        subject=cert.subject.rfc4514_string(), serial=cert.serial_number,
        not_before=start, not_after=end, self_signed=_is_self_signed(cert),
    )


def load_server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server-side ``SSLContext`` (TLS 1.2 or later) serving ``cert``
    with ``key``, after :func:`check_pair`.

    :raises TlsError: the pair cannot be used (the text says why).
    """
    check_pair(cert, key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(context, cert, key)
    return context


def reload_server_context(context: ssl.SSLContext, cert: Path, key: Path) -> CertificateInfo:
    """Load a new pair into ``context`` for the handshakes to come; open
    connections are not touched. The pair is checked first: on
    :class:`TlsError` the context still serves the old certificate."""
    info = check_pair(cert, key)
    _load_chain(context, cert, key)
    return info


def _load_chain(context: ssl.SSLContext, cert: Path, key: Path) -> None:
    try:
        context.load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, OSError) as exc:
        raise TlsError(f"TLS certificate {cert} and key {key}: OpenSSL refuses them: {exc}") from None


def spki_sha256(cert_pem: bytes) -> str:
    """The base64 SHA-256 of the certificate's SubjectPublicKeyInfo, as
    Chromium's ``--ignore-certificate-errors-spki-list`` takes it."""
    import base64

    cert = x509.load_pem_x509_certificate(cert_pem)
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    digest = hashes.Hash(hashes.SHA256())
    digest.update(spki)
    return base64.b64encode(digest.finalize()).decode("ascii")


def write_dev_certificate(out_dir: Path, hosts: Iterable[str] = (), *, days: int = DEV_CERT_DAYS,
                          overwrite: bool = False) -> tuple[Path, Path]:
    """Write ``cert.pem`` and ``key.pem`` (mode 0600) into ``out_dir``: a
    self-signed EC P-256 certificate for ``hosts`` plus ``localhost``,
    ``127.0.0.1`` and ``::1`` (subjectAltName, RFC 5280 section 4.2.1.6),
    valid ``days`` days from now. For development only: nothing trusts it.

    :param overwrite: replace existing files (else :class:`TlsError`).
    :returns: the certificate's and the key's paths.
    """
    out_dir = Path(out_dir)
    cert_path, key_path = out_dir / "cert.pem", out_dir / "key.pem"
    if not overwrite:
        for path in (cert_path, key_path):
            if path.exists():
                raise TlsError(f"{path} exists; remove it or pass --force to replace it")
    names: list[str] = []
    for host in [*hosts, "localhost", "127.0.0.1", "::1"]:
        host = host.strip()
        if not host:
            raise TlsError("a host name must not be empty")
        if host not in names:
            names.append(host)
    alt_names: list[x509.GeneralName] = []
    for host in names:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(host.strip("[]"))))
        except ValueError:
            try:
                alt_names.append(x509.DNSName(host.encode("idna").decode("ascii")))
            except UnicodeError:
                raise TlsError(f"{host!r} is neither a host name nor an IP address") from None
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, names[0]),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, DEV_CERT_ORGANIZATION),
    ])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # clocks a little behind
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT
        out.write(key_pem)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path
