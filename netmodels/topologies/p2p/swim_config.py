"""
SWIM's timing and sizes (:mod:`.swim`), with why each default is what it is.
"""

from __future__ import annotations

from attrs import frozen

__all__ = ["SwimConfig"]


@frozen
class SwimConfig:
    """The protocol's timing and sizes; defaults as memberlist's LAN profile but one."""

    protocol_period: float = 1.0
    probe_timeout: float = 0.5
    indirect_probes: int = 3
    #: The shortest suspicion lasts this many periods times log10(n) (Lifeguard's
    #: alpha). 2.5, not memberlist's 4: in simulation (benchmarks/p2p_scale.py)
    #: 1,000 nodes then see a crash within 15 s, and 5 % loss with 2 s stalls
    #: still kills nobody.
    suspicion_mult: float = 2.5
    #: ... but never shorter than this many periods: in a small cluster a
    #: member stalled for a couple of seconds (a GC pause, SIGSTOP) must have
    #: time to hear of its suspicion and refute it. From 100 members up
    #: (2.5 x log10(100) = 5) it changes nothing.
    suspicion_floor: float = 5.0
    #: The longest (no confirmation) lasts this many times the shortest (beta).
    suspicion_max_mult: float = 6.0
    #: Independent accusations besides the first that bring a suspicion down to
    #: the shortest (K; memberlist: its multiplier - 2).
    suspicion_confirmations: int = 1
    retransmit_mult: int = 4
    gossip_interval: float = 0.2
    gossip_fanout: int = 3
    #: Push-pull interval at up to 32 members; it grows with log2(n) beyond.
    push_pull_interval: float = 30.0
    awareness_max: int = 8
    #: Seeds and dead members are re-contacted this often (and seeds every
    #: ``join_retry`` doubling to this, until the first answer).
    rejoin_interval: float = 30.0
    join_retry: float = 1.0
    dead_retention: float = 3600.0
    #: No packet is larger.
    max_packet: int = 1400
