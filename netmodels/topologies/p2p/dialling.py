"""
How a p2p node dials: one on-demand :class:`~netmodels.runtime.dialer.Dialer`
per member and per bootstrap target.

The mesh decides *whom* to dial (membership, ``DIAL_GRACE``, ``--max-peers``);
the dialers decide *whether a dial may start now*: after a failed attempt, or
a connection that ended badly, each holds off by the close reason's backoff
(:class:`~netmodels.core.backoff.ReconnectPolicy`), on its own. This module
also follows each connection a dialer made until its handshake completes: one
that closes before then counts against its dialer (a ``rejected`` peer is not
dialled again at the next tick), and one that reached this node itself marks a
bootstrap target never to be dialled again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from netmodels.core.backoff import ReconnectPolicy
from netmodels.core.connection import ConnectionRecord, ConnectionState
from netmodels.runtime.dialer import Dialer, DialerState, ResolvingEndpoint
from netmodels.runtime.manager import ConnectFailed, ConnectionManager, ManagedConnection
from netmodels.runtime.session import SessionFactory

__all__ = ["FATAL_HOLD_OFF", "Dialling"]

_log = Logger(namespace="netmodels.p2p")

#: The hold-off after a fatal close (a version or topology mismatch), instead
#: of giving up: the peer may be upgraded, and a mesh has no operator to ask.
FATAL_HOLD_OFF = 30.0


@frozen
class _Dialled:
    """A connection one of our dialers made, and the bootstrap target it was dialled as (if one)."""

    dialer: Dialer
    target: str | None


class Dialling:
    """
    The dialers of one node's mesh.

    :param endpoint_of: a member's endpoint to dial, looked up at each attempt
        (gossip may change it).
    :param client_endpoint: turns an endpoint string into something to dial;
        one that raises fails that attempt as ``unreachable``.
    """

    def __init__(
        self,
        node_id: str,
        manager: ConnectionManager,
        clock: IReactorTime,
        factory: SessionFactory,
        client_endpoint: Callable[[str], IStreamClientEndpoint],
        endpoint_of: Callable[[str], str],
        policy: ReconnectPolicy,
        draw: Callable[[], float],
    ) -> None:
        self.node_id = node_id
        self._manager = manager
        self._clock = clock
        self._factory = factory
        self._client_endpoint = client_endpoint
        self._endpoint_of = endpoint_of
        self._policy = policy
        self._draw = draw
        self._members: dict[str, Dialer] = {}
        self._targets: dict[str, Dialer] = {}
        #: Connections our dialers made whose handshake has not completed, by connection id.
        self._handshaking: dict[int, _Dialled] = {}
        #: Bootstrap targets that turned out to be this node, not to be dialled again.
        self.self_targets: set[str] = set()
        #: Bootstrap targets a handshake completed with, and the node each reached.
        self.joined: dict[str, str] = {}
        self._stopped = False

    # Members

    def dial_member(self, node_id: str) -> Deferred[ManagedConnection] | None:
        """
        Dial member ``node_id`` unless its dialer is busy or holding off: the
        attempt (failing with :class:`ConnectFailed`), or ``None``.
        """
        if self._stopped or self.busy(node_id):
            return None
        dialer = self._member(node_id)
        attempt = dialer.dial()
        if attempt is None:
            return None
        return attempt.addCallback(self._follow, dialer, None)

    def busy(self, node_id: str) -> bool:
        """A dial of the member is under way: connecting, or its connection is in its handshake."""
        dialer = self._members.get(node_id)
        if dialer is None:
            return False
        return dialer.state is DialerState.CONNECTING or any(
            dialled.dialer is dialer for dialled in self._handshaking.values()
        )

    def failures(self, node_id: str) -> int:
        """Failed dials and bad ends in a row with the member, since it was last connected."""
        dialer = self._members.get(node_id)
        return 0 if dialer is None else dialer.failures

    def connected(self, node_id: str) -> None:
        """
        A session with the member completed its handshake, whoever dialled:
        forget its failures, and end any hold-off.
        """
        dialer = self._members.get(node_id)
        if dialer is not None:
            dialer.reset()

    def came_back(self, node_id: str) -> None:
        """The member restarted (a newer incarnation): it may be dialled at once."""
        self.connected(node_id)

    def lost(self, node_id: str, record: ConnectionRecord) -> None:
        """The session with the member ended badly: hold off by ``record``'s reason."""
        if not self._stopped:
            self._member(node_id).lost(record)

    # Bootstrap

    def dial_bootstrap(self, targets: Iterable[str]) -> None:
        """Dial each of ``targets`` that is not this node and whose dialer is not busy or holding off."""
        if self._stopped:
            return
        for target in targets:
            if target in self.self_targets:
                continue
            dialer = self._targets.get(target)
            if dialer is None:
                dialer = self._targets[target] = self._dialer(target, _constant(target))
            if any(dialled.dialer is dialer for dialled in self._handshaking.values()):
                continue
            attempt = dialer.dial()
            if attempt is not None:
                # A failure is the manager's to log, and the dialer's to hold off by.
                attempt.addCallback(self._follow, dialer, target).addErrback(_consume)

    # Connection events (the mesh relays the manager's)

    def connection_ready(self, connection: ManagedConnection, peer_id: str) -> None:
        dialled = self._handshaking.get(connection.record.id)
        if dialled is None:
            return
        if peer_id == self.node_id:
            # We reached ourselves, at an address of ours under another
            # spelling. It stays "handshaking" until it closes (the mesh
            # closes it at once), which then holds its dialer off.
            if dialled.target is not None:
                self.self_targets.add(dialled.target)
            return
        del self._handshaking[connection.record.id]
        dialled.dialer.reset()
        if dialled.target is not None:
            self.joined[dialled.target] = peer_id

    def connection_closed(self, connection: ManagedConnection) -> None:
        dialled = self._handshaking.pop(connection.record.id, None)
        if dialled is not None and not self._stopped:
            # Closed before its handshake completed (the peer is full, or
            # runs something else): as bad as a failed connect.
            dialled.dialer.lost(connection.record)

    # Life

    def stop(self) -> None:
        """Stop every dialer: no attempt follows, no hold-off stays scheduled."""
        self._stopped = True
        self._handshaking.clear()
        for dialer in [*self._members.values(), *self._targets.values()]:
            dialer.stop()

    # Internals

    def _member(self, node_id: str) -> Dialer:
        dialer = self._members.get(node_id)
        if dialer is None:
            dialer = self._members[node_id] = self._dialer(node_id, lambda: self._endpoint_of(node_id))
        return dialer

    def _dialer(self, peer: str, endpoint: Callable[[], str]) -> Dialer:
        return Dialer(
            self._manager,
            ResolvingEndpoint(lambda: self._resolve(peer, endpoint())),
            self._factory,
            peer,
            self._clock,
            self._policy,
            self._draw,
            keep_up=False,
            retry_fatal_after=FATAL_HOLD_OFF,
        )

    def _resolve(self, peer: str, endpoint: str) -> IStreamClientEndpoint:
        try:
            return self._client_endpoint(endpoint)
        except Exception as e:
            # The endpoint may have come from the network (a PEERS entry).
            _log.warn(
                "[{node}] cannot dial {peer} at {endpoint!r}: {error}",
                node=self.node_id,
                peer=peer,
                endpoint=endpoint,
                error=e,
            )
            raise

    def _follow(self, connection: ManagedConnection, dialer: Dialer, target: str | None) -> ManagedConnection:
        # (The peer's HELLO cannot have arrived yet: it takes a turn of the reactor.)
        if connection.record.state is ConnectionState.HANDSHAKING:
            self._handshaking[connection.record.id] = _Dialled(dialer, target)
        return connection


def _constant(endpoint: str) -> Callable[[], str]:
    return lambda: endpoint


def _consume(failure: Failure) -> None:
    failure.trap(ConnectFailed)
