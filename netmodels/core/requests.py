"""
The request table of one session, sans-IO: ids, deadlines, one timer.

A request costs a dict insert and a pop: every pending request shares one
timer, set at the earliest deadline, instead of a timer each. The table holds
an opaque *token* per request (the adapter's ``Deferred``) and answers it
through the rules' ``resolve`` and ``reject``, so nothing of the adapter's
kind leaks in here.

:class:`RequestTable` is a base of :class:`netmodels.core.session.SessionMachine`;
it is apart only to keep each file one subject.
"""

from __future__ import annotations

import math
import struct
from typing import TYPE_CHECKING, Any, Final

from netmodels.core.connection import ConnectionRecord
from netmodels.core.frames import MessageType

if TYPE_CHECKING:
    from netmodels.core.handshake import SessionRules
    from netmodels.core.session import ISessionOutput

__all__ = ["MessageTooLarge", "PeerClosed", "RemoteError", "RequestTable", "RequestTimeout"]


_REQUEST: Final = int(MessageType.REQUEST)
_RESPONSE: Final = int(MessageType.RESPONSE)
_ERROR: Final = int(MessageType.ERROR)
_ID: Final = struct.Struct("!I").unpack_from
#: A REQUEST, RESPONSE or ERROR frame's header, as ``encode_correlated`` packs it.
_CORRELATED: Final = struct.Struct("!IBI").pack

#: Shared by sessions with no request in flight (most of them), saving a dict each.
_NO_REQUESTS: Final[dict[int, tuple[Any, float]]] = {}


class MessageTooLarge(ValueError):
    """The application tried to send more than the frame limit allows."""


class PeerClosed(ConnectionError):
    """The connection ended; :attr:`record` says why."""

    def __init__(self, record: ConnectionRecord) -> None:
        super().__init__(f"connection {record.id} to {record.peer} ended: {record.reason}")
        self.record = record


class RequestTimeout(TimeoutError):
    """No response arrived within the request timeout."""


class RemoteError(Exception):
    """The peer's application failed the request; the message is its text."""


class RequestTable:
    """Outgoing requests by id, with their deadlines, and the answers to incoming ones."""

    __slots__ = ("next_request_id", "pending", "request_due")

    rules: SessionRules
    output: ISessionOutput
    record: ConnectionRecord
    max_data: int
    max_body: int
    pending: dict[int, tuple[Any, float]]
    next_request_id: int
    #: When the request timer is set to fire; 0.0 while it is not set.
    request_due: float

    def is_open(self) -> bool:
        raise NotImplementedError

    def is_closing(self) -> bool:
        raise NotImplementedError

    def protocol_error(self, detail: str, fatal: bool = False) -> None:
        raise NotImplementedError

    def record_or_placeholder(self) -> ConnectionRecord:
        raise NotImplementedError

    @property
    def limit_name(self) -> str:
        return "frame limit" if self.max_data == self.max_body else "datagram limit"

    def request(self, token: object, payload: bytes, now: float, timeout: float | None = None) -> None:
        """
        Send ``payload`` as a REQUEST answered through ``token``. Raises
        ``MessageTooLarge`` over the limit, ``PeerClosed`` before the session
        opens and once it is closed. While closing nothing is sent, and the
        request fails with ``PeerClosed`` when the connection is gone, so its
        record then says why it ended.
        """
        if len(payload) + 4 > self.max_data:
            raise MessageTooLarge(
                f"request of {len(payload)} bytes exceeds the {self.limit_name} of {self.max_data - 4}"
            )
        if not self.is_open():
            if not self.is_closing():
                raise PeerClosed(self.record_or_placeholder())
            self._hold(token)
            return
        request_id = self.next_request_id
        self.next_request_id = (request_id + 1) & 0xFFFFFFFF or 1
        deadline = now + (self.rules.request_timeout if timeout is None else timeout)
        pending = self.pending
        if pending is _NO_REQUESTS:
            pending = self.pending = {}
        pending[request_id] = (token, deadline)
        due = self.request_due
        if not due or deadline < due:
            self.request_due = deadline
            self.output.schedule_requests(deadline)
        self.record.messages_out += 1
        # encode_correlated's bytes, without the call: this runs for every request.
        self.output.transmit(_CORRELATED(len(payload) + 5, _REQUEST, request_id) + payload)

    def requests_due(self, now: float) -> None:
        """The request timer fired: fail every request past its deadline."""
        self.request_due = 0.0
        pending = self.pending
        expired = [rid for rid, (_, deadline) in pending.items() if deadline <= now]
        failed = [(rid, pending.pop(rid)[0]) for rid in expired]
        earliest = min((deadline for _, deadline in pending.values()), default=math.inf)
        if earliest < math.inf:
            self.request_due = earliest
            self.output.schedule_requests(earliest)
        # Last, as a rejection may send a new request (which may move the timer).
        reject = self.rules.reject
        for request_id, token in failed:
            reject(token, RequestTimeout(f"request {request_id} got no response in time"))

    def respond(self, request_id: int, response: object) -> None:
        """Answer request ``request_id``: bytes as a RESPONSE, anything else as an ERROR."""
        if isinstance(response, bytes):
            self._answer(request_id, _RESPONSE, response)
        else:
            text = f"application returned {type(response).__name__}, not bytes"
            self._answer(request_id, _ERROR, text.encode())

    def respond_error(self, request_id: int, message: str) -> None:
        """Answer request ``request_id`` with an ERROR (the caller's ``RemoteError``)."""
        self._answer(request_id, _ERROR, message.encode("utf-8", "replace"))

    def _answer(self, request_id: int, message_type: int, body: bytes) -> None:
        if not self.is_open():
            # Closing: nobody reads the answer.
            return
        if len(body) + 4 > self.max_data:
            message_type = _ERROR
            body = f"response exceeds the {self.limit_name}".encode()
        self.record.messages_out += 1
        self.output.transmit(_CORRELATED(len(body) + 5, message_type, request_id) + body)

    def _response_received(self, message_type: int, body: bytes) -> None:
        if len(body) < 4:
            self.protocol_error("REQUEST/RESPONSE/ERROR body shorter than its 4-byte id")
            return
        entry = self.pending.pop(_ID(body)[0], None)
        if entry is None:
            # A response after its request timed out: dropped, not an error.
            return
        if message_type == _RESPONSE:
            self.rules.resolve(entry[0], body[4:])
        else:
            self.rules.reject(entry[0], RemoteError(body[4:].decode("utf-8", "replace")))

    def _hold(self, token: object) -> None:
        # No deadline: the close deadline bounds how long it waits.
        if self.pending is _NO_REQUESTS:
            self.pending = {}
        request_id = self.next_request_id
        self.next_request_id = (request_id + 1) & 0xFFFFFFFF or 1
        self.pending[request_id] = (token, math.inf)

    def _fail_all(self, record: ConnectionRecord) -> None:
        pending, self.pending = self.pending, _NO_REQUESTS
        self.request_due = 0.0
        reject = self.rules.reject
        for token, _ in pending.values():
            reject(token, PeerClosed(record))
