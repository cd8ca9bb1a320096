"""Hold many idle keep-alive client connections open to a proxy (scenario c).

Each connection sends one request (the raw bytes of --request), reads the whole response
and then stays open, idle, as a browser's keep-alive connection would. When all are open
it prints `READY {...}` on stdout and waits for a line on stdin; it then prints
`DONE {"still_open": N}` (connections the server has not closed) and closes everything.
With --hold 0 it closes as soon as they are open (used to warm the proxy up).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time


def raise_nofile(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard == resource.RLIM_INFINITY else min(hard, max(soft, wanted))
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


async def read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length:
        await reader.readexactly(length)
    return status


async def main(args: argparse.Namespace) -> int:
    request = open(args.request, "rb").read()
    held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    failures: list[str] = []
    gate = asyncio.Semaphore(args.concurrency)
    started = time.monotonic()

    async def one() -> None:
        async with gate:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(args.host, args.port), 10)
                writer.write(request)
                status = await asyncio.wait_for(read_response(reader), 10)
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as error:
                failures.append(f"{type(error).__name__}: {error}")
                return
            if status != 200:
                failures.append(f"status {status}")
            held.append((reader, writer))

    await asyncio.gather(*(one() for _ in range(args.count)))
    print("READY " + json.dumps({"open": len(held), "failed": len(failures), "errors": sorted(set(failures))[:5],
                                 "seconds": round(time.monotonic() - started, 2)}), flush=True)
    if args.hold:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.readline)
    still_open = sum(1 for reader, writer in held if not reader.at_eof() and not writer.is_closing())
    for _, writer in held:
        writer.transport.abort()
    print("DONE " + json.dumps({"still_open": still_open}), flush=True)
    return 0 if not failures else 1


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, default=10000)
    parser.add_argument("--concurrency", type=int, default=50, help="connections being opened at once")
    parser.add_argument("--request", required=True, help="file with the raw request to send once per connection")
    parser.add_argument("--hold", type=int, default=1, help="1: wait for a stdin line before closing")
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse()
    raise_nofile(arguments.count + 256)
    try:
        import uvloop
    except ImportError:
        sys.exit(asyncio.run(main(arguments)))
    sys.exit(uvloop.run(main(arguments)))
