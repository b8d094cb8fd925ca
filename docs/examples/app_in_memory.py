"""
Testing an application without sockets or real time: netmodels.testing.

Two netmodels sessions (a server running the application under test and a
client) talk over netmodels.testing.MemoryNetwork, driven by a fake clock.
The script sends requests, then injects faults: an RST from the client, and
a blackholed link on which the server's keepalive must declare the client
dead within its bound. Everything is deterministic and instant, which is what
you want in a unit test (use the same calls in a trial or pytest test).

Run: python docs/examples/app_in_memory.py   (instant)
"""

from twisted.internet.task import Clock

from netmodels.core.frames import DEFAULT_MAX_FRAME, Hello
from netmodels.core.keepalive import KeepaliveSettings
from netmodels.runtime.application import Application
from netmodels.runtime.manager import ConnectionManager
from netmodels.runtime.session import RemoteError, SessionFactory, SessionSettings
from netmodels.testing import MemoryNetwork

KEEPALIVE = KeepaliveSettings(15, 10, 3)  # bound: 45 s


class Upper(Application):
    """The application under test."""

    def request_received(self, peer, payload):
        if not payload:
            raise ValueError("empty request")
        return payload.upper()


def session_factory(node_id, role, application, clock):
    hello = Hello(node_id=node_id, topology="client-server", role=role, keepalive=KEEPALIVE)
    settings = SessionSettings(hello, KEEPALIVE, application, DEFAULT_MAX_FRAME)
    return SessionFactory(settings, clock)


def connect(network, clock, server_manager, client_manager):
    """Dial the server; return the client's session once the handshake is done."""
    connected = []
    client = session_factory("client", "client", Application(), clock)
    client_manager.connect(network.client_endpoint("server:8750"), client, "server:8750").addCallback(
        connected.append
    )
    clock.advance(0)  # deliver the two HELLOs
    return connected[0].wrappedProtocol


clock = Clock()
network = MemoryNetwork(clock)
server_manager = ConnectionManager(clock, name="server")
client_manager = ConnectionManager(clock, name="client")
server = server_manager.wrap_factory(session_factory("server", "server", Upper(), clock))
network.server_endpoint("server:8750").listen(server)

session = connect(network, clock, server_manager, client_manager)
print(f"handshake done: the client's peer is {session.node_id!r}, role {session.role!r}")

results = []


def refused(failure):
    failure.trap(RemoteError)  # the server's handler raised: an ERROR frame came back
    results.append(f"RemoteError: {failure.value}")


session.request(b"hello").addCallback(results.append)
session.request(b"").addErrback(refused)  # (the server also logs the handler's traceback)
clock.advance(0)
print("answers:", results)

print("fault 1: the client resets the connection")
network.links[-1].reset(from_side=0)
for manager in (client_manager, server_manager):
    record = manager.history[-1]
    print(f"  {manager.name}: {record.reason} ({record.initiator}, {record.errno})")

print("fault 2: a new connection, then the link goes silent (blackhole)")
session = connect(network, clock, server_manager, client_manager)
network.links[-1].blackhole()
start = clock.seconds()
while server_manager.live:
    clock.advance(0.5)
record = server_manager.history[-1]
print(f"  server: {record.reason} after {clock.seconds() - start:g} s (bound {KEEPALIVE.worst_case:g} s)")
print(f"  detail: {record.detail}")
