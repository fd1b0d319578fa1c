#!/usr/bin/env python3
"""Sans-IO framing with plain blocking sockets: framelink.Decoder and framelink.Encoder only.

No asyncio, no framelink connection: your own socket code, with framelink doing the one part
that is easy to get wrong, turning the byte stream back into messages (粘包/拆包).

- A server thread reads with ``sock.recv_into(decoder.get_buffer())`` and
  ``decoder.buffer_updated(n)``: bytes go straight into the decoder's buffer, no copy per read.
- The main thread sends 3,000 messages cut into random-sized pieces (1 byte to 3 KiB), so that
  reads on the other side hold several messages glued together and parts of messages.
- The server answers each batch of frames with one ``sendall`` of their lengths, and the client
  decodes the replies with ``decoder.feed(sock.recv(...))``.

    python examples/python/blocking_decoder.py
"""

import random
import select
import socket
import struct
import sys
import threading
from typing import Any

from framelink import Decoder, DecodeError, Encoder

FRAMING = "length:4,max=1MiB"   # 4-byte big-endian length, then the payload; refuse > 1 MiB
COUNT = 3000


def serve(listener: socket.socket, result: "dict[str, Any]") -> None:
    """Accepts one connection; returns the lengths of the frames it decodes."""
    conn, _ = listener.accept()
    decoder = Decoder(FRAMING)
    encoder = Encoder(FRAMING)
    frames, reads, glued, split = [], 0, 0, 0
    with conn:
        while True:
            buf = decoder.get_buffer()          # writable memoryview into the decoder
            n = conn.recv_into(buf)
            if n == 0:                          # the client closed its side
                frames.extend(decoder.feed_eof())   # raises TruncatedFrame if a frame was cut
                break
            batch = decoder.buffer_updated(n)   # every frame completed by these n bytes
            reads += 1
            glued += len(batch) > 1             # 粘包: several messages in one read
            split += decoder.buffered > 0       # 拆包: the read ended inside a message
            frames.extend(batch)
            if batch:                           # one reply per read: each frame's length
                conn.sendall(encoder.encode_many(struct.pack(">I", len(f)) for f in batch))
    result.update(frames=frames, reads=reads, glued=glued, split=split)


def main() -> int:
    rng = random.Random(42)
    messages = [rng.randbytes(rng.choice([0, 3, 50, 700, 5000])) for _ in range(COUNT)]
    stream = Encoder(FRAMING).encode_many(messages)   # one bytes object: every frame, joined

    listener = socket.create_server(("127.0.0.1", 0))
    result: "dict[str, Any]" = {}
    server = threading.Thread(target=serve, args=(listener, result), daemon=True)
    server.start()

    replies = []
    decoder = Decoder(FRAMING)
    with socket.create_connection(listener.getsockname(), timeout=30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Send the stream in random pieces: boundaries unrelated to the messages'.
        pos = 0
        while pos < len(stream):
            piece = rng.randint(1, 3072)
            sock.sendall(stream[pos:pos + piece])
            pos += piece
            # Take the replies that are already here (without waiting for any), so that
            # neither side can block the other with full socket buffers.
            if select.select([sock], [], [], 0)[0]:
                replies += decoder.feed(sock.recv(65536))
        sock.shutdown(socket.SHUT_WR)           # FIN: "no more messages"
        while True:
            data = sock.recv(65536)
            if not data:
                replies += decoder.feed_eof()
                break
            replies += decoder.feed(data)
    server.join(timeout=30)
    listener.close()

    frames = result.get("frames", [])
    lengths = [struct.unpack(">I", r)[0] for r in replies]
    print(f"sent {COUNT} messages ({len(stream):,} bytes) in pieces of 1..3072 bytes")
    print(f"server: {result.get('reads')} reads; {result.get('glued')} held several messages "
          f"(粘包), {result.get('split')} ended inside a message (拆包)")
    if frames != messages:
        print(f"FAIL: the server decoded {len(frames)} frames that differ from what was sent")
        return 1
    if lengths != [len(m) for m in messages]:
        print(f"FAIL: {len(lengths)} replies do not match")
        return 1
    print(f"OK: all {COUNT} messages decoded exactly, in order, and {len(lengths)} replies matched")

    # A hostile or broken peer: a header announcing 4 GiB is refused as soon as it is read,
    # without buffering or allocating for it; the exception carries the numbers.
    bad = Decoder(FRAMING)
    try:
        bad.feed(Encoder(FRAMING).encode(b"ok") + b"\xff\xff\xff\xff")
    except DecodeError as exc:
        print(f"hostile header: {type(exc).__name__}: {exc}; frames before it: {exc.frames}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
