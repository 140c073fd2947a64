"""The management client shared by skiff-manage, skiff-stat and the bench.

A thin layer over proton's BlockingConnection / SyncRequestResponse that
builds requests the way the Skupper tools do and turns a response into a
(status, description, body) triple. Connection options mirror skmanage's.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from proton import ConnectionException, Message, SSLDomain, SSLException, Timeout
from proton.utils import BlockingConnection, SyncRequestResponse

MANAGEMENT_ADDRESS = "$management"
DEFAULT_BUS = "127.0.0.1:5672"


# what opening a connection may raise: refused, timed out, TLS set-up or
# handshake failure, unreadable key or certificate files, bad options
CONNECT_ERRORS = (ConnectionException, Timeout, SSLException, OSError, ValueError)


class ManagementFailure(Exception):
    """A response with an error status, or no response at all."""

    def __init__(self, status: int, description: str) -> None:
        super().__init__(f"{status}: {description}" if status else description)
        self.status = status
        self.description = description


@dataclass(frozen=True)
class Reply:
    status: int
    description: str
    body: Any


def add_connection_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("connection options")
    g.add_argument(
        "-b",
        "--bus",
        default=DEFAULT_BUS,
        metavar="URL",
        help=f"router to connect to, [amqp[s]://][user[:password]@]host[:port] (default "
        f"{DEFAULT_BUS})",
    )
    g.add_argument(
        "-t", "--timeout", type=float, default=5.0, metavar="SECS", help="seconds (default 5)"
    )
    g.add_argument("--ssl-certificate", metavar="FILE", help="client certificate (PEM)")
    g.add_argument("--ssl-key", metavar="FILE", help="client private key (PEM)")
    g.add_argument("--ssl-trustfile", metavar="FILE", help="CA certificates to trust (PEM)")
    g.add_argument("--ssl-password", metavar="PW", help="password of the private key")
    g.add_argument("--ssl-password-file", metavar="FILE", help="file holding that password")
    g.add_argument(
        "--ssl-disable-peer-name-verify",
        action="store_true",
        help="do not check the router certificate's name",
    )
    g.add_argument("--sasl-mechanisms", metavar="MECHS", help="allowed SASL mechanisms, e.g. PLAIN")
    g.add_argument("--sasl-username", metavar="USER", help="SASL user name")
    g.add_argument("--sasl-password", metavar="PW", help="SASL password")
    g.add_argument("--sasl-password-file", metavar="FILE", help="file holding the SASL password")
    t = p.add_argument_group("target", "which router's management node to ask (as skstat)")
    t.add_argument(
        "-r",
        "--router",
        metavar="ROUTER-ID",
        help="router to query, by id (sent to _topo/0/ROUTER-ID/$management)",
    )
    t.add_argument(
        "-d",
        "--edge-router",
        metavar="EDGE-ROUTER-ID",
        help="edge router to query, by id (sent to _edge/EDGE-ROUTER-ID/$management)",
    )


def management_address(router: str | None = None, edge_router: str | None = None) -> str:
    """The management node address, as Skupper's tools build it."""
    if router:
        return f"_topo/0/{router}/{MANAGEMENT_ADDRESS}"
    if edge_router:
        return f"_edge/{edge_router}/{MANAGEMENT_ADDRESS}"
    return MANAGEMENT_ADDRESS


def _read_secret(path: str) -> str:
    return Path(path).read_text(encoding="utf-8").strip()


def bus_url(bus: str, use_ssl: bool) -> str:
    if "://" in bus:
        return bus
    return f"{'amqps' if use_ssl else 'amqp'}://{bus}"


