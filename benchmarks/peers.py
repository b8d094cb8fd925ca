"""
The peers the benchmarks measure beside raw Twisted and netmodels: what a
user would pick instead, run with the same load generators and the same
method (fresh processes per repetition, pinning, warm-up, window,
interleaving, disturbance re-runs).

asyncio : ``asyncio.Protocol`` / ``DatagramProtocol`` on the standard
          library's event loop (the epoll selector loop on Linux), framing
          parsed in ``data_received`` as ``Int32StringReceiver`` does.
uvloop  : the same protocol code on ``uvloop``'s loop (libuv).
zmq     : pyzmq, where ZeroMQ has the workload: REQ/REP for request/response,
          PUSH/PULL for ingest and fan-in, PUB/SUB (an ``XPUB`` with
          ``XPUB_NODROP``, so it is lossless like the others) for fan-out.
          The C generator speaks ZMTP 3.0 for it (``loadgen -Z``). The
          blocking loops run without an event loop, as a pyzmq user writes
          them; a thread opens and closes the window.
c       : C with blocking system calls, the ceiling of request/response
          (``pingpong.c``).

The pieces the processes share are here; each benchmark has its own peer
ends. Nothing here imports uvloop or zmq at module level: a missing library
means a skipped column, said in the table's notes.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import shutil
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

import common

#: All peers, in the tables' order.
ALL = ("asyncio", "uvloop", "zmq", "c")
LOOPS = ("asyncio", "uvloop")
_INT32 = struct.Struct("!I")


def missing(peer: str) -> str | None:
    """Why ``peer`` cannot run here, or None."""
    module = {"uvloop": "uvloop", "zmq": "zmq"}.get(peer)
    if module is not None and importlib.util.find_spec(module) is None:
        package = "pyzmq" if module == "zmq" else module
        return f"{package} is not installed (pip install -e '.[bench]', or make bench)"
    if peer == "c" and shutil.which("gcc") is None and shutil.which("cc") is None:
        return "no C compiler (gcc or cc)"
    return None


def chosen(args: argparse.Namespace, offered: Sequence[str], notes: list[str]) -> list[str]:
    """
    The peers of ``offered`` to run: those asked for (``--peers``, none with
    ``--no-peers``) that can run here. A skipped one is said in ``notes`` and
    on stderr.
    """
    if getattr(args, "no_peers", False):
        return []
    wanted = {name.strip() for name in getattr(args, "peers", ",".join(ALL)).split(",") if name.strip()}
    unknown = wanted - set(ALL)
    if unknown:
        raise SystemExit(f"--peers: unknown peer(s) {', '.join(sorted(unknown))}; known: {', '.join(ALL)}")
    result = []
    for peer in offered:
        if peer not in wanted:
            continue
        why = missing(peer)
        if why is None:
            result.append(peer)
        else:
            text = f"{common.PEER_LABELS[peer]} column skipped: {why}"
            common.progress(text)
            notes.append(text)
    return result


# --------------------------------------------------------------------------
# asyncio and uvloop


def new_loop(peer: str) -> asyncio.AbstractEventLoop:
    """A fresh event loop: uvloop's, or the standard library's."""
    if peer == "uvloop":
        import uvloop

        return uvloop.new_event_loop()  # type: ignore[no-any-return]
    return asyncio.new_event_loop()


class LoopClock:
    """What ``common.Window`` needs of a reactor (``callLater``), from an asyncio loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.callLater = loop.call_later


def set_nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Int32Protocol(asyncio.Protocol):
    """
    4-byte big-endian length framing on ``asyncio.Protocol``, the way
    ``Int32StringReceiver`` does it: whole frames cut out of each chunk,
    the rest kept for the next.
    """

    transport: asyncio.Transport

    def __init__(self) -> None:
        self._buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but they have its methods.
        self.transport = cast(asyncio.Transport, transport)
        set_nodelay(transport)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        offset, end = 0, len(buffer)
        unpack_from = _INT32.unpack_from
        while end - offset >= 4:
            (length,) = unpack_from(buffer, offset)
            stop = offset + 4 + length
            if stop > end:
                break
            self.string_received(buffer[offset + 4 : stop])
            offset = stop
        self._buffer = buffer[offset:]

    def string_received(self, string: bytes) -> None:
        raise NotImplementedError

    def send_string(self, string: bytes) -> None:
        self.transport.write(_INT32.pack(len(string)) + string)


# --------------------------------------------------------------------------
# pyzmq


def zmtp_hello_hex(socket_type: str) -> str:
    """
    A ZMTP 3.0 greeting (NULL mechanism, as client) and READY command for
    ``socket_type``, as hex for the generator's ``-x``.
    """
    greeting = b"\xff" + bytes(8) + b"\x7f" + bytes([3, 0]) + b"NULL".ljust(20, b"\0") + b"\0" + bytes(31)
    kind = socket_type.encode()
    body = b"\x05READY" + bytes([11]) + b"Socket-Type" + _INT32.pack(len(kind)) + kind
    return (greeting + b"\x04" + bytes([len(body)]) + body).hex()


#: A ZMTP 3.0 subscription to every topic: a one-frame message, 0x01 then the (empty) topic.
ZMTP_SUBSCRIBE_ALL_HEX = "000101"


class ThreadWindow:
    """
    ``common.Window`` for a blocking loop without a reactor: a thread waits
    out the warm-up and the window and samples the counter, the process's
    CPU time and the main thread's run-queue wait at both ends.
    """

    def __init__(
        self,
        warmup: float,
        seconds: float,
        counter: Callable[[], int],
        done: Callable[[dict[str, Any]], None],
    ) -> None:
        self.warmup = warmup
        self.seconds = seconds
        self.counter = counter
        self.done = done
        self.started = False
        self.measuring = False
        self.finished = False
        self._main = threading.main_thread().native_id

    def begin(self) -> None:
        if self.started:
            return
        self.started = True
        threading.Thread(target=self._run, daemon=True).start()

    def _sample(self) -> tuple[float, float, int, float, tuple[int, int]]:
        return (
            time.monotonic(),
            common.cpu_seconds(),
            self.counter(),
            common.runqueue_wait_seconds(self._main),
            common.context_switches(),
        )

    def _run(self) -> None:
        time.sleep(self.warmup)
        start = self._sample()
        self.measuring = True
        time.sleep(self.seconds)
        end = self._sample()
        self.measuring = False
        elapsed = end[0] - start[0]
        count = end[2] - start[2]
        cpu = end[1] - start[1]
        self.done(
            {
                "elapsed": elapsed,
                "count": count,
                "rate": count / elapsed if elapsed > 0 else 0.0,
                "cpu": cpu,
                "cpu_util": cpu / elapsed if elapsed > 0 else 0.0,
                "cpu_us_per_op": cpu / count * 1e6 if count else None,
                "runq_wait": (end[3] - start[3]) / elapsed if elapsed > 0 else 0.0,
                "vcsw_per_op": (end[4][0] - start[4][0]) / count if count else None,
                "ivcsw_per_op": (end[4][1] - start[4][1]) / count if count else None,
            }
        )
        self.finished = True
