"""Management schema of Skiff: the one place that knows entity types.

The configuration loader, the registry and the management agent all validate
through this module, so that a bad value gets the same message whether it
comes from ``skrouterd.conf`` or from a management request.  Type and
attribute names mirror the Skupper router's ``io.skupper.router.*`` schema so
that existing configuration files and management tools keep working.
"""

from __future__ import annotations

import difflib
import enum
import re
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from router import skupper_facts

TYPE_PREFIX = "io.skupper.router."

# Management operations.  READ and QUERY are always allowed, as in Skupper.
CREATE = "CREATE"
READ = "READ"
UPDATE = "UPDATE"
DELETE = "DELETE"
QUERY = "QUERY"
ALWAYS_ALLOWED: frozenset[str] = frozenset({READ, QUERY})

LOG_LEVELS: tuple[str, ...] = (
    "trace",
    "debug",
    "info",
    "notice",
    "warning",
    "error",
    "critical",
)

LOG_MODULES: tuple[str, ...] = (
    "DEFAULT",
    "ROUTER",
    "ROUTER_CORE",
    "ROUTER_HELLO",
    "ROUTER_LS",
    "ROUTER_MA",
    "MESSAGE",
    "SERVER",
    "AGENT",
    "AUTHSERVICE",
    "CONTAINER",
    "ERROR",
    "POLICY",
    "HTTP",
    "CONN_MGR",
    "PYTHON",
    "PROTOCOL",
    "TCP_ADAPTOR",
    "HTTP_ADAPTOR",
    "FLOW_LOG",
    "ADDRESS_WATCH",
    "DISPLAYNAME",
    "IO",
    "ENGINE",
    "TLS",
    "HTTP1_OBSERVER",
    "HTTP2_OBSERVER",
    "HTTP2_DECODER",
)

# Service names accepted where the Skupper schema accepts a port string.
PORT_NAMES: Mapping[str, int] = {"amqp": 5672, "amqps": 5671}

# Largest CPU number a CPU list may name: the engine's mask holds 1024
# (SK_CPU_WORDS * 64, glibc's CPU_SETSIZE).
MAX_CPU = 1023

_TRUE = frozenset({"true", "yes", "1", "on"})
_FALSE = frozenset({"false", "no", "0", "off"})


