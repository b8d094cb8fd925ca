"""
Encrypted sessions, deterministically: the Noise handshake and records
(sans-IO), then whole nodes over the in-memory TCP and UDP twins.
"""

from __future__ import annotations

import base64
import os
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from netmodels.core.frames import Hello, MessageType, encode_frame
from netmodels.core.keepalive import KeepaliveSettings
from netmodels.core.requests import MessageTooLarge
from netmodels.core.secure import (
    MAX_RECORD_PLAINTEXT,
    NOT_ONE_RECORD,
    REPLAY_WINDOW,
    AuthenticationFailed,
    NoiseHandshake,
    SecureChannel,
    is_fingerprint,
    key_fingerprint,
    new_private_key,
    parse_authorized_keys,
    parse_keyring,
    public_key,
)
from netmodels.runtime.secure import SecureSession, SessionSecurity
from tests.test_testing import CLIENT_ID, Pair, _result, advance_by, with_hello
from tests.test_udp import UdpPair

KEY_A = bytes(range(32))
KEY_B = bytes(range(1, 33))


def handshake(
    initiator_keys: list[bytes], responder_keys: list[bytes], tamper: int | None = None
) -> tuple[list[tuple[str, int]], NoiseHandshake, NoiseHandshake]:
    """Run a handshake; the events are (who sent, size); ``tamper`` flips a byte of that message (1-3)."""
    initiator = NoiseHandshake(initiator_keys, new_private_key(), initiator=True)
    responder = NoiseHandshake(responder_keys, new_private_key(), initiator=False)
    events: list[tuple[str, int]] = []
    message = initiator.first_message()
    sides = [(responder, "initiator"), (initiator, "responder")]
    number = 1
    while message is not None:
        receiver, sender = sides[(number - 1) % 2]
        events.append((sender, len(message)))
        if tamper == number:
            message = message[:-1] + bytes([message[-1] ^ 1])
        message = receiver.receive(message)
        number += 1
    return events, initiator, responder


class NoiseHandshakeTests(SynchronousTestCase):
    def test_three_messages_then_crossed_keys(self) -> None:
        events, initiator, responder = handshake([KEY_A], [KEY_A])
        # psk0: e and a tag; e, s (encrypted) and a tag; s (encrypted) and a tag.
        self.assertEqual(events, [("initiator", 48), ("responder", 96), ("initiator", 64)])
        mine, theirs = initiator.result, responder.result
        assert mine is not None and theirs is not None
        self.assertEqual((mine.send_key, mine.receive_key), (theirs.receive_key, theirs.send_key))
        self.assertNotEqual(mine.send_key, mine.receive_key)
        self.assertEqual(mine.remote_static, public_key(responder.static_private))
        self.assertEqual(theirs.remote_static, public_key(initiator.static_private))
        self.assertEqual(mine.handshake_hash, theirs.handshake_hash)
        self.assertEqual((mine.key_index, mine.protocol), (0, "Noise_XXpsk0_25519_AESGCM_BLAKE2s"))

    def test_identity_only_runs_xx_without_a_key(self) -> None:
        events, initiator, _ = handshake([], [])
        self.assertEqual(events, [("initiator", 32), ("responder", 96), ("initiator", 64)])
        assert initiator.result is not None
        self.assertEqual(
            (initiator.result.key_index, initiator.result.protocol),
            (None, "Noise_XX_25519_AESGCM_BLAKE2s"),
        )

    def test_responder_accepts_every_installed_key(self) -> None:
        """Rotation: a node with [new, old] takes a peer that still opens with old."""
        _, initiator, responder = handshake([KEY_A], [KEY_B, KEY_A])
        assert initiator.result is not None and responder.result is not None
        self.assertEqual((initiator.result.key_index, responder.result.key_index), (0, 1))

    def test_the_first_key_opens(self) -> None:
        """A node that already opens with the new key is refused by one that lacks it."""
        error = self.assertRaises(AuthenticationFailed, handshake, [KEY_B, KEY_A], [KEY_A])
        self.assertIn("opens with none of our 1 cluster key(s)", str(error))

    def test_wrong_key_fails_at_the_first_message(self) -> None:
        error = self.assertRaises(AuthenticationFailed, handshake, [KEY_A], [KEY_B])
        self.assertIn("another --cluster-key-file, or none", str(error))

    def test_keyless_initiator_is_refused(self) -> None:
        self.assertRaises(AuthenticationFailed, handshake, [], [KEY_A])

    def test_keyless_responder_is_found_out_by_the_initiator(self) -> None:
        error = self.assertRaises(AuthenticationFailed, handshake, [KEY_A], [])
        self.assertIn("handshake answer does not authenticate", str(error))

    def test_a_tampered_message_fails(self) -> None:
        for number in (1, 2, 3):
            self.assertRaises(AuthenticationFailed, handshake, [KEY_A], [KEY_A], tamper=number)

    def test_nothing_after_the_handshake(self) -> None:
        _, _, responder = handshake([KEY_A], [KEY_A])
        self.assertRaises(AuthenticationFailed, responder.receive, b"\0" * 64)


