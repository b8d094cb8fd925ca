"""
The operator CLI, ``netmodels``: a client of a node's status endpoint.

``netmodels status|connections|members|reset|close|deliver|monitor URL``,
tables for people and ``--json`` for scripts. It speaks HTTP to the
endpoint ``--status`` serves and imports nothing of the node's runtime.
"""