class SchemaError(ValueError):
    """Base of every validation failure; ``status`` maps to a management code.

    Management answers 400 for all of these, so the code lives here rather
    than in every caller.
    """

    status = 400

    def __init__(
        self,
        message: str,
        *,
        entity_type: str | None = None,
        attribute: str | None = None,
        value: object = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.entity_type = entity_type
        self.attribute = attribute
        self.value = value


class UnknownEntityType(SchemaError):
    pass


class UnknownAttribute(SchemaError):
    pass


class InvalidValue(SchemaError):
    pass


class MissingAttribute(SchemaError):
    pass


class ReadOnlyAttribute(SchemaError):
    pass


class DuplicateAttribute(SchemaError):
    pass


class AttrType(enum.Enum):
    STRING = "string"
    INTEGER = "integer"
    BOOLEAN = "boolean"
    ENUM = "enum"
    LIST = "list"
    # Skupper types ports as strings so that service names work; Skiff stores
    # the resolved number because the engine needs one.
    PORT = "port"


@dataclass(frozen=True)
class AttributeSpec:
    name: str
    type: AttrType = AttrType.STRING
    default: object = None
    required: bool = False
    status: bool = False
    description: str = ""
    choices: tuple[str, ...] = ()
    minimum: int | None = None
    maximum: int | None = None
    secret: bool = False
    # Cannot change once the entity exists (management UPDATE or reload).
    create_only: bool = False
    # Name of the entity type this attribute names an instance of.
    references: str | None = None
    # A string with its own syntax, checked by convert: "cpulist" (Linux's
    # CPU list, "0-1,4", parsed by parse_cpu_list).
    syntax: str = ""

    @property
    def read_only(self) -> bool:
        return self.status

    def expected(self) -> str:
        """Human phrase for error messages, so all of them read alike."""
        if self.type is AttrType.INTEGER:
            if self.minimum is not None and self.maximum is not None:
                return f"an integer from {self.minimum} to {self.maximum}"
            if self.minimum is not None:
                return f"an integer >= {self.minimum}"
            return "an integer"
        if self.syntax == "cpulist":
            return (
                f"a CPU list such as '0-1' or '0,2' (CPUs 0 to {MAX_CPU}; empty: no pinning)"
            )
        if self.type is AttrType.BOOLEAN:
            return "a boolean (true/false, yes/no, 1/0)"
        if self.type is AttrType.ENUM:
            return "one of " + ", ".join(self.choices)
        if self.type is AttrType.LIST:
            return "a list of strings (space or comma separated)"
        if self.type is AttrType.PORT:
            names = ", ".join(sorted(PORT_NAMES))
            low = 0 if self.minimum is None else self.minimum
            return f"a port number from {low} to 65535, one of {names} or a TCP service name"
        return "a string"


@dataclass(frozen=True)
class EntityTypeSpec:
    short_name: str
    attributes: Mapping[str, AttributeSpec]
    operations: frozenset[str] = ALWAYS_ALLOWED
    singleton: bool = False
    implemented: bool = True
    description: str = ""
    # Skupper attributes Skiff knows about but ignores (with a warning).
    unsupported: frozenset[str] = frozenset()
    # Attributes whose values make up a generated name when none is given;
    # content-derived so that a reload recognises the same entity.
    name_key: tuple[str, ...] = ()
    # Entities that exist without being created (log modules, router).
    precreated: bool = False

    @property
    def full_name(self) -> str:
        return TYPE_PREFIX + self.short_name

    @property
    def allowed_operations(self) -> frozenset[str]:
        return self.operations | ALWAYS_ALLOWED

    def configurable(self) -> list[AttributeSpec]:
        return [a for a in self.attributes.values() if not a.status]

    def status_attributes(self) -> list[AttributeSpec]:
        return [a for a in self.attributes.values() if a.status]

    def default_name(self, values: Mapping[str, object]) -> str:
        if not self.name_key:
            return self.short_name
        parts = ["" if values.get(k) is None else str(values.get(k)) for k in self.name_key]
        return f"{self.short_name}/" + ":".join(parts)


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """Suffix for error messages; empty when nothing is close enough."""
    pool = list(candidates)
    matches = difflib.get_close_matches(name, pool, n=1, cutoff=0.6)
    if not matches:
        lowered = {c.lower(): c for c in pool}
        if name.lower() in lowered:
            matches = [lowered[name.lower()]]
    return f" (did you mean '{matches[0]}'?)" if matches else ""


def _attrs(*specs: AttributeSpec) -> dict[str, AttributeSpec]:
    common = (
        AttributeSpec(
            "name",
            description="Unique name of the entity within its type.",
            create_only=True,
        ),
        AttributeSpec("identity", status=True, description="Identity assigned by the router."),
        AttributeSpec("type", status=True, description="Fully qualified entity type."),
    )
    return {s.name: s for s in (*common, *specs)}


def _counter(name: str, description: str) -> AttributeSpec:
    return AttributeSpec(name, AttrType.INTEGER, status=True, description=description)


_ROUTER = EntityTypeSpec(
    short_name="router",
    singleton=True,
    precreated=True,
    description="The router itself; one per process.",
    attributes=_attrs(
        AttributeSpec(
            "id",
            create_only=True,
            description="Router id; generated at start-up when absent.",
        ),
        AttributeSpec(
            "mode",
            AttrType.ENUM,
            default="standalone",
            choices=("standalone", "interior", "edge"),
            create_only=True,
            description="Role of the router in a network.",
        ),
        AttributeSpec(
            "workerThreads",
            AttrType.INTEGER,
            default=4,
            minimum=1,
            maximum=255,
            create_only=True,
            description="Number of I/O worker threads of the engine (1 to 255).",
        ),
        AttributeSpec(
            "workerCpus",
            default="",
            create_only=True,
            syntax="cpulist",
            description="Skiff: CPUs the I/O workers are pinned to, as HAProxy's "
            "`cpu-map auto:1/1-N`: worker i runs on the i-th CPU of the list (round robin "
            "when the list is shorter than workerThreads). Every CPU must be one the process "
            "may use (its affinity or cgroup cpuset), or the router does not start. Empty: no "
            "pinning; the workers may run on any CPU the process may use.",
        ),
        AttributeSpec(
            "workerNice",
            AttrType.INTEGER,
            minimum=-20,
            maximum=19,
            create_only=True,
            description="Skiff: the nice value the I/O workers run at, as nginx's "
            "`worker_priority` (-20 to 19; lower runs first). A value below the process's own "
            "needs CAP_SYS_NICE or RLIMIT_NICE, or the router does not start. Lower than the "
            "loads beside the router, it keeps them from preempting a worker in the middle of "
            "its work (docs/operations.md). Absent: the workers inherit the process's value.",
        ),
        AttributeSpec(
            "controlCpus",
            default="",
            create_only=True,
            syntax="cpulist",
            description="Skiff: CPUs the control loop's thread (management, configuration, "
            "engine events) is pinned to when the router starts; threads it starts later (TLS "
            "loaders) inherit the set. Empty: no pinning.",
        ),
        AttributeSpec(
            "dropTcpConnections",
            AttrType.BOOLEAN,
            default=True,
            description="Close TCP client connections when their listener or connector is deleted.",
        ),
        AttributeSpec(
            "tlsLoaderThreads",
            AttrType.INTEGER,
            default=2,
            minimum=1,
            maximum=64,
            create_only=True,
            description="Skiff: threads that read certificate files and build TLS contexts "
            "(1 to 64).",
        ),
        AttributeSpec(
            "drainGraceSeconds",
            AttrType.INTEGER,
            default=5,
            minimum=0,
            maximum=86400,
            description="Skiff: seconds given to open connections to finish on shutdown "
            "(0 to 86400).",
        ),
        AttributeSpec(
            "helloIntervalSeconds",
            AttrType.INTEGER,
            default=1,
            minimum=1,
            maximum=3600,
            create_only=True,
            description="Seconds between HELLOs on each inter-router and edge link "
            "(1 to 3600).",
        ),
        AttributeSpec(
            "helloMaxAgeSeconds",
            AttrType.INTEGER,
            default=3,
            minimum=1,
            maximum=3600,
            create_only=True,
            description="A neighbour silent this long is lost (1 to 3600).",
        ),
        AttributeSpec(
            "raIntervalSeconds",
            AttrType.INTEGER,
            default=30,
            minimum=1,
            maximum=86400,
            create_only=True,
            description="Seconds between router advertisements while the network is stable "
            "(1 to 86400).",
        ),
        AttributeSpec(
            "raIntervalFluxSeconds",
            AttrType.INTEGER,
            default=4,
            minimum=1,
            maximum=86400,
            create_only=True,
            description="Seconds between router advertisements shortly after a topology "
            "change (1 to 86400).",
        ),
        AttributeSpec(
            "remoteLsMaxAgeSeconds",
            AttrType.INTEGER,
            default=60,
            minimum=1,
            maximum=86400,
            create_only=True,
            description="A remote router's link state not refreshed this long is dropped "
            "(1 to 86400).",
        ),
        AttributeSpec(
            "maxRouters",
            AttrType.INTEGER,
            default=128,
            minimum=2,
            maximum=4096,
            create_only=True,
            description="Skiff: interior routers the link-state database holds, this one "
            "included (Skupper's fixed bound is 128; 2 to 4096). Routers beyond it are refused "
            "and counted, and the router reports itself not synchronised.",
        ),
        AttributeSpec("metadata", description="Free text carried for management tools."),
        AttributeSpec("version", status=True, description="Skiff version."),
        _counter("uptimeSeconds", "Seconds since the router started."),
        _counter("connectionCount", "Open connections of all kinds."),
        _counter("tcpListenerCount", "Configured tcpListeners."),
        _counter("tcpConnectorCount", "Configured tcpConnectors."),
    ),
    unsupported=frozenset(
        {
            "saslConfigPath",
            "saslConfigName",
            "debugDumpFile",
            "allowResumableLinkRoute",
            "timestampsInUTC",
            "timestampFormat",
            "defaultDistribution",
            "dataConnectionCount",
            "enableVanFlowRecord",
            "vanId",
            "processId",
        }
    ),
)

_TCP_STATUS = (
    _counter("connectionsOpened", "Connections opened since creation."),
    _counter("connectionsClosed", "Connections closed since creation."),
    _counter("bytesIn", "Bytes received from clients or servers."),
    _counter("bytesOut", "Bytes sent to clients or servers."),
)

_LINK_COST = AttributeSpec(
    "cost",
    AttrType.INTEGER,
    default=1,
    minimum=1,
    maximum=2**31 - 1,
    description="With role inter-router: cost of a link made through this entity, used to "
    "choose least-cost paths (1 to 2147483647; a link's cost is the larger of its two ends').",
)

_TCP_LISTENER = EntityTypeSpec(
    short_name="tcpListener",
    operations=frozenset({CREATE, DELETE}),
    name_key=("host", "port"),
    description="Accepts TCP clients and relays them to a tcpConnector with the same address.",
    attributes=_attrs(
        AttributeSpec(
            "host",
            default="",
            description="Interface to listen on; empty means all interfaces.",
        ),
        AttributeSpec("port", AttrType.PORT, required=True, description="Port to listen on."),
        AttributeSpec(
            "address",
            required=True,
            description="Service address clients are relayed to.",
        ),
        AttributeSpec(
            "backlog",
            AttrType.INTEGER,
            default=0,
            minimum=0,
            maximum=65535,
            description="listen() backlog (0 to 65535; 0, Skupper's default, means the engine's "
            "default of 128; the kernel caps it at net.core.somaxconn).",
        ),
        AttributeSpec(
            "sslProfile",
            references="sslProfile",
            description="sslProfile presented to clients; TLS off when absent.",
        ),
        AttributeSpec(
            "authenticatePeer",
            AttrType.BOOLEAN,
            default=False,
            description="Require a client certificate trusted by the profile's caCertFile.",
        ),
        AttributeSpec(
            "maxConnections",
            AttrType.INTEGER,
            default=0,
            minimum=0,
            maximum=1_000_000,
            description="Skiff: concurrent client connections allowed; 0 means unlimited "
            "(0 to 1000000).",
        ),
        AttributeSpec(
            "distribution",
            AttrType.ENUM,
            default="closest",
            choices=("closest", "balanced"),
            description="Skiff: how a client's target is chosen among the address's targets in "
            "the network. closest: the lowest path cost (local targets cost 0), then the fewest "
            "open flows, round robin on ties (Skupper's closest treatment, with ties balanced). "
            "balanced: the fewest open flows plus the path cost, over every target in the "
            "network (Skupper's balanced treatment), to spread a service exposed at several "
            "sites.",
        ),
        AttributeSpec(
            "tlsResumption",
            AttrType.ENUM,
            default="tickets",
            choices=("tickets", "cache", "off"),
            description="Skiff: how TLS clients may resume a session (with an sslProfile). "
            "tickets: a stateless ticket, the session encrypted with the router's key (the "
            "router keeps nothing). cache: a ticket that names a session kept in a bounded "
            "cache of the sslProfile (1024 sessions per profile version, 300 s; HAProxy's "
            "no-tls-tickets). off: no ticket, every connection a full handshake (the least "
            "CPU per handshake when clients never resume).",
        ),
        AttributeSpec(
            "operStatus",
            AttrType.ENUM,
            status=True,
            choices=("up", "down"),
            description="up when the socket is listening.",
        ),
        *_TCP_STATUS,
    ),
    unsupported=frozenset({"siteId", "observer", "processId"}),
)

_TCP_CONNECTOR = EntityTypeSpec(
    short_name="tcpConnector",
    operations=frozenset({CREATE, DELETE}),
    name_key=("host", "port", "address"),
    description="Connects to the real service for flows arriving on its address.",
    attributes=_attrs(
        AttributeSpec(
            "host",
            default="127.0.0.1",
            description="Host name or address of the service (Skupper's default 127.0.0.1).",
        ),
        AttributeSpec(
            "port",
            AttrType.PORT,
            required=True,
            minimum=1,
            description="Port of the service (1 to 65535).",
        ),
        AttributeSpec(
            "address",
            required=True,
            description="Service address served by this connector.",
        ),
        AttributeSpec(
            "sslProfile",
            references="sslProfile",
            description="sslProfile used to originate TLS to the service; TLS off when absent.",
        ),
        AttributeSpec(
            "verifyHostname",
            AttrType.BOOLEAN,
            default=True,
            description="Check the service certificate's name against host.",
        ),
        AttributeSpec(
            "operStatus",
            AttrType.ENUM,
            status=True,
            choices=("up", "down"),
            description="up when the last connection attempt succeeded.",
        ),
        *_TCP_STATUS,
    ),
    unsupported=frozenset({"siteId", "observer", "processId"}),
)

_LOG = EntityTypeSpec(
    short_name="log",
    operations=frozenset({UPDATE}),
    precreated=True,
    name_key=("module",),
    description="Logging of one module; one exists for every module.",
    attributes=_attrs(
        AttributeSpec(
            "module",
            AttrType.ENUM,
            required=True,
            choices=LOG_MODULES,
            create_only=True,
            description="Module this entity configures.",
        ),
        AttributeSpec(
            "enable",
            default="default",
            description="Levels to log: comma separated levels, 'level+' for that level and above, "
            "'none', or 'default' to follow the DEFAULT module (whose own default is info+).",
        ),
        AttributeSpec(
            "includeTimestamp",
            AttrType.BOOLEAN,
            default=True,
            description="Start each line with the local time and UTC offset.",
        ),
        AttributeSpec("outputFile", description="File to append to; stderr when absent."),
    ),
    unsupported=frozenset({"includeSource"}),
)

_SSL_PROFILE = EntityTypeSpec(
    short_name="sslProfile",
    operations=frozenset({CREATE, DELETE, UPDATE}),
    description="Certificates, key and trust store for TLS.",
    attributes=_attrs(
        AttributeSpec("caCertFile", description="PEM file of CAs trusted for peers."),
        AttributeSpec(
            "certFile",
            description="PEM certificate (chain) presented to peers. A file with the leaf "
            "alone is completed from caCertFile (its intermediates, never the self-signed "
            "root, which a peer trusts from its own store or not at all); a chain in the file "
            "is sent as it is.",
        ),
        AttributeSpec("privateKeyFile", description="PEM private key of certFile."),
        AttributeSpec("password", secret=True, description="Password of an encrypted private key."),
        AttributeSpec("ciphers", description="OpenSSL cipher list for TLS 1.2 and below."),
        AttributeSpec("protocols", description="Allowed protocols, e.g. 'TLSv1.2 TLSv1.3'."),
        AttributeSpec(
            "ordinal",
            AttrType.INTEGER,
            default=0,
            minimum=0,
            maximum=2**63 - 1,
            description="Generation of the material; raise it to trigger a reload.",
        ),
        AttributeSpec(
            "oldestValidOrdinal",
            AttrType.INTEGER,
            default=0,
            minimum=0,
            maximum=2**63 - 1,
            description="Connections made with an older ordinal are closed.",
        ),
        AttributeSpec(
            "checkIntervalSeconds",
            AttrType.INTEGER,
            default=10,
            minimum=0,
            maximum=86400,
            description="Skiff: period of the content-hash check that backs up file watching "
            "(0 = off; at most 86400).",
        ),
        AttributeSpec(
            "allowInvalidCertificateDates",
            AttrType.BOOLEAN,
            default=False,
            description="Skiff: publish a certificate that has expired or is not yet valid "
            "(for testing only; otherwise such material is refused and the last good stays).",
        ),
        _counter("version", "Published TLS configuration version."),
        AttributeSpec(
            "fingerprint",
            status=True,
            description="SHA-256 over all the profile's material and settings.",
        ),
        AttributeSpec("certSubject", status=True, description="Subject of the certificate."),
        AttributeSpec("certNotAfter", status=True, description="Expiry of the certificate."),
        AttributeSpec("loadedAt", status=True, description="When the current version was loaded."),
        AttributeSpec("lastError", status=True, description="Last load failure, if any."),
        AttributeSpec(
            "caFingerprint",
            status=True,
            description="Skiff: SHA-256 of the caCertFile bundle whose trust store is in force.",
        ),
        AttributeSpec(
            "caLoading",
            AttrType.BOOLEAN,
            status=True,
            description="Skiff: a changed caCertFile is still being parsed (certificate and key "
            "rotations publish meanwhile with the last good trust store).",
        ),
        _counter("reloads", "Successful reloads."),
        _counter("reloadFailures", "Failed reloads."),
        _counter(
            "datesRefused",
            "Skiff: loads refused because the certificate had expired or was not yet valid.",
        ),
    ),
    unsupported=frozenset({"uidFormat", "uidNameMappingFile", "passwordFile"}),
)

_LISTENER = EntityTypeSpec(
    short_name="listener",
    operations=frozenset({CREATE, DELETE}),
    name_key=("host", "port"),
    description="AMQP 1.0 listener for management clients and other routers.",
    attributes=_attrs(
        AttributeSpec("host", default="", description="Interface to listen on; empty means all."),
        AttributeSpec("port", AttrType.PORT, default=5672, description="Port; 'amqp' is 5672."),
        AttributeSpec(
            "role",
            AttrType.ENUM,
            default="normal",
            choices=("normal", "inter-router", "edge", "inter-edge", "route-container"),
            description="What connects here.",
        ),
        AttributeSpec("sslProfile", references="sslProfile", description="TLS material."),
        _LINK_COST,
        AttributeSpec(
            "authenticatePeer",
            AttrType.BOOLEAN,
            default=False,
            description="Require SASL auth.",
        ),
        AttributeSpec(
            "requireSsl",
            AttrType.BOOLEAN,
            default=False,
            description="Refuse plain connections.",
        ),
        AttributeSpec("saslMechanisms", AttrType.LIST, description="Allowed SASL mechanisms."),
        AttributeSpec(
            "idleTimeoutSeconds",
            AttrType.INTEGER,
            default=16,
            minimum=0,
            maximum=86400,
            description="AMQP idle timeout advertised to peers (0 = none; at most 86400).",
        ),
        AttributeSpec(
            "maxFrameSize",
            AttrType.INTEGER,
            default=16384,
            minimum=512,
            maximum=2**32 - 1,
            description="Largest AMQP frame (512 to 4294967295, AMQP's uint).",
        ),
        AttributeSpec(
            "maxConnections",
            AttrType.INTEGER,
            default=0,
            minimum=0,
            maximum=1_000_000,
            description="Skiff: connections this listener may hold at once; the engine refuses "
            "more at accept. 0 means the default cap: min(128, half the app connection budget), "
            "the budget being a quarter of the descriptor limit (0 to 1000000; the budget still "
            "bounds all app listeners together).",
        ),
        AttributeSpec(
            "initialHandshakeTimeoutSeconds",
            AttrType.INTEGER,
            default=10,
            minimum=0,
            maximum=3600,
            description="Seconds an AMQP client has from connecting to finish the protocol "
            "header, SASL and its open, or it is closed (0 = none, Skupper's default; Skiff's "
            "default is 10; at most 3600).",
        ),
        AttributeSpec(
            "requestTimeoutSeconds",
            AttrType.INTEGER,
            default=10,
            minimum=1,
            maximum=3600,
            description="Skiff: with http, seconds a client has from connecting to send its "
            "whole request head, or it is answered 408 and closed (1 to 3600).",
        ),
        AttributeSpec(
            "backlog",
            AttrType.INTEGER,
            default=1024,
            minimum=1,
            maximum=65535,
            description="Skiff: listen() backlog (1 to 65535; the kernel caps it at "
            "net.core.somaxconn).",
        ),
        AttributeSpec(
            "http",
            AttrType.BOOLEAN,
            default=False,
            description="Serve HTTP on this port.",
        ),
        AttributeSpec(
            "healthz",
            AttrType.BOOLEAN,
            default=True,
            description="Serve /healthz over http.",
        ),
        AttributeSpec(
            "metrics",
            AttrType.BOOLEAN,
            default=True,
            description="Serve /metrics over http.",
        ),
        AttributeSpec(
            "websockets",
            AttrType.BOOLEAN,
            default=True,
            description="Accept AMQP over websockets (not served by Skiff; ignored).",
        ),
        AttributeSpec(
            "usersFile",
            description="Skiff: users file for SASL PLAIN (name:permission:scrypt hash lines; "
            "see docs/management.md).",
        ),
        AttributeSpec(
            "allowAnonymousWrites",
            AttrType.BOOLEAN,
            description="Skiff: whether clients that did not authenticate (bare AMQP or "
            "ANONYMOUS) may create, update and delete entities. When absent, a listener bound "
            "only to loopback (127.0.0.0/8, ::1, localhost) allows them and any other refuses "
            "them.",
        ),
        AttributeSpec(
            "operStatus",
            AttrType.ENUM,
            status=True,
            choices=("up", "down"),
            description="up when the socket is listening.",
        ),
        _counter("boundPort", "Skiff: port actually listened on (useful with port 0)."),
        AttributeSpec("lastError", status=True, description="Skiff: why the listener is down."),
        _counter("connectionCount", "Skiff: open connections on this listener."),
    ),
    unsupported=frozenset(
        {
            "saslPlugin",
            "httpRootDir",
            "maxSessions",
            "maxSessionFrames",
            "linkCapacity",
            "policyVhost",
            "messageLoggingComponents",
            "multiTenant",
            "stripAnnotations",
            "siteId",
            "processId",
        }
    ),
)

_CONNECTOR = EntityTypeSpec(
    short_name="connector",
    operations=frozenset({CREATE, DELETE}),
    name_key=("host", "port"),
    description="Dials another router: role inter-router links two interior routers, role edge "
    "links an edge router to an interior one. Re-dials forever with capped exponential "
    "back-off.",
    attributes=_attrs(
        AttributeSpec(
            "host",
            default="127.0.0.1",
            description="Router to dial: a numeric address or a name (resolved off the I/O "
            "workers).",
        ),
        AttributeSpec("port", AttrType.PORT, default=5672, description="Port; 'amqp' is 5672."),
        AttributeSpec(
            "role",
            AttrType.ENUM,
            default="normal",
            choices=("normal", "inter-router", "edge", "inter-edge", "route-container"),
            description="What the far end is: inter-router (an interior router, from an "
            "interior) or edge (an interior router, from an edge). Skiff dials no other role.",
        ),
        _LINK_COST,
        AttributeSpec(
            "sslProfile",
            references="sslProfile",
            description="TLS material: the certificate presented (mutual TLS) and the CAs "
            "trusted for the far end.",
        ),
        AttributeSpec(
            "saslMechanisms",
            AttrType.LIST,
            description="SASL mechanisms offered; EXTERNAL (the verified certificate) when the "
            "sslProfile has a certificate, else ANONYMOUS.",
        ),
        AttributeSpec(
            "idleTimeoutSeconds",
            AttrType.INTEGER,
            default=16,
            minimum=0,
            maximum=86400,
            description="AMQP idle timeout advertised to the far end; it is also the silence "
            "after which the link is closed (0 = none; at most 86400). Heartbeats are sent by "
            "the engine.",
        ),
        AttributeSpec(
            "verifyHostname",
            AttrType.BOOLEAN,
            default=True,
            description="With an sslProfile: the far end's certificate must name host.",
        ),
        AttributeSpec(
            "maxFrameSize",
            AttrType.INTEGER,
            default=16384,
            minimum=512,
            maximum=2**32 - 1,
            description="Largest AMQP frame (512 to 4294967295, AMQP's uint).",
        ),
        AttributeSpec(
            "connectionStatus",
            status=True,
            description="CONNECTING, SUCCESS (the link is up) or FAILED.",
        ),
        AttributeSpec("connectionMsg", status=True, description="Why the last attempt failed."),
        _counter("dials", "Skiff: connection attempts made."),
    ),
    unsupported=frozenset(
        {
            "socketAddressFamily",
            "proxyProfile",
            "allowRedirect",
            "maxSessions",
            "maxSessionFrames",
            "stripAnnotations",
            "linkCapacity",
            "saslUsername",
            "saslPassword",
            "messageLoggingComponents",
            "failoverUrls",
            "policyVhost",
            "openProperties",
        }
    ),
)

_IMPLEMENTED_CONFIG_TYPES = (
    _ROUTER,
    _SSL_PROFILE,
    _LISTENER,
    _CONNECTOR,
    _TCP_LISTENER,
    _TCP_CONNECTOR,
    _LOG,
)


def _status(name: str, description: str, kind: AttrType = AttrType.STRING) -> AttributeSpec:
    return AttributeSpec(name, kind, status=True, description=description)


# Read-only types of the running router: the management agent answers READ
# and QUERY for them from live state; configuration files cannot name them
# (the loader keeps ignoring 'connection' and 'tcpConnection' with a warning).
_CONNECTION = EntityTypeSpec(
    short_name="connection",
    operations=frozenset(),
    description="An open AMQP connection (management clients).",
    attributes=_attrs(
        _status("id", "Connection id.", AttrType.INTEGER),
        _status("role", "Role of the listener it arrived on."),
        _status("dir", "in (accepted) or out (originated)."),
        _status("host", "Peer address."),
        _status("container", "Container id the peer announced."),
        _status("isEncrypted", "Whether TLS protects the connection.", AttrType.BOOLEAN),
        _status("sslProto", "TLS protocol, when encrypted."),
        _status("sslCipher", "TLS cipher, when encrypted."),
        _status("tlsOrdinal", "Ordinal of the TLS material it uses.", AttrType.INTEGER),
        _status("isAuthenticated", "Whether SASL authenticated the peer.", AttrType.BOOLEAN),
        _status("user", "Authenticated user, when any."),
        _status("sasl", "SASL mechanism used, when any."),
        _status("operStatus", "up while open."),
        _status("listener", "Skiff: name of the listener it arrived on."),
        _status("uptimeSeconds", "Seconds since it opened.", AttrType.INTEGER),
    ),
)

_TCP_CONNECTION = EntityTypeSpec(
    short_name="tcpConnection",
    operations=frozenset(),
    description="A relayed TCP flow (client side as seen by the engine).",
    attributes=_attrs(
        _status("connectionId", "Engine connection id.", AttrType.INTEGER),
        _status("listener", "tcpListener the client arrived on."),
        _status("connector", "tcpConnector serving the flow, once connected."),
        _status(
            "remoteRouter",
            "Skiff: for a flow across routers, the router at its other end (the one it goes to, "
            "or the one it came from; see remoteDirection).",
        ),
        _status("remoteDirection", "Skiff: 'to' or 'from' remoteRouter; null for a local flow."),
        _status("address", "Service address."),
        _status("host", "Peer (client) address."),
        _status("target", "Address of the service connected to."),
        _status("worker", "I/O worker handling the flow.", AttrType.INTEGER),
        _status("bytesIn", "Bytes from the client.", AttrType.INTEGER),
        _status("bytesOut", "Bytes to the client.", AttrType.INTEGER),
        _status(
            "tlsConfigVersion", "TLS configuration version pinned by the flow.", AttrType.INTEGER
        ),
        _status("tlsOrdinal", "Ordinal of that TLS configuration.", AttrType.INTEGER),
        _status("peerSubject", "Subject of the client certificate, when any."),
        _status("uptimeSeconds", "Seconds since the client connected.", AttrType.INTEGER),
    ),
)

_ROUTER_METRICS = EntityTypeSpec(
    short_name="routerMetrics",
    operations=frozenset(),
    description="Aggregate counters of the router.",
    attributes=_attrs(
        _status("connectionCounts", "Open connections: tcp and amqp."),
        _status("tcpConnectionsOpened", "Relayed flows opened.", AttrType.INTEGER),
        _status("tcpConnectionsClosed", "Relayed flows closed.", AttrType.INTEGER),
        _status("tcpConnectionsActive", "Relayed flows open now.", AttrType.INTEGER),
        _status("tcpBytesIn", "Bytes received from clients and services.", AttrType.INTEGER),
        _status("tcpBytesOut", "Bytes sent to clients and services.", AttrType.INTEGER),
        _status("amqpConnections", "Open AMQP connections.", AttrType.INTEGER),
        _status("managementRequests", "Management requests answered.", AttrType.INTEGER),
        _status("accepted", "Connections accepted by the engine.", AttrType.INTEGER),
        _status("connectsFailed", "Failed connects to services.", AttrType.INTEGER),
        _status("flowsFailed", "Clients no connector could serve.", AttrType.INTEGER),
        _status("eventsDropped", "Engine events lost to full rings.", AttrType.INTEGER),
        _status("workerThreads", "I/O workers.", AttrType.INTEGER),
        _status("uptimeSeconds", "Seconds since the router started.", AttrType.INTEGER),
    ),
)

_NETWORK = EntityTypeSpec(
    short_name="network",
    operations=frozenset(),
    description="The router network this router belongs to.",
    attributes=_attrs(
        _status("tenantId", "Tenant of the network; empty for a standalone router."),
        _status("networkId", "Network id; the router id for a standalone router."),
    ),
)

_ROUTER_NODE = EntityTypeSpec(
    short_name="router.node",
    operations=frozenset(),
    description="A router of the network (this one first), from the link-state database. "
    "Answered only while this router is synchronised with the network (else 503), unless "
    "the request sets the application property allowStale: true.",
    attributes=_attrs(
        _status("id", "Router id."),
        _status("protocolVersion", "Version of the routing protocol.", AttrType.INTEGER),
        _status(
            "instance", "Start time of the router in ms (grows across restarts).", AttrType.INTEGER
        ),
        _status("linkState", "Its interior neighbours.", AttrType.LIST),
        _status("nextHop", "Neighbour a flow to it takes first; null for a neighbour."),
        _status("validOrigins", "Not used by Skiff (empty).", AttrType.LIST),
        _status("address", "Its management address."),
        _status("routerLink", "Link to it, for a neighbour.", AttrType.INTEGER),
        _status("cost", "Least path cost to it.", AttrType.INTEGER),
        _status(
            "lastTopoChange", "Unix time (s) of the last topology change.", AttrType.INTEGER
        ),
        _status("index", "Row number.", AttrType.INTEGER),
    ),
)

_ROUTER_ADDRESS = EntityTypeSpec(
    short_name="router.address",
    operations=frozenset(),
    description="A service address with a target anywhere in the network. Answered only "
    "while this router is synchronised (else 503), unless allowStale: true.",
    attributes=_attrs(
        _status("key", "The address."),
        _status("distribution", "balanced (TCP flows are balanced over targets)."),
        _status("inProcess", "Always 0 in Skiff.", AttrType.INTEGER),
        _status("subscriberCount", "Local targets (tcpConnectors).", AttrType.INTEGER),
        _status("remoteCount", "Other routers with targets.", AttrType.INTEGER),
        _status("remoteHostRouters", "Those routers' ids.", AttrType.LIST),
        _status("containerCount", "Always 0 in Skiff.", AttrType.INTEGER),
    ),
)


# ------------------------------------------------------------------ Skupper's schema
#
# ``router.skupper_facts`` is Skupper's own schema as data.  Every entity type
# and attribute in it is *known* to Skiff: a configuration file naming one
# that Skiff does not implement gets a warning, never an error, and the
# management agent answers for every Skupper type (an empty QUERY, a 501 on
# CREATE) and every Skupper attribute (its default or null).

SKUPPER_BASE_TYPES: frozenset[str] = frozenset(
    {"entity", "org.amqp.management", "management", "configurationEntity", "operationalEntity"}
)
# Names Skupper's loader maps to other types before validating.
SKUPPER_TYPE_ALIASES: Mapping[str, str] = {
    "address": "router.config.address",
    "autoLink": "router.config.autoLink",
}


def short_type_name(name: str) -> str:
    return name.removeprefix(TYPE_PREFIX)


def skupper_type_facts(name: str) -> Mapping[str, object] | None:
    """Skupper's facts of a concrete entity type (short, full or alias name)."""
    short = short_type_name(name)
    short = SKUPPER_TYPE_ALIASES.get(short, short)
    if short in SKUPPER_BASE_TYPES:
        return None
    return skupper_facts.TYPES.get(short)


def skupper_attributes(name: str) -> dict[str, Mapping[str, object]]:
    """Skupper's attributes of a type, the inherited ``name``, ``identity``,
    ``type`` first; empty for a type Skupper does not have."""
    facts = skupper_type_facts(name)
    if facts is None:
        return {}
    attributes = facts["attributes"]
    assert isinstance(attributes, dict)
    return {**skupper_facts.TYPES["entity"]["attributes"], **attributes}


def skupper_type_names() -> list[str]:
    """Every concrete entity type of Skupper's schema, in its order."""
    return [t for t in skupper_facts.TYPES if t not in SKUPPER_BASE_TYPES]


def skupper_default(facts: Mapping[str, object]) -> object:
    """An attribute's default in Skupper's wire type (None when it has none)."""
    if "default" not in facts:
        return None
    value = facts["default"]
    kind = facts.get("type")
    if kind in ("string", "path") and value is not None and not isinstance(value, str):
        return str(value)
    return value


def _with_skupper(spec: EntityTypeSpec) -> EntityTypeSpec:
    """``spec`` with every Skupper attribute Skiff lacks marked as ignored."""
    extra = frozenset(skupper_attributes(spec.short_name)) - frozenset(spec.attributes)
    return replace(spec, unsupported=spec.unsupported | extra)


ENTITY_TYPES: Mapping[str, EntityTypeSpec] = {
    s.short_name: _with_skupper(s) for s in _IMPLEMENTED_CONFIG_TYPES
}

OPERATIONAL_TYPES: Mapping[str, EntityTypeSpec] = {
    s.short_name: s
    for s in (
        _CONNECTION,
        _TCP_CONNECTION,
        _ROUTER_METRICS,
        _NETWORK,
        _ROUTER_NODE,
        _ROUTER_ADDRESS,
    )
}


def management_type(name: str) -> EntityTypeSpec:
    """Entity types the management agent knows: configurable and read-only."""
    spec = OPERATIONAL_TYPES.get(short_type_name(name))
    return spec if spec is not None else entity_type(name)


def management_types() -> list[EntityTypeSpec]:
    return [*ENTITY_TYPES.values(), *OPERATIONAL_TYPES.values()]


# Types of older Skupper (and Qpid Dispatch) releases that Skupper's current
# schema has dropped; still ignored with a warning so old files start.
_LEGACY_TYPES = frozenset(
    {
        "address",
        "linkRoute",
        "autoLink",
        "httpListener",
        "httpConnector",
        "addressWatch",
        "authServicePlugin",
        "exchange",
        "binding",
        "router.config.exchange",
        "router.config.binding",
        "router.config.linkRoute",
        "console",
        "httpRequestInfo",
        "routerStats",
        # Qpid Dispatch, before the Skupper fork
        "container",
        "waypoint",
        "fixedAddress",
        "linkRoutePattern",
    }
)

# Skupper entity types Skiff does not implement; configured ones are ignored
# with a warning so that a Skupper configuration file still starts.
UNSUPPORTED_ENTITY_TYPES: frozenset[str] = (
    _LEGACY_TYPES | frozenset(skupper_type_names()) | SKUPPER_BASE_TYPES
) - frozenset(ENTITY_TYPES)


def skupper_type_name(name: str) -> str | None:
    """The type a spelling names: exact, full, alias or dashed (``ssl-profile``)."""
    for candidate in (short_type_name(name), camel_case(short_type_name(name))):
        if candidate in ENTITY_TYPES or candidate in UNSUPPORTED_ENTITY_TYPES:
            return candidate
    return None


def is_unsupported_type(name: str) -> bool:
    return skupper_type_name(name) in UNSUPPORTED_ENTITY_TYPES


def entity_type(name: str) -> EntityTypeSpec:
    """Accepts short, fully qualified or dashed names, as Skupper's tools do."""
    short = skupper_type_name(name) or short_type_name(name)
    spec = ENTITY_TYPES.get(short)
    if spec is not None:
        return spec
    if short in UNSUPPORTED_ENTITY_TYPES:
        raise UnknownEntityType(
            f"entity type '{name}' is not supported by Skiff",
            entity_type=name,
        )
    raise UnknownEntityType(
        f"unknown entity type '{name}'{did_you_mean(short, ENTITY_TYPES)}",
        entity_type=name,
    )


def check_skupper_attribute(type_name: str, name: str) -> str:
    """The Skupper attribute ``name`` spells for a type Skiff ignores; raises
    :class:`UnknownAttribute` (with a hint) for one Skupper does not have
    either.  Types of older releases have no facts and accept any name."""
    short = skupper_type_name(type_name) or short_type_name(type_name)
    known = skupper_attributes(short)
    if not known:
        return name
    for candidate in (name, camel_case(name)):
        if candidate in known:
            return candidate
    raise UnknownAttribute(
        f"{short} attribute '{name}' is unknown{did_you_mean(name, known)}",
        entity_type=short,
        attribute=name,
    )


_SEPARATORS = re.compile(r"[ _.\-]")


def camel_case(name: str) -> str:
    """Skupper's spelling rule: words split at ``-``, ``_``, ``.`` or space
    are joined in camelCase (``worker-threads`` -> ``workerThreads``)."""
    if not _SEPARATORS.search(name):
        return name
    first, *rest = _SEPARATORS.split(name)
    return first + "".join(w.capitalize() for w in rest)


@dataclass(frozen=True)
class AttributeName:
    """Outcome of resolving a spelled attribute name.

    ``canonical`` is None when the attribute is known but unsupported, in
    which case ``warning`` says it is ignored.
    """

    canonical: str | None
    warning: str | None = None


def resolve_attribute(
    spec: EntityTypeSpec, name: str, *, allow_status: bool = False
) -> AttributeName:
    """Maps a spelling to its schema name; raises for names that are wrong.

    Dashed spellings (``worker-threads``) are accepted with a warning, as the
    Skupper router did during its rename to camelCase.
    """
    if name in spec.attributes:
        if spec.attributes[name].status and not allow_status:
            raise ReadOnlyAttribute(
                f"{spec.short_name} attribute '{name}' is read-only status and cannot be set",
                entity_type=spec.short_name,
                attribute=name,
            )
        return AttributeName(name)
    if name in spec.unsupported:
        return AttributeName(
            None,
            f"{spec.short_name} attribute '{name}' is not supported by Skiff and is ignored",
        )
    camel = camel_case(name)
    if camel != name and (camel in spec.attributes or camel in spec.unsupported):
        # Skupper's loader reads every name in this form, silently
        return resolve_attribute(spec, camel, allow_status=allow_status)
    candidates = (
        [a.name for a in spec.configurable()] if not allow_status else list(spec.attributes)
    ) + sorted(spec.unsupported)
    raise UnknownAttribute(
        f"{spec.short_name} attribute '{name}' is unknown{did_you_mean(name, candidates)}",
        entity_type=spec.short_name,
        attribute=name,
    )


def _invalid(
    spec: EntityTypeSpec, attr: AttributeSpec, raw: object, extra: str = ""
) -> InvalidValue:
    shown = repr(raw)
    if len(shown) > 80:  # a hostile value must not make a hostile message
        shown = f"{shown[:60]}… ({len(shown)} characters)"
    return InvalidValue(
        f"{spec.short_name} attribute '{attr.name}' has invalid value {shown}{extra}: expected "
        f"{attr.expected()}",
        entity_type=spec.short_name,
        attribute=attr.name,
        value=raw,
    )


def convert(spec: EntityTypeSpec, attr: AttributeSpec | str, raw: object) -> object:
    """Converts a configured or requested value to its schema type.

    Accepts the string forms a configuration file produces as well as the
    native JSON / AMQP values, so the loader and the agent share it.
    """
    a = spec.attributes[attr] if isinstance(attr, str) else attr
    if raw is None:
        return None
    if a.type is AttrType.STRING:
        if isinstance(raw, (str, int, float)) and not isinstance(raw, bool):
            value: object = str(raw)
        else:
            raise _invalid(spec, a, raw)
        if spec.short_name == "log" and a.name == "enable":
            parse_enable(str(value), entity_type=spec.short_name)
        if a.syntax == "cpulist":
            try:
                return format_cpu_list(parse_cpu_list(str(value)))
            except ValueError as e:
                raise _invalid(spec, a, raw, f" ({e})") from None
        return value
    if a.type is AttrType.BOOLEAN:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, int) and raw in (0, 1):
            return bool(raw)
        if isinstance(raw, str):
            low = raw.strip().lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
        raise _invalid(spec, a, raw)
    if a.type is AttrType.INTEGER:
        number = _to_int(raw)
        if number is None:
            raise _invalid(spec, a, raw)
        if (a.minimum is not None and number < a.minimum) or (
            a.maximum is not None and number > a.maximum
        ):
            raise _invalid(spec, a, raw, " (out of range)")
        return number
    if a.type is AttrType.PORT:
        if isinstance(raw, str) and raw.strip().lower() in PORT_NAMES:
            return PORT_NAMES[raw.strip().lower()]
        number = _to_int(raw)
        if number is None and isinstance(raw, str):
            number = _service_port(raw.strip())
        if number is None:
            raise _invalid(spec, a, raw)
        if not (0 if a.minimum is None else a.minimum) <= number <= 65535:
            raise _invalid(spec, a, raw, " (out of range)")
        return number
    if a.type is AttrType.ENUM:
        if isinstance(raw, str) and raw in a.choices:
            return raw
        if isinstance(raw, str):
            # Enum values are case-sensitive in Skupper, but a wrong case is
            # an obvious typo worth a precise hint.
            raise _invalid(spec, a, raw, did_you_mean(raw, a.choices))
        raise _invalid(spec, a, raw)
    if a.type is AttrType.LIST:
        if isinstance(raw, str):
            return [p for p in re.split(r"[\s,]+", raw.strip()) if p]
        if isinstance(raw, (list, tuple)) and all(isinstance(p, str) for p in raw):
            return list(raw)
        raise _invalid(spec, a, raw)
    raise AssertionError(f"unhandled attribute type {a.type}")


