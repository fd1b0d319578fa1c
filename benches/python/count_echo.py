"""A fixed number of 64 B echoes through ``framelink.connect`` (raw mode, ``length:4``), for
counting instructions per echo: run it twice under ``valgrind --tool=callgrind`` with two
counts against ``framelink serve ADDR --framing length:4`` and divide the difference of the
totals by the difference of the echoes (start-up cancels out).

    python benches/python/count_echo.py PORT ECHOES
"""

import asyncio
import sys

import framelink
from framelink.bench import Load


async def main(port: int, total: int) -> None:
    load = Load(64, 1 << 20)
    client = await framelink.connect("127.0.0.1", port, framing="length:4")
    await client.send_many(load.next_payloads(load.window))
    got = 0
    while got < total:
        n = load.check(await client.recv_many(load.window))
        got += n
        if got + load.in_flight < total + load.window:
            await client.send_many(load.next_payloads(n))
    while load.in_flight:
        load.check(await client.recv_many(load.window))
    await client.close()
    print("echoes", load.received)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
