"""
Broadcast by flooding the links (``--swim off``), and relayed direct sends
(a BROADCAST frame with a destination, either membership).

Each message is ``(origin, incarnation, sequence)``: a node delivers the first
copy it gets and sends it on over every other link (or straight to the
destination, when it is a direct peer); later copies are counted and
dropped. The incarnation is the one the origin started with, so that a
refutation does not make copies still in flight look new.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from attrs import define, field

from netmodels.core.frames import ProtocolError, encode_frame
from netmodels.runtime.session import Session
from netmodels.topologies.p2p.members import Member
from netmodels.topologies.p2p.messages import BROADCAST, Broadcast, decode_broadcast, encode_broadcast

__all__ = ["INCARNATIONS_KEPT", "SEEN_WINDOW", "Flooding", "SeenWindow"]

#: Message ids remembered per origin beyond its contiguous low mark.
SEEN_WINDOW = 4096
#: Broadcast windows kept per origin, one per incarnation it broadcast under.
INCARNATIONS_KEPT = 4


@define
class SeenWindow:
    """Message ids seen from one origin incarnation: all up to ``low``, then a set."""

    low: int = 0
    above: set[int] = field(factory=set)

    def add(self, sequence: int) -> bool:
        """Record ``sequence``; ``False`` if it was seen before."""
        if sequence <= self.low or sequence in self.above:
            return False
        self.above.add(sequence)
        while self.low + 1 in self.above:
            self.low += 1
            self.above.discard(self.low)
        if len(self.above) > SEEN_WINDOW:
            # A gap that never fills (a message lost upstream): give it up.
            self.low = min(self.above)
            self.above.discard(self.low)
        return True


class Flooding:
    """BROADCAST frames over one node's links; see the module docstring."""

    def __init__(
        self,
        node_id: str,
        links: Mapping[str, Member],
        deliver: Callable[[str, bytes], None],
        counters: dict[str, int],
    ) -> None:
        """
        :param links: the mesh's members by node id; those with a session are its links.
        :param deliver: gives the application a message (origin, payload) addressed to this node.
        :param counters: where copies are counted: ``duplicates``, ``forwarded`` and ``relayed``.
        """
        self.node_id = node_id
        self._links = links
        self._deliver = deliver
        self._counters = counters
        self._epoch = 0
        self._sequence = 0
        self._seen: dict[tuple[str, int], SeenWindow] = {}

    def start(self, incarnation: int) -> None:
        """This node's messages are numbered under ``incarnation``, its incarnation at start."""
        self._epoch = incarnation

    def broadcast(self, payload: bytes) -> int:
        """Flood ``payload`` to every node; returns the links it went to."""
        return self._flood(encode_broadcast(self._new(payload, "")), exclude=None)

    def relay(self, destination: str, payload: bytes) -> None:
        """Send ``payload`` to ``destination``, a node with no link to this one, through the others."""
        message = self._new(payload, destination)
        self._counters["relayed"] += 1
        self._flood(encode_broadcast(message), exclude=None)

    def received(self, session: Session, body: bytes) -> None:
        """A BROADCAST frame arrived over ``session``."""
        try:
            message = decode_broadcast(body)
        except ProtocolError as e:
            session.protocol_error(str(e))
            return
        if not self._window(message).add(message.sequence):
            self._counters["duplicates"] += 1
            return
        if message.destination in ("", self.node_id):
            self._deliver(message.origin, message.payload)
            if message.destination:
                return
        destination = self._links.get(message.destination) if message.destination else None
        frame = encode_frame(BROADCAST, body)
        if destination is not None and destination.session is not None:
            destination.session.write_frame(frame)
            self._counters["forwarded"] += 1
            return
        self._counters["forwarded"] += self._flood(frame, exclude=session)

    def _new(self, payload: bytes, destination: str) -> Broadcast:
        self._sequence += 1
        message = Broadcast(self.node_id, self._epoch, self._sequence, payload, destination)
        self._window(message).add(message.sequence)
        return message

    def _flood(self, frame: bytes, exclude: Session | None) -> int:
        sent = 0
        for member in list(self._links.values()):
            session = member.session
            if session is not None and session is not exclude:
                session.write_frame(frame)
                sent += 1
        return sent

    def _window(self, message: Broadcast) -> SeenWindow:
        key = (message.origin, message.incarnation)
        seen = self._seen.get(key)
        if seen is None:
            # Keep a few incarnations of each origin (a restarted node's old
            # copies may still be in flight), and forget older ones.
            mine = sorted(k for k in self._seen if k[0] == message.origin)
            for old in mine[: max(0, len(mine) + 1 - INCARNATIONS_KEPT)]:
                del self._seen[old]
            seen = self._seen[key] = SeenWindow()
        return seen