# Longer than any bound in the schema; stops int() from parsing (or refusing
# with a traceback) thousands of digits.
_MAX_DIGITS = 20


def _service_port(name: str) -> int | None:
    """A TCP service name's port from the system's services database, as
    Skupper resolves a port string (``http`` is 80); None when unknown."""
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.+-]{0,31}", name):
        return None
    try:
        return socket.getservbyname(name, "tcp")
    except OSError:
        return None


def _to_int(raw: object) -> int | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str) and re.fullmatch(r"\s*[+-]?\d+\s*", raw):
        digits = raw.strip().lstrip("+-").lstrip("0")
        if len(digits) > _MAX_DIGITS:
            return None
        return int(raw)
    return None


def default_value(
    spec: EntityTypeSpec, attr: AttributeSpec, values: Mapping[str, object]
) -> object:
    """Default of ``attr``; the DEFAULT log module is the one special case.

    Every other module's ``enable`` defaults to following DEFAULT, so DEFAULT
    itself needs a real level set (Skupper's ``info+``).
    """
    if spec.short_name == "log" and attr.name == "enable" and values.get("module") == "DEFAULT":
        return "info+"
    if isinstance(attr.default, list):
        return list(attr.default)
    return attr.default


@dataclass
class Validated:
    values: dict[str, object]
    warnings: list[str] = field(default_factory=list)


