"""
What is known of one connection, sans-IO: its state, direction, close policy and :class:`ConnectionRecord`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

from attrs import define, field, frozen

from netmodels.core.keepalive import KeepaliveSettings
from netmodels.core.reasons import CloseReason, Initiator

__all__ = [
    "DEFAULT_CLOSE_POLICY",
    "CloseMode",
    "ConnectionLimits",
    "ConnectionRecord",
    "ConnectionState",
    "Direction",
]


class ConnectionState(enum.StrEnum):
    """Where a connection is in its life; ``failed`` is a connect that never was."""

    CONNECTING = "connecting"
    HANDSHAKING = "handshaking"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"
    #: A connect attempt that never became a connection.
    FAILED = "failed"


# Module constants: enum member lookups cost on the per-message path.
_CLOSING = ConnectionState.CLOSING


_CLOSED = ConnectionState.CLOSED


_FAILED = ConnectionState.FAILED


class Direction(enum.StrEnum):
    """Who dialled: the peer (``inbound``) or us (``outbound``)."""

    INBOUND = "inbound"
    OUTBOUND = "outbound"


class CloseMode(enum.Enum):
    """How we end a connection on purpose."""

    #: Orderly close: flush, then FIN.
    FIN = "fin"
    #: FIN, then RST if the write buffer has not drained by the deadline.
    FIN_THEN_ABORT = "fin-then-abort"
    #: Abortive close: RST at once (``SO_LINGER {1, 0}``); unsent data is dropped.
    RST = "rst"


#: Which close a local decision uses. A dead peer gets RST, since a FIN would
#: only queue behind data it will never acknowledge. A protocol error or a
#: rejection gets FIN (after a BYE saying why) so a well-meaning peer learns
#: what it did wrong, with RST if it does not read.
DEFAULT_CLOSE_POLICY: Mapping[CloseReason, CloseMode] = {
    CloseReason.CLEAN: CloseMode.FIN_THEN_ABORT,
    CloseReason.ABORTED: CloseMode.RST,
    CloseReason.TIMEOUT: CloseMode.RST,
    CloseReason.PROTOCOL_ERROR: CloseMode.FIN_THEN_ABORT,
    CloseReason.REJECTED: CloseMode.FIN_THEN_ABORT,
}


@frozen
class ConnectionLimits:
    """Limits on inbound connections; over them a connection is ``rejected``."""

    max_connections: int | None = None
    max_per_address: int | None = None


@define(slots=True, eq=False)
class ConnectionRecord:
    """What the manager knows of one connection or connect attempt."""

    id: int
    direction: Direction
    peer: str
    transport: str = "tcp"
    state: ConnectionState = ConnectionState.CONNECTING
    peer_id: str | None = None
    opened_at: float | None = None
    closed_at: float | None = None
    reason: CloseReason | None = None
    initiator: Initiator | None = None
    errno: str | None = None
    detail: str = ""
    bytes_in: int = 0
    bytes_out: int = 0
    messages_in: int = 0
    messages_out: int = 0
    #: The peer's advertised keepalive settings, once known.
    peer_keepalive: KeepaliveSettings | None = None
    #: Retrying cannot help (see :attr:`netmodels.core.reasons.Closure.fatal`).
    fatal: bool = False
    #: Round-trip time of the last answered keepalive probe, in seconds.
    rtt: float | None = None
    #: Keepalive probes (PINGs) sent, and those of them that went a whole
    #: interval without an answer; counted once per probe, never per message.
    probes_sent: int = 0
    probes_unanswered: int = 0
    #: Topology-specific fields, merged into the status document (a callable
    #: is called when the document is made).
    extra: dict[str, Any] = field(factory=dict)

    @property
    def closed(self) -> bool:
        state = self.state
        return state is _CLOSED or state is _FAILED

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape served by ``GET /status``."""
        document: dict[str, Any] = {
            "id": self.id,
            "peer": self.peer,
            "peer_id": self.peer_id,
            "direction": str(self.direction),
            "transport": self.transport,
            "state": str(self.state),
            "opened_at": self.opened_at,
            "closed_at": self.closed_at,
            "reason": None if self.reason is None else str(self.reason),
            "initiator": None if self.initiator is None else str(self.initiator),
            "errno": self.errno,
            "detail": self.detail,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "messages_in": self.messages_in,
            "messages_out": self.messages_out,
            "peer_keepalive": None if self.peer_keepalive is None else self.peer_keepalive.as_dict(),
            "rtt": self.rtt,
            "probes_sent": self.probes_sent,
            "probes_unanswered": self.probes_unanswered,
            "fatal": self.fatal,
        }
        for key, value in self.extra.items():
            document[key] = value() if callable(value) else value
        return document
