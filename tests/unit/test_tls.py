"""engine.transport.tls: the checks a certificate and key pass before the
engine serves them, the development certificate of ``callbridge certs
dev``, and reloading a context in place."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from tls_certs import make_pair

from engine.cli import main
from engine.transport.tls import (
    TlsError, check_pair, load_server_context, reload_server_context, spki_sha256, write_dev_certificate,
)

UTC = datetime.timezone.utc


def test_dev_certificate_names_hosts_and_loopback(tmp_path: Path) -> None:
    """Check ``write_dev_certificate`` writes a self-signed EC P-256
    certificate whose subjectAltName holds the given names plus localhost,
    127.0.0.1 and ::1, valid 90 days, and its key with mode 0600."""
    cert_path, key_path = write_dev_certificate(tmp_path / "tls", ["pbx.example.test", "192.0.2.7"])
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["pbx.example.test", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("192.0.2.7"), ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == "secp256r1"
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert datetime.timedelta(days=90) <= lifetime <= datetime.timedelta(days=90, minutes=6)
    info = check_pair(cert_path, key_path)
    assert info.self_signed and info.serial == cert.serial_number


def test_dev_certificate_key_mode_even_over_a_loose_file(tmp_path: Path) -> None:
    """Check an existing world-readable key.pem is refused without
    ``overwrite``, and replaced with mode 0600 with it."""
    tmp_path.joinpath("key.pem").write_text("old")
    tmp_path.joinpath("key.pem").chmod(0o644)
    with pytest.raises(TlsError, match=r"key.pem exists; remove it or pass --force"):
        write_dev_certificate(tmp_path)
    _, key_path = write_dev_certificate(tmp_path, overwrite=True)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert key_path.read_text().startswith("-----BEGIN PRIVATE KEY-----")


def test_dev_certificate_refuses_a_bad_host(tmp_path: Path) -> None:
    """Check a host that is neither a name nor an address is named in the error."""
    with pytest.raises(TlsError, match=r"'\.\.bad' is neither a host name nor an IP address"):
        write_dev_certificate(tmp_path, ["..bad"])


def test_certs_dev_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Check ``callbridge certs dev --out DIR --host NAME`` writes the pair,
    says it is for development only, prints the SPKI hash Chromium takes,
    and refuses to overwrite without ``--force``."""
    assert main(["certs", "dev", "--out", str(tmp_path), "--host", "pbx.example.test"]) == 0
    out = capsys.readouterr().out
    assert "development certificate, not for production" in out
    spki = spki_sha256((tmp_path / "cert.pem").read_bytes())
    assert f"--ignore-certificate-errors-spki-list): {spki}" in out
    cert = x509.load_pem_x509_certificate((tmp_path / "cert.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "pbx.example.test" in san.get_values_for_type(x509.DNSName)
    assert stat.S_IMODE((tmp_path / "key.pem").stat().st_mode) == 0o600
    assert main(["certs", "dev", "--out", str(tmp_path)]) == 1
    assert "cert.pem exists; remove it or pass --force" in capsys.readouterr().err
    assert main(["certs", "dev", "--out", str(tmp_path), "--force"]) == 0
    assert spki_sha256((tmp_path / "cert.pem").read_bytes()) != spki


def test_missing_files_are_named(tmp_path: Path) -> None:
    """Check a missing certificate and a missing key are each named."""
    cert, key = write_dev_certificate(tmp_path)
    with pytest.raises(TlsError, match=rf"^TLS certificate {tmp_path}/nope.pem: no such file$"):
        check_pair(tmp_path / "nope.pem", key)
    with pytest.raises(TlsError, match=rf"^TLS key {tmp_path}/nokey.pem: no such file$"):
        check_pair(cert, tmp_path / "nokey.pem")


def test_not_pem_and_swapped_files(tmp_path: Path) -> None:
    """Check a file that is not PEM, and the key given as the certificate,
    are refused with what the file should have held."""
    cert, key = write_dev_certificate(tmp_path)
    junk = tmp_path / "junk.pem"
    junk.write_text("hello")
    with pytest.raises(TlsError, match=r"junk.pem: not a PEM certificate$"):
        check_pair(junk, key)
    with pytest.raises(TlsError, match=r"junk.pem: not a PEM private key$"):
        check_pair(cert, junk)
    with pytest.raises(TlsError, match=r"key.pem: not a PEM certificate$"):
        check_pair(key, cert)


def test_key_of_another_certificate(tmp_path: Path) -> None:
    """Check a key that is not the certificate's is refused, naming both files."""
    cert, _ = write_dev_certificate(tmp_path / "a")
    _, other_key = write_dev_certificate(tmp_path / "b")
    with pytest.raises(TlsError, match=rf"TLS key {other_key} does not match the certificate {cert}"):
        load_server_context(cert, other_key)


def test_expired_and_not_yet_valid(tmp_path: Path) -> None:
    """Check a certificate past its notAfter and one before its notBefore
    are refused with the date, and one inside its period is accepted."""
    now = datetime.datetime.now(UTC)
    cert, key = make_pair(tmp_path / "old", not_before=now - datetime.timedelta(days=30),
                          not_after=now - datetime.timedelta(days=1))
    with pytest.raises(TlsError, match=r"cert.pem has expired: valid until \d{4}-\d\d-\d\d"):
        load_server_context(cert, key)
    cert, key = make_pair(tmp_path / "new", not_before=now + datetime.timedelta(days=1),
                          not_after=now + datetime.timedelta(days=30))
    with pytest.raises(TlsError, match=r"cert.pem is not valid yet: valid from \d{4}-\d\d-\d\d"):
        load_server_context(cert, key)
    assert check_pair(cert, key, now=now + datetime.timedelta(days=2)).not_after > now


def test_self_signed_only_when_its_own_key_signed_it(tmp_path: Path) -> None:
    """Check a certificate issued under another name and key is not taken
    for self-signed (the engine's warning is for self-signed ones only)."""
    now = datetime.datetime.now(UTC)
    cert, key = make_pair(tmp_path, not_before=now - datetime.timedelta(days=1),
                          not_after=now + datetime.timedelta(days=30), issuer="Some CA")
    assert not check_pair(cert, key).self_signed


def test_server_context_is_tls12_or_later(tmp_path: Path) -> None:
    """Check the server context refuses protocols older than TLS 1.2."""
    context = load_server_context(*write_dev_certificate(tmp_path))
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2


def test_reload_refuses_a_bad_pair_and_keeps_the_context(tmp_path: Path) -> None:
    """Check ``reload_server_context`` raises for a mismatched pair before
    touching the context, and loads a good new pair (its serial returned)."""
    cert, key = write_dev_certificate(tmp_path / "a")
    context = load_server_context(cert, key)
    _, other_key = write_dev_certificate(tmp_path / "b")
    with pytest.raises(TlsError, match="does not match"):
        reload_server_context(context, cert, other_key)
    new_cert, new_key = write_dev_certificate(tmp_path / "c")
    info = reload_server_context(context, new_cert, new_key)
    assert info.serial == x509.load_pem_x509_certificate(new_cert.read_bytes()).serial_number