def validate_attributes(
    spec: EntityTypeSpec,
    raw: Mapping[str, object],
    *,
    partial: bool = False,
) -> Validated:
    """Resolves names, converts values and, unless ``partial``, fills defaults.

    ``partial`` is for UPDATE requests, which carry only what changes.
    """
    out: dict[str, object] = {}
    spelled: dict[str, str] = {}
    warnings: list[str] = []
    for key, value in raw.items():
        if key in ("identity", "type") and partial:
            # Management requests may echo these back; they select, not set.
            continue
        resolved = resolve_attribute(spec, key)
        if resolved.warning:
            warnings.append(resolved.warning)
        if resolved.canonical is None:
            continue
        name = resolved.canonical
        if name in spelled:
            raise DuplicateAttribute(
                f"{spec.short_name} attribute '{name}' is given twice (as '{spelled[name]}' and "
                f"'{key}')",
                entity_type=spec.short_name,
                attribute=name,
            )
        spelled[name] = key
        out[name] = convert(spec, spec.attributes[name], value)
    if not partial:
        complete(spec, out)
    return Validated(out, warnings)


def complete(spec: EntityTypeSpec, values: dict[str, object]) -> dict[str, object]:
    """Fills defaults in place and checks required attributes."""
    for attr in spec.configurable():
        if attr.name == "name":
            continue
        if values.get(attr.name) is None:
            if attr.required:
                raise MissingAttribute(
                    f"{spec.short_name} attribute '{attr.name}' is required but missing",
                    entity_type=spec.short_name,
                    attribute=attr.name,
                )
            values[attr.name] = default_value(spec, attr, values)
    return values


