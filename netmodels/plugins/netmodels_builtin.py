"""The built-in topologies and applications, found like any third party's."""

from netmodels.application import EchoApplication, application_plugin
from netmodels.topology import ClientServer

client_server = ClientServer()

echo = application_plugin(
    "echo",
    "answers each request with its own bytes; clients send one every --interval seconds",
    EchoApplication,
)
