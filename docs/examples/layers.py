"""
Where a socket sits among the layers, seen on the wire.

Sends one netmodels DATA frame over a loopback TCP connection and captures the
packet that carries it, then takes the packet apart layer by layer: link
(the loopback's Ethernet header), network (IPv4), transport (TCP) and, inside,
the bytes the application wrote into the socket. The kernel wrote every header;
the program only ever handed ``sendall()`` the last part.

Capturing needs a Linux ``AF_PACKET`` socket (root or CAP_NET_RAW). Without
one, the script says so and prints only what the socket API shows.

Run: sudo python docs/examples/layers.py   (or without sudo for the short form)
"""

import socket
import struct
import sys
import time

from netmodels.core.frames import MessageType, encode_frame

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
TCP_FLAGS = ["FIN", "SYN", "RST", "PSH", "ACK", "URG"]

listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
listener.bind(("127.0.0.1", 0))
listener.listen()
client = socket.create_connection(listener.getsockname())
server, _ = listener.accept()
ports = {client.getsockname()[1], server.getsockname()[1]}

print("OSI (7 layers)   TCP/IP (4 layers)")
print("7 application  \\")
print("6 presentation > application   netmodels: applications, HELLO/DATA/PING frames (your process)")
print("5 session      /               sockets: the API between your process and the kernel")
print("4 transport      transport     TCP, UDP (kernel): ports, sequence numbers, FIN, RST")
print("3 network        internet      IP (kernel): addresses")
print("2 data link    \\ link          here the loopback device 'lo' (kernel)")
print("1 physical     /")
print()

frame = encode_frame(MessageType.DATA, b"hello")
try:
    sniffer = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
except (AttributeError, PermissionError) as e:
    client.sendall(frame)
    print(f"cannot capture packets here ({e}); run as root on Linux to see the headers.")
    print("what the socket API shows: the application wrote", frame.hex(" "))
    print(
        "to", client.getsockname(), "->", client.getpeername(), "and the peer read", server.recv(100).hex(" ")
    )
    sys.exit(0)
sniffer.bind(("lo", 0))
sniffer.settimeout(2)


def capture(want):
    """The next outgoing packet of our connection for which ``want(tcp_flags, payload)`` is true."""
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        packet, address = sniffer.recvfrom(65535)
        if address[2] != PACKET_OUTGOING or packet[12:14] != b"\x08\x00":
            continue  # loopback shows each packet twice; keep one copy, and IPv4 only
        ip = packet[14:]
        ihl = (ip[0] & 0x0F) * 4
        if ip[9] != socket.IPPROTO_TCP:
            continue
        tcp = ip[ihl:]
        source_port, destination_port = struct.unpack("!HH", tcp[:4])
        if {source_port, destination_port} != ports:
            continue
        data_offset = (tcp[12] >> 4) * 4
        flags = tcp[13]
        if want(flags, tcp[data_offset:]):
            return packet, ihl, data_offset
    raise SystemExit("no packet captured")


def show(packet, ihl, data_offset):
    ip = packet[14:]
    tcp = ip[ihl:]
    payload = tcp[data_offset:]
    flags = "|".join(name for bit, name in enumerate(TCP_FLAGS) if tcp[13] & (1 << bit))
    sport, dport, seq = struct.unpack("!HHI", tcp[:8])
    print(f"  link        {14:3} bytes  loopback 'Ethernet' header, type 0x0800 (IPv4)")
    print(
        f"  network     {ihl:3} bytes  IPv4 {socket.inet_ntoa(ip[12:16])} -> {socket.inet_ntoa(ip[16:20])}, "
        f"protocol {ip[9]} (TCP), total length {struct.unpack('!H', ip[2:4])[0]}"
    )
    print(f"  transport   {data_offset:3} bytes  TCP port {sport} -> {dport}, seq {seq}, flags {flags}")
    if payload:
        print(f"  application {len(payload):3} bytes  {payload.hex(' ')}")


print(f"the application writes {len(frame)} bytes: {frame.hex(' ')} (a netmodels DATA frame, 'hello')")
client.sendall(frame)
packet = capture(lambda flags, payload: payload == frame)
print(f"the packet that carried them, {len(packet[0])} bytes in all:")
show(*packet)
assert server.recv(100) == frame  # the peer's application gets exactly the bytes, no headers

print()
print("close() sends a FIN: a TCP segment with no application bytes at all")
client.close()
show(*capture(lambda flags, payload: flags & 0x01))

for sock in (server, listener, sniffer):
    sock.close()
