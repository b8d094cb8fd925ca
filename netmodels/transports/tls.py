"""
Mutual TLS: the ``mtls:`` server endpoint string, which requires and checks client certificates.

Twisted's ``ssl:`` server endpoint presents a certificate but never asks the
client for one. ``mtls:`` takes the same fields plus ``caCerts``, a PEM file
of the certificate authorities whose client certificates are accepted::

    mtls:8750:privateKey=server.key:certKey=server.pem:caCerts=clients-ca.pem:interface=0.0.0.0

Clients dial with Twisted's own ``tls:`` endpoint, giving their certificate::

    tls:server.example:8750:trustRoots=ca-dir:certificate=client.pem:privateKey=client.key

A client without a certificate, or with one no listed authority signed, is
refused in the TLS handshake; netmodels records it as ``rejected`` (fatal)
on both sides (see :mod:`netmodels.runtime.classify`).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IStreamServerEndpoint, IStreamServerEndpointStringParser
from twisted.plugin import IPlugin
from zope.interface import implementer

__all__ = ["MutualTLSServerParser", "mutual_tls_options"]


def _read(field: str, path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as e:
        raise ValueError(f"{field}={path}: {e.strerror or e}") from None


def mutual_tls_options(private_key: str, certificate: str, ca_certs: str) -> Any:
    """
    ``CertificateOptions`` that present ``certificate`` and require a client
    certificate signed by one of the authorities in ``ca_certs``.
    """
    from twisted.internet import ssl

    key_pem = _read("privateKey", private_key)
    try:
        server = ssl.PrivateCertificate.loadPEM(_read("certKey", certificate) + b"\n" + key_pem)
    except Exception as e:
        raise ValueError(
            f"certKey={certificate}, privateKey={private_key}: not a PEM certificate and key: {e}"
        ) from None
    pem = _read("caCerts", ca_certs)
    marker = b"-----BEGIN CERTIFICATE-----"
    blocks = [marker + block for block in pem.split(marker)[1:]]
    if not blocks:
        raise ValueError(f"caCerts={ca_certs}: no PEM certificate in it")
    try:
        authorities = [ssl.Certificate.loadPEM(block) for block in blocks]
    except Exception as e:
        raise ValueError(f"caCerts={ca_certs}: {e}") from None
    return ssl.CertificateOptions(
        privateKey=server.privateKey.original,
        certificate=server.original,
        trustRoot=ssl.trustRootFromCertificates(authorities),
    )


@implementer(IPlugin, IStreamServerEndpointStringParser)
class MutualTLSServerParser:
    """The ``mtls:`` server endpoint string (found by Twisted through the plugin dropin)."""

    prefix = "mtls"

    def parseStreamServer(self, reactor: Any, *args: object, **kwargs: object) -> IStreamServerEndpoint:
        return _mutual_tls_endpoint(
            reactor, *map(str, args), **{key: str(value) for key, value in kwargs.items()}
        )


def _mutual_tls_endpoint(
    reactor: Any,
    port: str,
    privateKey: str = "server.key",
    certKey: str | None = None,
    caCerts: str | None = None,
    interface: str = "",
    backlog: str = "50",
) -> IStreamServerEndpoint:
    from twisted.internet.endpoints import SSL4ServerEndpoint

    if caCerts is None:
        raise ValueError("mtls: needs caCerts=FILE, the authorities whose client certificates are accepted")
    options = mutual_tls_options(privateKey, certKey or privateKey, caCerts)
    return SSL4ServerEndpoint(reactor, int(port), options, backlog=int(backlog), interface=interface)
