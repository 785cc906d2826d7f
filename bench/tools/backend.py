#!/usr/bin/env python3
"""backend.py - a small scoring backend for bench/fleet.sh (no nginx needed).

    backend.py PORT

Plain HTTP/1.1 with keep-alive on 127.0.0.1:PORT, one asyncio thread. POST (any path) reads the
body (Content-Length) and answers 200 {"result":[0.1,0.9]}, like the built-in bench backend;
GET / answers 200 "Healthy" (azmlinfsrv's liveness route, which the gateway's health checks
probe). Anything it cannot parse closes the connection.
"""
import asyncio
import sys

SCORE = b'{"result":[0.1,0.9]}'
OK_SCORE = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
            + str(len(SCORE)).encode() + b"\r\n\r\n" + SCORE)
OK_HEALTH = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 7\r\n\r\nHealthy"


async def serve(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            method = lines[0].split(b" ", 1)[0]
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            if length:
                await reader.readexactly(length)
            writer.write(OK_SCORE if method == b"POST" else OK_HEALTH)
            await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def main(port):
    server = await asyncio.start_server(serve, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
