"""The HELLO protocol: who is at the other end of each link, and can they hear us.

On every inter-router and edge link a HELLO goes out each
``helloIntervalSeconds`` by the wall clock (the time passed in, never a count
of ticks; a late tick sends one HELLO, it does not catch up), naming the
router heard on that link.  A neighbour is *two-way* once its HELLO names us;
it is lost when it stops naming us or after ``helloMaxAgeSeconds`` of
silence.

Router ids are unique.  A peer announcing our own id, a peer whose id changes
on an open link, or an id already heard on another live link from a
different instance (a different process) is refused with ``PeerRefused``,
whose reason names both ends; the wiring closes that link and nothing else.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from router.network.messages import Hello

HELLO_INTERVAL = 1.0
HELLO_MAX_AGE = 3.0


class PeerRefused(Exception):
    """The peer on a link may not join; ``reason`` says why, naming both ends."""

    def __init__(self, link_id: int, reason: str) -> None:
        self.link_id = link_id
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True)
class NeighbourUp:
    link_id: int
    router_id: str
    instance: int


@dataclass(frozen=True)
class NeighbourLost:
    link_id: int
    router_id: str
    reason: str


HelloEvent = NeighbourUp | NeighbourLost


@dataclass(frozen=True)
class Neighbour:
    """A two-way neighbour, reached over its cheapest link."""

    router_id: str
    instance: int
    link_id: int
    cost: int


@dataclass
class _Link:
    link_id: int
    cost: int
    label: str
    last_sent: float | None = None
    peer_id: str | None = None
    peer_instance: int | None = None
    last_heard: float | None = None
    two_way: bool = False
    reply_due: bool = False  # a new peer was heard: answer at once, not next interval

    @property
    def name(self) -> str:
        return f"link {self.link_id} ({self.label})" if self.label else f"link {self.link_id}"


class HelloProtocol:
    def __init__(
        self,
        router_id: str,
        instance: int,
        *,
        hello_interval: float = HELLO_INTERVAL,
        hello_max_age: float = HELLO_MAX_AGE,
        label: str = "",
    ) -> None:
        self.router_id = router_id
        self.instance = instance
        self.hello_interval = hello_interval
        self.hello_max_age = hello_max_age
        self.label = label  # how our end is named in refusals (e.g. the listener)
        self._links: dict[int, _Link] = {}
        self.max_lateness = 0.0  # the latest a HELLO has been sent, in seconds
        self.refused = 0
        self._last_tick: float | None = None
        self.stalls = 0  # ticks that came after this router itself had not run
        self.max_stall = 0.0

    # -- links

    def add_link(self, link_id: int, cost: int = 1, label: str = "") -> None:
        """A link opened; ``label`` names its far end in log lines."""
        self._links[link_id] = _Link(link_id, cost, label)

    def remove_link(self, link_id: int) -> list[HelloEvent]:
        link = self._links.pop(link_id, None)
        if link is not None and link.two_way and link.peer_id is not None:
            return [NeighbourLost(link_id, link.peer_id, "link closed")]
        return []

    def links(self) -> list[int]:
        return sorted(self._links)

    def peer_of(self, link_id: int) -> str | None:
        """The router id heard on a link, two-way or not."""
        link = self._links.get(link_id)
        return None if link is None else link.peer_id

    # -- time

    def tick(
        self, now: float, *, judge_silence: bool = True
    ) -> tuple[list[tuple[int, Hello]], list[HelloEvent]]:
        """HELLOs due now (per link) and neighbours lost to silence.

        Silence is counted only while this router runs: when ticks stop for
        longer than two HELLO intervals (the process was stopped, or starved
        of CPU), the time beyond one interval is credited to every link
        before loss is judged. Otherwise a router resuming from a pause would
        drop every neighbour whose HELLOs still wait unread in its sockets,
        and its neighbours would see it flap (each loss floods an LSU).

        ``judge_silence=False`` only sends what is due: while input is being
        handled, the HELLOs of other links may wait behind it unread, so
        silence is judged only by the timer's tick (after reading)."""
        events: list[HelloEvent] = []
        sends: list[tuple[int, Hello]] = []
        if self._last_tick is not None and judge_silence:
            away = now - self._last_tick - self.hello_interval
            if away > self.hello_interval:
                self.stalls += 1
                self.max_stall = max(self.max_stall, away)
                for link in self._links.values():
                    if link.last_heard is not None:
                        link.last_heard = min(now, link.last_heard + away)
        if judge_silence:
            self._last_tick = now
        for link in self._links.values():
            if (
                judge_silence
                and link.last_heard is not None
                and now >= link.last_heard + self.hello_max_age
            ):
                silent = now - link.last_heard
                link.last_heard = None
                if link.two_way and link.peer_id is not None:
                    link.two_way = False
                    events.append(
                        NeighbourLost(link.link_id, link.peer_id, f"silent for {silent:.1f} s")
                    )
            if (
                link.last_sent is None
                or now >= link.last_sent + self.hello_interval
                or link.reply_due
            ):
                if link.last_sent is not None and not link.reply_due:
                    late = now - link.last_sent - self.hello_interval
                    self.max_lateness = max(self.max_lateness, late)
                link.last_sent = now
                link.reply_due = False
                seen = (link.peer_id,) if link.peer_id and link.last_heard is not None else ()
                sends.append((link.link_id, Hello(self.router_id, self.instance, seen)))
        return sends, events

    def next_due(self) -> float | None:
        """The earliest time ``tick`` has something to do, for a timer."""
        times: list[float] = []
        for link in self._links.values():
            if link.last_sent is None or link.reply_due:
                times.append(0.0)
            else:
                times.append(link.last_sent + self.hello_interval)
            if link.last_heard is not None:
                times.append(link.last_heard + self.hello_max_age)
        return min(times) if times else None

    # -- input

    def receive(self, link_id: int, msg: Hello, now: float) -> list[HelloEvent]:
        """A HELLO arrived.  Raises ``PeerRefused`` for a duplicate id."""
        link = self._links.get(link_id)
        if link is None:
            return []
        self._check_unique(link, msg)
        events: list[HelloEvent] = []
        if link.peer_instance is not None and link.peer_instance != msg.instance and link.two_way:
            # the neighbour restarted between two HELLOs: a new neighbour
            link.two_way = False
            events.append(NeighbourLost(link_id, msg.id, "restarted (new instance)"))
        if link.last_heard is None or link.peer_instance != msg.instance:
            link.reply_due = True  # so that it hears us name it without waiting
        link.peer_id = msg.id
        link.peer_instance = msg.instance
        link.last_heard = now
        hears_us = self.router_id in msg.seen
        if hears_us and not link.two_way:
            link.two_way = True
            events.append(NeighbourUp(link_id, msg.id, msg.instance))
        elif not hears_us and link.two_way:
            link.two_way = False
            events.append(NeighbourLost(link_id, msg.id, "no longer hears us"))
        return events

    def _check_unique(self, link: _Link, msg: Hello) -> None:
        me = f"router {self.router_id!r}" + (f" ({self.label})" if self.label else "")
        if msg.id == self.router_id:
            self.refused += 1
            raise PeerRefused(
                link.link_id,
                f"duplicate router id {msg.id!r}: the peer on {link.name} announces the id of "
                f"this router, {me} (its instance {msg.instance}, ours {self.instance})",
            )
        if link.peer_id is not None and link.peer_id != msg.id:
            self.refused += 1
            raise PeerRefused(
                link.link_id,
                f"the peer on {link.name} changed its router id from {link.peer_id!r} to "
                f"{msg.id!r} (this end: {me})",
            )
        for other in self._links.values():
            if (
                other is not link
                and other.peer_id == msg.id
                and other.last_heard is not None
                and other.peer_instance != msg.instance
            ):
                self.refused += 1
                raise PeerRefused(
                    link.link_id,
                    f"duplicate router id {msg.id!r}: announced by instance {msg.instance} on "
                    f"{link.name} while instance {other.peer_instance} of it is live on "
                    f"{other.name} (this end: {me})",
                )

    # -- views

    def neighbours(self, links: Collection[int] | None = None) -> dict[str, Neighbour]:
        """Two-way neighbours, each over its cheapest link (then lowest link
        id); only over ``links`` when given."""
        best: dict[str, Neighbour] = {}
        for link in sorted(self._links.values(), key=lambda lk: (lk.cost, lk.link_id)):
            if links is not None and link.link_id not in links:
                continue
            if link.two_way and link.peer_id is not None and link.peer_instance is not None:
                best.setdefault(
                    link.peer_id,
                    Neighbour(link.peer_id, link.peer_instance, link.link_id, link.cost),
                )
        return best

    def two_way_links(self) -> list[int]:
        return sorted(lk.link_id for lk in self._links.values() if lk.two_way)
