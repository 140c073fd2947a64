"""A throw-away PKI for the TLS benches (P-256 keys, made with `cryptography`).

Why its own: the bench must run outside the test suite (tests/certs.py is
test code), and rotation needs a fresh server certificate every 100 ms,
cheaply: one CA, a new key and leaf per rotation.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class BenchCA:
    """A CA whose leaves name localhost and 127.0.0.1."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name("skiff-bench CA"))
            .issuer_name(_name("skiff-bench CA"))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM)

    def leaf(self, serial: int) -> tuple[bytes, bytes, str]:
        """(certificate PEM, key PEM, SHA-256 of the certificate's DER)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(f"skiff-bench server {serial}"))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        der = cert.public_bytes(serialization.Encoding.DER)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return (
            cert.public_bytes(serialization.Encoding.PEM),
            key_pem,
            hashlib.sha256(der).hexdigest(),
        )


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """One server identity on disk, for a proxy that terminates TLS.

    combined is certificate + key in one PEM (HAProxy's `crt`); skiffd's
    sslProfile takes cert, key and ca as separate files."""

    ca: Path
    cert: Path
    key: Path
    combined: Path
    fingerprint: str

    @property
    def ca_file(self) -> str:
        return str(self.ca)


def write_tls_files(directory: Path, ca: BenchCA | None = None) -> TlsFiles:
    """A fresh CA (unless given) and a localhost/127.0.0.1 leaf in directory."""
    ca = ca or BenchCA()
    cert_pem, key_pem, fp = ca.leaf(1)
    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(
        directory / "ca.pem",
        directory / "server.pem",
        directory / "server.key",
        directory / "server-combined.pem",
        fp,
    )
    files.ca.write_bytes(ca.pem)
    files.cert.write_bytes(cert_pem)
    files.key.write_bytes(key_pem)
    files.key.chmod(0o600)
    files.combined.write_bytes(cert_pem + key_pem)
    files.combined.chmod(0o600)
    return files


def client_context(ca_file: str) -> ssl.SSLContext:
    """The bench's TLS client side: verifies the server against ca_file (name
    "localhost"), no session tickets, so every connection is a full handshake."""
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.options |= ssl.OP_NO_TICKET
    return ctx
