"""
``--log-format json``: a real ``twistd netmodels`` writes one JSON object per
event, an open and a close with its reason among them; a bad value is a usage
error; the observer writes records as their status JSON.
"""

from __future__ import annotations

import io
import json
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python import usage
from twisted.trial.unittest import TestCase

from netmodels.daemon.logs import JsonLogObserver, log_file
from netmodels.daemon.tap import Options

from ._support import (
    LISTEN_ANY_PORT,
    TIMEOUT,
    listening_port,
    spawn_twistd,
    start_client,
    stop_node,
    unique_id,
)

try:
    import pytest
except ImportError:  # trial does not need pytest
    pytestmark: list[Any] = []
else:
    pytestmark = [pytest.mark.slow]


class JsonLogProcessTests(TestCase):
    timeout = TIMEOUT

    @defer.inlineCallbacks
    def test_open_and_close_are_json_objects(self) -> Any:
        server_id = unique_id("srv")
        server = spawn_twistd(
            self, ["netmodels", "--log-format", "json", "--listen", LISTEN_ANY_PORT, "--node-id", server_id]
        )
        port = yield listening_port(server)
        client = start_client(self, f"tcp:127.0.0.1:{port}")
        yield client.events.wait("ready")
        yield stop_node(client)
        yield server.wait_for(rb'"event": "closed"')
        yield server.terminate()

        lines = server.text.splitlines()
        self.assertTrue(lines)
        events = [json.loads(line) for line in lines]
        manager = [event for event in events if event.get("log_namespace") == "netmodels.manager"]
        opened = [event for event in manager if event.get("event") == "opened"]
        closed = [event for event in manager if event.get("event") == "closed"]
        self.assertEqual(len(opened), 1, manager)
        self.assertEqual(len(closed), 1, manager)
        self.assertEqual(opened[0]["node"], server_id)
        self.assertEqual(opened[0]["direction"], "inbound")
        self.assertEqual((closed[0]["reason"], closed[0]["initiator"]), ("clean", "remote"))
        self.assertEqual(closed[0]["record"]["reason"], "clean")
        self.assertEqual(closed[0]["record"]["peer_id"], client.node.config.node_id)
        self.assertIn("closed: clean (remote)", closed[0]["message"])
        self.assertEqual(closed[0]["log_level"]["name"], "info")


class JsonLogObserverTests(TestCase):
    def test_record_is_its_status_json(self) -> None:
        class Record:
            def as_dict(self) -> dict[str, Any]:
                return {"id": 7, "reason": "timeout"}

        out = io.StringIO()
        log = Logger(namespace="netmodels.test", observer=JsonLogObserver(out))
        log.info("connection {id} closed: {reason}", id=7, reason="timeout", record=Record())
        (line,) = out.getvalue().splitlines()
        event = json.loads(line)
        self.assertEqual(event["record"], {"id": 7, "reason": "timeout"})
        self.assertEqual(event["message"], "connection 7 closed: timeout")
        self.assertEqual(event["log_namespace"], "netmodels.test")

    def test_log_file_follows_twistd_options(self) -> None:
        import sys

        self.assertIs(log_file({"logfile": "-", "nodaemon": True}), sys.stdout)
        self.assertIs(log_file({"logfile": None, "nodaemon": True}), sys.stdout)
        self.assertIs(log_file(None), sys.stdout)


class LogFormatOptionTests(TestCase):
    def test_bad_value_names_the_option(self) -> None:
        error = self.assertRaises(usage.UsageError, Options().parseOptions, ["--log-format", "xml"])
        self.assertEqual(str(error), "--log-format: expected text or json, not 'xml'")

    def test_default_is_text(self) -> None:
        options = Options()
        options.parseOptions(["--listen", LISTEN_ANY_PORT])
        self.assertEqual(options["log-format"], "text")
