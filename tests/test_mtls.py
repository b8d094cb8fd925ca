"""
Mutual TLS on real loopback sockets: the ``mtls:`` server endpoint requires a
client certificate signed by its ``caCerts``; Twisted's ``tls:`` client
endpoint presents one. Certificates are made per test run with ``cryptography``.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import tempfile
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import defer
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from netmodels.daemon.tap import Options

from ._support import LOOPBACK, make_config, ready_pair, start_client, start_node


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(
    subject: str, key: Any, issuer: str, issuer_key: Any, ca: bool = False, server: bool = False
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(LOOPBACK))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


class Certificates:
    """A CA, a server and a client certificate it signed, and a client certificate another CA signed."""

    def __init__(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="netmodels-mtls-")
        ca_key, other_ca_key = (
            ec.generate_private_key(ec.SECP256R1()),
            ec.generate_private_key(ec.SECP256R1()),
        )
        ca = _certificate("netmodels test CA", ca_key, "netmodels test CA", ca_key, ca=True)
        self.trust = os.path.join(self.directory, "trust")
        os.mkdir(self.trust)
        self.ca = self._write(os.path.join("trust", "ca.pem"), ca)
        for name, issuer, issuer_key, server in (
            ("server", "netmodels test CA", ca_key, True),
            ("client", "netmodels test CA", ca_key, False),
            ("rogue", "another CA", other_ca_key, False),
        ):
            key = ec.generate_private_key(ec.SECP256R1())
            self._write(f"{name}.pem", _certificate(name, key, issuer, issuer_key, server=server))
            with open(self.path(f"{name}.key"), "wb") as file:
                file.write(
                    key.private_bytes(
                        serialization.Encoding.PEM,
                        serialization.PrivateFormat.PKCS8,
                        serialization.NoEncryption(),
                    )
                )

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def _write(self, name: str, certificate: x509.Certificate) -> str:
        path = self.path(name)
        with open(path, "wb") as file:
            file.write(certificate.public_bytes(serialization.Encoding.PEM))
        return path

    def listen(self) -> str:
        return (
            f"mtls:0:interface={LOOPBACK}:privateKey={self.path('server.key')}:certKey={self.path('server.pem')}"
            f":caCerts={self.ca}"
        )

    def dial(self, port: int, client: str | None) -> str:
        endpoint = f"tls:{LOOPBACK}:{port}:trustRoots={self.trust}"
        if client is not None:
            endpoint += f":certificate={self.path(client + '.pem')}:privateKey={self.path(client + '.key')}"
        return endpoint


CERTIFICATES = Certificates()


class MutualTLSTests(TestCase):
    timeout = 30

    def start(self, client: str | None) -> tuple[Any, Any]:
        server = start_node(self, make_config("server", listen=(CERTIFICATES.listen(),)))
        dialer = start_client(self, CERTIFICATES.dial(server.port, client))
        return server, dialer

    @defer.inlineCallbacks
    def test_a_client_certificate_of_the_ca_is_accepted(self) -> Any:
        server, client = self.start("client")
        _, on_client = yield ready_pair(server, client)
        answer = yield on_client.session.request(b"over mutual TLS")
        self.assertEqual(answer, b"over mutual TLS")

    @defer.inlineCallbacks
    def check_refused(self, client: str | None) -> Any:
        server, dialer = self.start(client)
        closed = yield dialer.events.wait("closed")
        record = closed.record
        self.assertEqual((record.reason, record.fatal), ("rejected", True), record.detail)
        self.assertTrue(record.detail.startswith("TLS: authentication failed: "), record.detail)
        on_server = yield server.events.wait("closed")
        self.assertEqual(on_server.record.reason, "rejected", on_server.record.detail)
        self.assertEqual(on_server.record.peer_id, None)

    def test_no_client_certificate_is_rejected(self) -> Any:
        return self.check_refused(None)

    def test_a_certificate_of_another_ca_is_rejected(self) -> Any:
        return self.check_refused("rogue")


class MutualTLSOptionTests(SynchronousTestCase):
    def test_errors_name_the_option(self) -> None:
        cases = [
            (f"mtls:0:privateKey={CERTIFICATES.path('server.key')}", "mtls: needs caCerts=FILE"),
            (f"mtls:0:privateKey=/nonexistent.key:caCerts={CERTIFICATES.ca}", "privateKey=/nonexistent.key"),
            ("mtls:70000:caCerts=x", "port '70000' is not a number from 0 to 65535"),
        ]
        for endpoint, message in cases:
            error = self.assertRaises(usage.UsageError, Options().parseOptions, ["--listen", endpoint])
            self.assertTrue(str(error).startswith(f"--listen: bad endpoint {endpoint!r}: "), str(error))
            self.assertIn(message, str(error))
