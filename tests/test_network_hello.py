"""The HELLO protocol: wall-clock HELLOs, two-way neighbours, loss, duplicate ids."""

from __future__ import annotations

import pytest

from router.network.hello import HelloProtocol, NeighbourLost, NeighbourUp, PeerRefused
from router.network.messages import Hello


def _pair() -> tuple[HelloProtocol, HelloProtocol]:
    a = HelloProtocol("A", 1, label="listener :5001")
    b = HelloProtocol("B", 2)
    a.add_link(10, cost=3, label="B at 10.0.0.2")
    b.add_link(20)
    return a, b


def _exchange(a: HelloProtocol, b: HelloProtocol, now: float) -> list[object]:
    events: list[object] = []
    sends_a, ev = a.tick(now)
    events += ev
    sends_b, ev = b.tick(now)
    events += ev
    for _, msg in sends_a:
        events += b.receive(20, msg, now)
    for _, msg in sends_b:
        events += a.receive(10, msg, now)
    return events


def test_two_way_after_both_hear_each_other() -> None:
    a, b = _pair()
    first = _exchange(a, b, 0.0)
    assert first == []  # neither had heard the other when it sent
    second = _exchange(a, b, 1.0)
    assert NeighbourUp(10, "B", 2) in second and NeighbourUp(20, "A", 1) in second
    assert a.neighbours()["B"].cost == 3 and a.neighbours()["B"].link_id == 10


def test_hellos_follow_the_wall_clock_not_ticks() -> None:
    a, _ = _pair()
    assert len(a.tick(0.0)[0]) == 1
    assert a.tick(0.3)[0] == [] and a.tick(0.99)[0] == []
    assert len(a.tick(1.0)[0]) == 1
    # a tick 5 s late sends one HELLO, not five, and the lateness is recorded
    assert len(a.tick(7.0)[0]) == 1
    assert a.max_lateness == pytest.approx(5.0)
    assert a.next_due() == pytest.approx(8.0)


def test_neighbour_lost_after_max_age_of_silence() -> None:
    a, b = _pair()
    _exchange(a, b, 0.0)
    _exchange(a, b, 1.0)
    a.tick(2.0)  # A's timer runs every interval; B has gone quiet
    a.tick(3.0)
    a.tick(3.9)
    assert "B" in a.neighbours()
    _, events = a.tick(4.1)  # last heard at 1.0, max age 3
    assert events == [NeighbourLost(10, "B", "silent for 3.1 s")]
    assert a.neighbours() == {}
    # the next HELLO from A no longer names B
    assert a.tick(5.2)[0][0][1].seen == ()


def test_peer_that_stops_hearing_us_is_lost_at_once() -> None:
    a, b = _pair()
    _exchange(a, b, 0.0)
    _exchange(a, b, 1.0)
    assert a.receive(10, Hello("B", 2, ()), 1.5) == [NeighbourLost(10, "B", "no longer hears us")]


def test_restart_is_a_lost_then_new_neighbour() -> None:
    a, b = _pair()
    _exchange(a, b, 0.0)
    _exchange(a, b, 1.0)
    events = a.receive(10, Hello("B", 99, ("A",)), 1.5)
    assert events == [NeighbourLost(10, "B", "restarted (new instance)"), NeighbourUp(10, "B", 99)]


def test_own_id_refused_naming_both_ends() -> None:
    a, _ = _pair()
    with pytest.raises(PeerRefused) as info:
        a.receive(10, Hello("A", 5, ()), 0.0)
    reason = info.value.reason
    assert "duplicate router id 'A'" in reason
    assert "B at 10.0.0.2" in reason and "listener :5001" in reason
    assert a.refused == 1


def test_id_live_on_another_link_with_another_instance_refused() -> None:
    a, _ = _pair()
    a.add_link(11, label="X at 10.0.0.9")
    a.receive(10, Hello("B", 2, ("A",)), 0.0)
    with pytest.raises(PeerRefused) as info:
        a.receive(11, Hello("B", 7, ("A",)), 0.5)
    assert "link 10 (B at 10.0.0.2)" in info.value.reason
    assert "link 11 (X at 10.0.0.9)" in info.value.reason
    # the same router over a second link (same instance) is a parallel link
    a.receive(11, Hello("B", 2, ("A",)), 0.6)
    assert a.neighbours()["B"].link_id == 11  # the cheaper of the two
    # once both links have aged out, a new instance is a restart, not a duplicate
    a.tick(10.0)
    a.receive(11, Hello("B", 8, ("A",)), 10.5)
    assert a.neighbours()["B"].instance == 8


def test_cheapest_link_wins() -> None:
    a, _ = _pair()
    a.add_link(11, cost=1)
    a.receive(10, Hello("B", 2, ("A",)), 0.0)
    a.receive(11, Hello("B", 2, ("A",)), 0.0)
    assert a.neighbours()["B"].link_id == 11
    assert a.remove_link(11) == [NeighbourLost(11, "B", "link closed")]
    assert a.neighbours()["B"].link_id == 10


def test_changed_id_on_open_link_refused() -> None:
    a, _ = _pair()
    a.receive(10, Hello("B", 2, ()), 0.0)
    with pytest.raises(PeerRefused, match="changed its router id from 'B' to 'C'"):
        a.receive(10, Hello("C", 2, ()), 0.5)


def test_silence_while_this_router_was_stopped_is_not_held_against_its_neighbours() -> None:
    a, b = _pair()
    _exchange(a, b, 0.0)
    _exchange(a, b, 1.0)
    # A's process is stopped from 1.0 to 9.0: no tick ran. B's HELLOs wait
    # unread in A's sockets; A must not drop B before reading them.
    _, events = a.tick(9.0)
    assert events == [] and "B" in a.neighbours()
    assert a.stalls == 1 and a.max_stall == pytest.approx(7.0)
    assert a.tick(10.0)[1] == []
    # B really is silent: lost once A has run for max age (3 s) without
    # hearing it: 1 s before the stop (1.0 to 2.0) and 2 s after it
    _, events = a.tick(11.0)
    assert [e.router_id for e in events if isinstance(e, NeighbourLost)] == ["B"]


def test_only_the_timer_judges_silence() -> None:
    a, b = _pair()
    _exchange(a, b, 0.0)
    _exchange(a, b, 1.0)
    for step in (2.0, 3.0, 3.9):
        a.tick(step)
    # handling input at 4.5 (other links' messages) sends what is due but
    # loses nobody: B's HELLO may be waiting behind that input
    _, events = a.tick(4.5, judge_silence=False)
    assert events == [] and "B" in a.neighbours()
    _, events = a.tick(4.5)
    assert [e.router_id for e in events if isinstance(e, NeighbourLost)] == ["B"]
