# The twistd dropin: kept to one line of substance because every twistd and
# trial run imports it.
from twisted.application.service import ServiceMaker

netmodels = ServiceMaker(
    "netmodels",
    "netmodels.daemon.tap",
    "Run a netmodels node: client-server, many-to-one, p2p or callback topologies.",
    "netmodels",
)
