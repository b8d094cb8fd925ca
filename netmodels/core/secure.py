"""
Encrypted, authenticated sessions, sans-IO: the Noise handshake and the records after it.

A secure session starts with a Noise XX handshake (three messages, each one
``NOISE`` frame) in which both sides prove their static X25519 key; with a
cluster keyring the pattern is ``XXpsk0`` and the first message is already
authenticated with a cluster key, so a peer without one is refused before
any Diffie-Hellman is spent on it. The responder tries every installed key,
so keys rotate without downtime: the first key opens sessions, all are
accepted.

After the handshake every byte travels in ``SEALED`` frames (records)::

    length (4) | type SEALED (1) | counter (8, big-endian) | ciphertext + tag (16)

The ciphertext is Noise's ``ENCRYPT(k, n, ad="", plaintext)`` with AESGCM
(AES-256-GCM: with the AES instructions of today's CPUs, a third cheaper
per message here than ChaChaPoly) and the counter sent explicitly as the
nonce ``n`` (Noise section 11.4, as WireGuard does), so datagrams may be
lost and reordered.
The counter's top bit names its sequence space: the reliable one (a
stream, or UDP's reliable channel) must arrive in order, the unreliable one
(a UDP datagram each) passes a sliding replay window. Its next bit says a
record continues in the next one: a write larger than Noise's 65,535-byte
message limit is split, and the receiver hands whole writes up, so the
session's frame decoder never sees half a frame from one channel mixed with
frames of the other. A record that fails any check is dropped and counted,
never delivered.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import struct
from collections.abc import Sequence
from typing import Any, Final

from attrs import frozen
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from noise.connection import Keypair, NoiseConnection

from netmodels.core.frames import MessageType

__all__ = [
    "KEY_BYTES",
    "MAX_RECORD_PLAINTEXT",
    "NOT_ONE_RECORD",
    "RECORD_OVERHEAD",
    "AuthenticationFailed",
    "HandshakeResult",
    "NoiseHandshake",
    "NotOneRecord",
    "SecureChannel",
    "key_fingerprint",
    "new_private_key",
    "parse_authorized_keys",
    "parse_keyring",
    "public_key",
]

#: With a cluster keyring: the first message is authenticated with a cluster key.
PATTERN_WITH_KEY: Final = b"Noise_XXpsk0_25519_AESGCM_BLAKE2s"
#: With an identity only: anyone may connect, but both keys are proven.
PATTERN_WITHOUT_KEY: Final = b"Noise_XX_25519_AESGCM_BLAKE2s"
#: Bound into the handshake hash: a netmodels session, version 1.
PROLOGUE: Final = b"netmodels secure session 1"
KEY_BYTES: Final = 32
_TAG: Final = 16
#: Noise's limit on one message, tag included.
MAX_RECORD_PLAINTEXT: Final = 65535 - _TAG
_COUNTER: Final = struct.Struct("!Q")
#: A record costs this much over its plaintext: frame header, counter, tag.
RECORD_OVERHEAD: Final = 5 + _COUNTER.size + _TAG
#: The largest SEALED frame's length field (type, counter, ciphertext).
MAX_RECORD_FRAME: Final = 1 + _COUNTER.size + MAX_RECORD_PLAINTEXT + _TAG
_NOISE: Final = int(MessageType.NOISE)
_SEALED: Final = int(MessageType.SEALED)
_UNRELIABLE: Final = 1 << 63
_CONTINUED: Final = 1 << 62
_SEQUENCE: Final = _CONTINUED - 1
#: Unreliable records this far behind the newest one are refused as replays.
REPLAY_WINDOW: Final = 4096
_WINDOW_MASK: Final = (1 << REPLAY_WINDOW) - 1
#: Noise's AESGCM nonce: 32 zero bits, then the counter big-endian.
_NONCE: Final = struct.Struct(">4xQ")
_RECORD_HEADER: Final = struct.Struct("!IBQ")
_RECORD_HEADER_SIZE: Final = _RECORD_HEADER.size
_RECORD_HEADER_UNPACK: Final = _RECORD_HEADER.unpack_from
_COUNTER_SIZE: Final = _COUNTER.size
#: A record's length field counts its type, counter and tag besides the plaintext.
_RECORD_LENGTH_OVER_PLAINTEXT: Final = 1 + _COUNTER.size + _TAG


class NotOneRecord(enum.Enum):
    """The type of :data:`NOT_ONE_RECORD`."""

    NOT_ONE_RECORD = "not one whole SEALED frame"


#: What :meth:`SecureChannel.open_frame` returns for bytes that are not one whole record.
NOT_ONE_RECORD: Final = NotOneRecord.NOT_ONE_RECORD


class AuthenticationFailed(Exception):
    """The peer could not prove a key we accept (a wrong cluster key, a forged message)."""


def new_private_key() -> bytes:
    """A fresh X25519 private key, 32 raw bytes."""
    return X25519PrivateKey.generate().private_bytes_raw()


def public_key(private: bytes) -> bytes:
    """The X25519 public key of ``private``, 32 raw bytes."""
    key = X25519PrivateKey.from_private_bytes(private).public_key()
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_fingerprint(public: bytes) -> str:
    """
    A node id derived from a public key: ``nm-`` and 26 base32 characters of
    its BLAKE2s hash (128 bits). A node whose id has this form must hold the key.
    """
    digest = hashlib.blake2s(public, digest_size=16, person=b"nm-id").digest()
    return "nm-" + base64.b32encode(digest).decode("ascii").rstrip("=").lower()


def is_fingerprint(node_id: str) -> bool:
    """Whether ``node_id`` has the form of :func:`key_fingerprint`'s ids."""
    return node_id.startswith("nm-") and len(node_id) == 29


