"""
The fault lab: real processes in network namespaces, real faults on the wire.

``netlab`` builds the network (hosts as namespaces joined by a bridge) and
injects faults; ``scenarios`` runs each fault against netmodels nodes and
classifies what they recorded; ``test_faults_*`` asserts it; ``matrix``
regenerates the results table of ``docs/fault-lab.rst``.
"""
