"""
Stream sockets (TCP) versus datagram sockets (UDP).

- TCP is a byte stream: three sends can arrive as one read, so messages need
  framing (netmodels puts a 4-byte length before each one).
- UDP keeps message boundaries: three sends are three datagrams.
- UDP has no connection: no FIN, no RST, no keepalive. Closing a UDP socket
  sends nothing; the peer cannot tell.
- The nearest thing to RST is ICMP port unreachable, reported only on a
  *connected* UDP socket, and rate-limited by the kernel.

Run: python docs/examples/stream_vs_datagram.py   (about 1 s)
"""

import errno
import socket
import time

from netmodels.core.frames import FrameDecoder, MessageType, encode_frame

print("TCP: three send() calls of one message each")
with socket.create_server(("127.0.0.1", 0)) as listener:
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
for message in (b"one", b"two", b"three"):
    client.send(message)
time.sleep(0.05)
print("  one recv() returns:", server.recv(1000), "- the boundaries are gone")
for message in (b"one", b"two", b"three"):
    client.send(encode_frame(MessageType.DATA, message))
time.sleep(0.05)
chunk = server.recv(1000)
print(f"  framed by netmodels, one recv() returns {len(chunk)} bytes: {chunk.hex(' ')}")
print("  and FrameDecoder cuts them back into:", [body for _, body in FrameDecoder().feed(chunk)])
client.close()
server.close()

print("UDP: three sendto() calls")
receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
receiver.bind(("127.0.0.1", 0))
sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for message in (b"one", b"two", b"three"):
    sender.sendto(message, receiver.getsockname())
time.sleep(0.05)
receiver.settimeout(0.2)
print("  three recvfrom() calls return:", [receiver.recvfrom(1000)[0] for _ in range(3)])

print("UDP has no close handshake: the sender closes, and the receiver learns nothing")
sender.close()
try:
    receiver.recvfrom(1000)
except TimeoutError:
    print("  recvfrom() after the peer's close: nothing arrives (timed out after 0.2 s); no FIN, no EOF")
gone = receiver.getsockname()
receiver.close()

print("UDP to a port where nobody listens any more:")
unconnected = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
unconnected.settimeout(0.2)
unconnected.sendto(b"hello?", gone)
try:
    unconnected.recvfrom(1000)
except TimeoutError:
    print("  unconnected socket (sendto): no error at all, the ICMP port unreachable is not reported")
except OSError as e:
    print("  unconnected socket:", errno.errorcode[e.errno])
unconnected.close()

connected = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
connected.connect(gone)
connected.settimeout(0.2)
connected.send(b"hello?")
try:
    connected.recv(1000)
except OSError as e:
    print("  connected socket (connect + send): the next recv() fails with", errno.errorcode[e.errno])

connected.setblocking(False)
refused = 0
for _ in range(20):
    connected.send(b"hello?")
    time.sleep(0.002)
    try:
        connected.recv(1000)
    except ConnectionRefusedError:
        refused += 1
    except BlockingIOError:
        pass  # no ICMP came back for this one
try:
    with open("/proc/sys/net/ipv4/icmp_ratelimit") as f:
        ratelimit = f"{f.read().strip()} ms"
except OSError:
    ratelimit = "a system-dependent interval"
print(f"  20 datagrams, one at a time: {refused} reported ECONNREFUSED.")
print("  Loopback is exempt from ICMP rate limiting; over a real interface Linux answers a burst")
print(f"  of about 6 per destination, then one per icmp_ratelimit ({ratelimit}): a hint, never a signal.")
connected.close()
