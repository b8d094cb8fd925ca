"""The built-in topologies and applications, found like any third party's."""

from netmodels.runtime.application import application_plugin
from netmodels.topologies.callback.inbox import InboxApplication
from netmodels.topologies.callback.topology import Callback
from netmodels.topologies.client_server import ClientServer, EchoApplication
from netmodels.topologies.many_to_one.chat import ChatApplication
from netmodels.topologies.many_to_one.topology import ManyToOne
from netmodels.topologies.p2p.topology import BroadcastApplication, PeerToPeer

client_server = ClientServer()
p2p = PeerToPeer()
many_to_one = ManyToOne()
callback = Callback()

echo = application_plugin(
    "echo",
    "answers each request with its own bytes; clients send one every --interval seconds",
    EchoApplication,
)

broadcast = application_plugin(
    "broadcast",
    "p2p: floods a line to the mesh every --interval seconds and logs what it receives",
    BroadcastApplication,
    topologies=("p2p",),
)

chat = application_plugin(
    "chat",
    "many-to-one: the server relays each client's line to the others; clients say hello every --interval s",
    ChatApplication,
    topologies=("many-to-one",),
)

inbox = application_plugin(
    "inbox",
    "callback: a client logs every message delivered to it (POST /deliver/<client> on the server)",
    InboxApplication,
    topologies=("callback",),
)