def _decode_key(text: str, where: str) -> bytes:
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{where}: not base64") from None
    if len(key) != KEY_BYTES:
        raise ValueError(
            f"{where}: a key is {KEY_BYTES} bytes in base64 (head -c32 /dev/urandom | base64), not {len(key)}"
        )
    return key


def _lines(text: str) -> list[tuple[int, str]]:
    return [
        (number, line.strip())
        for number, line in enumerate(text.splitlines(), 1)
        if line.strip() and not line.strip().startswith("#")
    ]


def parse_keyring(text: str, source: str = "keyring") -> tuple[bytes, ...]:
    """
    Cluster keys, one per line in base64 (``#`` comments and blank lines
    skipped): the first opens sessions, all are accepted. A bad line raises
    ``ValueError`` naming ``source`` and the line number.
    """
    keys = tuple(_decode_key(line, f"{source} line {number}") for number, line in _lines(text))
    if not keys:
        raise ValueError(f"{source}: no key in it")
    if len(set(keys)) != len(keys):
        raise ValueError(f"{source}: a key is listed twice")
    return keys


def parse_authorized_keys(text: str, source: str = "authorized keys") -> dict[bytes, str | None]:
    """
    Public keys allowed to join, one per line: the key in base64 and, after
    a space, the node id it may use (else only its fingerprint id).
    """
    keys: dict[bytes, str | None] = {}
    names: set[str] = set()
    for number, line in _lines(text):
        key_text, _, name = line.partition(" ")
        where = f"{source} line {number}"
        key = _decode_key(key_text, where)
        name = name.strip()
        if name and (" " in name or len(name) > 128):
            raise ValueError(f"{where}: a node id is one word of at most 128 characters")
        if name in names:
            raise ValueError(f"{where}: node id {name!r} is given to two keys")
        if name:
            names.add(name)
        keys[key] = name or None
    return keys


@frozen
class HandshakeResult:
    """What a finished handshake established."""

    send_key: bytes
    receive_key: bytes
    #: The peer's static public key, proven in the handshake.
    remote_static: bytes
    handshake_hash: bytes
    #: Which cluster key (index in the keyring) the session uses; ``None`` without one.
    key_index: int | None
    protocol: str


