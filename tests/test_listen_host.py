"""listen_host: the one rule for what a listener's or tcpListener's host binds."""

from __future__ import annotations

import pytest

from router.resolver import listen_host


@pytest.mark.parametrize(
    ("host", "bound"),
    [
        ("", ""),
        ("::", ""),
        ("localhost", "127.0.0.1"),
        ("0.0.0.0", "0.0.0.0"),
        ("127.0.0.1", "127.0.0.1"),
        ("[::1]", "::1"),
        ("::ffff:10.0.0.1", "::ffff:a00:1"),
    ],
)
def test_numeric_or_all_interfaces(host: str, bound: str) -> None:
    assert listen_host(host) == bound


@pytest.mark.parametrize("host", ["example.com", "10.0.0", "local host"])
def test_names_are_refused_with_the_rule(host: str) -> None:
    with pytest.raises(ValueError, match=f"host '{host}' must be a numeric address, 'localhost'"):
        listen_host(host)
