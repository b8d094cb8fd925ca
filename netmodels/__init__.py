"""
netmodels: network topologies on Twisted.

Pick a topology (client-server, many-to-one, p2p, callback) and a transport by
configuration, write the application as a small class, and get framing with
hard limits, Linux-style keepalive and a connection manager that records why
every connection ended.
"""

__version__ = "0.1.0"
