"""The AMQP SASL exchange, run by Skiff itself with proton's codec.

proton's built-in SASL offers no server-side PLAIN and cannot see a TLS
layer that is not its own, so the listener performs the SASL layer here:
it answers the SASL protocol header with ``sasl-mechanisms``, decodes
``sasl-init`` and sends ``sasl-outcome``; the bytes that follow go to a
proton Transport configured without SASL.

Passwords live in a users file as salted scrypt hashes. Verifying one is
deliberately slow, so ``verify_plain`` is meant to run on a thread pool,
never on the control loop. ``EXTERNAL`` takes the identity of the TLS
client certificate the engine verified (its subject, ``/CN=operator``
form); the users file grants permissions to such a subject with a line
whose third field is ``external`` (``verify_external``, also on the pool:
it reads the file).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from proton import Data, Described, symbol, ulong

AMQP_HEADER = b"AMQP\x00\x01\x00\x00"
SASL_HEADER = b"AMQP\x03\x01\x00\x00"
TLS_RECORD_HANDSHAKE = 0x16

SASL_MECHANISMS = 0x40
SASL_INIT = 0x41
SASL_OUTCOME = 0x44

OUTCOME_OK = 0
OUTCOME_AUTH = 1
OUTCOME_SYS = 2
OUTCOME_SYS_PERM = 3
OUTCOME_SYS_TEMP = 4  # a temporary failure: the check was refused (limits); retry later

FRAME_TYPE_SASL = 1
MAX_SASL_FRAME = 65536

SUPPORTED_MECHANISMS = ("ANONYMOUS", "PLAIN", "EXTERNAL")
PERMISSIONS = ("read", "write")
# the third field of a users-file line for a TLS client certificate subject
EXTERNAL_ONLY = "external"

# scrypt cost: about 50 ms and 16 MiB per verification on a current core.
SCRYPT_N = 1 << 14
SCRYPT_R = 8
SCRYPT_P = 1


class SaslError(ValueError):
    """The peer sent something the SASL layer cannot accept."""


def encode_frame(performative: int, fields: list[object]) -> bytes:
    """One SASL frame (type 1, channel 0) holding a described list."""
    data = Data()
    data.put_object(Described(ulong(performative), cast(Any, fields)))
    body = data.encode()
    return struct.pack("!IBBH", 8 + len(body), 2, FRAME_TYPE_SASL, 0) + body


def mechanisms_frame(mechanisms: list[str]) -> bytes:
    data = Data()
    data.put_described()
    data.enter()
    data.put_ulong(SASL_MECHANISMS)
    data.put_list()
    data.enter()
    data.put_array(False, Data.SYMBOL)
    data.enter()
    for mech in mechanisms:
        data.put_symbol(symbol(mech))
    data.exit()
    data.exit()
    data.exit()
    body = data.encode()
    return struct.pack("!IBBH", 8 + len(body), 2, FRAME_TYPE_SASL, 0) + body


def outcome_frame(code: int) -> bytes:
    data = Data()
    data.put_described()
    data.enter()
    data.put_ulong(SASL_OUTCOME)
    data.put_list()
    data.enter()
    data.put_ubyte(code)
    data.exit()
    data.exit()
    body = data.encode()
    return struct.pack("!IBBH", 8 + len(body), 2, FRAME_TYPE_SASL, 0) + body


def split_frame(buf: bytes | bytearray) -> tuple[bytes, int] | None:
    """(body, consumed) of the first complete SASL frame, None if incomplete."""
    if len(buf) < 8:
        return None
    size, doff, ftype, _channel = struct.unpack_from("!IBBH", buf)
    if size < 8 or size > MAX_SASL_FRAME or doff < 2:
        raise SaslError(f"bad SASL frame header (size {size}, doff {doff})")
    if ftype != FRAME_TYPE_SASL:
        raise SaslError(f"expected a SASL frame, got frame type {ftype}")
    if len(buf) < size:
        return None
    return bytes(buf[doff * 4 : size]), size


@dataclass(frozen=True)
class SaslInit:
    mechanism: str
    initial_response: bytes | None
    hostname: str | None


def decode_init(body: bytes) -> SaslInit:
    """Decodes a sasl-init performative; anything else is a SaslError."""
    descriptor, fields = decode_performative(body)
    if descriptor != SASL_INIT:
        raise SaslError(f"expected sasl-init, got performative {descriptor!r}")
    if not fields or not isinstance(fields[0], str):
        raise SaslError("sasl-init has no mechanism")
    response = fields[1] if len(fields) > 1 else None
    hostname = fields[2] if len(fields) > 2 else None
    if response is not None and not isinstance(response, bytes):
        raise SaslError("sasl-init initial-response is not binary")
    return SaslInit(str(fields[0]), response, str(hostname) if isinstance(hostname, str) else None)


def parse_plain(response: bytes | None) -> tuple[str, str, str]:
    """(authzid, authcid, password) of a PLAIN initial response."""
    if response is None:
        raise SaslError("PLAIN needs an initial response")
    parts = response.split(b"\x00")
    if len(parts) != 3:
        raise SaslError("PLAIN response is not authzid NUL authcid NUL password")
    try:
        authzid, authcid, password = (p.decode("utf-8") for p in parts)
    except UnicodeDecodeError as e:
        raise SaslError("PLAIN response is not UTF-8") from e
    return authzid, authcid, password


# ---------------------------------------------------------------- users file


@dataclass(frozen=True)
class User:
    name: str
    permission: str
    hash: str

    @property
    def can_write(self) -> bool:
        return self.permission == "write"


def hash_password(password: str, *, salt: bytes | None = None, n: int = SCRYPT_N) -> str:
    """``scrypt$N$r$p$salt$hash`` (base64 parts) for the users file."""
    salt = salt if salt is not None else os.urandom(16)
    digest = hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=SCRYPT_R, p=SCRYPT_P, dklen=32
    )
    b64 = base64.b64encode
    return f"scrypt${n}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def check_password(password: str, stored: str) -> bool:
    """Constant-time comparison against a stored scrypt hash."""
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        return False
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt = base64.b64decode(parts[4], validate=True)
        expected = base64.b64decode(parts[5], validate=True)
    except ValueError:
        return False
    digest = hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        dklen=len(expected),
        maxmem=256 << 20,
    )
    return hmac.compare_digest(digest, expected)


def parse_users(text: str, source: str = "users file") -> dict[str, User]:
    """``name:permission:hash`` lines; ``#`` comments and blank lines skipped.

    The hash is an scrypt hash (PLAIN) or ``external``: the name is then a
    client certificate subject (EXTERNAL), which may itself contain ``:``
    (the line is split at its last two).
    """
    users: dict[str, User] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(":", 2)
        if len(parts) != 3 or not parts[0]:
            raise ValueError(f"{source}:{number}: expected name:permission:hash")
        name, permission, stored = parts
        if permission not in PERMISSIONS:
            raise ValueError(
                f"{source}:{number}: permission '{permission}' is not one of "
                + ", ".join(PERMISSIONS)
            )
        if not stored.startswith("scrypt$") and stored != EXTERNAL_ONLY:
            raise ValueError(
                f"{source}:{number}: the third field must be an scrypt hash (skiff-passwd) "
                f"or '{EXTERNAL_ONLY}' (a client certificate subject)"
            )
        users[name] = User(name, permission, stored)
    return users


def load_users(path: str) -> dict[str, User]:
    """Reads the users file: blocking, so call it from a pool thread."""
    return parse_users(Path(path).read_text(encoding="utf-8"), path)


@dataclass(frozen=True)
class AuthResult:
    ok: bool
    user: str | None = None
    can_write: bool = False
    reason: str = ""
    temporary: bool = False  # refused by a limit, not by the credentials: sys-temp


def verify_plain(users_file: str | None, authcid: str, password: str) -> AuthResult:
    """Reads the users file and checks the password: runs on a pool thread.

    The file is read per attempt so that edits apply without a restart. A
    missing user still costs one hash, so timing does not reveal names.
    """
    if not users_file:
        return AuthResult(False, reason="PLAIN is offered but no usersFile is configured")
    try:
        users = load_users(users_file)
    except (OSError, ValueError) as e:
        return AuthResult(False, reason=f"cannot use the users file: {e}")
    user = users.get(authcid)
    if user is not None and user.hash == EXTERNAL_ONLY:
        user = None  # a certificate subject: no password can log in as it
    if user is None:
        check_password(password, hash_password("", salt=b"\x00" * 16))
        return AuthResult(False, reason=f"unknown user '{authcid}'")
    if not check_password(password, user.hash):
        return AuthResult(False, reason=f"wrong password for user '{authcid}'")
    return AuthResult(True, user=user.name, can_write=user.can_write)


def verify_external(users_file: str | None, subject: str) -> AuthResult:
    """EXTERNAL: the engine verified the client certificate against the
    sslProfile's CAs, so its subject is the identity; the users file only
    decides the permission (``subject:write:external``). A subject the file
    does not list, or no file at all, gets read access. Runs on a pool
    thread (reads the file)."""
    if not subject:
        return AuthResult(False, reason="EXTERNAL without a verified client certificate")
    if not users_file:
        return AuthResult(True, user=subject, can_write=False)
    try:
        users = load_users(users_file)
    except (OSError, ValueError) as e:
        return AuthResult(False, reason=f"cannot use the users file: {e}")
    user = users.get(subject)
    if user is None or user.hash != EXTERNAL_ONLY:
        return AuthResult(True, user=subject, can_write=False)
    return AuthResult(True, user=subject, can_write=user.can_write)


# -- the client's half (router links dialled by this router) -----------------


def decode_performative(body: bytes) -> tuple[object, list[object]]:
    """(descriptor, fields) of one SASL frame body; SaslError otherwise."""
    data = Data()
    try:
        data.decode(body)
        data.rewind()
        data.next()
        value = data.get_object()
    except Exception as e:
        raise SaslError(f"cannot decode SASL frame: {e}") from e
    if not isinstance(value, Described):
        raise SaslError("SASL frame body is not a described performative")
    descriptor = value.descriptor
    named = {
        "amqp:sasl-mechanisms:list": SASL_MECHANISMS,
        "amqp:sasl-init:list": SASL_INIT,
        "amqp:sasl-outcome:list": SASL_OUTCOME,
    }
    if isinstance(descriptor, str):
        descriptor = named.get(descriptor, descriptor)
    fields = value.value if isinstance(value.value, list) else []
    # proton decodes binary as a memoryview into the Data's own buffer,
    # which goes with it: copy before returning
    return descriptor, [bytes(f) if isinstance(f, (memoryview, bytearray)) else f for f in fields]


def mechanism_names(value: object) -> frozenset[str]:
    """The mechanisms a sasl-mechanisms frame offers (a symbol or an array)."""
    if isinstance(value, str):
        return frozenset({value.upper()})
    items = getattr(value, "elements", value)
    if isinstance(items, (list, tuple)):
        return frozenset(str(m).upper() for m in items if isinstance(m, str))
    return frozenset()


def init_frame(mechanism: str, response: bytes, hostname: str | None) -> bytes:
    """A client's sasl-init frame."""
    fields: list[object] = [symbol(mechanism), response]
    if hostname:
        fields.append(hostname)
    return encode_frame(SASL_INIT, fields)