def channels() -> tuple[SecureChannel, SecureChannel]:
    _, initiator, responder = handshake([KEY_A], [KEY_A])
    assert initiator.result is not None and responder.result is not None
    return SecureChannel(initiator.result), SecureChannel(responder.result)


def bodies(records: bytes) -> list[bytes]:
    """The bodies of the SEALED frames in ``records``."""
    out = []
    while records:
        length = int.from_bytes(records[:4], "big")
        assert records[4] == MessageType.SEALED
        out.append(records[5 : 4 + length])
        records = records[4 + length :]
    return out


class SecureChannelTests(SynchronousTestCase):
    def test_round_trip_and_no_cleartext(self) -> None:
        sender, receiver = channels()
        frame = encode_frame(MessageType.DATA, b"attack at dawn")
        record = sender.seal(frame)
        self.assertNotIn(b"attack at dawn", record)
        self.assertEqual(len(record), len(frame) + 29)
        [body] = bodies(record)
        self.assertEqual(receiver.open(body), frame)
        # The same plaintext never seals the same way twice.
        self.assertNotEqual(sender.seal(frame)[13:], record[13:])

    def test_a_record_is_noise_encrypt_with_the_counter_as_nonce(self) -> None:
        """The noise library's own cipher (AESGCM, nonce n) opens what the channel sealed."""
        from noise.backends.default.ciphers import AESGCMCipher

        _, initiator, _ = handshake([KEY_A], [KEY_A])
        assert initiator.result is not None
        sender = SecureChannel(initiator.result)
        sender.seal(b"first")
        record = sender.seal(b"second")
        counter = int.from_bytes(record[5:13], "big")
        cipher = AESGCMCipher()
        cipher.initialize(initiator.result.send_key)
        self.assertEqual(counter, 1)
        self.assertEqual(cipher.decrypt(initiator.result.send_key, counter, b"", record[13:]), b"second")

    def test_replayed_record_is_dropped(self) -> None:
        sender, receiver = channels()
        [first] = bodies(sender.seal(b"one"))
        [second] = bodies(sender.seal(b"two"))
        self.assertEqual(
            [receiver.open(first), receiver.open(first), receiver.open(second)], [b"one", None, b"two"]
        )
        self.assertEqual((receiver.replayed, receiver.forged), (1, 0))

    def test_reliable_records_only_in_order(self) -> None:
        sender, receiver = channels()
        [first] = bodies(sender.seal(b"one"))
        [second] = bodies(sender.seal(b"two"))
        self.assertEqual([receiver.open(second), receiver.open(first)], [None, b"one"])
        self.assertEqual(receiver.forged, 1)

    def test_tampered_record_is_dropped_and_the_next_still_opens(self) -> None:
        sender, receiver = channels()
        [body] = bodies(sender.seal(b"one"))
        tampered = body[:-1] + bytes([body[-1] ^ 0x80])
        flipped_counter = bytes([body[0] ^ 0x40]) + body[1:]
        self.assertEqual(
            [receiver.open(tampered), receiver.open(flipped_counter), receiver.open(b"short")], [None] * 3
        )
        self.assertEqual(receiver.forged, 3)
        self.assertEqual(receiver.open(body), b"one")

    def test_open_frame_takes_one_whole_record_as_open_does(self) -> None:
        sender, receiver = channels()
        first, second, third = (sender.seal(bytes([n]) * 3) for n in range(3))
        tampered = second[:-1] + bytes([second[-1] ^ 0x80])
        self.assertEqual(
            [
                receiver.open_frame(first),
                receiver.open_frame(first),
                receiver.open_frame(tampered),
                receiver.open_frame(third),
                receiver.open_frame(second),
            ],
            [b"\0\0\0", None, None, None, b"\1\1\1"],
        )
        self.assertEqual((receiver.replayed, receiver.forged), (1, 2))

    def test_open_frame_leaves_what_is_not_one_whole_record(self) -> None:
        sender, receiver = channels()
        record = sender.seal(b"one")
        two = record + sender.seal(b"two")
        cleartext = encode_frame(MessageType.DATA, b"x" * 30)
        for data in (record[:-1], record[:12], two, cleartext, b""):
            self.assertIs(receiver.open_frame(data), NOT_ONE_RECORD)
        self.assertEqual(receiver.dropped, 0)
        self.assertEqual(receiver.open_frame(record), b"one")

    def test_open_frame_of_a_split_write_holds_its_parts(self) -> None:
        sender, receiver = channels()
        frames = encode_frame(MessageType.DATA, b"d" * MAX_RECORD_PLAINTEXT)
        records = sender.seal(frames)
        first_length = int.from_bytes(records[:4], "big") + 4
        self.assertIsNone(receiver.open_frame(records[:first_length]))
        self.assertEqual(receiver.open_frame(records[first_length:]), frames)
        self.assertEqual(receiver.dropped, 0)

    def test_unreliable_records_may_reorder_but_not_repeat(self) -> None:
        sender, receiver = channels()
        records = [bodies(sender.seal_unreliable(bytes([n])))[0] for n in range(5)]
        order = [4, 1, 0, 4, 3, 1, 2]
        self.assertEqual(
            [receiver.open(records[n]) for n in order], [b"\4", b"\1", b"\0", None, b"\3", None, b"\2"]
        )
        self.assertEqual(receiver.replayed, 2)

    def test_unreliable_records_older_than_the_window_are_refused(self) -> None:
        sender, receiver = channels()
        old = bodies(sender.seal_unreliable(b"old"))[0]
        for _ in range(REPLAY_WINDOW):
            newest = bodies(sender.seal_unreliable(b"new"))[0]
        self.assertEqual(receiver.open(newest), b"new")
        self.assertIsNone(receiver.open(old))
        self.assertEqual(receiver.replayed, 1)

    def test_a_forgery_does_not_move_the_window(self) -> None:
        sender, receiver = channels()
        first = bodies(sender.seal_unreliable(b"first"))[0]
        forged = (0xC000_0000_0000_0000 | 10**9).to_bytes(8, "big") + b"\0" * 32
        self.assertIsNone(receiver.open(forged))
        self.assertEqual(receiver.open(first), b"first")

    def test_spaces_are_independent(self) -> None:
        sender, receiver = channels()
        unreliable = bodies(sender.seal_unreliable(b"u"))[0]
        reliable = bodies(sender.seal(b"r"))[0]
        self.assertEqual([receiver.open(reliable), receiver.open(unreliable)], [b"r", b"u"])

    def test_a_large_write_is_split_and_handed_up_whole(self) -> None:
        sender, receiver = channels()
        payload = os.urandom(2 * MAX_RECORD_PLAINTEXT + 100)
        parts = bodies(sender.seal(payload))
        self.assertEqual(len(parts), 3)
        between = bodies(sender.seal_unreliable(b"meanwhile"))[0]
        opened = [
            receiver.open(parts[0]),
            receiver.open(between),
            receiver.open(parts[1]),
            receiver.open(parts[2]),
        ]
        self.assertEqual(opened, [None, b"meanwhile", None, payload])


