"""
Secure sessions: the Noise handshake and sealed records on every transport.

:class:`SessionSecurity` is what a node's secure sessions share (its
cluster keyring, static key, authorized keys, and counts); a
:class:`SecureSession` is a :class:`~netmodels.runtime.session.Session`
that runs the handshake of :mod:`netmodels.core.secure` before the session
machine starts, then seals every write and opens every record. The session
machine, the application and the topologies see the same plaintext frames
as on a cleartext connection.

A peer that cannot authenticate (another cluster key, none, a key not in
``--authorized-keys``, a node id another key holds) is closed with reason
``rejected``, fatal, before anything reaches the application.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from functools import partial
from typing import Any

from attrs import define, field
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from netmodels.core.connection import Direction
from netmodels.core.frames import FrameDecoder, Hello, MessageType, message_type_name
from netmodels.core.handshake import decode_bye, encode_bye
from netmodels.core.reasons import CloseReason
from netmodels.core.secure import (
    MAX_RECORD_FRAME,
    NOT_ONE_RECORD,
    AuthenticationFailed,
    HandshakeResult,
    NoiseHandshake,
    SecureChannel,
    is_fingerprint,
    key_fingerprint,
    new_private_key,
    noise_frame,
    parse_authorized_keys,
    parse_keyring,
    public_key,
    session_status,
)
from netmodels.runtime.session import Session, SessionSettings

__all__ = [
    "SecureSession",
    "SessionSecurity",
    "load_or_create_identity",
    "read_authorized_keys",
    "read_keyring",
]

_log = Logger(namespace="netmodels.secure")

_NOISE = int(MessageType.NOISE)
_SEALED = int(MessageType.SEALED)
_HELLO = int(MessageType.HELLO)
_BYE = int(MessageType.BYE)
_AUTH = "authentication failed: "


def _read_text(option: str, path: str) -> str:
    try:
        with open(path, encoding="ascii") as file:
            return file.read()
    except OSError as e:
        raise ValueError(f"--{option}: cannot read {path!r}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ValueError(f"--{option}: {path!r} is not base64 text") from None


def read_keyring(option: str, path: str) -> tuple[bytes, ...]:
    """The cluster keys in ``path``; a ``ValueError`` naming ``--option`` and the line."""
    return parse_keyring(_read_text(option, path), f"--{option}: {path}")


def read_authorized_keys(option: str, path: str) -> dict[bytes, str | None]:
    """The public keys (and node ids) in ``path``; a ``ValueError`` naming ``--option`` and the line."""
    return parse_authorized_keys(_read_text(option, path), f"--{option}: {path}")


def load_or_create_identity(option: str, path: str) -> bytes:
    """
    The static private key in ``path`` (its first line that is not a
    comment, base64); if ``path`` does not exist, a new key is written
    there with mode 0600, with its public key and node id as comments.
    """
    if not os.path.exists(path):
        private = new_private_key()
        public = public_key(private)
        text = (
            "# netmodels node identity: the private key below is secret.\n"
            f"# public key: {base64.b64encode(public).decode('ascii')}\n"
            f"# node id: {key_fingerprint(public)}\n"
            f"{base64.b64encode(private).decode('ascii')}\n"
        )
        try:
            directory = os.path.dirname(path)
            if directory:
                os.makedirs(directory, mode=0o700, exist_ok=True)
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as e:
            raise ValueError(f"--{option}: cannot create {path!r}: {e.strerror or e}") from None
        with os.fdopen(descriptor, "w", encoding="ascii") as file:
            file.write(text)
        return private
    keys = parse_keyring(_read_text(option, path), f"--{option}: {path}")
    if len(keys) != 1:
        raise ValueError(f"--{option}: {path} holds {len(keys)} keys; an identity is one private key")
    return keys[0]


@define(eq=False)
class SessionSecurity:
    """A node's keys and the rules its secure sessions apply; counts what they refused."""

    #: Cluster keys: the first opens sessions, all are accepted. Empty: no cluster key.
    keyring: tuple[bytes, ...]
    #: This node's static X25519 private key (``--identity``, else made at start).
    static_private: bytes
    #: Public keys allowed to join, each with the node id it may use (``--authorized-keys``).
    authorized: Mapping[bytes, str | None] | None = None
    static_public: bytes = field(init=False)
    #: Handshakes that failed to authenticate, and records dropped (replayed or forged).
    handshakes_failed: int = field(init=False, default=0)
    records_dropped: int = field(init=False, default=0)
    _names: dict[str, bytes] = field(init=False, factory=dict)

    def __attrs_post_init__(self) -> None:
        self.static_public = public_key(self.static_private)
        for key, name in (self.authorized or {}).items():
            if name is not None:
                self._names[name] = key

    @property
    def fingerprint(self) -> str:
        """This node's key as a node id (``nm-...``)."""
        return key_fingerprint(self.static_public)

    def check_key(self, remote: bytes) -> str | None:
        """``None`` if a peer proving ``remote`` may join, else why not."""
        if self.authorized is not None and remote not in self.authorized:
            return f"{_AUTH}key {key_fingerprint(remote)} is not in --authorized-keys"
        return None

    def check_id(self, remote: bytes, hello: Hello) -> str | None:
        """``None`` if the peer holding ``remote`` may use the node id in ``hello``, else why not."""
        node_id = hello.node_id
        fingerprint = key_fingerprint(remote)
        if node_id == fingerprint:
            return None
        if is_fingerprint(node_id):
            return f"{_AUTH}node id {node_id} belongs to another key (the peer holds {fingerprint})"
        holder = self._names.get(node_id)
        if holder is not None and holder != remote:
            return (
                f"{_AUTH}node id {node_id} belongs to another key in --authorized-keys "
                f"(the peer holds {fingerprint})"
            )
        if self.authorized is not None and self.authorized.get(remote) != node_id:
            allowed = self.authorized.get(remote) or fingerprint
            return f"{_AUTH}key {fingerprint} may use node id {allowed}, not {node_id}"
        return None

    def as_dict(self) -> dict[str, Any]:
        """The ``security`` section of ``GET /status``."""
        return {
            "encrypted": True,
            "cluster_keys": len(self.keyring),
            "node_key": self.fingerprint,
            "authorized_keys": None if self.authorized is None else len(self.authorized),
            "handshakes_failed": self.handshakes_failed,
            "records_dropped": self.records_dropped,
        }