_CPU_RANGE = re.compile(r"(\d{1,5})(?:-(\d{1,5}))?")


def parse_cpu_list(text: str) -> tuple[int, ...]:
    """Parses Linux's CPU list syntax (``taskset -c``, ``Cpus_allowed_list``):
    comma separated CPUs and inclusive ranges, ``0-1,4``; empty is no CPU.

    Returns the CPUs sorted, each once; raises ValueError saying what is wrong.
    """
    cpus: set[int] = set()
    if not text.strip():
        return ()
    for item in text.split(","):
        item = item.strip()
        m = _CPU_RANGE.fullmatch(item)
        if not m:
            what = "an empty item" if not item else f"'{item[:20]}'"
            raise ValueError(f"{what} is not a CPU number or a range such as 2-3")
        low = int(m.group(1))
        high = low if m.group(2) is None else int(m.group(2))
        if high < low:
            raise ValueError(f"range '{item}' runs backwards")
        if high > MAX_CPU:
            raise ValueError(f"CPU {high} is past {MAX_CPU}")
        cpus.update(range(low, high + 1))
    return tuple(sorted(cpus))


def format_cpu_list(cpus: Iterable[int]) -> str:
    """The canonical CPU list of ``cpus``: ``(0, 1, 2, 5)`` -> ``0-2,5``."""
    out: list[str] = []
    ordered = sorted(set(cpus))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        out.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(out)


