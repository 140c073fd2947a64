"""skiff-manage: the Skupper router's ``skmanage`` for Skiff.

Same operations, flags and ``attr=value`` arguments; output is JSON.
Examples::

    skiff-manage query --type tcpListener
    skiff-manage query --type listener name port operStatus
    skiff-manage create --type tcpConnector --name web host=127.0.0.1 port=8080 address=web
    skiff-manage read --type tcpConnector --name web
    skiff-manage delete --type tcpConnector --name web
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from proton import ConnectionException, Timeout

from router.tools.client import (
    CONNECT_ERRORS,
    ManagementClient,
    ManagementFailure,
    add_connection_options,
    fail,
    full_type,
)

TOOL = "skiff-manage"
OPERATIONS = (
    "query",
    "create",
    "read",
    "update",
    "delete",
    "get-types",
    "get-attributes",
    "get-operations",
    "get-mgmt-nodes",
    "get-schema",
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=TOOL,
        description="Manage a Skiff router over AMQP management (like skmanage).",
        epilog="attr=value arguments give attributes for create/update; for query they are "
        "attribute names to show.",
    )
    p.add_argument("operation", choices=OPERATIONS, metavar="OPERATION", help=", ".join(OPERATIONS))
    p.add_argument("args", nargs="*", metavar="ATTR=VALUE", help="attributes, or names for query")
    p.add_argument("--type", help="entity type, short (tcpListener) or full")
    p.add_argument("--name", help="entity name")
    p.add_argument("--identity", help="entity identity")
    p.add_argument("--indent", type=int, default=2, help="JSON indent (default 2; -1 compact)")
    p.add_argument(
        "--stdin",
        action="store_true",
        help="read attributes as JSON (a map, or a list of maps for create) from stdin",
    )
    p.add_argument("--offset", type=int, help="query: first result")
    p.add_argument("--count", type=int, help="query: number of results")
    add_connection_options(p)
    return p


def _attributes(args: list[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or not key:
            raise ValueError(f"argument '{arg}' is not attr=value")
        out[key] = value
    return out


def _dump(value: Any, indent: int) -> str:
    return json.dumps(value, indent=None if indent < 0 else indent, sort_keys=False, default=str)


def run(args: argparse.Namespace, client: ManagementClient) -> Any:
    op = args.operation
    etype = full_type(args.type) if args.type else None
    if op == "query":
        names = [a for a in args.args if "=" not in a]
        attr_names, rows = client.query(etype, names, args.offset, args.count)
        return [dict(zip(attr_names, r, strict=True)) for r in rows]
    if op.startswith("get-"):
        return client.node(op.upper(), entityType=etype)
    attrs = _attributes(args.args)
    if args.stdin:
        loaded = json.load(sys.stdin)
        if isinstance(loaded, list) and op == "create":
            return [_one(client, op, etype, args, {**attrs, **item}) for item in loaded]
        if not isinstance(loaded, dict):
            raise ValueError("--stdin expects a JSON map (or a list of maps for create)")
        attrs.update(loaded)
    return _one(client, op, etype, args, attrs)


def _one(
    client: ManagementClient,
    op: str,
    etype: str | None,
    args: argparse.Namespace,
    attrs: dict[str, object],
) -> Any:
    etype = etype or (full_type(str(attrs["type"])) if "type" in attrs else None)
    attrs.pop("type", None)
    name = args.name or (str(attrs["name"]) if "name" in attrs and op != "create" else None)
    identity = args.identity or (str(attrs.pop("identity")) if "identity" in attrs else None)
    if op == "create" and args.name:
        attrs["name"] = args.name
    if op in ("read", "delete"):
        attrs = {}
    result = client.request(op.upper(), type=etype, name=name, identity=identity, body=attrs)
    return result


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    try:
        client = ManagementClient.from_args(args)
    except CONNECT_ERRORS as e:
        return fail(TOOL, f"cannot connect to {args.bus}: {e}")
    try:
        result = run(args, client)
    except ManagementFailure as e:
        return fail(TOOL, f"{e.status} {e.description}")
    except ValueError as e:
        return fail(TOOL, str(e))
    except (ConnectionException, Timeout) as e:
        return fail(TOOL, f"connection to {args.bus} failed: {e}")
    finally:
        try:
            client.close()
        except (ConnectionException, Timeout):
            pass  # the answer is what matters; the router may already have closed
    if result is not None:
        print(_dump(result, args.indent))
    return 0


if __name__ == "__main__":
    sys.exit(main())