class KeyFileTests(SynchronousTestCase):
    def test_keyring(self) -> None:
        a, b = (base64.b64encode(key).decode() for key in (KEY_A, KEY_B))
        self.assertEqual(parse_keyring(f"# new first\n{b}\n\n{a}\n"), (KEY_B, KEY_A))

    def test_keyring_errors_name_the_line(self) -> None:
        a = base64.b64encode(KEY_A).decode()
        cases = [
            ("", "keys: no key in it"),
            ("# only a comment\n", "keys: no key in it"),
            (f"{a}\nnot base64!\n", "keys line 2: not base64"),
            (f"{base64.b64encode(b'short').decode()}\n", "keys line 1: a key is 32 bytes in base64"),
            (f"{a}\n{a}\n", "keys: a key is listed twice"),
        ]
        for text, message in cases:
            error = self.assertRaises(ValueError, parse_keyring, text, "keys")
            self.assertIn(message, str(error))

    def test_authorized_keys(self) -> None:
        a, b = (base64.b64encode(public_key(key)).decode() for key in (KEY_A, KEY_B))
        self.assertEqual(
            parse_authorized_keys(f"{a} alice\n{b}\n"), {public_key(KEY_A): "alice", public_key(KEY_B): None}
        )
        error = self.assertRaises(ValueError, parse_authorized_keys, f"{a} alice\n{b} alice\n", "auth")
        self.assertIn("auth line 2: node id 'alice' is given to two keys", str(error))

    def test_fingerprint(self) -> None:
        fingerprint = key_fingerprint(public_key(KEY_A))
        self.assertTrue(fingerprint.startswith("nm-"))
        self.assertEqual(len(fingerprint), 29)
        self.assertTrue(is_fingerprint(fingerprint))
        self.assertFalse(is_fingerprint("nm-node-1"))
        self.assertNotEqual(fingerprint, key_fingerprint(public_key(KEY_B)))


