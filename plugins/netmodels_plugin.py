# The twistd dropin (and the mtls: endpoint string): kept small because every
# twistd and trial run imports it.
from twisted.application.service import ServiceMaker

from netmodels.transports.tls import MutualTLSServerParser

netmodels = ServiceMaker(
    "netmodels",
    "netmodels.daemon.tap",
    "Run a netmodels node: client-server, many-to-one, p2p or callback topologies.",
    "netmodels",
)

mtls = MutualTLSServerParser()
