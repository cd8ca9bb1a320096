"""Upstream servers for the tests of the node's upstream side, each in its own process.

One small HTTP/1.1 server whose behaviour the test picks: it counts the TCP connections it
accepts and sees closed, can serve one request per connection without announcing it,
streams downloads and hashes uploads without holding them, can answer slowly, with an
error status, or with 503 for a share of its answers, and reports its counters on a separate control port, so that asking for
them never changes what is counted.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

import httptools

BLOCK = bytes(range(256)) * 256  # 64 KiB of download pattern

# What a one-shot server does with a keep-alive connection after its first response,
# never having said `Connection: close`:
AFTER_RESPONSE = "after-response"  # closes it at once
ON_NEXT_REQUEST = "on-next-request"  # closes it, unanswered, when the next request arrives


# --- the server, run as `python backends.py ...` -------------------------------------------


class Counters:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.values = {"connects": 0, "closed": 0, "requests": 0, "dropped": 0, "sent": 0, "answered": 0}

    def add(self, name: str, amount: int = 1) -> int:
        with self.lock:
            self.values[name] += amount
            return self.values[name]

    def snapshot(self) -> dict:
        with self.lock:
            return {**self.values, "open": self.values["connects"] - self.values["closed"]}


class Session:
    """One accepted connection, served on its own thread: parse, answer in order, count."""

    def __init__(self, sock: socket.socket, number: int, counters: Counters, options: argparse.Namespace):
        self.sock = sock
        self.number = number
        self.counters = counters
        self.options = options
        self.parser = httptools.HttpRequestParser(self)
        self.ready: deque[tuple[str, str, int, str, bool]] = deque()
        self.served = 0
        self.url = b""
        self.size = 0
        self.digest = hashlib.sha256()

    def on_message_begin(self) -> None:
        self.url, self.size, self.digest = b"", 0, hashlib.sha256()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        self.digest.update(body)

    def on_message_complete(self) -> None:
        self.ready.append((self.parser.get_method().decode(), self.url.decode("latin-1"), self.size,
                           self.digest.hexdigest(), self.parser.should_keep_alive()))

    def run(self) -> None:
        try:
            self.serve()
        except (OSError, httptools.HttpParserError):
            pass
        finally:
            self.sock.close()
            self.counters.add("closed")

    def serve(self) -> None:
        one_shot = self.options.one_shot
        while True:
            data = self.sock.recv(256 * 1024)
            if not data:
                return
            if self.served and one_shot == ON_NEXT_REQUEST:
                self.counters.add("dropped")
                return
            self.parser.feed_data(data)
            while self.ready:
                keep_alive = self.answer(*self.ready.popleft())
                if not keep_alive or one_shot == AFTER_RESPONSE:
                    return

    def answer(self, method: str, url: str, size: int, sha256: str, keep_alive: bool) -> bool:
        self.served += 1
        self.counters.add("requests")
        if self.options.delay:
            time.sleep(self.options.delay)
        parts = urlsplit(url)
        if parts.path == "/download":
            self.download(int(parse_qs(parts.query)["size"][0]), keep_alive)
            return keep_alive
        if parts.path == "/upload":
            answer = {"method": method, "size": size, "sha256": sha256}
        else:
            answer = {"pod": self.options.name, "method": method, "connection": self.number,
                      "served": self.served}
        body = json.dumps(answer).encode()
        self.sock.sendall(self.head(len(body), keep_alive, self.status()) + body)
        return keep_alive

    def status(self) -> int:
        """`--status`, or 503 for an even `--error-rate` share of all answers (the n-th answer
        fails when n x rate passes a whole number)."""
        rate = self.options.error_rate
        if rate:
            number = self.counters.add("answered")
            if int(number * rate) > int((number - 1) * rate):
                return 503
        return self.options.status

    def head(self, length: int, keep_alive: bool, status: int = 200) -> bytes:
        close = b"" if keep_alive else b"Connection: close\r\n"
        return b"HTTP/1.1 %d %s\r\nContent-Length: %d\r\n%s\r\n" % (
            status, HTTPStatus(status).phrase.encode(), length, close)

    def download(self, size: int, keep_alive: bool) -> None:
        self.sock.sendall(self.head(size, keep_alive))
        block = memoryview(BLOCK)
        left = size
        while left:
            piece = block[:min(left, len(block))]
            self.sock.sendall(piece)
            self.counters.add("sent", len(piece))
            left -= len(piece)


def listen(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)
    return sock


def report(control: socket.socket, counters: Counters) -> None:
    while True:
        conn, _ = control.accept()
        with conn:
            conn.sendall(json.dumps(counters.snapshot()).encode())


def exit_with(parent: int) -> None:
    """A test run that died without stopping this server must not leave it behind."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--control", type=int, required=True)
    parser.add_argument("--name", default="backend")
    parser.add_argument("--one-shot", choices=[AFTER_RESPONSE, ON_NEXT_REQUEST])
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before every answer")
    parser.add_argument("--status", type=int, default=200, help="the status of every answer")
    parser.add_argument("--error-rate", type=float, default=0.0, help="share of answers that are 503 instead")
    options = parser.parse_args(argv)
    counters = Counters()
    data = listen(options.port)
    control = listen(options.control)  # opened second: when it answers, the data port listens
    threading.Thread(target=report, args=(control, counters), daemon=True).start()
    threading.Thread(target=exit_with, args=(os.getppid(),), daemon=True).start()
    while True:
        sock, _ = data.accept()
        number = counters.add("connects")
        session = Session(sock, number, counters, options)
        threading.Thread(target=session.run, daemon=True).start()


# --- the handle tests hold -----------------------------------------------------------------


class Backend:
    """A backend process on a free port (or a given one, to come back where it was)."""

    def __init__(self, name: str = "backend", one_shot: str | None = None, delay: float = 0.0,
                 port: int | None = None, status: int = 200, error_rate: float = 0.0):
        from conftest import ENV, free_port, wait_port  # here: the server process needs no harness

        self.name = name
        self.port = port or free_port()
        self.control = free_port()
        args = [sys.executable, __file__, "--port", str(self.port), "--control", str(self.control),
                "--name", name, "--delay", str(delay), "--status", str(status), "--error-rate", str(error_rate)]
        if one_shot:
            args += ["--one-shot", one_shot]
        self.proc = subprocess.Popen(args, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.control, proc=self.proc)

    def server(self, **extra: object) -> dict:
        return {"address": "127.0.0.1", "port": self.port, **extra}

    def stats(self) -> dict:
        with socket.create_connection(("127.0.0.1", self.control), timeout=5) as sock:
            return json.loads(sock.makefile("rb").read())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


if __name__ == "__main__":
    main(sys.argv[1:])