def _ssl_domain(args: argparse.Namespace) -> SSLDomain | None:
    """The client TLS settings of skmanage's options.

    TLS is used with ``--ssl-certificate``, ``--ssl-trustfile`` or an
    ``amqps://`` bus. The router's certificate is verified against the
    trust file (or the system's CAs) and its name against the bus host,
    unless ``--ssl-disable-peer-name-verify`` (then the certificate is still
    verified when a trust file is given, and not at all otherwise).
    """
    wanted = (
        args.ssl_certificate
        or args.ssl_trustfile
        or args.ssl_key
        or str(args.bus).startswith("amqps://")
    )
    if not wanted:
        return None
    if args.ssl_key and not args.ssl_certificate:
        raise ValueError("--ssl-key needs --ssl-certificate")
    domain = SSLDomain(SSLDomain.MODE_CLIENT)
    if args.ssl_trustfile:
        domain.set_trusted_ca_db(args.ssl_trustfile)
        mode = (
            SSLDomain.VERIFY_PEER
            if args.ssl_disable_peer_name_verify
            else SSLDomain.VERIFY_PEER_NAME
        )
        domain.set_peer_authentication(mode, args.ssl_trustfile)
    elif args.ssl_disable_peer_name_verify:
        domain.set_peer_authentication(SSLDomain.ANONYMOUS_PEER)
    else:
        domain.set_peer_authentication(SSLDomain.VERIFY_PEER_NAME)
    if args.ssl_certificate:
        password = args.ssl_password
        if args.ssl_password_file:
            password = _read_secret(args.ssl_password_file)
        domain.set_credentials(args.ssl_certificate, args.ssl_key or args.ssl_certificate, password)
    return domain


class ManagementClient:
    """One connection to a router's ``$management`` node."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 5.0,
        heartbeat: float | None = None,
        ssl_domain: SSLDomain | None = None,
        mechanisms: str | None = None,
        user: str | None = None,
        password: str | None = None,
        address: str = MANAGEMENT_ADDRESS,
    ) -> None:
        kwargs: dict[str, Any] = {"sasl_enabled": True, "allow_insecure_mechs": True}
        if mechanisms:
            kwargs["allowed_mechs"] = mechanisms
        if user is not None:
            kwargs["user"] = user
        if password is not None:
            kwargs["password"] = password
        self.connection = BlockingConnection(
            url, timeout=timeout, ssl_domain=ssl_domain, heartbeat=heartbeat, **kwargs
        )
        self._rr = SyncRequestResponse(self.connection, address)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ManagementClient:
        domain = _ssl_domain(args)
        password = args.sasl_password
        if args.sasl_password_file:
            password = _read_secret(args.sasl_password_file)
        return cls(
            bus_url(args.bus, domain is not None),
            timeout=args.timeout,
            ssl_domain=domain,
            mechanisms=args.sasl_mechanisms,
            user=args.sasl_username,
            password=password,
            address=management_address(
                getattr(args, "router", None), getattr(args, "edge_router", None)
            ),
        )

    def call(self, properties: dict[str, object], body: object = None) -> Reply:
        response = self._rr.call(Message(properties=properties, body=cast(Any, body)))
        props: dict[str, Any] = dict(response.properties or {})
        status = props.get("statusCode")
        return Reply(
            int(status) if isinstance(status, int) else 0,
            str(props.get("statusDescription") or ""),
            response.body,
        )

    def request(
        self,
        operation: str,
        *,
        body: object = None,
        **extra: object,
    ) -> Any:
        """Sends one request; returns the body or raises ManagementFailure.

        ``extra`` are application properties (type, name, identity, ...);
        None values are left out.
        """
        props: dict[str, object] = {"operation": operation}
        props.update({k: v for k, v in extra.items() if v is not None})
        reply = self.call(props, body)
        if not 200 <= reply.status < 300:
            raise ManagementFailure(reply.status, reply.description)
        return reply.body

    def node(self, operation: str, body: object = None, **extra: object) -> Any:
        return self.request(operation, type="org.amqp.management", name="self", body=body, **extra)

    def query(
        self,
        entity_type: str | None,
        attribute_names: list[str] | None = None,
        offset: int | None = None,
        count: int | None = None,
    ) -> tuple[list[str], list[list[Any]]]:
        body = self.node(
            "QUERY",
            {"attributeNames": attribute_names or []},
            entityType=full_type(entity_type) if entity_type else None,
            offset=offset,
            count=count,
        )
        return list(body["attributeNames"]), [list(r) for r in body["results"]]

    def close(self) -> None:
        self.connection.close()


# Short names skmanage expands to other types.
_TYPE_SHORTHANDS = {
    "link": "router.link",
    "node": "router.node",
    "address": "router.config.address",
    "autoLink": "router.config.autoLink",
}


def full_type(name: str) -> str:
    if name.startswith("io.skupper.router.") or name == "org.amqp.management":
        return name
    return "io.skupper.router." + _TYPE_SHORTHANDS.get(name, name)


def fail(tool: str, message: str) -> int:
    print(f"{tool}: {message}", file=sys.stderr)
    return 1
