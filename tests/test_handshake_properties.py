"""
Property tests of the handshake path: a node's session fed arbitrary bytes
from the first byte after connect, in arbitrary chunks.

Either the bytes parse (a HELLO, and what follows it), or the connection
ends with ``protocol-error``; never another exception, never a connection
left open past the handshake deadline. The node and the in-memory
transport are the fuzz target's (``fuzz/fuzz_handshake.py``), so these
tests and the fuzzer check the same thing.
"""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from fuzz import fuzz_handshake
from netmodels.core.frames import MessageType
from netmodels.core.reasons import CloseReason, Initiator
from tests.test_wire_properties import PROPERTY_SETTINGS, chunkings

nodes = st.integers(min_value=0, max_value=len(fuzz_handshake.NODES) - 1)


class HandshakePropertyTests(SynchronousTestCase):
    @PROPERTY_SETTINGS
    @given(index=nodes, data=st.data(), stream=st.binary(max_size=512))
    @example(index=0, data=None, stream=b"\0\0\0\0")
    @example(index=3, data=None, stream=b"GET / HTTP/1.1\r\n\r\n")
    def test_arbitrary_bytes_end_with_protocol_error(
        self, index: int, data: st.DataObject | None, stream: bytes
    ) -> None:
        """
        Arbitrary bytes from the first byte: the connection ends
        ``protocol-error`` (local) by the handshake deadline at the latest --
        or, if the bytes happen to start with a BYE, as that BYE says.
        """
        chunks = [stream] if data is None else data.draw(chunkings(stream))
        clock = MemoryReactorClock()
        node = fuzz_handshake.make_node(index, clock)
        node.startService()
        protocol, transport = fuzz_handshake.connect(node, index, clock)
        for chunk in chunks:
            if not transport.disconnecting:
                protocol.dataReceived(chunk)
        clock.advance(fuzz_handshake.HANDSHAKE_TIMEOUT)
        for _ in range(40):
            clock.advance(0.25)
        record = protocol.record
        self.assertTrue(record.closed, record)
        if len(stream) >= 5 and stream[4] == MessageType.BYE and record.initiator is Initiator.REMOTE:
            return
        self.assertEqual((record.reason, record.initiator), (CloseReason.PROTOCOL_ERROR, Initiator.LOCAL))
        self.assertIsNone(record.peer_id)

    @PROPERTY_SETTINGS
    @given(
        index=nodes,
        flags=st.integers(min_value=0, max_value=3),
        chunk=st.integers(min_value=0, max_value=32),
        step=st.integers(min_value=0, max_value=30),
        stream=st.binary(max_size=512),
    )
    def test_after_a_valid_hello_nothing_escapes(
        self, index: int, flags: int, chunk: int, step: int, stream: bytes
    ) -> None:
        """
        With or without a valid HELLO first, arbitrary bytes, chunking and
        clock steps: no failure is logged, the connection ends by keepalive
        at the latest, netmodels' own reasons are ``protocol-error`` or
        ``timeout``, and stopping the node leaves no delayed call.
        """
        fuzz_handshake.test_one_input(bytes([index, flags, chunk, step]) + stream)
