"""
The handshake's rules, sans-IO: what a session of a node accepts, and BYE.

:class:`SessionRules` is what every session of a node shares (our HELLO,
frame limits, deadlines, the checks a peer's HELLO must pass, and the
per-message sinks); :func:`accept_hello` is the handshake's decision on the
peer's first frame. :mod:`netmodels.core.session` is the machine that uses them.
"""

from __future__ import annotations

from collections.abc import Callable, Container
from functools import cached_property
from typing import Any, Final

from attrs import field, frozen

from netmodels.core.frames import (
    PROTOCOL_VERSION,
    Hello,
    MessageType,
    ProtocolError,
    decode_hello,
    encode_hello,
    message_type_name,
)
from netmodels.core.frames import decode_bye as decode_bye_text
from netmodels.core.frames import encode_bye as encode_bye_text
from netmodels.core.keepalive import KeepaliveSettings
from netmodels.core.reasons import CloseReason

__all__ = ["HandshakeFailed", "SessionRules", "accept_hello", "decode_bye", "encode_bye"]


_HELLO: Final = int(MessageType.HELLO)
_NOISE: Final = int(MessageType.NOISE)


def encode_bye(reason: CloseReason, detail: str = "", fatal: bool = False) -> bytes:
    """A BYE frame saying why we close, so the peer records the same reason."""
    return encode_bye_text(str(reason), detail, fatal)


def decode_bye(body: bytes) -> tuple[CloseReason, str, bool]:
    """A BYE's reason, detail and fatal flag; an unknown reason is a clean close saying so."""
    reason, detail, fatal = decode_bye_text(body)
    try:
        return CloseReason(reason), detail, fatal
    except ValueError:
        return CloseReason.CLEAN, f"{reason}: {detail}", fatal


def _no_objection(hello: Hello) -> str | None:
    return None


def _ignore(subject: Any, value: Any) -> None:
    pass


@frozen(slots=False)
class SessionRules:
    """What every session of a node shares: its HELLO, limits, deadlines and sinks."""

    hello: Hello
    keepalive: KeepaliveSettings
    max_frame: int
    handshake_timeout: float = 10.0
    request_timeout: float = 30.0
    #: ``None`` if a peer's HELLO is acceptable, else why not (a fatal protocol error).
    check_peer: Callable[[Hello], str | None] = _no_objection
    #: ``None`` if a peer's credentials are good, else why not (``rejected``, fatal).
    authenticate: Callable[[Hello], str | None] = _no_objection
    #: The topology's own message types; any other after the handshake is a protocol error.
    topology_types: Container[int] = field(factory=frozenset)
    #: Largest message body one datagram carries; ``None``: the frame limit.
    max_unreliable_body: int | None = None
    #: ``deliver(peer, body)`` for every DATA message (``peer``: the machine's output).
    deliver: Callable[[Any, bytes], object] = _ignore
    #: ``resolve(token, payload)``: the answer to the request sent with ``token``.
    resolve: Callable[[Any, bytes], object] = _ignore
    #: ``reject(token, error)``: ``RemoteError``, ``RequestTimeout`` or ``PeerClosed``.
    reject: Callable[[Any, Exception], object] = _ignore

    @cached_property
    def max_body(self) -> int:
        """The largest body a frame may carry."""
        return self.max_frame - 1

    @cached_property
    def max_data_body(self) -> int:
        """The largest DATA body (and REQUEST/RESPONSE body plus its id)."""
        if self.max_unreliable_body is None:
            return self.max_body
        return min(self.max_body, self.max_unreliable_body)

    @cached_property
    def hello_frame(self) -> bytes:
        """Our HELLO, encoded once for every connection."""
        return encode_hello(self.hello)


class HandshakeFailed(Exception):
    """The peer's first frame is not an acceptable HELLO: close with this reason (after a BYE)."""

    def __init__(self, reason: CloseReason, detail: str, fatal: bool = False) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.fatal = fatal


def accept_hello(rules: SessionRules, message_type: int, body: bytes) -> Hello:
    """
    The peer's HELLO, if its first frame is one we accept; else
    :class:`HandshakeFailed`: ``protocol-error`` for a malformed frame, fatal
    for another protocol version or a refused peer, and ``rejected`` (fatal)
    for bad credentials.
    """
    if message_type == _NOISE:
        raise HandshakeFailed(
            CloseReason.REJECTED,
            "authentication failed: the peer opens an encrypted session (it has --cluster-key-file or "
            "--identity) and this node has neither",
            fatal=True,
        )
    if message_type != _HELLO:
        raise HandshakeFailed(
            CloseReason.PROTOCOL_ERROR, f"expected HELLO, got {message_type_name(message_type)}"
        )
    try:
        hello = decode_hello(body)
    except ProtocolError as e:
        raise HandshakeFailed(CloseReason.PROTOCOL_ERROR, str(e)) from None
    if hello.version != PROTOCOL_VERSION:
        raise HandshakeFailed(
            CloseReason.PROTOCOL_ERROR,
            f"peer speaks protocol version {hello.version}, we speak {PROTOCOL_VERSION}",
            fatal=True,
        )
    refusal = rules.check_peer(hello)
    if refusal is not None:
        raise HandshakeFailed(CloseReason.PROTOCOL_ERROR, refusal, fatal=True)
    rejection = rules.authenticate(hello)
    if rejection is not None:
        raise HandshakeFailed(CloseReason.REJECTED, rejection, fatal=True)
    return hello
