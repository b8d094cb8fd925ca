"""The built-in topologies and applications, found like any third party's."""

from netmodels.application import EchoApplication, application_plugin
from netmodels.callback import Callback, InboxApplication
from netmodels.many_to_one import ChatApplication, ManyToOne
from netmodels.p2p import BroadcastApplication, PeerToPeer
from netmodels.topology import ClientServer

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
)

chat = application_plugin(
    "chat",
    "many-to-one: the server relays each client's line to the others; clients say hello every --interval s",
    ChatApplication,
)

inbox = application_plugin(
    "inbox",
    "callback: a client logs every message delivered to it (POST /deliver/<client> on the server)",
    InboxApplication,
)
