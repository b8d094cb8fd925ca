"""
The Twisted runtime, with the reactor injected: interfaces, the session
adapter, the connection manager, reconnecting, timers and the node.
"""