def hello(node_id: str) -> Hello:
    return Hello(node_id, "client-server", "client", KeepaliveSettings(10, 5, 3))


class IdentityRuleTests(SynchronousTestCase):
    def test_node_ids_and_keys(self) -> None:
        alice, mallory = public_key(KEY_A), public_key(KEY_B)
        free = SessionSecurity(keyring=(KEY_A,), static_private=new_private_key())
        named = SessionSecurity(
            keyring=(KEY_A,), static_private=new_private_key(), authorized={alice: "alice", mallory: None}
        )
        cases = [
            (free, alice, key_fingerprint(alice), None),
            (free, alice, "any-name", None),
            (free, mallory, key_fingerprint(alice), "belongs to another key"),
            (named, alice, "alice", None),
            (named, alice, key_fingerprint(alice), None),
            (named, mallory, "alice", "node id alice belongs to another key in --authorized-keys"),
            (
                named,
                mallory,
                "bob",
                f"key {key_fingerprint(mallory)} may use node id {key_fingerprint(mallory)}, not bob",
            ),
            (named, alice, "bob", "may use node id alice, not bob"),
        ]
        for security, key, node_id, expected in cases:
            refusal = security.check_id(key, hello(node_id))
            if expected is None:
                self.assertIsNone(refusal, node_id)
            else:
                assert refusal is not None, node_id
                self.assertIn(expected, refusal)
                self.assertTrue(refusal.startswith("authentication failed: "))
        self.assertIsNone(named.check_key(alice))
        self.assertIn("is not in --authorized-keys", named.check_key(public_key(new_private_key())) or "")


def keyed(keys: list[bytes], **more: Any) -> dict[str, Any]:
    return {"cluster_keys": tuple(keys), **more}


