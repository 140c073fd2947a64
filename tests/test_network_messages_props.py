"""Property tests of the router protocol's messages (hypothesis)."""

from __future__ import annotations

from typing import Any

import pytest

from router.network import messages as m
from router.network.messages import LSR, LSU, MAR, MAU, RA, Hello, ProtocolError, decode, encode

hypothesis = pytest.importorskip("hypothesis")
st = pytest.importorskip("hypothesis.strategies")

_ids = st.text(
    alphabet=st.characters(categories=("L", "N", "P", "S")), min_size=1, max_size=40
)
_seq = st.integers(0, m.MAX_SEQ)
_counts = st.dictionaries(_ids, st.integers(1, m.MAX_COUNT), max_size=6)

_messages = st.one_of(
    st.builds(Hello, _ids, _seq, st.lists(_ids, max_size=6, unique=True).map(tuple), _ids, _seq),
    st.builds(RA, _ids, _seq, _seq, _seq, _ids, _seq),
    st.builds(
        lambda i, inst, seq, peers: LSU(i, inst, seq, {p: c for p, c in peers.items() if p != i}),
        _ids, _seq, _seq, st.dictionaries(_ids, st.integers(1, m.MAX_COST), max_size=6),
    ),
    st.builds(LSR, _ids, _ids, _ids, _seq),
    st.builds(lambda i, inst, seq, ex: MAU(i, inst, seq, exist=ex), _ids, _seq, _seq, _counts),
    st.builds(
        lambda i, inst, seq, add, dl: MAU(
            i, inst, seq, add=add, deleted=tuple(a for a in dl if a not in add)
        ),
        _ids, _seq, st.integers(1, m.MAX_SEQ), _counts, st.lists(_ids, max_size=6, unique=True),
    ),
    st.builds(MAR, _ids, _ids, _seq, _ids, _seq),
)

_any = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
    | st.binary(max_size=8),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=10) | st.integers(), children, max_size=5),
    max_leaves=30,
)


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(_messages)
def test_property_round_trip(msg: m.Message) -> None:
    opcode, body = encode(msg)
    assert decode(opcode, body) == msg


@hypothesis.settings(max_examples=200, deadline=None)
@hypothesis.given(st.sampled_from([*m.OPCODES, "X"]) | _any, _any)
def test_property_junk_raises_only_protocol_error(opcode: Any, body: Any) -> None:
    try:
        decode(opcode, body)
    except ProtocolError:
        pass


@hypothesis.settings(max_examples=150, deadline=None)
@hypothesis.given(_messages, st.data())
def test_property_mutated_field_raises_only_protocol_error(msg: m.Message, data: Any) -> None:
    opcode, body = encode(msg)
    key = data.draw(st.sampled_from(sorted(body)))
    body[key] = data.draw(_any)
    try:
        decode(opcode, body)
    except ProtocolError:
        pass
