"""The router protocol's messages: round trips and strict decoding of junk."""

from __future__ import annotations

import random
from typing import Any

import pytest

from router.network import messages as m
from router.network.messages import LSR, LSU, MAR, MAU, RA, Hello, ProtocolError, decode, encode

SAMPLES: list[m.Message] = [
    Hello("R1", 7, ("R2", "R3")),
    Hello("R1", 0),
    RA("R1", 7, 3, 9),
    LSU("R1", 7, 3, {"R2": 1, "R3": 20}),
    LSR("R2", "R1"),
    MAU("R1", 7, 4, add={"db": 2}, deleted=("web",)),
    MAU("R1", 7, 5, exist={"db": 2, "web": 1}),
    MAU("R1", 7, 6, deleted=("db",)),
    MAR("R2", "R1", 3),
]


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda msg: type(msg).__name__)
def test_round_trip(msg: m.Message) -> None:
    opcode, body = encode(msg)
    assert opcode == msg.OPCODE
    assert decode(opcode, body) == msg


def test_skupper_field_names() -> None:
    _, body = encode(LSU("R1", 7, 3, {"R2": 1}))
    assert body["ls"] == {"id": "R1", "area": "0", "ls_seq": 3, "peers": {"R2": 1}}
    _, body = encode(MAU("R1", 7, 4, add={"db": 2}, deleted=("web",)))
    assert body["add"] == {"db": 2} and body["del"] == ["web"] and "exist" not in body
    _, body = encode(Hello("R1", 7, ("R2",)))
    assert body["seen"] == ["R2"] and body["instance"] == 7


def test_missing_pv_and_area_default_like_skupper() -> None:
    msg = decode("RA", {"id": "R1", "instance": 1, "ls_seq": 0, "mobile_seq": 0})
    assert msg == RA("R1", 1, 0, 0, "0", 0)


def _refused(opcode: Any, body: Any, **kw: Any) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode(opcode, body, **kw)
    return info.value


def _hello(**over: Any) -> dict[str, Any]:
    body = encode(Hello("R1", 1, ("R2",)))[1]
    body.update(over)
    return body


@pytest.mark.parametrize(
    ("opcode", "body", "field", "problem"),
    [
        ("BYE", {}, "opcode", "unknown opcode"),
        (3, {}, "opcode", "expected a string"),
        ("HELLO", [1, 2], "body", "expected a map"),
        ("HELLO", _hello(id="x" * 256), "id", "longer than 255"),
        ("HELLO", _hello(id=""), "id", "empty"),
        ("HELLO", _hello(id="a\x00b"), "id", "unprintable"),
        ("HELLO", _hello(id="a b"), "id", "space"),
        ("HELLO", _hello(id=5), "id", "expected a string"),
        ("HELLO", _hello(instance=-1), "instance", "below 0"),
        ("HELLO", _hello(instance=2**63), "instance", "above"),
        ("HELLO", _hello(instance=True), "instance", "expected an integer"),
        ("HELLO", _hello(instance=1.5), "instance", "expected an integer"),
        ("HELLO", _hello(seen="R2"), "seen", "expected a list"),
        ("HELLO", _hello(seen=["R2", "R2"]), "seen", "twice"),
        ("HELLO", _hello(seen=[f"R{i}" for i in range(1025)]), "seen", "more than 1024"),
        ("HELLO", {k: v for k, v in _hello().items() if k != "seen"}, "seen", "missing"),
        ("HELLO", {**_hello(), **{f"k{i}": i for i in range(40)}}, "body", "more than 32 keys"),
        ("RA", {"id": "R1", "instance": 1, "ls_seq": -3, "mobile_seq": 0}, "ls_seq", "below"),
        ("LSU", {"id": "R1", "instance": 1, "ls_seq": 1,
                 "ls": {"id": "R9", "ls_seq": 1, "peers": {}}}, "ls.id", "differs"),
        ("LSU", {"id": "R1", "instance": 1, "ls_seq": 1,
                 "ls": {"id": "R1", "ls_seq": 1, "peers": {"R2": 0}}}, "ls.peers['R2']", "below 1"),
        ("LSU", {"id": "R1", "instance": 1, "ls_seq": 1,
                 "ls": {"id": "R1", "ls_seq": 1, "peers": {"R1": 1}}}, "ls.peers", "itself"),
        ("MAU", {"id": "R1", "instance": 1, "mobile_seq": 1}, "add", "neither"),
        ("MAU", {"id": "R1", "instance": 1, "mobile_seq": 1, "add": {"a": 1}, "exist": {}},
         "exist", "full set"),
        ("MAU", {"id": "R1", "instance": 1, "mobile_seq": 1, "add": {"a": 1}, "del": ["a"]},
         "del", "both added and deleted"),
        ("MAU", {"id": "R1", "instance": 1, "mobile_seq": 0, "add": {"a": 1}}, "mobile_seq",
         "sequence 0"),
        ("MAU", {"id": "R1", "instance": 1, "mobile_seq": 1, "exist": {"a" * 1025: 1}},
         "exist key", "longer than 1024"),
        ("MAR", {"id": "R1", "target": "R2", "have_seq": "3"}, "have_seq", "expected an integer"),
        ("LSR", {"id": "R1"}, "target", "missing"),
    ],
)
def test_refusals_name_what_was_wrong(opcode: Any, body: Any, field: str, problem: str) -> None:
    err = _refused(opcode, body)
    assert err.field == field
    assert problem in err.problem
    assert field in str(err)


def test_oversized_message_refused() -> None:
    err = _refused("HELLO", _hello(), size=m.MAX_MESSAGE_SIZE + 1)
    assert "bytes" in str(err)
    # an estimated size over the bound is refused too
    exist = {f"a{i:05d}" + "x" * 1000: 1 for i in range(m.MAX_ADDRESSES)}
    err = _refused("MAU", {"id": "R1", "instance": 1, "mobile_seq": 1, "exist": exist})
    assert "larger than" in err.problem


def _junk(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return rng.randrange(-(2**70), 2**70)
    if kind == 1:
        return "".join(chr(rng.randrange(0, 0x3000)) for _ in range(rng.randrange(6)))
    if kind == 2:
        return rng.choice([None, True, 1.5, b"\xff", float("nan")])
    if kind == 3:
        return rng.choice(["R1", "R2", "id", "seen", "ls", "peers", "add", "del", "exist"])
    if kind in (4, 5):
        return rng.randrange(0, 5)
    if kind == 6:
        return [_junk(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["id", "pv", "area", "instance", "seen", "ls_seq", "mobile_seq", "ls", "peers",
            "target", "have_seq", "add", "del", "exist"]
    return {rng.choice([*keys, 7, None]): _junk(rng, depth + 1) for _ in range(rng.randrange(8))}


def test_random_junk_only_ever_raises_protocol_error() -> None:
    rng = random.Random(1234)
    for _ in range(20000):
        opcode = rng.choice([*m.OPCODES, "NOPE", None])
        try:
            decode(opcode, _junk(rng, 1) if rng.random() < 0.2 else _junk(rng, 2) or {})
        except ProtocolError:
            pass


def test_junk_in_valid_messages_only_ever_raises_protocol_error() -> None:
    """Valid bodies with one field replaced by junk."""
    rng = random.Random(99)
    for _ in range(5000):
        opcode, body = encode(rng.choice(SAMPLES))
        body = dict(body)
        body[rng.choice([*body, "ls"])] = _junk(rng, 1)
        try:
            decode(opcode, body)
        except ProtocolError:
            pass