class StreamTests(SynchronousTestCase):
    """Two nodes over the in-memory TCP twin."""

    def test_requests_cross_sealed(self) -> None:
        pair = Pair(server_config=keyed([KEY_A]), client_config=keyed([KEY_A]))
        pair.start()
        session = pair.client_session()
        self.assertIsInstance(session, SecureSession)
        answer = session.request(b"x" * 200_000)
        pair.clock.advance(0)
        self.assertEqual(_result(answer), b"x" * 200_000)
        secure = pair.server_record().as_dict()["secure"]
        self.assertEqual(secure["protocol"], "Noise_XXpsk0_25519_AESGCM_BLAKE2s")
        self.assertEqual(secure["peer_key"], pair.client.security.fingerprint)  # type: ignore[union-attr]
        self.assertEqual(pair.server.status()["security"]["handshakes_failed"], 0)
        pair.stop()

    def test_rotation_interoperates(self) -> None:
        pair = Pair(server_config=keyed([KEY_B, KEY_A]), client_config=keyed([KEY_A]))
        pair.start()
        self.assertEqual(len(pair.server_app.ready), 1)
        self.assertEqual(pair.server_record().as_dict()["secure"]["cluster_key"], 1)
        pair.stop()

    def assert_rejected(self, pair: Pair, detail: str, server_detail: str | None = None) -> None:
        pair.start()
        advance_by(pair.clock, 60)
        records = list(pair.client.manager.records())
        # Fatal: the dialer stopped after the first attempt.
        self.assertEqual(len(records), 1)
        [record] = records
        self.assertEqual((record.reason, record.fatal), ("rejected", True))
        self.assertIn(detail, record.detail)
        self.assertTrue(record.detail.startswith("authentication failed: "), record.detail)
        self.assertEqual(pair.server_record().reason, "rejected")
        self.assertIn(server_detail or detail, pair.server_record().detail)
        # Nothing reached either application.
        self.assertEqual((pair.server_app.ready, pair.client_app.ready), ([], []))
        pair.stop()

    def test_wrong_key_is_rejected_and_not_redialled(self) -> None:
        self.assert_rejected(
            Pair(server_config=keyed([KEY_A]), client_config=keyed([KEY_B])), "opens with none"
        )

    def test_cleartext_client_is_rejected(self) -> None:
        self.assert_rejected(Pair(server_config=keyed([KEY_A])), "the peer sent a cleartext HELLO")

    def test_cleartext_server_refuses_an_encrypted_client(self) -> None:
        # Both first frames cross: each side finds the other out.
        self.assert_rejected(
            Pair(client_config=keyed([KEY_A])), "the peer sent a cleartext HELLO", "this node has neither"
        )

    def test_encrypted_client_finds_a_cleartext_server_out(self) -> None:
        pair = Pair(client_config=keyed([KEY_A]))
        pair.start()
        advance_by(pair.clock, 60)
        [record] = pair.client.manager.records()
        self.assertEqual((record.reason, record.fatal), ("rejected", True))
        pair.stop()

    def test_node_id_of_another_key_is_rejected(self) -> None:
        own, other = (key_fingerprint(public_key(key)) for key in (KEY_A, KEY_B))
        for node_id in (CLIENT_ID, own):
            pair = Pair(
                server_config=keyed([KEY_A]),
                client_config=keyed([KEY_A], identity_key=KEY_A),
                client_factory=lambda node, node_id=node_id: with_hello(node, node_id=node_id),  # type: ignore[misc]
            )
            pair.start()
            self.assertEqual([peer.node_id for peer in pair.server_app.ready], [node_id])
            pair.stop()
        impostor = Pair(
            server_config=keyed([KEY_A]),
            client_config=keyed([KEY_A], identity_key=KEY_A),
            client_factory=lambda node: with_hello(node, node_id=other),
        )
        self.assert_rejected_after_handshake(impostor, f"node id {other} belongs to another key")

    def assert_rejected_after_handshake(self, pair: Pair, detail: str) -> None:
        pair.start()
        advance_by(pair.clock, 60)
        record = pair.server_record()
        self.assertEqual((record.reason, record.fatal), ("rejected", True))
        self.assertIn(detail, record.detail)
        self.assertEqual(pair.server_app.ready, [])
        pair.stop()

    def test_authorized_keys(self) -> None:
        client_key = new_private_key()
        authorized = {public_key(client_key): CLIENT_ID}
        pair = Pair(
            server_config=keyed([KEY_A], authorized_keys=authorized),
            client_config=keyed([KEY_A], identity_key=client_key),
        )
        pair.start()
        self.assertEqual(len(pair.server_app.ready), 1)
        pair.stop()
        stranger = Pair(
            server_config=keyed([KEY_A], authorized_keys=authorized), client_config=keyed([KEY_A])
        )
        self.assert_rejected(stranger, "is not in --authorized-keys")

    def test_silent_peer_meets_the_handshake_deadline(self) -> None:
        pair = Pair(server_config=keyed([KEY_A], handshake_timeout=2.0))
        pair.server.startService()
        raw = pair.connect_raw()
        pair.clock.advance(0)
        advance_by(pair.clock, 2.5)
        record = pair.server_record()
        self.assertEqual((record.reason, record.fatal), ("protocol-error", False))
        self.assertIn("no secure handshake within the handshake deadline of 2 s", record.detail)
        self.assertIsNotNone(raw.lost)
        self.assertEqual(raw.frame_types(), [MessageType.BYE])

    def test_forged_and_cleartext_records_are_dropped_and_counted(self) -> None:
        pair = Pair(server_config=keyed([KEY_A]), client_config=keyed([KEY_A]))
        pair.start()
        server = pair.server_session()
        forged = encode_frame(MessageType.SEALED, (5).to_bytes(8, "big") + b"\0" * 40)
        server.dataReceived(forged + encode_frame(MessageType.DATA, b"injected"))
        pair.client_session().send(b"genuine")
        pair.clock.advance(0)
        self.assertEqual(pair.server_app.messages, [b"genuine"])
        self.assertEqual(pair.server.status()["security"]["records_dropped"], 2)
        self.assertEqual(pair.server_record().state, "open")
        pair.stop()