class NoiseHandshake:
    """
    One side of the Noise XX handshake, fed the peer's messages.

    The initiator (the side that dialled) sends :meth:`first_message`; each
    :meth:`receive` returns the next message to send, or ``None``. When
    :attr:`result` is set, the handshake is done. Anything the peer sends
    that does not authenticate raises :class:`AuthenticationFailed`.
    """

    def __init__(self, keyring: Sequence[bytes], static_private: bytes, initiator: bool) -> None:
        self.keyring = tuple(keyring)
        self.static_private = static_private
        self.initiator = initiator
        self.result: HandshakeResult | None = None
        self._key_index: int | None = None
        self._noise: NoiseConnection | None = None
        self._state: Any = None
        self._step = 0
        if initiator:
            self._key_index = 0 if self.keyring else None
            self._noise = self._connection(self._key_index)

    @property
    def protocol(self) -> bytes:
        return PATTERN_WITH_KEY if self.keyring else PATTERN_WITHOUT_KEY

    def first_message(self) -> bytes | None:
        """The initiator's first message; ``None`` for the responder."""
        if not self.initiator or self._step:
            return None
        self._step = 1
        assert self._noise is not None
        return bytes(self._noise.write_message())

    def receive(self, message: bytes) -> bytes | None:
        """The peer's next handshake message; returns ours in answer, or ``None``."""
        if self.result is not None:
            raise AuthenticationFailed("a handshake message after the handshake finished")
        if self._noise is None:
            self._noise = self._open_first(message)
            self._step = 1
            return self._write()
        self._keep_state()
        try:
            self._noise.read_message(message)
        except Exception as e:
            raise AuthenticationFailed(self._failure(e)) from None
        self._step += 1
        if self.initiator:
            return self._write()
        self._finish()
        return None

    def _write(self) -> bytes:
        assert self._noise is not None
        self._keep_state()
        message = bytes(self._noise.write_message())
        self._step += 1
        if self._noise.handshake_finished:
            self._finish()
        return message

    def _open_first(self, message: bytes) -> NoiseConnection:
        # The responder does not know which cluster key the initiator used:
        # the one whose MAC checks out (at most a hash per installed key).
        candidates = range(len(self.keyring)) if self.keyring else [None]
        for index in candidates:
            noise = self._connection(index)
            try:
                noise.read_message(message)
            except Exception:
                continue
            self._key_index = index
            return noise
        if self.keyring:
            raise AuthenticationFailed(
                f"the peer's first handshake message opens with none of our {len(self.keyring)} cluster "
                "key(s): it has another --cluster-key-file, or none"
            )
        raise AuthenticationFailed(
            "the peer's first handshake message is not Noise XX without a cluster key: it has a "
            "--cluster-key-file and we have none"
        )

    def _failure(self, error: Exception) -> str:
        step = self._step + 1
        if self.initiator and step == 2:
            return (
                "the peer's handshake answer does not authenticate with our cluster key: it has "
                "another --cluster-key-file"
                if self.keyring
                else "the peer's handshake answer is not Noise XX without a cluster key"
            )
        return f"handshake message {step} does not authenticate ({type(error).__name__})"

    def _connection(self, key_index: int | None) -> NoiseConnection:
        noise = NoiseConnection.from_name(self.protocol)
        if key_index is not None:
            noise.set_psks(self.keyring[key_index])
        noise.set_prologue(PROLOGUE)
        noise.set_keypair_from_private_bytes(Keypair.STATIC, self.static_private)
        if self.initiator:
            noise.set_as_initiator()
        else:
            noise.set_as_responder()
        noise.start_handshake()
        return noise

    def _keep_state(self) -> None:
        # The library drops its handshake state (with the peer's static key)
        # as the last message is read or written: keep a reference.
        assert self._noise is not None
        self._state = self._noise.noise_protocol.handshake_state

    def _finish(self) -> None:
        assert self._noise is not None
        state = self._noise.noise_protocol
        self.result = HandshakeResult(
            send_key=bytes(state.cipher_state_encrypt.k),
            receive_key=bytes(state.cipher_state_decrypt.k),
            remote_static=bytes(self._state.rs.public_bytes),
            handshake_hash=bytes(self._noise.get_handshake_hash()),
            key_index=self._key_index,
            protocol=self.protocol.decode("ascii"),
        )
        # The handshake state (ephemeral keys included) is no longer needed.
        self._noise = None
        self._state = None


def noise_frame(message: bytes) -> bytes:
    """A handshake message as a ``NOISE`` frame."""
    return (len(message) + 1).to_bytes(4, "big") + bytes((_NOISE,)) + message


