"""
Every close reason, produced for real and recorded by a running node.

Starts a netmodels server with ``twistd`` (fast keepalive, short handshake
deadline, at most 2 connections, status page on) and a netmodels client that
dials a port where nobody listens. Then a hand-written client speaking the
wire protocol with plain sockets ends connections every way there is. After
each one it prints what it saw on the wire and what the server recorded in
its ``GET /status`` document.

Run: python docs/examples/close_reasons.py   (about 5 s)
"""

import atexit
import json
import os
import secrets
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request

from netmodels.core.frames import FrameDecoder, Hello, MessageType, encode_bye, encode_hello
from netmodels.core.keepalive import KeepaliveSettings


def free_port():
    with socket.create_server(("127.0.0.1", 0)) as s:
        return s.getsockname()[1]


def twistd(*args):
    command = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
    process = subprocess.Popen(
        [*command, "-n", "--pidfile=", "--logfile=-", "netmodels", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    atexit.register(process.terminate)
    return process


PORT, STATUS, CLIENT_STATUS, NOBODY = free_port(), free_port(), free_port(), free_port()
# The status endpoint's POST /connections needs the admin token.
ADMIN_TOKEN = secrets.token_urlsafe(24)
descriptor, ADMIN_TOKEN_FILE = tempfile.mkstemp(suffix=".token")
os.write(descriptor, ADMIN_TOKEN.encode() + b"\n")
os.close(descriptor)
atexit.register(os.remove, ADMIN_TOKEN_FILE)
twistd(
    "--role", "server", "--node-id", "server",
    "--listen", f"tcp:{PORT}:interface=127.0.0.1",
    "--status", f"tcp:{STATUS}:interface=127.0.0.1", "--admin-token-file", ADMIN_TOKEN_FILE,
    "--keepalive", "0.3,0.2,2", "--handshake-timeout", "0.5", "--max-connections", "2",
)  # fmt: skip
twistd(
    "--role", "client", "--node-id", "client",
    "--connect", f"tcp:127.0.0.1:{NOBODY}",
    "--status", f"tcp:{CLIENT_STATUS}:interface=127.0.0.1",
)  # fmt: skip


def http(port, path, method="GET"):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    request.add_header("Authorization", f"Bearer {ADMIN_TOKEN}")
    with urllib.request.urlopen(request, timeout=2) as response:
        return json.load(response)


for _ in range(100):
    try:
        http(STATUS, "/status")
        http(CLIENT_STATUS, "/status")
        break
    except OSError:
        time.sleep(0.05)

NAMES = {int(t): t.name for t in MessageType}


class RawPeer:
    """A netmodels peer written with a plain socket and netmodels.wire."""

    def __init__(self, hello=True, **fields):
        self.sock = socket.create_connection(("127.0.0.1", PORT))
        self.port = self.sock.getsockname()[1]
        if hello:
            document = {"node_id": f"raw-{self.port}", "topology": "client-server", "role": "client"}
            document.update(fields)
            self.sock.sendall(encode_hello(Hello(keepalive=KeepaliveSettings(60, 10, 3), **document)))

    def read_hello(self):
        """Read the server's HELLO, so that nothing is left unread."""
        decoder = FrameDecoder()
        while not (frames := decoder.feed(self.sock.recv(65536))):
            pass
        assert frames[0][0] == MessageType.HELLO

    def send(self, data):
        self.sock.sendall(data)

    def read(self, timeout=1.0):
        """Frames received until EOF, RST or ``timeout``, as a short text."""
        decoder, seen, start = FrameDecoder(), [], time.monotonic()
        self.sock.settimeout(timeout)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    seen.append("EOF (FIN)")
                    break
                for kind, body in decoder.feed(data):
                    text = NAMES[kind]
                    if kind == MessageType.BYE:
                        text += " " + body.decode()
                    seen.append(f"{text} @{time.monotonic() - start:.2f}s")
        except ConnectionResetError:
            seen.append(f"ECONNRESET (RST) @{time.monotonic() - start:.2f}s")
        except TimeoutError:
            seen.append("(still open)")
        return ", ".join(seen)

    def recorded(self):
        """The server's record of this connection, once it has closed."""
        for _ in range(60):
            for record in http(STATUS, "/status")["connections"]:
                if record["peer"] == f"127.0.0.1:{self.port}" and record["state"] == "closed":
                    errno = f", {record['errno']}" if record["errno"] else ""
                    fatal = ", fatal" if record["fatal"] else ""
                    detail = f": {record['detail']}" if record["detail"] else ""
                    return f"{record['reason']} ({record['initiator']}{errno}{fatal}){detail}"
            time.sleep(0.05)
        return "(not closed)"

    def server_id(self):
        for record in http(STATUS, "/status")["connections"]:
            if record["peer"] == f"127.0.0.1:{self.port}":
                return record["id"]


def scenario(title, peer, wire):
    print(title)
    print("  client saw:      ", wire)
    print("  server recorded: ", peer.recorded())


peer = RawPeer()
peer.send(encode_bye("clean", "done for today"))
peer.sock.shutdown(socket.SHUT_WR)
scenario("1. we send BYE, then FIN", peer, peer.read())

peer = RawPeer()
peer.read_hello()
peer.sock.close()
scenario("2. we read the server's HELLO, then close(): a bare FIN, no BYE", peer, "(we closed)")

peer = RawPeer()
time.sleep(0.1)
peer.sock.close()
scenario("3. we close() with the server's HELLO still unread: our kernel sends RST", peer, "(we closed)")

peer = RawPeer()
peer.read_hello()
peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
peer.sock.close()
scenario("4. we close with RST on purpose (SO_LINGER {1, 0})", peer, "(we reset)")

peer = RawPeer()
peer.send(b"\x00\x00\x00\x01\x7f")
scenario("5. we send a frame of unknown type 0x7f", peer, peer.read())

peer = RawPeer(version=2)
scenario("6. our HELLO says protocol version 2", peer, peer.read())

peer = RawPeer(role="server")
scenario("7. our HELLO says we are a server too", peer, peer.read())

peer = RawPeer(hello=False)
scenario("8. we never send HELLO (handshake deadline 0.5 s)", peer, peer.read())

peer = RawPeer()
scenario("9. we send HELLO, then never answer (--keepalive 0.3,0.2,2: 0.7 s)", peer, peer.read(2))

first, second = RawPeer(), RawPeer()
time.sleep(0.1)
third = RawPeer()
scenario("10. a third connection, over --max-connections 2", third, third.read())

http(STATUS, f"/connections/{first.server_id()}/reset", "POST")
scenario("11. operator: POST /connections/<id>/reset", first, first.read())
http(STATUS, f"/connections/{second.server_id()}/close", "POST")
scenario("12. operator: POST /connections/<id>/close", second, second.read())

print("13. a netmodels client dialling a port where nobody listens")
client = http(CLIENT_STATUS, "/status")
failed = [r for r in client["connections"] if r["state"] == "failed"]
last = failed[0]
print(f"  client recorded:  {len(failed)} connect attempts, the last: {last['reason']} ({last['errno']})")
state = client["node"]["connecting"][0]
next_try = f"next try in {state['next_attempt_in']:.2f} s"
print(f"  reconnecting:     state {state['state']}, {state['failures']} failures, {next_try}")
print("server counters:", http(STATUS, "/status")["counters"])
