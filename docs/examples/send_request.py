"""
Many requests in flight, answered through callables: Session.send_request.

request() returns a Deferred per request; send_request() takes the two
callables a Deferred would call. Same correlation ids, same deadline, same
errors (RequestTimeout, RemoteError, PeerClosed), and no Deferred: for a
client keeping many requests in flight, that is a good part of its work per
request. Two sessions over netmodels.testing.MemoryNetwork, on a fake clock.

Run: python docs/examples/send_request.py   (instant)
"""

from functools import partial

from twisted.internet.task import Clock

from netmodels.core.frames import DEFAULT_MAX_FRAME, Hello
from netmodels.core.keepalive import KeepaliveSettings
from netmodels.runtime.application import Application
from netmodels.runtime.manager import ConnectionManager
from netmodels.runtime.session import SessionFactory, SessionSettings
from netmodels.testing import MemoryNetwork

KEEPALIVE = KeepaliveSettings(15, 10, 3)


class Square(Application):
    """Answers a number with its square; refuses what is not a number."""

    def request_received(self, peer, payload):
        return str(int(payload) ** 2).encode()


def session_factory(node_id, role, application, clock):
    hello = Hello(node_id=node_id, topology="client-server", role=role, keepalive=KEEPALIVE)
    return SessionFactory(SessionSettings(hello, KEEPALIVE, application, DEFAULT_MAX_FRAME), clock)


clock = Clock()
network = MemoryNetwork(clock)
server = ConnectionManager(clock, name="server").wrap_factory(
    session_factory("server", "server", Square(), clock)
)
network.server_endpoint("server:8750").listen(server)
connected = []
client = session_factory("client", "client", Application(), clock)
ConnectionManager(clock, name="client").connect(
    network.client_endpoint("server:8750"), client, "server:8750"
).addCallback(connected.append)
clock.advance(0)  # the two HELLOs
session = connected[0].wrappedProtocol

answers = {}


def answered(number, response):
    answers[number] = int(response)


def failed(number, error):
    answers[number] = f"{type(error).__name__}: {error}"


# Sixteen requests in flight at once, each with its own pair of callables.
for number in [*range(15), "fifteen"]:
    session.send_request(str(number).encode(), partial(answered, number), partial(failed, number))
print("answered before the network ran:", answers)  # nothing is called from within send_request
clock.advance(0)
print("answers:", answers)
