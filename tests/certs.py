"""Throwaway X.509 certificates for the TLS tests, made with ``cryptography``.

Why generated per test session: checked-in keys expire, leak into other projects and make
the tests pass against certificates nobody can reproduce; a fresh CA per run also lets a
test make a *second*, untrusted CA whose certificates must be refused.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["Authority", "TlsFiles", "write_tls_files"]

_VALID_FOR = datetime.timedelta(days=2)


@dataclass(frozen=True)
class Authority:
    """A self-signed CA that can sign leaf certificates."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls, name: str) -> Authority:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (
            _builder(subject, subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(signs_certificates=True), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    def issue(self, name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        """A leaf for 127.0.0.1 and localhost, usable as server *and* client certificate.

        Redis uses its server certificate as its client certificate too (replication,
        and our start script's readiness check), as in Redis's own test certificates.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        names: list[x509.GeneralName] = [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
        ]
        cert = (
            _builder(subject, self.cert.subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(signs_certificates=False), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return key, cert


@dataclass(frozen=True)
class TlsFiles:
    """The PEM files of one TLS set-up: the CA, the server's pair and a client's pair."""

    directory: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def write_tls_files(directory: Path, authority: Authority) -> TlsFiles:
    """``ca.crt``, ``redis.crt``/``redis.key`` (the names deploy/local/redis.sh expects)
    and ``client.crt``/``client.key``, all signed by ``authority``."""
    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(
        directory=directory,
        ca=directory / "ca.crt",
        server_cert=directory / "redis.crt",
        server_key=directory / "redis.key",
        client_cert=directory / "client.crt",
        client_key=directory / "client.key",
    )
    _write_cert(files.ca, authority.cert)
    for cert_path, key_path, name in (
        (files.server_cert, files.server_key, "redis"),
        (files.client_cert, files.client_key, "tailor-worker"),
    ):
        key, cert = authority.issue(name)
        _write_cert(cert_path, cert)
        _write_key(key_path, key)
    return files


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALID_FOR)
    )


def _key_usage(*, signs_certificates: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not signs_certificates,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.touch(mode=0o600)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
