"""Certificates for the TLS tests: a pair with any validity period, a
client context that trusts given certificates, and the serial number a TLS
server presents."""

from __future__ import annotations

import asyncio
import datetime
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = ["make_pair", "trusting", "served_serial", "serial_of"]


def make_pair(folder: Path, *, not_before: datetime.datetime, not_after: datetime.datetime,
              issuer: str | None = None) -> tuple[Path, Path]:
    """A certificate for ``localhost`` valid from ``not_before`` to
    ``not_after`` (signed by its own key, or issued by ``issuer``'s name and
    a throwaway key: not self-signed) and its key, as PEM files."""
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    signer = key if issuer is None else ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    cert = (
        x509.CertificateBuilder().subject_name(subject)
        .issuer_name(subject if issuer is None else x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(not_before).not_valid_after(not_after)
        .sign(signer, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def trusting(*certs: Path) -> ssl.SSLContext:
    """A client context that verifies the server (chain and host name)
    against ``certs`` only."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=None)
    context.load_verify_locations(cadata="".join(c.read_text() for c in certs))
    return context


def serial_of(cert: Path) -> int:
    return int(x509.load_pem_x509_certificate(cert.read_bytes()).serial_number)


async def served_serial(host: str, port: int, context: ssl.SSLContext) -> int:
    """The serial number of the certificate a new TLS connection to
    ``host:port`` is given (the handshake verified by ``context``)."""
    reader, writer = await asyncio.open_connection(host, port, ssl=context)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return int(x509.load_der_x509_certificate(der).serial_number)
    finally:
        writer.close()
        await writer.wait_closed()
