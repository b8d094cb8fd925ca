"""
Encrypted sessions: a cluster key, a rotation, an identity, and who is turned away.

Starts a netmodels server with ``twistd``, a cluster keyring of two keys (the
new one first) and an identity file, then dials it with clients that hold
the new key, the old key, another key, and none; and with a plain socket
that speaks cleartext. Prints what each client recorded and the server's
``security`` section.

Run: python docs/examples/secure_sessions.py   (about 4 s)
"""

import atexit
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from netmodels.core.frames import FrameDecoder, Hello, MessageType, encode_hello
from netmodels.core.keepalive import KeepaliveSettings

WORK = tempfile.mkdtemp(prefix="netmodels-secure-")
atexit.register(shutil.rmtree, WORK, ignore_errors=True)


def free_port():
    with socket.create_server(("127.0.0.1", 0)) as s:
        return s.getsockname()[1]


def key_file(name, *keys):
    """A keyring file: one base64 key per line, as ``head -c32 /dev/urandom | base64`` writes."""
    path = os.path.join(WORK, name)
    with open(path, "w") as file:
        file.writelines(base64.b64encode(key).decode() + "\n" for key in keys)
    return path


def twistd(*args):
    command = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
    process = subprocess.Popen(
        [*command, "-n", "--pidfile=", "--logfile=-", "netmodels", "--state-dir", WORK, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    atexit.register(process.terminate)
    return process


def status(port):
    # A twistd start takes a second or two, many more on a busy machine.
    for _ in range(600):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2) as response:
                return json.load(response)
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"no status on port {port}")


OLD, NEW, OTHER = os.urandom(32), os.urandom(32), os.urandom(32)
PORT, STATUS = free_port(), free_port()
twistd(
    "--listen", f"tcp:{PORT}:interface=127.0.0.1", "--status", f"tcp:{STATUS}:interface=127.0.0.1",
    "--cluster-key-file", key_file("rotating.keys", NEW, OLD), "--identity", "server.key",
)  # fmt: skip
server = status(STATUS)
print(f"server node id (from its key): {server['node']['id']}")
with open(os.path.join(WORK, "server.key")) as file:
    comments = [line.strip() for line in file if line.startswith("#")]
print(f"identity file (mode {oct(os.stat(os.path.join(WORK, 'server.key')).st_mode & 0o777)}):")
for line in comments:
    print(f"  {line}")

clients = {}
for name, keys in (("new key", [NEW]), ("old key", [OLD]), ("another key", [OTHER]), ("no key", [])):
    client_status = free_port()
    option = ["--cluster-key-file", key_file(name.replace(" ", "-"), *keys)] if keys else []
    twistd(
        "--role", "client", "--node-id", name.replace(" ", "-"), "--connect", f"tcp:127.0.0.1:{PORT}",
        "--status", f"tcp:{client_status}:interface=127.0.0.1", "--interval", "0", *option,
    )  # fmt: skip
    clients[name] = client_status

# A cleartext peer written with a plain socket: it says HELLO and reads the answer.
with socket.create_connection(("127.0.0.1", PORT)) as plain:
    plain.sendall(encode_hello(Hello("plain", "client-server", "client", KeepaliveSettings(60, 10, 3))))
    decoder, frames = FrameDecoder(), []
    while not frames:
        frames = decoder.feed(plain.recv(65536))
    kind, body = frames[0]
    print(f"\na cleartext peer's HELLO is answered with {MessageType(kind).name} {body.decode()}")


def settled(port):
    """The client's first connection, once it is open or closed."""
    for _ in range(200):
        records = status(port)["connections"]
        if records and records[0]["state"] in ("open", "closed"):
            return records[0]
        time.sleep(0.05)
    raise SystemExit(f"the client with status port {port} never connected")


def server_records(names):
    """The server's record of each connection by peer id, once it has accepted every one of ``names``."""
    for _ in range(200):
        on_server = {record["peer_id"]: record for record in status(STATUS)["connections"]}
        if all(name in on_server for name in names):
            return on_server
        time.sleep(0.05)
    raise SystemExit(f"the server never accepted {sorted(set(names) - set(on_server))}")


records = {name: settled(port) for name, port in clients.items()}
time.sleep(0.3)  # a rejected client would have redialled by now, were the rejection not fatal
print("\nwhat each client recorded of its connection to the server:")
# A client is open once it has the server's HELLO, which may come before the
# server has read the client's: wait for the server's side too.
on_server = server_records([n.replace(" ", "-") for n, r in records.items() if r["state"] == "open"])
for name, port in clients.items():
    record = records[name]
    if record["state"] == "open":
        secure = on_server[name.replace(" ", "-")]["secure"]
        print(
            f"  {name:12} open, {secure['protocol']}; the server accepted it with "
            f"key #{secure['cluster_key']} of its keyring; the client proved key {secure['peer_key']}"
        )
    else:
        attempts = len(status(port)["connections"])
        fatal = "fatal, " if record["fatal"] else ""
        print(f"  {name:12} {record['reason']} ({fatal}{attempts} attempt): {record['detail']}")

print("\nthe server's security section:")
print(json.dumps(status(STATUS)["security"], indent=2))
