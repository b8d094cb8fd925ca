"""
The callback client: it registers its callback endpoint and takes deliveries on both paths, once each.
"""

from __future__ import annotations

import collections
from typing import Any

import attrs
from prometheus_client.metrics_core import CounterMetricFamily, Metric
from twisted.internet.interfaces import IDelayedCall

from netmodels.core.connection import Direction
from netmodels.core.frames import ProtocolError
from netmodels.runtime.manager import ManagedConnection
from netmodels.runtime.node import Node
from netmodels.runtime.session import (
    Session,
    SessionFactory,
    call_application,
)
from netmodels.topologies.callback.common import CALLBACK, FALLBACK, _Quiet, _with_extra, token_checker
from netmodels.topologies.callback.messages import (
    DELIVER,
    KINDS,
    decode_deliver,
    encode_ack,
    encode_register,
)
from netmodels.topologies.callback.outbox import DeliveredLog

__all__ = ["CallbackClient"]


class CallbackClient:
    """
    The client side: registers its callback endpoint on every control
    connection, and hands each DELIVER to the application once.

    :param node: the client node.
    :param log: the ids already delivered.
    :param token: the secret the server must know (it presents it when it
        dials back) and that the client presents to the server.
    """

    def __init__(self, node: Node, log: DeliveredLog, token: str | None = None) -> None:
        self.node = node
        self.log = log
        self.token = token
        self.listener: Any = None
        self.kind = "tcp"
        self.received: collections.Counter[str] = collections.Counter()
        self.duplicates = 0
        self.registered = False
        self._stopped = False
        self._acks: dict[Session, int] = {}
        self._ack_call: IDelayedCall | None = None
        base = node.session_settings
        #: For the control connection: our HELLO carries the token.
        self.control_factory = SessionFactory(
            base if token is None else _with_extra(base, token=token), node.clock
        )
        #: For the callback listener: the server must carry the token.
        self.callback_factory = SessionFactory(
            attrs.evolve(base, application=_Quiet(), authenticate=token_checker(token, "server")), node.clock
        )
        node.add_handler(DELIVER, self._deliver_received)
        node.manager.subscribe(self._connection_event)
        node.add_status_section("callback", self.status)
        node.add_metrics(self.metrics)
        node.on_stop(self.stop)

    def listen(self, description: str) -> None:
        """Listen for callbacks on ``description``."""
        self.node.listen(description, self.callback_factory)
        self.listener = self.node.listeners[-1]
        self.kind = "tls" if description.startswith(("ssl:", "tls:")) else description.split(":")[0]
        if self.kind not in KINDS:
            self.kind = "tcp"

    @property
    def callback_port(self) -> int | None:
        port = None if self.listener is None else self.listener.port
        return None if port is None else int(port.getHost().port)

    def stop(self) -> None:
        self._flush_acks()
        self._stopped = True
        self.log.close()

    def status(self) -> dict[str, Any]:
        return {
            "role": "client",
            "callback_listening": None if self.listener is None else self.listener.address,
            "registered": self.registered,
            "received": {CALLBACK: self.received[CALLBACK], FALLBACK: self.received[FALLBACK]},
            "duplicates": self.duplicates,
        }

    def metrics(self) -> list[Metric]:
        """For ``GET /metrics``: messages received by path, and duplicates dropped."""
        received = CounterMetricFamily(
            "netmodels_callback_received",
            "Messages handed to the application, by path: callback (the server dialled us) or fallback.",
            labels=["path"],
        )
        for path in (CALLBACK, FALLBACK):
            received.add_metric([path], self.received[path])
        duplicates = CounterMetricFamily(
            "netmodels_callback_duplicates", "Messages received again and dropped.", self.duplicates
        )
        return [received, duplicates]

    def _connection_event(self, event: str, subject: Any) -> None:
        if not isinstance(subject, ManagedConnection):
            return
        session = subject.wrappedProtocol
        if not isinstance(session, Session) or subject.record.direction is not Direction.OUTBOUND:
            return
        if event == "ready":
            session.write_frame(encode_register(self.callback_port, self.kind))
            self.registered = True
        elif event == "closed":
            self.registered = False

    def _deliver_received(self, session: Session, body: bytes) -> None:
        if self._stopped:
            # Stopping: not delivered, not acknowledged; the server sends it again.
            return
        try:
            message_id, payload = decode_deliver(body)
        except ProtocolError as e:
            session.protocol_error(str(e))
            return
        hello = session.peer_hello
        store = str(hello.extra.get("store", hello.node_id)) if hello is not None else "?"
        if message_id > self.log.last(store):
            record = session.record
            inbound = record is not None and record.direction is Direction.INBOUND
            self.received[CALLBACK if inbound else FALLBACK] += 1
            call_application(self.node.application.message_received, session, payload)
            self.log.advance(store, message_id)
        else:
            self.duplicates += 1
        # Acknowledged at the end of the reactor turn: one ACK for a burst.
        if message_id > self._acks.get(session, 0):
            self._acks[session] = message_id
        if self._ack_call is None:
            self._ack_call = self.node.clock.callLater(0, self._flush_acks)

    def _flush_acks(self) -> None:
        self._ack_call = None
        acks, self._acks = self._acks, {}
        for session, message_id in acks.items():
            session.write_frame(encode_ack(message_id))
