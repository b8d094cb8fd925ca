"""
Keepalive arithmetic: a dead peer is found at most idle + interval x probes
seconds after the last thing it sent.

Prints the bound for each netmodels preset, then replays the Linux defaults
(7200, 75, 9) on a fake clock with netmodels' keepalive decision core: when
each probe goes out and when the peer is declared dead. A second timeline
shows that any answer puts the connection back to idle.

Run: python docs/examples/keepalive_arithmetic.py   (instant: the clock is fake)
"""

from twisted.internet.task import Clock

from netmodels.core.keepalive import KeepaliveAction, KeepaliveSettings, KeepaliveTracker, describe_duration

print("the bound for each preset:")
for name in ("linux", "default", "fast"):
    settings = KeepaliveSettings.parse(name)
    print(f"  {name:8} {settings.idle:g},{settings.interval:g},{settings.probes}: {settings.describe()}")
linux = KeepaliveSettings.parse("linux")
print(f"  7200 + 75 x 9 = {7200 + 75 * 9} s = {describe_duration(linux.worst_case)}")
print(f"  --keepalive 10,5,3: {KeepaliveSettings.parse('10,5,3').describe()}")


def timeline(settings, answer_at=None):
    """Run the tracker on a fake clock; the peer sends nothing after t=0 (except at ``answer_at``)."""
    clock = Clock()
    tracker = KeepaliveTracker(settings, clock.seconds())
    while True:
        step = tracker.next_deadline - clock.seconds()
        if answer_at is not None and clock.seconds() < answer_at <= tracker.next_deadline:
            clock.advance(answer_at - clock.seconds())
            tracker.traffic(clock.seconds())
            print(f"  t = {clock.seconds():6g} s  the peer answers: it is alive")
            answer_at = None
            continue
        clock.advance(step)
        action = tracker.due(clock.seconds())
        if action is KeepaliveAction.PROBE:
            print(
                f"  t = {clock.seconds():6g} s  PROBE {tracker.probes_unanswered} "
                f"(silent for {describe_duration(clock.seconds() - tracker.last_received)})"
            )
        elif action is KeepaliveAction.DEAD:
            print(
                f"  t = {clock.seconds():6g} s  DEAD after {settings.probes} unanswered probes: "
                f"{describe_duration(clock.seconds() - tracker.last_received)} after the last traffic"
            )
            return clock.seconds()


print()
print("Linux defaults, a peer that vanished at t = 0:")
dead_at = timeline(linux)
assert dead_at == 7200 + 75 * 9 == linux.worst_case

print()
print("--keepalive 10,5,3, the peer answers the second probe, then vanishes for good:")
timeline(KeepaliveSettings(10, 5, 3), answer_at=17)
