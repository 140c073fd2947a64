"""A throw-away PKI (P-256 keys, made with `cryptography`: no openssl binary
needed) for the TLS benches and the tests.

Why in the bench package: the bench must run outside the test suite, and
the tests import the installed ``bench`` package, so one helper serves
both. Rotation needs a fresh server certificate every 100 ms, cheaply: one
CA, a new key and leaf per rotation.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@dataclass(frozen=True, slots=True)
class Issued:
    """A certificate and its key, as objects and as PEM (the key encrypted
    when issued with a password)."""

    cert_pem: bytes
    key_pem: bytes
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the certificate's DER, hex: what a client sees."""
        return self.cert.fingerprint(hashes.SHA256()).hex()


class CertAuthority:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    pem: bytes

    def __init__(self, cn: str = "Skiff Test CA", parent: CertAuthority | None = None) -> None:
        """A root CA, or with parent an intermediate CA signed by it."""
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        issuer = parent.cert.subject if parent else _name(cn)
        signer = parent.key if parent else self.key
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(issuer)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(signer, hashes.SHA256())
        )
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(
        self,
        cn: str,
        dns: tuple[str, ...] = ("localhost",),
        ips: tuple[str, ...] = ("127.0.0.1",),
        days: float = 30,
        password: bytes | None = None,
    ) -> Issued:
        """A leaf for dns and ips, valid from a day ago for days (negative:
        already expired)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        start = now - datetime.timedelta(days=1)
        end = now + datetime.timedelta(days=days)
        if end <= start:
            start = end - datetime.timedelta(days=1)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        enc: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(password)
            if password
            else serialization.NoEncryption()
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc
        )
        return Issued(cert.public_bytes(serialization.Encoding.PEM), key_pem, cert, key)

    def leaf(self, serial: int) -> tuple[bytes, bytes, str]:
        """The bench's server certificate number serial (localhost,
        127.0.0.1): (certificate PEM, key PEM, fingerprint)."""
        issued = self.issue(f"skiff-bench server {serial}")
        return issued.cert_pem, issued.key_pem, issued.fingerprint


def ca_bundle(count: int, tag: str = "bundle") -> list[bytes]:
    """count distinct self-signed CA certificates (PEM), as in a system trust
    bundle: each has its own subject, so a trust store keeps every one.
    One key signs them all: key generation is not what a bundle costs."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    out = []
    for i in range(count):
        name = _name(f"skiff-bench {tag} CA {i}")
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(i + 1)
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        out.append(cert.public_bytes(serialization.Encoding.PEM))
    return out


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


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


def write_tls_files(directory: Path, ca: CertAuthority | None = None) -> TlsFiles:
    """A fresh CA (unless given) and a localhost/127.0.0.1 leaf in directory."""
    ca = ca or CertAuthority("skiff-bench CA")
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


def client_context(
    ca_file: str | Path, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    """A TLS client that verifies the server against ca_file (name
    "localhost" when the caller passes it) and keeps no session tickets, so
    every connection is a full handshake that sees the live certificate;
    with cert and key it presents that client certificate."""
    ctx = ssl.create_default_context(cafile=str(ca_file))
    ctx.options |= ssl.OP_NO_TICKET
    if cert and key:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


# a TLS 1.3 NewSessionTicket: handshake content, message type 4 (RFC 8446, 4.6.1)
_HANDSHAKE = 22
_NEW_SESSION_TICKET = 4


def count_session_tickets(
    port: int, ca_file: str | Path, host: str = "127.0.0.1", timeout_s: float = 5.0
) -> int:
    """How many session tickets a TLS server at host:port sends on one full
    handshake: a client connects, sends 64 bytes and reads them back (the
    servers here relay to an echo server), then counts the NewSessionTicket
    messages it read. A server sends its tickets right after the client's
    Finished, so they precede the echoed bytes. Uses CPython's message
    callback (``SSLContext._msg_callback``, private but stable since 3.8)."""
    ctx = client_context(ca_file)
    seen: list[int] = []

    def on_message(
        _conn: object, direction: str, _version: object, content: int, msg: int, _data: bytes
    ) -> None:
        # content and msg are IntEnums (ssl._TLSContentType, ssl._TLSMessageType)
        if direction == "read" and content == _HANDSHAKE and msg == _NEW_SESSION_TICKET:
            seen.append(1)

    setattr(ctx, "_msg_callback", on_message)  # noqa: B010 (private API, see above)
    payload = b"skiff-bench ticket probe".ljust(64, b".")
    with socket.create_connection((host, port), timeout=timeout_s) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(payload)
            got = b""
            while len(got) < len(payload):
                chunk = tls.recv(len(payload) - len(got))
                if not chunk:
                    raise ConnectionError(f"127.0.0.1:{port} closed after {len(got)} echoed bytes")
                got += chunk
            if got != payload:
                raise ConnectionError(f"127.0.0.1:{port} echoed other bytes than it was sent")
    return len(seen)