@dataclass(frozen=True)
class EnableSpec:
    """Parsed ``enable`` value: the enabled levels, or None to follow DEFAULT."""

    levels: frozenset[str] | None

    @property
    def inherits(self) -> bool:
        return self.levels is None


# Level names in the order Skupper matches a prefix against them ("n" is
# none, "d" default), then the two levels Skiff adds.
_ENABLE_WORDS: tuple[str, ...] = (
    "default",
    "none",
    "debug",
    "info",
    "warning",
    "error",
    "critical",
    "trace",
    "notice",
)
_ENABLE_SEPARATORS = re.compile(r"[,;: ]+")


def _enable_word(token: str) -> str | None:
    """The level a token names: Skupper matches a case-insensitive prefix
    (``warn``, ``Info``), the first in its order winning."""
    low = token.lower()
    for word in _ENABLE_WORDS:
        if word.startswith(low):
            return word
    return None


def parse_enable(text: str, *, entity_type: str = "log") -> EnableSpec:
    """Parses Skupper's ``enable`` syntax: ``debug,warning+``, ``none``, ``default``.

    As in Skupper, tokens are separated by commas, semicolons, colons or
    spaces, a level may be any case-insensitive prefix of its name, ``none``
    adds nothing and ``default`` anywhere means follow the DEFAULT module.
    """
    tokens = [t for t in _ENABLE_SEPARATORS.split(text.strip()) if t]
    if not tokens:
        raise InvalidValue(
            f"{entity_type} attribute 'enable' is empty: expected levels such as 'info+', "
            "'none' or 'default'",
            entity_type=entity_type,
            attribute="enable",
            value=text,
        )
    levels: set[str] = set()
    inherits = False
    for token in tokens:
        base = token.removesuffix("+")
        word = _enable_word(base) if base else None
        if word is None:
            hint = did_you_mean(base.lower(), LOG_LEVELS) if base else ""
            raise InvalidValue(
                f"{entity_type} attribute 'enable' has unknown level '{token}' in {text!r}{hint}: "
                f"expected levels from {', '.join(LOG_LEVELS)} (or a prefix such as 'warn'), "
                "each optionally followed by '+', or 'none' or 'default'",
                entity_type=entity_type,
                attribute="enable",
                value=text,
            )
        if word == "default":
            inherits = True
        elif word == "none":
            continue
        elif token.endswith("+"):
            levels.update(LOG_LEVELS[LOG_LEVELS.index(word) :])
        else:
            levels.add(word)
    return EnableSpec(None if inherits else frozenset(levels))
