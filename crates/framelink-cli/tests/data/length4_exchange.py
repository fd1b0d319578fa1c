"""Makes the exchange captured in loopback_length4.pcap: a client and a server on 127.0.0.1
speaking length:4 frames (4-byte big-endian length, then the payload), with glued and split
writes. See README.md in this folder for the tcpdump command around it.

Client -> server: "hello", "sticky", "frames" glued in one write; "split across three
writes" in three writes 50 ms apart; a 2000-byte frame (bytes 0..255 repeating) in one write.
Server -> client: "ack:" + each payload, the replies to one read glued in one write.
"""

import socket
import struct
import sys
import threading
import time

PORT = int(sys.argv[1]) if len(sys.argv) > 1 else 47123


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def serve(listener: socket.socket) -> None:
    conn, _ = listener.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = b""
    while True:
        data = conn.recv(65536)
        if not data:
            break
        buf += data
        replies = b""
        while len(buf) >= 4:
            (n,) = struct.unpack(">I", buf[:4])
            if len(buf) < 4 + n:
                break
            replies += frame(b"ack:" + buf[4 : 4 + n][:16])
            buf = buf[4 + n :]
        if replies:
            conn.sendall(replies)
    conn.close()


def main() -> None:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", PORT))
    listener.listen(1)
    server = threading.Thread(target=serve, args=(listener,))
    server.start()

    client = socket.create_connection(("127.0.0.1", PORT))
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client.sendall(frame(b"hello") + frame(b"sticky") + frame(b"frames"))
    time.sleep(0.05)
    split = frame(b"split across three writes")
    for piece in (split[:3], split[3:12], split[12:]):
        client.sendall(piece)
        time.sleep(0.05)
    client.sendall(frame(bytes(i % 256 for i in range(2000))))
    time.sleep(0.05)
    client.shutdown(socket.SHUT_WR)
    while client.recv(65536):
        pass
    client.close()
    server.join()
    listener.close()


if __name__ == "__main__":
    main()