class SecureSession(Session):
    """A :class:`Session` whose bytes are sealed: Noise XX first, then records."""

    def __init__(self, settings: SessionSettings, clock: IReactorTime) -> None:
        super().__init__(settings, clock)
        assert settings.security is not None
        self.security: SessionSecurity = settings.security
        self._handshake: NoiseHandshake | None = None
        self._handshake_call: IDelayedCall | None = None
        self._channel: SecureChannel | None = None
        self._records = FrameDecoder(MAX_RECORD_FRAME)
        self._refused = False
        # The channel while a read that is exactly one SEALED frame can be
        # opened in place (keys agreed, nothing refused, no partial record held).
        self._whole_record_channel: SecureChannel | None = None
        self._dropped_seen = 0
        #: What the handshake established (``None`` until it finished).
        self.handshake_result: HandshakeResult | None = None

    # Twisted

    def _begin(self) -> None:
        """Run the handshake; the session machine starts once it succeeds."""
        security = self.security
        initiator = self.transport.record.direction is Direction.OUTBOUND
        self._handshake = NoiseHandshake(security.keyring, security.static_private, initiator)
        self._handshake_call = self.clock.callLater(self.settings.handshake_timeout, self._handshake_timeout)
        first = self._handshake.first_message()
        if first is not None:
            self.transport.write(noise_frame(first))

    def dataReceived(self, data: bytes) -> None:
        channel = self._whole_record_channel
        if channel is not None:
            # One whole record, the usual case of a request or a reply: no
            # frame walk of the outer layer.
            opened = channel.open_frame(data)
            if opened is not NOT_ONE_RECORD:
                if opened is not None:
                    self.machine.receive(opened, self.clock.seconds())
                else:
                    self._count_dropped(channel)
                return
        if self._refused:
            return
        records = self._records.feed(data)
        channel = self._channel
        if channel is None:
            records = self._handshake_records(records)
            channel = self._channel
        if records and channel is not None:
            plaintext = []
            refused = False
            for message_type, body in records:
                if message_type == _SEALED:
                    opened = channel.open(body)
                    if opened is not None:
                        plaintext.append(opened)
                        continue
                else:
                    # Cleartext after the handshake: not from our peer.
                    channel.forged += 1
                # Dropped, or the first part of a split write (counted as neither).
                refused = True
            if refused:
                self._count_dropped(channel)
            if plaintext:
                now = self.clock.seconds()
                self.machine.receive(plaintext[0] if len(plaintext) == 1 else b"".join(plaintext), now)
        error = self._records.error
        if error is not None and not self._refused:
            if self._channel is None:
                self._refuse(f"secure handshake: {error}", CloseReason.PROTOCOL_ERROR, fatal=False)
            else:
                self.machine.protocol_error(f"secure records: {error}")
        whole = not self._refused and self._records.buffered == 0 and self._records.error is None
        self._whole_record_channel = self._channel if whole else None

    def _count_dropped(self, channel: SecureChannel) -> None:
        dropped = channel.dropped
        self.security.records_dropped += dropped - self._dropped_seen
        self._dropped_seen = dropped

    def resetKeepalive(self) -> None:
        # Keepalive starts with the session machine, after the handshake.
        if self._channel is not None:
            super().resetKeepalive()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_handshake()
        super().connectionLost(reason)

    # Writes: sealed, on the channel the frame type says

    def _send(self, data: bytes, corked: bool = False) -> None:
        channel = self._channel
        if channel is None:
            # Nothing of the session leaves before the handshake finished.
            return
        if not self.writable:
            self._grow_backlog(len(data))
        unreliable = self._unreliable
        if unreliable and data[4] in unreliable:
            self.transport.write_unreliable(channel.seal_unreliable(data), corked)
        elif corked:
            self.transport.cork(channel.seal(data))
        else:
            self.transport.write(channel.seal(data))

    transmit = _send

    # The handshake

    def _handshake_records(self, records: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
        """Feed handshake messages; return the records that follow the handshake."""
        handshake = self._handshake
        for index, (message_type, body) in enumerate(records):
            if handshake is None or self._refused:
                return []
            if message_type == _NOISE:
                try:
                    answer = handshake.receive(body)
                except AuthenticationFailed as e:
                    self._refuse(_AUTH + str(e))
                    return []
                if answer is not None:
                    self.transport.write(noise_frame(answer))
                if handshake.result is not None:
                    self._established(handshake.result)
                    return records[index + 1 :] if self._channel is not None else []
            elif message_type == _BYE:
                # The peer refused us before any key was agreed: its reason is
                # all we can learn (unauthenticated, like an RST).
                reason, detail, fatal = decode_bye(body)
                self._cancel_handshake()
                self._refused = True
                self._whole_record_channel = None
                self.transport.note_remote_close(reason, detail, fatal)
                self.transport.end(CloseReason.CLEAN)
                return []
            elif message_type == _HELLO:
                self._refuse(
                    _AUTH
                    + "the peer sent a cleartext HELLO: it has no --cluster-key-file or --identity, and "
                    "this node accepts encrypted sessions only"
                )
                return []
            else:
                self._refuse(
                    _AUTH + f"expected a Noise handshake message, got {message_type_name(message_type)}"
                )
                return []
        return []

    def _established(self, result: HandshakeResult) -> None:
        self._cancel_handshake()
        self._handshake = None
        self.handshake_result = result
        self._channel = SecureChannel(result)
        record = self.transport.record
        record.extra["secure"] = session_status(result)
        refusal = self.security.check_key(result.remote_static)
        if refusal is not None:
            # Sealed: the peer finished its side of the handshake and reads only records now.
            self._refuse(refusal)
            return
        remote = result.remote_static
        self.machine.peer_check = partial(self.security.check_id, remote)
        self.machine.start(record, self.clock.seconds())

    def _refuse(self, detail: str, reason: CloseReason = CloseReason.REJECTED, fatal: bool = True) -> None:
        """Close with ``reason`` after a BYE saying why: sealed once there are keys, else in cleartext."""
        self._cancel_handshake()
        self._refused = True
        self._whole_record_channel = None
        self.security.handshakes_failed += 1
        record = self.transport.record
        _log.warn(
            "connection {id} to {peer}: {reason}: {detail}",
            id=record.id,
            peer=record.peer,
            reason=reason,
            detail=detail,
        )
        record.messages_out += 1
        bye = encode_bye(reason, detail, fatal)
        channel = self._channel
        self.transport.write(bye if channel is None else channel.seal(bye))
        self.transport.end(reason, detail, fatal=fatal)

    def _handshake_timeout(self) -> None:
        self._handshake_call = None
        if self._channel is None and not self._refused:
            timeout = self.settings.handshake_timeout
            self._refuse(
                f"no secure handshake within the handshake deadline of {timeout:g} s",
                CloseReason.PROTOCOL_ERROR,
                fatal=False,
            )

    def _cancel_handshake(self) -> None:
        call, self._handshake_call = self._handshake_call, None
        if call is not None and call.active():
            call.cancel()
