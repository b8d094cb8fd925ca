"""
A socket is an (IP address, port) pair, and the port is a 16-bit number.

Binds a listening socket to port 0 so the kernel picks a free port, connects
to it, and prints the two endpoints of the connection: each one is an
(IP, port) pair. Then shows that 65535 is the largest port there is, and that
TCP and UDP number their ports separately.

Run: python docs/examples/socket_is_ip_and_port.py
"""

import socket

# The server's socket: IP 127.0.0.1, port 0 = "any free port, kernel's choice".
listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
listener.bind(("127.0.0.1", 0))
listener.listen()
print("server listens on      ", listener.getsockname())

# The client's socket gets its own (IP, port) too: an ephemeral port.
client = socket.create_connection(listener.getsockname())
server_side, _ = listener.accept()
print("client socket          ", client.getsockname(), "->", client.getpeername())
print("server's accepted socket", server_side.getsockname(), "->", server_side.getpeername())
print("the two ends of one connection are two sockets; together they name it:")
print("  (client IP, client port, server IP, server port) =", client.getsockname() + client.getpeername())

# Ports are 16 bits: 0..65535.
print("largest port: 2**16 - 1 =", 2**16 - 1)
for port in (65535, 65536):
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        probe.bind(("127.0.0.1", port))
        print(f"bind to port {port}: ok")
    except OverflowError as e:
        print(f"bind to port {port}: OverflowError: {e}")
    except OSError as e:
        # 65535 itself may be taken on a busy machine; the point is it is a valid port.
        print(f"bind to port {port}: {e.strerror} (a valid port, just not free)")
    finally:
        probe.close()

# TCP and UDP have separate port spaces: the same number can be bound by both.
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(listener.getsockname())
print("UDP socket bound to the same (IP, port) as the TCP listener:", udp.getsockname())

for sock in (client, server_side, listener, udp):
    sock.close()
