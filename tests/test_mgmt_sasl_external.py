"""Users-file lines for TLS client certificate subjects and SASL EXTERNAL."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.management import sasl
from router.management.sasl import hash_password, parse_users, verify_external, verify_plain


def _users(tmp_path: Path) -> Path:
    path = tmp_path / "users"
    path.write_text(
        "# PLAIN user and certificate subjects\n"
        f"ops:write:{hash_password('pw', n=1024)}\n"
        "/CN=operator:write:external\n"
        "/O=Acme:Ops/CN=viewer:read:external\n"
    )
    return path


def test_subject_lines_parse_with_colons_in_the_subject(tmp_path: Path) -> None:
    users = parse_users(_users(tmp_path).read_text())
    assert users["/CN=operator"].can_write
    assert users["/O=Acme:Ops/CN=viewer"].permission == "read"
    assert users["ops"].hash.startswith("scrypt$")
    with pytest.raises(ValueError, match=r"scrypt hash .* or 'external'"):
        parse_users("x:read:plaintext-password\n")


def test_verify_external_grants_from_the_users_file(tmp_path: Path) -> None:
    path = str(_users(tmp_path))
    assert verify_external(path, "/CN=operator") == sasl.AuthResult(True, "/CN=operator", True)
    assert verify_external(path, "/O=Acme:Ops/CN=viewer").can_write is False
    unlisted = verify_external(path, "/CN=stranger")
    assert unlisted.ok and unlisted.user == "/CN=stranger" and not unlisted.can_write
    assert verify_external(None, "/CN=operator") == sasl.AuthResult(True, "/CN=operator", False)
    assert not verify_external(path, "").ok
    assert not verify_external(str(tmp_path / "missing"), "/CN=operator").ok


def test_a_subject_line_never_logs_in_with_plain(tmp_path: Path) -> None:
    path = str(_users(tmp_path))
    assert verify_plain(path, "ops", "pw").ok
    result = verify_plain(path, "/CN=operator", "external")
    assert not result.ok and "unknown user" in result.reason
