"""skiff-passwd: prints a users-file line for SASL PLAIN (or EXTERNAL).

    skiff-passwd alice --write >> users.txt      # asks for the password
    echo secret | skiff-passwd bob --stdin       # read-only user
    skiff-passwd /CN=operator --external --write # a client certificate subject

The password is hashed with salted scrypt; the router never stores or
logs it in clear.
"""

from __future__ import annotations

import argparse
import getpass
import sys

from router.management.sasl import EXTERNAL_ONLY, hash_password


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="skiff-passwd", description=__doc__.splitlines()[0])
    p.add_argument("user")
    p.add_argument("--write", action="store_true", help="grant write access (default: read)")
    p.add_argument("--stdin", action="store_true", help="read the password from stdin")
    p.add_argument(
        "--external",
        action="store_true",
        help="USER is a TLS client certificate subject (/CN=... form) for SASL EXTERNAL; "
        "no password",
    )
    args = p.parse_args(argv)
    permission = "write" if args.write else "read"
    if args.external:
        if not args.user.startswith("/"):
            print(
                "skiff-passwd: a certificate subject looks like /CN=operator or /O=Acme/CN=ops",
                file=sys.stderr,
            )
            return 1
        print(f"{args.user}:{permission}:{EXTERNAL_ONLY}")
        return 0
    if ":" in args.user:
        print("skiff-passwd: a user name cannot contain ':'", file=sys.stderr)
        return 1
    password = sys.stdin.readline().rstrip("\n") if args.stdin else getpass.getpass()
    print(f"{args.user}:{permission}:{hash_password(password)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