class DatagramTests(SynchronousTestCase):
    """Two nodes over the in-memory UDP twin."""

    def test_unreliable_messages_under_loss_arrive_at_most_once(self) -> None:
        pair = UdpPair(server_config=keyed([KEY_A]), client_config=keyed([KEY_A]), seed=3)
        pair.start()
        session = pair.session(pair.client)
        self.assertIsInstance(session, SecureSession)
        pair.network.loss = 0.2
        pair.network.duplicate = 0.2
        pair.network.reorder = 0.2
        sent = [b"m%d" % n for n in range(200)]
        for message in sent:
            session.send(message)
            advance_by(pair.clock, 0.002)
        advance_by(pair.clock, 1)
        received = pair.server_app.messages
        self.assertEqual(len(received), len(set(received)))
        self.assertTrue(set(received) <= set(sent))
        self.assertGreater(len(received), 100)
        # Duplicates are caught by the datagram window before any record is opened.
        self.assertEqual(pair.server.status()["security"]["records_dropped"], 0)

    def test_a_replayed_record_is_dropped(self) -> None:
        pair = UdpPair(server_config=keyed([KEY_A]), client_config=keyed([KEY_A]))
        pair.start()
        sent: list[bytes] = []
        transport = pair.session(pair.client).transport
        original = transport.write_unreliable

        def keep(frames: bytes, corked: bool = False) -> None:
            sent.append(frames)
            original(frames, corked)

        transport.write_unreliable = keep  # type: ignore[method-assign]
        pair.session(pair.client).send(b"once")
        advance_by(pair.clock, 0.1)
        pair.session(pair.server).dataReceived(sent[0])
        self.assertEqual(pair.server_app.messages, [b"once"])
        self.assertEqual(pair.server.status()["security"]["records_dropped"], 1)

    def test_wrong_key_over_udp(self) -> None:
        pair = UdpPair(server_config=keyed([KEY_A]), client_config=keyed([KEY_B]))
        pair.start()
        advance_by(pair.clock, 30)
        [record] = pair.records(pair.client)
        self.assertEqual((record["reason"], record["fatal"]), ("rejected", True))
        self.assertIn("authentication failed", record["detail"])
        self.assertEqual(pair.server_app.ready, [])

    def test_the_largest_unreliable_message_still_fits_one_datagram(self) -> None:
        pair = UdpPair(server_config=keyed([KEY_A]), client_config=keyed([KEY_A]))
        pair.start()
        session = pair.session(pair.client)
        largest = b"L" * session.machine.max_data
        session.send(largest)
        advance_by(pair.clock, 0.1)
        self.assertEqual(pair.server_app.messages, [largest])
        self.assertRaises(MessageTooLarge, session.send, largest + b"!")
