"""
An example netmodels application plugin: ``--app shout``.

Servers answer each request with the same words in capitals; every other role
sends a request every ``--interval`` seconds to each ready peer and logs the
answer. Every fourth request is empty, which the server refuses, so the
client also shows how an ERROR comes back.

Put the folder that holds ``netmodels/plugins/`` on ``PYTHONPATH`` (or ship
this file in your own package as ``netmodels/plugins/shout.py``) and::

    twistd netmodels --list-apps
    twistd -n netmodels --app shout --role server --listen tcp:8750
    twistd -n netmodels --app shout --role client --connect tcp:127.0.0.1:8750
"""

from __future__ import annotations

import itertools

from twisted.internet.task import deferLater
from twisted.logger import Logger

from netmodels.runtime.application import Application, application_plugin
from netmodels.runtime.session import RemoteError

WORDS = [b"hello", b"slow down", b"netmodels", b""]


class Shout(Application):
    log = Logger()

    def __init__(self, config):
        # Called once per node with its NodeConfig (the parsed command line).
        self.role = config.role
        self.interval = config.interval
        self.words = itertools.cycle(WORDS)

    # Lifecycle

    def start(self, node):
        super().start(node)  # keeps ``self.node``: node.peers(), node.clock, node.config
        if self.role != "server":
            # On the node's clock (so tests can use a Clock); the base class's
            # stop() stops it. An interval of 0 means never.
            self.repeat(self.interval, self.speak)

    # Peers

    def peer_ready(self, peer):
        self.log.info(
            "{peer} ({role}) is ready on connection {id}",
            peer=peer.node_id,
            role=peer.role,
            id=peer.connection_id,
        )

    def peer_lost(self, peer, record):
        self.log.info(
            "lost {peer}: {reason} ({initiator}){detail}",
            peer=peer.node_id,
            reason=record.reason,
            initiator=record.initiator,
            detail=f": {record.detail}" if record.detail else "",
        )

    # Messages

    def request_received(self, peer, payload):
        if not payload:
            raise ValueError("nothing to shout")  # the requester gets an ERROR with this text
        answer = payload.upper() + b"!"
        if payload.startswith(b"slow"):
            # A Deferred answer: the response goes out when it fires.
            return deferLater(self.node.clock, 0.2, lambda: answer)
        return answer

    def message_received(self, peer, payload):
        self.log.info("{peer} says {text!r}", peer=peer.node_id, text=payload.decode("utf-8", "replace"))

    # Our own traffic

    def speak(self):
        for peer in self.node.peers():
            word = next(self.words)
            peer.request(word, timeout=5).addCallbacks(
                lambda reply, p=peer, w=word: self.log.info(
                    "{peer} answered {word!r} with {reply!r}", peer=p.node_id, word=w, reply=reply
                ),
                lambda failure, p=peer, w=word: self.log.warn(
                    "{peer} refused {word!r}: {error}",
                    peer=p.node_id,
                    word=w,
                    error=failure.getErrorMessage() if failure.check(RemoteError) else failure,
                ),
            )


# The plugin: a module-level object; --app picks it by its name.
shout = application_plugin(
    "shout",
    "answers requests in capitals; other roles send one every --interval seconds (example plugin)",
    Shout,
)
