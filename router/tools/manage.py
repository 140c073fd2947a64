"""skiff-manage: the Skupper router's ``skmanage`` for Skiff.

Same operations, flags and ``attr=value`` arguments; output is JSON.
Examples::

    skiff-manage query --type tcpListener
    skiff-manage query --type listener name port operStatus
    skiff-manage create --type tcpConnector --name web host=127.0.0.1 port=8080 address=web
    skiff-manage read --type tcpConnector --name web
    skiff-manage read --name web                      # by name alone, any type
    skiff-manage delete --type tcpConnector --name web
    skiff-manage get-log --limit 20 --level warning
    skiff-manage -r Router.A query --type connection  # one router of a network
    skiff-manage SOME-OPERATION --type T --properties '{"k": 1}' --body '[1]'

An operation that is none of the above is sent as it is (a custom operation,
as skmanage does): ATTR=VALUE arguments and ``--properties`` become request
properties, ``--body`` the body.
"""

from __future__ import annotations

import argparse
import json
import re
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
    "get-annotations",
    "get-attributes",
    "get-operations",
    "get-mgmt-nodes",
    "get-schema",
    "get-json-schema",
    "get-log",
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=TOOL,
        description="Manage a Skiff router over AMQP management (like skmanage).",
        epilog="attr=value arguments give attributes for create/update; for query they are "
        "attribute names to show.",
    )
    p.add_argument(
        "operation",
        metavar="OPERATION",
        help=", ".join(OPERATIONS) + ", or any other (sent as a custom operation)",
    )
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
    p.add_argument("--limit", type=int, help="get-log: the newest this many records")
    p.add_argument("--level", help="get-log: records at this level and above (Skiff)")
    p.add_argument("--body", help="JSON value to send as the body of a custom operation")
    p.add_argument("--properties", help="JSON map of request properties for a custom operation")
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


def _json_arg(value: str, what: str) -> Any:
    """A JSON value; a plain word that is not JSON stays a string (skmanage's rule)."""
    try:
        return json.loads(value)
    except ValueError as e:
        if not re.search(r'["{}\[\]]', value):
            return value
        raise ValueError(f"{what}: invalid JSON {value!r}: {e}") from None


def _custom(args: argparse.Namespace, client: ManagementClient, etype: str | None) -> Any:
    """An operation the tool does not know, sent as it is."""
    props: dict[str, object] = dict(_attributes(args.args))
    if args.properties:
        extra = _json_arg(args.properties, "--properties")
        if not isinstance(extra, dict):
            raise ValueError("--properties must be a JSON map")
        props.update(extra)
    body = _json_arg(args.body, "--body") if args.body is not None else None
    props.setdefault("type", etype)
    props.setdefault("name", args.name)
    props.setdefault("identity", args.identity)
    return client.request(args.operation.upper(), body=body, **props)


def run(args: argparse.Namespace, client: ManagementClient) -> Any:
    op = args.operation.lower()
    etype = full_type(args.type) if args.type else None
    if op not in OPERATIONS:
        return _custom(args, client, etype)
    if op == "query":
        names = [a for a in args.args if "=" not in a]
        attr_names, rows = client.query(etype, names, args.offset, args.count)
        return [dict(zip(attr_names, r, strict=True)) for r in rows]
    if op == "get-log":
        return client.node("GET-LOG", limit=args.limit, level=args.level)
    if op == "get-json-schema":
        return json.loads(client.node("GET-JSON-SCHEMA"))
    if op.startswith("get-"):
        if (
            etype is None
            and args.args
            and op in ("get-types", "get-attributes", "get-operations", "get-annotations")
        ):
            etype = full_type(args.args[0])  # skmanage takes the type as an argument too
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
    return client.request(op.upper(), type=etype, name=name, identity=identity, body=attrs)


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