class SecureChannel:
    """
    Sealing and opening records with the keys of a finished handshake.

    :meth:`seal` and :meth:`seal_unreliable` turn whole frames into SEALED
    frames; :meth:`open` takes a SEALED frame's body and returns the
    plaintext to hand up (whole frames), or ``None``: held until the rest of
    a split write arrives, or dropped (counted in :attr:`replayed` or
    :attr:`forged`).
    """

    __slots__ = (
        "_fragments",
        "_highest",
        "_open",
        "_reliable_in",
        "_reliable_out",
        "_seal",
        "_seen",
        "_unreliable_out",
        "forged",
        "replayed",
    )

    def __init__(self, result: HandshakeResult) -> None:
        self._seal = AESGCM(result.send_key).encrypt
        self._open = AESGCM(result.receive_key).decrypt
        self._reliable_out = 0
        self._unreliable_out = _UNRELIABLE
        self._reliable_in = 0
        self._highest = -1
        self._seen = 0
        self._fragments: list[bytes] = []
        #: Records refused as already seen (or too old for the window).
        self.replayed = 0
        #: Records whose tag did not check out, or out of order on the reliable space.
        self.forged = 0

    def seal(self, plaintext: bytes) -> bytes:
        """Whole frames for the reliable space: one record, or several for a large write."""
        size = len(plaintext)
        if size <= MAX_RECORD_PLAINTEXT:
            # The usual case, inlined: this runs once per message sent.
            counter = self._reliable_out
            self._reliable_out = counter + 1
            # The AEAD through a local: ``self._seal(...)`` would be a call of
            # an attribute that CPython cannot specialise, a type lookup each time.
            seal = self._seal
            header = _RECORD_HEADER.pack(size + _RECORD_LENGTH_OVER_PLAINTEXT, _SEALED, counter)
            return header + seal(_NONCE.pack(counter), plaintext, None)
        records = []
        last = len(plaintext) - MAX_RECORD_PLAINTEXT
        for start in range(0, len(plaintext), MAX_RECORD_PLAINTEXT):
            counter = self._reliable_out
            self._reliable_out = counter + 1
            if start < last:
                counter |= _CONTINUED
            records.append(self._record(counter, plaintext[start : start + MAX_RECORD_PLAINTEXT]))
        return b"".join(records)

    def seal_unreliable(self, frames: bytes) -> bytes:
        """Whole frames that fit one datagram, for the unreliable space: one record."""
        counter = self._unreliable_out
        self._unreliable_out = counter + 1
        return self._record(counter, frames)

    def _record(self, counter: int, plaintext: bytes) -> bytes:
        seal = self._seal
        header = _RECORD_HEADER.pack(len(plaintext) + _RECORD_LENGTH_OVER_PLAINTEXT, _SEALED, counter)
        return header + seal(_NONCE.pack(counter), plaintext, None)

    def open_frame(self, frame: bytes) -> bytes | NotOneRecord | None:
        """
        One read from a stream, ``frame``: if it is exactly one whole SEALED
        frame, what :meth:`open` makes of it; else :data:`NOT_ONE_RECORD`,
        and nothing is consumed (the caller walks the frames).

        The path of a request or a reply: one header unpacked, and the next
        reliable record opened without further calls.
        """
        if len(frame) < _RECORD_HEADER_SIZE:
            return NOT_ONE_RECORD
        length, kind, counter = _RECORD_HEADER_UNPACK(frame)
        if kind != _SEALED or length + 4 != len(frame):
            return NOT_ONE_RECORD
        if counter != self._reliable_in or self._fragments or length < _RECORD_LENGTH_OVER_PLAINTEXT:
            return self.open(frame, 5)
        open_ = self._open
        try:
            plaintext = open_(_NONCE.pack(counter), frame[_RECORD_HEADER_SIZE:], None)
        except InvalidTag:
            self.forged += 1
            return None
        self._reliable_in = counter + 1
        return plaintext

    def open(self, record: bytes, start: int = 0) -> bytes | None:
        """
        A SEALED frame's body, from ``start`` in ``record`` (5: a whole frame
        as it arrived): the plaintext to deliver, or ``None``.
        """
        if len(record) - start < _COUNTER_SIZE + _TAG:
            self.forged += 1
            return None
        counter = _COUNTER.unpack_from(record, start)[0]
        open_ = self._open
        if counter == self._reliable_in and not self._fragments:
            # The usual case first: the next reliable record, a whole write.
            try:
                plaintext = open_(_NONCE.pack(counter), record[start + 8 :], None)
            except InvalidTag:
                self.forged += 1
                return None
            self._reliable_in = counter + 1
            return plaintext
        if counter & _UNRELIABLE:
            return self._open_unreliable(counter, record[start + 8 :])
        if counter & _SEQUENCE != self._reliable_in:
            # Behind: a replay; ahead: a record we never saw was skipped.
            if counter & _SEQUENCE < self._reliable_in:
                self.replayed += 1
            else:
                self.forged += 1
            return None
        try:
            plaintext = open_(_NONCE.pack(counter), record[start + 8 :], None)
        except InvalidTag:
            self.forged += 1
            return None
        self._reliable_in += 1
        if counter & _CONTINUED:
            self._fragments.append(plaintext)
            return None
        if self._fragments:
            self._fragments.append(plaintext)
            plaintext = b"".join(self._fragments)
            self._fragments = []
        return plaintext

    def _open_unreliable(self, counter: int, ciphertext: bytes) -> bytes | None:
        sequence = counter & _SEQUENCE
        behind = self._highest - sequence
        if behind >= REPLAY_WINDOW or (behind >= 0 and self._seen >> behind & 1):
            self.replayed += 1
            return None
        open_ = self._open
        try:
            plaintext = open_(_NONCE.pack(counter), ciphertext, None)
        except InvalidTag:
            self.forged += 1
            return None
        # Marked only once authentic: a forgery cannot move the window.
        if behind < 0:
            self._seen = ((self._seen << -behind) | 1) & _WINDOW_MASK
            self._highest = sequence
        else:
            self._seen |= 1 << behind
        return plaintext

    @property
    def dropped(self) -> int:
        """Records dropped: replayed plus forged."""
        return self.replayed + self.forged


def session_status(result: HandshakeResult) -> dict[str, object]:
    """What ``GET /status`` shows of a connection's security."""
    return {
        "protocol": result.protocol,
        "peer_key": key_fingerprint(result.remote_static),
        "cluster_key": result.key_index,
    }
