"""
``--listen``/``--connect`` take Twisted endpoint strings, so TLS and UNIX
sockets work with no netmodels code of their own. Real sockets, loopback only.
"""

from __future__ import annotations

import datetime
import os
import socket
import tempfile

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from netmodels.core.connection import ConnectionState
from netmodels.core.frames import Hello, encode_hello
from netmodels.core.keepalive import KeepaliveSettings
from netmodels.core.reasons import CloseReason
from netmodels.runtime.node import Node, NodeConfig
from netmodels.topologies.client_server import ClientServer, EchoApplication
from netmodels.transports.tcp import _ErrnoRecordingSocket

KEEPALIVE = KeepaliveSettings(5, 5, 3)


def write_self_signed_certificate(directory: str) -> tuple[str, str]:
    """
    A key and a certificate for ``localhost`` (with a subjectAltName, as
    verification needs). The certificate is alone in ``directory``, which is
    then fit to be a ``trustRoots`` folder; the key goes next to it.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_path = os.path.join(os.path.dirname(directory), "key.pem")
    certificate_path = os.path.join(directory, "cert.pem")
    with open(key_path, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    with open(certificate_path, "wb") as f:
        f.write(certificate.public_bytes(serialization.Encoding.PEM))
    return key_path, certificate_path


class EndpointStringTests(TestCase):
    timeout = 20

    def run_pair(self, listen: str, connect_for: object) -> defer.Deferred[tuple[Node, Node]]:
        server_config = NodeConfig(role="server", listen=(listen,), node_id="server", keepalive=KEEPALIVE)
        server = Node(server_config, ClientServer(), EchoApplication(server_config), reactor)
        ClientServer().build(server)
        server.startService()
        self.addCleanup(server.stopService)
        connect = connect_for(server)  # type: ignore[operator]
        client_config = NodeConfig(
            role="client", connect=(connect,), node_id="client", keepalive=KEEPALIVE, interval=0
        )
        client = Node(client_config, ClientServer(), EchoApplication(client_config), reactor)
        ClientServer().build(client)
        ready: defer.Deferred[tuple[Node, Node]] = defer.Deferred()
        client.manager.subscribe(
            lambda event, subject: event == "ready" and not ready.called and ready.callback((server, client))
        )
        client.startService()
        self.addCleanup(client.stopService)
        return ready

    @defer.inlineCallbacks
    def assert_round_trip_then_clean_close(self, server: Node, client: Node, transport: str):  # type: ignore[no-untyped-def]
        [peer] = client.peers()
        reply = yield peer.request(b"over " + transport.encode())
        self.assertEqual(reply, b"over " + transport.encode())
        closed: defer.Deferred[None] = defer.Deferred()
        server.manager.subscribe(lambda event, subject: event == "closed" and closed.callback(None))
        peer.close()
        yield closed
        [record] = [r for r in server.manager.records() if r.state is ConnectionState.CLOSED]
        self.assertEqual((record.reason, record.peer_id), (CloseReason.CLEAN, "client"))

    @defer.inlineCallbacks
    def test_tls(self):  # type: ignore[no-untyped-def]
        """ssl: to listen and tls: to connect, with the certificate verified for localhost."""
        directory = os.path.join(tempfile.mkdtemp(), "trust")
        os.mkdir(directory)
        key, certificate = write_self_signed_certificate(directory)
        listen = f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={certificate}"
        server, client = yield self.run_pair(
            listen,
            lambda server: f"tls:localhost:{server.listeners[0].port.getHost().port}:trustRoots={directory}",
        )
        [peer] = client.peers()
        self.assertEqual(peer.record.transport, "tcp")
        # TLS bytes must go through TLS: no sending around its buffer.
        self.assertIsNone(peer.transport._direct)
        yield self.assert_round_trip_then_clean_close(server, client, "tls")

    @defer.inlineCallbacks
    def test_plain_tcp_sends_at_once(self):  # type: ignore[no-untyped-def]
        """
        On plain TCP with Twisted's buffer empty, a message goes to the socket
        at once instead of waiting for the next reactor pass. This relies on
        tcp.Connection's buffer attributes: the test pins them on the Twisted
        installed.
        """
        server, client = yield self.run_pair(
            "tcp:0:interface=127.0.0.1",
            lambda server: f"tcp:127.0.0.1:{server.listeners[0].port.getHost().port}",
        )
        [peer] = client.peers()
        tcp_transport = peer.transport.transport
        self.assertIsNotNone(peer.transport._direct)
        sent_before = peer.record.bytes_out
        peer.send(b"straight out")
        self.assertEqual((tcp_transport._tempDataLen, tcp_transport.dataBuffer), (0, b""))
        self.assertEqual(peer.record.bytes_out - sent_before, 4 + 1 + len(b"straight out"))
        yield self.assert_round_trip_then_clean_close(server, client, "tcp")

    @defer.inlineCallbacks
    def test_accepted_tcp_connections_are_named_and_watched(self):  # type: ignore[no-untyped-def]
        """
        Each connection a TCP listener accepts is named after the address it
        came from, and its socket is watched for errnos and sent on at once.
        The first connection of a transport type is checked; later ones are
        known to be alike and skip the checks, which must come to the same.
        """
        server, client = yield self.run_pair(
            "tcp:0:interface=127.0.0.1",
            lambda server: f"tcp:127.0.0.1:{server.listeners[0].port.getHost().port}",
        )
        port = server.listeners[0].port.getHost().port
        ready: defer.Deferred[None] = defer.Deferred()
        server.manager.subscribe(
            lambda event, subject: event == "ready" and len(server.peers()) == 3 and ready.callback(None)
        )
        others = []
        for _ in range(2):
            sock = socket.create_connection(("127.0.0.1", port))
            self.addCleanup(sock.close)
            sock.sendall(
                encode_hello(
                    Hello(node_id="plain", topology="client-server", role="client", keepalive=KEEPALIVE)
                )
            )
            others.append(sock)
        yield ready
        clients = {f"127.0.0.1:{sock.getsockname()[1]}" for sock in others}
        clients.add(f"127.0.0.1:{client.peers()[0].transport.transport.getHost().port}")
        accepted = [peer.transport for peer in server.peers()]
        self.assertEqual({connection.record.peer for connection in accepted}, clients)
        for connection in accepted:
            self.assertEqual((connection.record.transport, connection.host), ("tcp", "127.0.0.1"))
            self.assertIsInstance(connection.transport.socket, _ErrnoRecordingSocket)
            self.assertIs(connection._direct, connection.transport.socket._socket)

    @defer.inlineCallbacks
    def test_unix(self):  # type: ignore[no-untyped-def]
        """unix: sockets work both ways; kernel TCP options are skipped, app keepalive still runs."""
        path = os.path.join(tempfile.mkdtemp(), "node.sock")
        server, client = yield self.run_pair(f"unix:{path}", lambda server: f"unix:{path}")
        [peer] = client.peers()
        self.assertEqual(peer.record.transport, "unix")
        self.assertIsNotNone(peer.machine.keepalive)
        yield self.assert_round_trip_then_clean_close(server, client, "unix")
