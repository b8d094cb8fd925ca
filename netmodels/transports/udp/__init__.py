"""
Sessions over UDP, as endpoints: what :mod:`netmodels.core.datagram`
computes, wired to Twisted's ``DatagramProtocol``.

Twisted has no datagram endpoints (twisted#4471); these give UDP the shape of
a stream endpoint, so a topology, the connection manager and a
:class:`~netmodels.runtime.session.Session` run on it unchanged:

* :class:`DatagramServerEndpoint` (``udp:PORT[:interface=ADDR]``) listens on
  one socket and demultiplexes sessions by id, after a stateless-cookie
  handshake (:mod:`.listener`);
* :class:`DatagramClientEndpoint` (``udp:HOST:PORT``) dials from a socket of
  its own, connected to the peer, so that ICMP port unreachable is seen
  (``refused``) (:mod:`.dialler`);
* each session is a :class:`DatagramTransport` (:mod:`.transport`): an
  ``ITransport`` whose ``write`` is the reliable channel, and an
  :class:`~netmodels.transports.interfaces.IDatagramTransport` whose
  ``write_unreliable`` sends whole frames a datagram at a time; the session
  layer chooses. ``loseConnection`` is a reliable FIN, ``abortConnection`` a
  RESET.

Use :func:`parse_endpoint` (or :class:`netmodels.runtime.node.Node`, which
calls it for ``udp:`` descriptions).
"""

from netmodels.transports.udp.endpoints import (
    DatagramClientEndpoint,
    DatagramServerEndpoint,
    is_datagram,
    parse_endpoint,
)
from netmodels.transports.udp.listener import DatagramListeningPort
from netmodels.transports.udp.options import DatagramOptions
from netmodels.transports.udp.transport import DatagramTransport

__all__ = [
    "DatagramClientEndpoint",
    "DatagramListeningPort",
    "DatagramOptions",
    "DatagramServerEndpoint",
    "DatagramTransport",
    "is_datagram",
    "parse_endpoint",
]
