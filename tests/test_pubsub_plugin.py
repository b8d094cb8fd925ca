"""
The topology contract, proved from outside: ``docs/examples/pubsub-topology`` is a
separate package that touches nothing in ``netmodels/``.

- Its sans-IO parts (messages, subscriptions, settings) are imported from the
  example's source folder and tested in-process.
- The package is installed with pip into a temporary directory (the dev venv is
  left alone) and run as real ``twistd -n netmodels --topology pubsub`` processes
  with that directory on ``PYTHONPATH``: a broker, a subscriber and a publisher,
  over TCP and over UDP, watched through ``GET /status``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer, reactor, threads
from twisted.python import usage
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

# Imported before the example's folder is on sys.path: netmodels.plugins computes its
# search path on import, and the in-process tests must not pick up the example's plugins.
import netmodels.plugins  # noqa: F401
from netmodels.core.frames import MalformedMessage, encode_frame

from ._support import (
    TIMEOUT,
    ChildProcess,
    RecordedLink,
    bye_bodies,
    connect_raw,
    raw_hello,
    status_port,
    temp_dir,
    twistd_command,
    unique_id,
)

try:
    import pytest
except ImportError:  # trial does not need pytest
    pytestmark: list[Any] = []
else:
    pytestmark = [pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "docs" / "examples" / "pubsub-topology"

sys.path.insert(0, str(EXAMPLE))
try:
    from netmodels_pubsub import wire
    from netmodels_pubsub.options import PubSubOptions, PubSubSettings, parse_settings
    from netmodels_pubsub.state import Inbox, Subscriptions, TooManySubscriptions
    from netmodels_pubsub.topology import Broker
finally:
    # The package keeps its own __path__; nothing else should see the example folder.
    sys.path.remove(str(EXAMPLE))

LOOPBACK_ANY = "tcp:0:interface=127.0.0.1"


def body_of(frame: bytes, code: int) -> bytes:
    """The body of one encoded frame, checking its length and type."""
    assert int.from_bytes(frame[:4], "big") == len(frame) - 4, frame
    assert frame[4] == code, (frame[4], code)
    return frame[5:]


# --- sans-IO ------------------------------------------------------------------------------


class WireTests(SynchronousTestCase):
    def test_round_trips(self) -> None:
        subscribe = body_of(wire.encode_subscribe("news/sport"), wire.SUBSCRIBE)
        self.assertEqual(wire.decode_subscribe(subscribe), "news/sport")
        publish = body_of(wire.encode_publish("météo", b"sunny\x00"), wire.PUBLISH)
        self.assertEqual(wire.decode_publish(publish), wire.Publish("météo", b"sunny\x00"))
        forward = body_of(wire.encode_forward("pub-1", "t", b""), wire.FORWARD)
        self.assertEqual(wire.decode_forward(forward), wire.Forward("pub-1", "t", b""))

    def test_codes_are_outside_the_reserved_range(self) -> None:
        """0x00-0x1F belong to netmodels; the example's codes are distinct and from 0x40."""
        codes = list(wire.MESSAGE_TYPES.values())
        self.assertEqual(len(set(codes)), len(codes))
        self.assertTrue(all(0x40 <= code <= 0xFF for code in codes), codes)

    def test_topic_limits(self) -> None:
        """128 bytes of UTF-8 is the longest topic, counted in bytes, not characters."""
        wire.check_topic("x" * wire.MAX_TOPIC)
        wire.check_topic("é" * (wire.MAX_TOPIC // 2))
        for bad in ("", "x" * (wire.MAX_TOPIC + 1), "é" * (wire.MAX_TOPIC // 2 + 1), "a\nb", "a\x00"):
            self.assertRaises(ValueError, wire.check_topic, bad)
            self.assertRaises(ValueError, wire.encode_subscribe, bad)

    MALFORMED = [
        (wire.decode_subscribe, b"", "ends before its length"),
        (wire.decode_subscribe, b"\x00", "ends before its length"),
        (wire.decode_subscribe, b"\x00\x05ab", "5 bytes announced, 2 left"),
        (wire.decode_subscribe, b"\x00\x00", "1 to 128 bytes"),
        (wire.decode_subscribe, b"\x00\x02a\xff", "not UTF-8"),
        (wire.decode_subscribe, b"\x00\x01ab", "1 bytes after the topic"),
        (wire.decode_subscribe, b"\x00\x02a\n", "control characters"),
        (wire.decode_subscribe, b"\x00\x81" + b"x" * 129, "129 bytes exceeds 128"),
        (wire.decode_publish, b"\x00\x81" + b"x" * 129 + b"payload", "129 bytes exceeds 128"),
        (wire.decode_publish, b"\xff\xff", "65535 bytes exceeds 128"),
        (wire.decode_forward, b"\x00\x00\x00\x01t", "empty publisher"),
        (wire.decode_forward, b"\x00\x01p", "ends before its length"),
    ]

    def test_malformed_bodies(self) -> None:
        """Every defect is a MalformedMessage that says what is wrong."""
        for decode, body, words in self.MALFORMED:
            with self.assertRaises(MalformedMessage, msg=(decode.__name__, body)) as caught:
                decode(body)
            self.assertIn(words, str(caught.exception), (decode.__name__, body))

    @given(st.binary(max_size=300))
    def test_any_bytes_decode_or_are_malformed(self, body: bytes) -> None:
        """Whatever a peer sends, the decoders raise MalformedMessage or nothing."""
        for decode in (wire.decode_subscribe, wire.decode_publish, wire.decode_forward):
            with contextlib.suppress(MalformedMessage):
                decode(body)


class SubscriptionsTests(SynchronousTestCase):
    def test_counts_and_forgets(self) -> None:
        subscriptions = Subscriptions()
        self.assertTrue(subscriptions.subscribe(1, "a"))
        self.assertFalse(subscriptions.subscribe(1, "a"))
        subscriptions.subscribe(2, "a")
        subscriptions.subscribe(2, "b")
        self.assertEqual(subscriptions.status()["topics"], {"a": 2, "b": 1})
        self.assertEqual(sorted(subscriptions.subscribers("a")), [1, 2])
        self.assertEqual(subscriptions.forget(2), ["a", "b"])
        # A topic nobody follows any more is gone, not kept at zero.
        self.assertEqual(subscriptions.status()["topics"], {"a": 1})
        self.assertEqual(subscriptions.forget(2), [])
        self.assertEqual(subscriptions.subscribers("b"), [])

    def test_limit_per_subscriber(self) -> None:
        subscriptions = Subscriptions(max_per_subscriber=2)
        subscriptions.subscribe(1, "a")
        subscriptions.subscribe(1, "b")
        self.assertRaises(TooManySubscriptions, subscriptions.subscribe, 1, "c")
        subscriptions.subscribe(2, "c")
        self.assertEqual(subscriptions.topics_of(1), ["a", "b"])

    def test_inbox(self) -> None:
        inbox = Inbox(["a"])
        inbox.add("p", "a", b"hi")
        inbox.add("p", "a", b"\xff")
        status = inbox.status()
        self.assertEqual((status["received"], status["by_topic"]), (2, {"a": 2}))
        self.assertEqual(status["last"], {"publisher": "p", "topic": "a", "text": "\ufffd"})


class SettingsTests(SynchronousTestCase):
    def parse(self, *args: str) -> PubSubSettings:
        options = PubSubOptions()
        options.parseOptions(list(args))
        return parse_settings({**options, "role": "client"}, default_role="broker")

    def test_repeatable_options(self) -> None:
        settings = self.parse(
            "--subscribe", "a", "--subscribe", "b", "--subscribe", "a", "--publish", "a=b=c"
        )
        self.assertEqual(settings, PubSubSettings(("a", "b"), (("a", "b=c"),)))

    def test_defaults(self) -> None:
        """What a node built without the command line gets: ``dict(PubSubOptions())``."""
        self.assertEqual(parse_settings(dict(PubSubOptions()), default_role="broker"), PubSubSettings())

    def test_errors_name_the_option(self) -> None:
        for args, message in [
            (("--publish", "x"), "--publish: expected TOPIC=TEXT, not 'x'"),
            (("--publish", "=x"), "--publish: expected TOPIC=TEXT, not '=x'"),
            (("--subscribe", ""), "--subscribe: a topic is 1 to 128 bytes"),
            (("--publish", "y" * 129 + "=x"), "--publish: a topic is 1 to 128 bytes"),
        ]:
            with self.assertRaises(ValueError, msg=args) as caught:
                self.parse(*args)
            self.assertTrue(str(caught.exception).startswith(message), str(caught.exception))

    def test_broker_takes_neither(self) -> None:
        with self.assertRaises(ValueError) as caught:
            parse_settings({"subscribe": ["a"], "publish": [], "role": None}, default_role="broker")
        self.assertTrue(str(caught.exception).startswith("--subscribe:"))

    def test_unknown_option_is_a_usage_error(self) -> None:
        self.assertRaises(usage.UsageError, PubSubOptions().parseOptions, ["--nope"])


class _FakeManager:
    def __init__(self) -> None:
        self.observers: list[Any] = []

    def subscribe(self, observer: Any) -> None:
        self.observers.append(observer)


class _FakeNode:
    """The parts of the topology context a Broker uses."""

    def __init__(self) -> None:
        self.handlers: dict[int, Any] = {}
        self.sections: dict[str, Any] = {}
        self.manager = _FakeManager()

    def add_handler(self, code: int, handler: Any) -> None:
        self.handlers[code] = handler

    def add_status_section(self, name: str, render: Any) -> None:
        self.sections[name] = render


class _FakePeer(RecordedLink):
    def __init__(self, connection_id: int, node_id: str) -> None:
        super().__init__(node_id)
        self.connection_id = connection_id


class _Closed:
    def __init__(self, connection_id: int) -> None:
        self.record = type("Record", (), {"id": connection_id})()


class BrokerGlueTests(SynchronousTestCase):
    """The broker's handlers on a fake node: what reaches each peer."""

    def setUp(self) -> None:
        self.node = _FakeNode()
        Broker(self.node)
        self.subscribe = self.node.handlers[wire.SUBSCRIBE]
        self.publish = self.node.handlers[wire.PUBLISH]
        self.status = self.node.sections["pubsub"]

    def test_forwards_to_subscribers_only(self) -> None:
        alice, bob, carol = _FakePeer(1, "alice"), _FakePeer(2, "bob"), _FakePeer(3, "carol")
        self.subscribe(alice, body_of(wire.encode_subscribe("a"), wire.SUBSCRIBE))
        self.subscribe(bob, body_of(wire.encode_subscribe("b"), wire.SUBSCRIBE))
        self.publish(carol, body_of(wire.encode_publish("a", b"hi"), wire.PUBLISH))
        self.assertEqual(alice.frames, [wire.encode_forward("carol", "a", b"hi")])
        self.assertEqual((bob.frames, carol.frames), ([], []))
        self.assertEqual(self.status(), {"topics": {"a": 1, "b": 1}, "published": 1, "forwarded": 1})

    def test_bad_input_is_a_protocol_error_of_that_peer(self) -> None:
        alice, mallory = _FakePeer(1, "alice"), _FakePeer(2, "mallory")
        self.subscribe(alice, body_of(wire.encode_subscribe("a"), wire.SUBSCRIBE))
        self.subscribe(mallory, b"\x00\x81" + b"x" * 129)
        self.publish(mallory, b"\x00")
        self.assertEqual(len(mallory.errors), 2, mallory.errors)
        self.assertIn("exceeds 128", mallory.errors[0])
        self.assertEqual(alice.errors, [])
        self.assertEqual(self.status()["topics"], {"a": 1})

    def test_subscriber_that_leaves_is_forgotten(self) -> None:
        alice = _FakePeer(1, "alice")
        self.subscribe(alice, body_of(wire.encode_subscribe("a"), wire.SUBSCRIBE))
        for observer in self.node.manager.observers:
            observer("closed", _Closed(1))
        self.assertEqual(self.status()["topics"], {})
        self.publish(_FakePeer(2, "bob"), body_of(wire.encode_publish("a", b"x"), wire.PUBLISH))
        self.assertEqual(alice.frames, [])


# --- installed, in real twistd processes ----------------------------------------------------


class _Installed:
    """The example, pip-installed once per test process into a temporary directory."""

    tmp: tempfile.TemporaryDirectory[str] | None = None
    site: str | None = None
    problem: str | None = None

    @classmethod
    def target(cls) -> str:
        if cls.problem is not None:
            raise SkipTest(cls.problem)
        if cls.site is None:
            # Removed at interpreter exit by TemporaryDirectory's finalizer.
            cls.tmp = tempfile.TemporaryDirectory(prefix="netmodels-pubsub-")
            tmp = Path(cls.tmp.name)
            # Built from a copy: setuptools writes build/ and *.egg-info next to the sources.
            source = tmp / "src"
            shutil.copytree(
                EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
            )
            site = tmp / "site"
            pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site)]
            env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
            failures = []
            # Without build isolation first (offline, fast); a setuptools too old to build
            # wheels on its own (no `wheel` package) needs an isolated build from the index.
            for extra in (["--no-build-isolation"], []):
                try:
                    result = subprocess.run(
                        [*pip, *extra, str(source)],
                        capture_output=True,
                        text=True,
                        timeout=300,
                        env=env,
                        stdin=subprocess.DEVNULL,
                    )
                except (OSError, subprocess.TimeoutExpired) as e:
                    failures.append(f"{' '.join(extra) or 'isolated'}: {e}")
                    continue
                if result.returncode == 0:
                    cls.site = str(site)
                    break
                failures.append(f"{' '.join(extra) or 'isolated'}: {(result.stdout + result.stderr)[-800:]}")
                shutil.rmtree(site, ignore_errors=True)
            else:
                cls.problem = "cannot pip install docs/examples/pubsub-topology:\n" + "\n".join(failures)
                raise SkipTest(cls.problem)
        return cls.site


def spawn_with_plugin(testcase: TestCase, site: str, args: Iterable[str]) -> ChildProcess:
    """``twistd -n netmodels ARGS`` with the installed example on PYTHONPATH; terminated in cleanup."""
    child = ChildProcess()
    command = twistd_command()
    argv = [*command, "-n", "--pidfile=", "--logfile=-", "netmodels", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": site}
    reactor.spawnProcess(child, argv[0], argv, env=env, path=temp_dir(testcase))
    testcase.addCleanup(child.terminate)
    return child


def get_json(port: int, path: str = "/status") -> defer.Deferred[Any]:
    """``GET path`` as JSON (in a thread: urllib blocks; the reactor does not)."""

    def fetch() -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return json.loads(response.read())

    return threads.deferToThread(fetch)


class PubSubProcessTests(TestCase):
    timeout = TIMEOUT

    def setUp(self) -> None:
        self.site = _Installed.target()

    def spawn(self, *args: str) -> ChildProcess:
        return spawn_with_plugin(self, self.site, args)

    @defer.inlineCallbacks
    def run_to_exit(self, *args: str) -> Any:
        child = self.spawn(*args)
        yield child.ended
        return child

    @defer.inlineCallbacks
    def broker_subscriber_publisher(self, transport: str) -> Any:
        """
        A broker, a client subscribed to ``news`` and a client publishing on
        ``news`` and ``sport``: the broker counts one subscriber of ``news``; the
        subscriber's ``received`` grows; once it leaves, the broker forgets it.
        """
        broker_id, subscriber_id, publisher_id = (unique_id(n) for n in ("broker", "sub", "pub"))
        common = ["--topology", "pubsub", "--transport", transport, "--status", LOOPBACK_ANY]
        broker = self.spawn(
            *common,
            "--role",
            "broker",
            "--listen",
            f"{transport}:0:interface=127.0.0.1",
            "--node-id",
            broker_id,
        )
        match = yield broker.wait_for(rf"listening on {transport}:127\.0\.0\.1:(\d+)".encode())
        address = f"{transport}:127.0.0.1:{int(match.group(1))}"
        broker_status = yield status_port(broker)

        subscriber = self.spawn(
            *common,
            "--role",
            "client",
            "--connect",
            address,
            "--node-id",
            subscriber_id,
            "--subscribe",
            "news",
        )
        subscriber_status = yield status_port(subscriber)
        yield broker.wait_for(rf"{subscriber_id} subscribed to news".encode())
        publisher = self.spawn(
            *common,
            "--role",
            "client",
            "--connect",
            address,
            "--node-id",
            publisher_id,
            "--publish",
            "news=hello world",
            "--publish",
            "sport=nobody listens",
            "--interval",
            "0.1",
        )
        # pubsub-log, the default application, logs each publication it receives.
        seen = rf"news: 'hello world' from {publisher_id}".encode()
        yield subscriber.wait_for(seen)

        document = yield get_json(broker_status)
        self.assertEqual(document["node"]["topology"], "pubsub")
        self.assertEqual(document["pubsub"]["topics"], {"news": 1})
        self.assertGreaterEqual(document["pubsub"]["forwarded"], 1)
        first = yield get_json(subscriber_status)
        self.assertGreaterEqual(first["pubsub"]["received"], 1)
        self.assertEqual(first["pubsub"]["by_topic"], {"news": first["pubsub"]["received"]})
        mark = len(subscriber.output)
        yield subscriber.wait_for(seen, after=mark)
        later = yield get_json(subscriber_status)
        self.assertGreater(later["pubsub"]["received"], first["pubsub"]["received"])
        self.assertEqual(
            later["pubsub"]["last"], {"publisher": publisher_id, "topic": "news", "text": "hello world"}
        )
        publisher_status = yield status_port(publisher)
        published = yield get_json(publisher_status)
        self.assertGreater(published["pubsub"]["published"], 0)

        mark = len(broker.output)
        subscriber.kill("TERM")
        yield subscriber.ended
        yield broker.wait_for(rb"closed: clean \(remote\)", after=mark)
        document = yield get_json(broker_status)
        self.assertEqual(document["pubsub"]["topics"], {})
        for child in (broker, subscriber, publisher):
            self.assertNotIn("Traceback", child.text)

    def test_tcp(self) -> Any:
        return self.broker_subscriber_publisher("tcp")

    def test_udp(self) -> Any:
        return self.broker_subscriber_publisher("udp")

    @defer.inlineCallbacks
    def test_bad_input_ends_only_that_connection(self) -> Any:
        """
        A malformed SUBSCRIBE, one with an oversized topic, or a FORWARD (which
        no broker handler takes) ends that peer's connection with
        ``protocol-error``; the broker keeps serving the others.
        """
        broker = self.spawn("--topology", "pubsub", "--role", "broker", "--listen", LOOPBACK_ANY)
        match = yield broker.wait_for(rb"listening on tcp:127\.0\.0\.1:(\d+)")
        port = int(match.group(1))
        hello = raw_hello(role="client", topology="pubsub")
        good = yield connect_raw(self, port)
        good.transport.write(hello + wire.encode_subscribe("ok"))
        yield broker.wait_for(rb"subscribed to ok")
        refused = [
            (wire.SUBSCRIBE, b"\x00\x05ab"),  # malformed
            (wire.SUBSCRIBE, b"\x00\x81" + b"x" * 129),  # oversized topic
            (wire.FORWARD, wire.encode_forward("p", "t", b"")[5:]),  # a type only clients handle
        ]
        for code, body in refused:
            bad = yield connect_raw(self, port)
            bad.transport.write(hello + encode_frame(code, body))
            yield bad.lost
            (bye,) = bye_bodies(bytes(bad.received))
            self.assertEqual(json.loads(bye)["reason"], "protocol-error", bye)
        self.assertFalse(good.disconnected)
        self.assertTrue(broker.running)
        self.assertNotIn("Traceback", broker.text)

    @defer.inlineCallbacks
    def test_help_lists_the_topology_options(self) -> Any:
        child = yield self.run_to_exit("--topology", "pubsub", "--help")
        self.assertEqual(child.exit_code, 0, child.text)
        for option in ("--subscribe=", "--publish=", "--interval=", "--listen=", "--connect=", "--role="):
            self.assertIn(option, child.text)

    @defer.inlineCallbacks
    def test_bad_publish_is_a_usage_error(self) -> Any:
        children = yield defer.gatherResults(
            [
                self.run_to_exit(
                    "--topology", "pubsub", "--role", "client", "--connect", "tcp:127.0.0.1:9", *args
                )
                for args in (["--publish", "no-equals-sign"], ["--subscribe", "x" * 200])
            ],
            consumeErrors=True,
        )
        for child, option in zip(children, ["--publish", "--subscribe"], strict=True):
            self.assertNotIn(child.exit_code, (0, None), child.text)
            self.assertRegex(child.text, re.escape(option) + ":")
            self.assertNotIn("Traceback", child.text)
