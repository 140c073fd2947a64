"""The router protocol's messages, and their strict decoding.

Six messages travel on inter-router (and edge) links, each an AMQP map body
with its opcode carried beside it (Skupper puts it in the ``opcode``
application property):

========  ==============================================================
HELLO     one hop: who I am, which routers I have heard on this link
RA        router advertisement: my link-state and mobile sequences
LSU       link-state update: a router's neighbours and their costs
LSR       link-state request: "send me your copy of TARGET's link state"
MAU       mobile address update: a router's addresses, incremental
          (``add``/``del``) or the full set (``exist``), with counts
MAR       mobile address request: "I have TARGET's addresses at SEQ"
========  ==============================================================

Field names follow the Skupper router's (``id``, ``pv``, ``area``,
``instance``, ``seen``, ``ls_seq``, ``mobile_seq``, ``ls``/``peers``,
``add``/``del``/``exist``, ``have_seq``).  Skiff adds ``target`` to LSR and
MAR because its requests are answered by the neighbour they are sent to
rather than routed to the origin, and ``instance`` to MAU so that a
restarted router's sequence 1 is not taken for an old one.

Everything a peer sends is untrusted: ``decode`` either returns a message
whose every field has been checked (type, length, range, list size, total
size) or raises ``ProtocolError`` naming the opcode, the field and what was
wrong.  It raises nothing else, whatever the input.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

PROTOCOL_VERSION = 1

MAX_ID_LEN = 255  # router ids and areas
MAX_ADDRESS_LEN = 1024  # service addresses
MAX_PEERS = 1024  # routers named in one HELLO or one link state
MAX_ADDRESSES = 65536  # addresses in one MAU
MAX_SEQ = 2**63 - 1  # sequence numbers and instances (an AMQP long)
MAX_COST = 2**31 - 1  # link costs and target counts (an AMQP int)
MAX_COUNT = 2**31 - 1
MAX_KEYS = 32  # keys in one map: known fields plus room to grow
MAX_MESSAGE_SIZE = 4 * 1024 * 1024  # bytes, as encoded (estimated when not given)

_SPACE = re.compile(r"\s")
_INT_SIZE = 9  # an encoded long: constructor and 8 bytes
_STR_OVERHEAD = 5  # constructor and 32-bit length


class ProtocolError(ValueError):
    """A peer's message is not acceptable.  The link it came on is closed;
    nothing else changes.

    ``opcode`` is the message's opcode (or "message" when that is what was
    wrong), ``field`` the offending field's path, ``problem`` the reason.
    """

    def __init__(self, opcode: str, field: str, problem: str) -> None:
        self.opcode = opcode
        self.field = field
        self.problem = problem
        super().__init__(f"{opcode}: {field}: {problem}" if field else f"{opcode}: {problem}")


# --------------------------------------------------------------------------
# the messages


@dataclass(frozen=True)
class Hello:
    OPCODE: ClassVar[str] = "HELLO"
    id: str
    instance: int
    seen: tuple[str, ...] = ()
    area: str = "0"
    pv: int = PROTOCOL_VERSION


@dataclass(frozen=True)
class RA:
    OPCODE: ClassVar[str] = "RA"
    id: str
    instance: int
    ls_seq: int
    mobile_seq: int
    area: str = "0"
    pv: int = PROTOCOL_VERSION


@dataclass(frozen=True)
class LSU:
    OPCODE: ClassVar[str] = "LSU"
    id: str
    instance: int
    ls_seq: int
    peers: Mapping[str, int] = field(default_factory=dict)
    area: str = "0"
    pv: int = PROTOCOL_VERSION


@dataclass(frozen=True)
class LSR:
    OPCODE: ClassVar[str] = "LSR"
    id: str
    target: str
    area: str = "0"
    pv: int = PROTOCOL_VERSION


@dataclass(frozen=True)
class MAU:
    """``exist`` set: the full address set (a reply to MAR, or the first
    update on a new link).  Otherwise ``add`` (new addresses and changed
    counts) and ``deleted`` (carried as ``del``) are the change from
    ``mobile_seq - 1``."""

    OPCODE: ClassVar[str] = "MAU"
    id: str
    instance: int
    mobile_seq: int
    add: Mapping[str, int] | None = None
    deleted: tuple[str, ...] | None = None
    exist: Mapping[str, int] | None = None
    area: str = "0"
    pv: int = PROTOCOL_VERSION

    @property
    def is_full(self) -> bool:
        return self.exist is not None


@dataclass(frozen=True)
class MAR:
    OPCODE: ClassVar[str] = "MAR"
    id: str
    target: str
    have_seq: int
    area: str = "0"
    pv: int = PROTOCOL_VERSION


Message = Hello | RA | LSU | LSR | MAU | MAR

OPCODES: tuple[str, ...] = ("HELLO", "RA", "LSU", "LSR", "MAU", "MAR")


# --------------------------------------------------------------------------
# encoding


def encode(msg: Message) -> tuple[str, dict[str, Any]]:
    """The opcode and the map body of ``msg``."""
    body: dict[str, Any] = {"id": msg.id, "pv": msg.pv, "area": msg.area}
    if isinstance(msg, Hello):
        body.update(instance=msg.instance, seen=list(msg.seen))
    elif isinstance(msg, RA):
        body.update(instance=msg.instance, ls_seq=msg.ls_seq, mobile_seq=msg.mobile_seq)
    elif isinstance(msg, LSU):
        body.update(
            instance=msg.instance,
            ls_seq=msg.ls_seq,
            ls={"id": msg.id, "area": msg.area, "ls_seq": msg.ls_seq, "peers": dict(msg.peers)},
        )
    elif isinstance(msg, LSR):
        body["target"] = msg.target
    elif isinstance(msg, MAU):
        body.update(instance=msg.instance, mobile_seq=msg.mobile_seq)
        if msg.add is not None:
            body["add"] = dict(msg.add)
        if msg.deleted is not None:
            body["del"] = list(msg.deleted)
        if msg.exist is not None:
            body["exist"] = dict(msg.exist)
    else:
        body.update(target=msg.target, have_seq=msg.have_seq)
    return msg.OPCODE, body


# --------------------------------------------------------------------------
# decoding


class _Reader:
    """Checks one message's fields, charging each against a size budget."""

    def __init__(self, opcode: str, body: Mapping[Any, Any], budget: int) -> None:
        self.opcode = opcode
        self.body = body
        self.budget = budget

    def fail(self, name: str, problem: str) -> ProtocolError:
        return ProtocolError(self.opcode, name, problem)

    def charge(self, name: str, n: int) -> None:
        self.budget -= n
        if self.budget < 0:
            raise self.fail(name, f"message larger than {MAX_MESSAGE_SIZE} bytes")

    def get(self, name: str, *, required: bool = True) -> Any:
        if name in self.body:
            return self.body[name]
        if required:
            raise self.fail(name, "missing")
        return None

    # -- scalar checks, usable on any value

    def as_int(self, name: str, value: Any, lo: int, hi: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(name, f"expected an integer, got {_type_name(value)}")
        if value < lo:
            raise self.fail(name, f"{int(value)} is below {lo}")
        if value > hi:
            raise self.fail(name, f"{int(value)} is above {hi}")
        self.charge(name, _INT_SIZE)
        return int(value)

    def as_str(self, name: str, value: Any, max_len: int, what: str) -> str:
        if not isinstance(value, str):
            raise self.fail(name, f"expected a string, got {_type_name(value)}")
        if not value:
            raise self.fail(name, f"empty {what}")
        if len(value) > max_len:
            raise self.fail(name, f"{what} longer than {max_len} characters")
        if not value.isprintable() or _SPACE.search(value):
            raise self.fail(name, f"{what} has unprintable or space characters")
        self.charge(name, _STR_OVERHEAD + len(value.encode("utf-8", "surrogatepass")))
        return str(value)

    def as_list(self, name: str, value: Any, max_items: int) -> list[Any]:
        if not isinstance(value, list | tuple):
            raise self.fail(name, f"expected a list, got {_type_name(value)}")
        if len(value) > max_items:
            raise self.fail(name, f"more than {max_items} items")
        return list(value)

    def as_map(self, name: str, value: Any, max_items: int) -> Mapping[Any, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(name, f"expected a map, got {_type_name(value)}")
        if len(value) > max_items:
            raise self.fail(name, f"more than {max_items} entries")
        return value

    # -- fields of this message

    def router_id(self, name: str = "id") -> str:
        return self.as_str(name, self.get(name), MAX_ID_LEN, "router id")

    def area(self) -> str:
        value = self.get("area", required=False)
        return "0" if value is None else self.as_str("area", value, MAX_ID_LEN, "area")

    def pv(self) -> int:
        value = self.get("pv", required=False)
        return 0 if value is None else self.as_int("pv", value, 0, MAX_SEQ)

    def seq(self, name: str) -> int:
        return self.as_int(name, self.get(name), 0, MAX_SEQ)

    def id_list(self, name: str, value: Any, max_items: int) -> tuple[str, ...]:
        items = self.as_list(name, value, max_items)
        out = tuple(
            self.as_str(f"{name}[{i}]", v, MAX_ID_LEN, "router id") for i, v in enumerate(items)
        )
        if len(set(out)) != len(out):
            raise self.fail(name, "a router id is listed twice")
        return out

    def counted_map(
        self, name: str, value: Any, max_items: int, key_len: int, what: str, hi: int
    ) -> dict[str, int]:
        entries = self.as_map(name, value, max_items)
        out: dict[str, int] = {}
        for k, v in entries.items():
            key = self.as_str(f"{name} key", k, key_len, what)
            if key in out:  # two keys equal as strings (subclasses)
                raise self.fail(name, f"{what} {key!r} appears twice")
            out[key] = self.as_int(f"{name}[{key!r}]", v, 1, hi)
        return out


def _type_name(value: object) -> str:
    return type(value).__name__


def decode(opcode: Any, body: Any, *, size: int | None = None) -> Message:
    """Check and decode one message.  ``size`` is the encoded body's length in
    bytes when the transport knows it; otherwise it is estimated.  Raises
    ``ProtocolError`` and nothing else."""
    try:
        return _decode(opcode, body, size)
    except ProtocolError:
        raise
    except Exception as exc:  # a peer's junk must only ever be a ProtocolError
        raise ProtocolError("message", "", f"undecodable ({type(exc).__name__})") from exc


def _decode(opcode: Any, body: Any, size: int | None) -> Message:
    if not isinstance(opcode, str):
        raise ProtocolError("message", "opcode", f"expected a string, got {_type_name(opcode)}")
    if opcode not in OPCODES:
        shown = opcode[:32] if opcode.isprintable() else repr(opcode[:32])
        raise ProtocolError("message", "opcode", f"unknown opcode {shown!r}")
    if size is not None and size > MAX_MESSAGE_SIZE:
        raise ProtocolError(opcode, "", f"message of {size} bytes, more than {MAX_MESSAGE_SIZE}")
    if not isinstance(body, Mapping):
        raise ProtocolError(opcode, "body", f"expected a map, got {_type_name(body)}")
    if len(body) > MAX_KEYS:
        raise ProtocolError(opcode, "body", f"more than {MAX_KEYS} keys")
    r = _Reader(opcode, body, MAX_MESSAGE_SIZE)
    rid = r.router_id()
    area = r.area()
    pv = r.pv()
    if opcode == "HELLO":
        seen = r.id_list("seen", r.get("seen"), MAX_PEERS)
        return Hello(rid, r.seq("instance"), seen, area, pv)
    if opcode == "RA":
        return RA(rid, r.seq("instance"), r.seq("ls_seq"), r.seq("mobile_seq"), area, pv)
    if opcode == "LSU":
        return _decode_lsu(r, rid, area, pv)
    if opcode == "LSR":
        return LSR(rid, r.router_id("target"), area, pv)
    if opcode == "MAU":
        return _decode_mau(r, rid, area, pv)
    return MAR(rid, r.router_id("target"), r.seq("have_seq"), area, pv)


def _decode_lsu(r: _Reader, rid: str, area: str, pv: int) -> LSU:
    instance = r.seq("instance")
    ls_seq = r.seq("ls_seq")
    ls = r.as_map("ls", r.get("ls"), MAX_KEYS)
    inner = _Reader(r.opcode, ls, r.budget)
    if inner.router_id() != rid:
        raise r.fail("ls.id", "differs from the message's id")
    if inner.seq("ls_seq") != ls_seq:
        raise r.fail("ls.ls_seq", "differs from the message's ls_seq")
    peers = inner.counted_map("ls.peers", inner.get("peers"), MAX_PEERS, MAX_ID_LEN,
                              "router id", MAX_COST)
    r.budget = inner.budget
    if rid in peers:
        raise r.fail("ls.peers", "a router names itself as its own neighbour")
    return LSU(rid, instance, ls_seq, peers, area, pv)


def _decode_mau(r: _Reader, rid: str, area: str, pv: int) -> MAU:
    instance = r.seq("instance")
    seq = r.seq("mobile_seq")
    raw_add, raw_del, raw_exist = (r.get(k, required=False) for k in ("add", "del", "exist"))
    if raw_exist is not None:
        if raw_add is not None or raw_del is not None:
            raise r.fail("exist", "a full set cannot also carry add or del")
        exist = r.counted_map("exist", raw_exist, MAX_ADDRESSES, MAX_ADDRESS_LEN, "address",
                              MAX_COUNT)
        return MAU(rid, instance, seq, exist=exist, area=area, pv=pv)
    if raw_add is None and raw_del is None:
        raise r.fail("add", "neither add, del nor exist")
    add = None
    if raw_add is not None:
        add = r.counted_map("add", raw_add, MAX_ADDRESSES, MAX_ADDRESS_LEN, "address", MAX_COUNT)
    deleted = None
    if raw_del is not None:
        items = r.as_list("del", raw_del, MAX_ADDRESSES)
        deleted = tuple(
            r.as_str(f"del[{i}]", v, MAX_ADDRESS_LEN, "address") for i, v in enumerate(items)
        )
        if len(set(deleted)) != len(deleted):
            raise r.fail("del", "an address is listed twice")
        if add is not None and not set(add).isdisjoint(deleted):
            raise r.fail("del", "an address is both added and deleted")
    if len(add or ()) + len(deleted or ()) > MAX_ADDRESSES:
        raise r.fail("add", f"more than {MAX_ADDRESSES} addresses changed")
    if seq == 0:
        raise r.fail("mobile_seq", "an incremental update cannot have sequence 0")
    return MAU(rid, instance, seq, add=add, deleted=deleted, area=area, pv=pv)
