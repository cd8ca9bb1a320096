"""Raw peers for the HTTP/1.1 protocol tests: upstream servers that record every byte and
misbehave on purpose, a strict client, and the config that puts a node between them.

Servers listen on 127.0.0.1 in daemon threads and are stopped (sockets shut, threads
joined) by `stop()`; every socket has a deadline, so nothing here can hang a test run.
Framing is parsed by this module's own small reader, never by the node's parser.
"""

from __future__ import annotations

import hashlib
import json
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from conftest import Node, free_port

SOCKET_DEADLINE = 30.0  # no peer here waits longer than this for anything


# --- framing, shared by both ends ----------------------------------------------------


class Stream:
    """Buffered, strict reading of HTTP/1.1 messages from one socket (CRLF only)."""

    def __init__(self, sock: socket.socket, record: Callable[[bytes], None] | None = None):
        self.sock = sock
        self.record = record
        self.buffer = b""

    def fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("peer closed the connection")
        if self.record is not None:
            self.record(data)
        self.buffer += data

    def line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            self.fill()
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def exact(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self.fill()
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def until_close(self) -> bytes:
        try:
            while True:
                self.fill()
        except EOFError:
            data, self.buffer = self.buffer, b""
            return data

    def head(self) -> tuple[bytes, list[tuple[str, str]]]:
        start = self.line()
        headers = []
        while line := self.line():
            name, colon, value = line.partition(b":")
            assert colon and name == name.strip(), f"malformed header line {line!r}"
            headers.append((name.decode("latin-1"), value.strip().decode("latin-1")))
        return start, headers

    def chunked(self) -> bytes:
        body = b""
        while True:
            size = int(self.line().split(b";")[0], 16)
            if size == 0:
                while self.line():
                    pass  # trailer fields
                return body
            body += self.exact(size)
            assert self.exact(2) == b"\r\n", "chunk data not followed by CRLF"


def header_values(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [value for key, value in headers if key.lower() == name.lower()]


# --- the client end ------------------------------------------------------------------


@dataclass
class Response:
    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    chunked: bool = False

    def values(self, name: str) -> list[str]:
        return header_values(self.headers, name)

    def get(self, name: str) -> str | None:
        values = self.values(name)
        assert len(values) <= 1, f"{name} repeated: {values}"
        return values[0] if values else None

    def json(self) -> dict:
        return json.loads(self.body)


def request(method: str, target: str, *headers: str, body: bytes = b"", host: str | None = "test.local",
            version: str = "HTTP/1.1") -> bytes:
    """The bytes of a request; Content-Length is added when there is a body and none given."""
    lines = [f"{method} {target} {version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines += headers
    if body and not any(h.lower().startswith(("content-length:", "transfer-encoding:")) for h in headers):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunked_body(*chunks: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks) + b"0\r\n\r\n"


class Client:
    """One raw client connection to a node port, reading responses strictly in order."""

    def __init__(self, port: int, timeout: float = 5.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.stream = Stream(self.sock)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self, to_head: bool = False) -> Response:
        """The next message, interim (1xx) ones included; `to_head` when answering a HEAD."""
        start, headers = self.stream.head()
        version, status, reason = start.decode("latin-1").split(" ", 2)
        response = Response(version, int(status), reason, headers)
        codings = response.values("Transfer-Encoding")
        if to_head or response.status < 200 or response.status in (204, 304):
            return response
        if codings:
            assert codings == ["chunked"], f"unexpected transfer coding {codings}"
            response.body = self.stream.chunked()
            response.chunked = True
        elif (length := response.get("Content-Length")) is not None:
            response.body = self.stream.exact(int(length))
        else:
            response.body = self.stream.until_close()
        return response

    def exchange(self, data: bytes) -> Response:
        self.send(data)
        return self.response(to_head=data.startswith(b"HEAD "))

    def readable(self, within: float) -> bool:
        return bool(self.stream.buffer) or bool(select.select([self.sock], [], [], within)[0])

    def closed(self, within: float = 5.0) -> bool:
        """True once the node closes the connection with nothing more sent; False on timeout."""
        self.sock.settimeout(within)
        try:
            extra = self.stream.buffer or self.sock.recv(65536)
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
        assert not extra, f"unexpected bytes before close: {extra[:200]!r}"
        return True


# --- the upstream end ----------------------------------------------------------------


@dataclass
class Received:
    """One request as an upstream saw it."""

    start: bytes
    headers: list[tuple[str, str]]
    body: bytes = b""

    def values(self, name: str) -> list[str]:
        return header_values(self.headers, name)


def read_request(stream: Stream) -> Received:
    start, headers = stream.head()
    received = Received(start, headers)
    if header_values(headers, "Transfer-Encoding") == ["chunked"]:
        received.body = stream.chunked()
    elif lengths := header_values(headers, "Content-Length"):
        received.body = stream.exact(int(lengths[0]))
    return received


class RawServer:
    """A TCP server whose `handler(stream, server)` runs in a thread per connection."""

    def __init__(self, handler: Callable[[Stream, RawServer], None]):
        self.handler = handler
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.bytes = bytearray()
        self.requests: list[Received] = []
        self.sockets: list[socket.socket] = []
        self.ended = 0  # connections the peer closed or that failed
        self.threads: list[threading.Thread] = []
        self.stopping = threading.Event()
        self.start_thread(self.accept_loop)

    # --- what a test reads -------------------------------------------------------------

    def server(self, **extra: object) -> dict:
        return {"address": "127.0.0.1", "port": self.port, **extra}

    def mark(self) -> int:
        with self.lock:
            return len(self.bytes)

    def since(self, mark: int) -> bytes:
        with self.lock:
            return bytes(self.bytes[mark:])

    def last_request(self) -> Received:
        with self.lock:
            return self.requests[-1]

    def ended_count(self) -> int:
        with self.lock:
            return self.ended

    # --- life cycle --------------------------------------------------------------------

    def start_thread(self, target: Callable, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self.threads.append(thread)
        thread.start()

    def accept_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                sock, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.settimeout(SOCKET_DEADLINE)
            with self.lock:
                self.sockets.append(sock)
            self.start_thread(self.serve, sock)

    def serve(self, sock: socket.socket) -> None:
        stream = Stream(sock, self.record)
        try:
            self.handler(stream, self)
        except (EOFError, OSError):
            pass
        finally:
            sock.close()
            with self.lock:
                self.ended += 1

    def record(self, data: bytes) -> None:
        with self.lock:
            self.bytes += data

    def remember(self, received: Received) -> None:
        with self.lock:
            self.requests.append(received)

    def stop(self) -> None:
        self.stopping.set()
        self.listener.close()
        with self.lock:
            sockets = list(self.sockets)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in self.threads:
            thread.join(1.0)


def describe(received: Received) -> bytes:
    """What the recording upstream answers: the request as it arrived, as JSON."""
    method, target, version = received.start.decode("latin-1").split(" ")
    return json.dumps({
        "method": method, "target": target, "version": version, "headers": received.headers,
        "body_length": len(received.body), "body_sha256": hashlib.sha256(received.body).hexdigest(),
    }).encode()


def answer_each_request(stream: Stream, server: RawServer) -> None:
    while True:
        try:
            received = read_request(stream)
        except EOFError:
            return
        server.remember(received)
        body = describe(received)
        head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                % len(body))
        stream.sock.sendall(head if received.start.startswith(b"HEAD ") else head + body)


def recording_upstream() -> RawServer:
    """Answers every request, keep-alive, with a JSON description of what it received."""
    return RawServer(answer_each_request)


def scripted_upstream(*steps: bytes | float, hold: bool = False) -> RawServer:
    """Per connection: read one request, send the byte steps (sleeping on numbers), close.

    With `hold`, keep the connection open (reading) after the script instead of closing.
    """
    def play(stream: Stream, server: RawServer) -> None:
        server.remember(read_request(stream))
        for step in steps:
            if isinstance(step, bytes):
                stream.sock.sendall(step)
            else:
                time.sleep(step)
        if hold:
            stream.until_close()
    return RawServer(play)


def silent_upstream() -> RawServer:
    """Accepts, reads the request, never answers."""
    return scripted_upstream(hold=True)


class FullBacklog:
    """A listener that never accepts, with its queue already full: new connects hang."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=0)
        self.port = self.listener.getsockname()[1]
        self.fillers = [socket.create_connection(("127.0.0.1", self.port), timeout=1.0)]

    def connects_hang(self) -> bool:
        probe = socket.socket()
        probe.settimeout(0.3)
        try:
            probe.connect(("127.0.0.1", self.port))
        except TimeoutError:
            return True
        except OSError:
            return False
        finally:
            probe.close()
        self.fillers.append(probe)
        return False

    def server(self) -> dict:
        return {"address": "127.0.0.1", "port": self.port}

    def stop(self) -> None:
        for sock in self.fillers:
            sock.close()
        self.listener.close()


def refused_server(**extra: object) -> dict:
    """A server entry for a loopback port nothing listens on."""
    return {"address": "127.0.0.1", "port": free_port(), **extra}


# --- the node between them -----------------------------------------------------------


def proxy_config(upstreams: dict[str, dict], settings: dict | None = None) -> tuple[dict, dict[str, int]]:
    """One application per upstream, each on its own free port; returns config and name → port.

    `upstreams` maps a name to the upstream's fields (at least `servers`).
    """
    ports = {name: free_port() for name in upstreams}
    config: dict = {
        "upstreams": [{"name": name, **fields} for name, fields in upstreams.items()],
        "applications": [
            {"name": name, "domains": ["*"], "ports": [ports[name]],
             "rules": [{"actions": [{"proxy": {"upstream": name}}]}]}
            for name in upstreams
        ],
    }
    if settings:
        config["settings"] = settings
    return config, ports


class Bench:
    """A node in front of raw peers: one application and port per upstream, plus any
    `applications` given whole; `ports` maps each application's name to its port."""

    def __init__(self, directory: Path, upstreams: dict[str, dict], peers: dict[str, object],
                 settings: dict | None = None, applications: Iterable[dict] = ()):
        config, self.ports = proxy_config(upstreams, settings)
        for application in applications:
            config["applications"].append(application)
            self.ports.setdefault(application["name"], application["ports"][0])
        self.peers = peers
        try:
            self.node = Node(directory, config)
        except BaseException:
            self.stop_peers()
            raise

    def client(self, application: str, timeout: float = 5.0) -> Client:
        return Client(self.ports[application], timeout)

    def log_record(self, request_id: str, timeout: float = 5.0) -> dict:
        def find() -> dict | None:
            return next((r for r in self.node.access_log() if r["request_id"] == request_id), None)
        return wait_for(find, timeout)

    def stop_peers(self) -> None:
        for peer in self.peers.values():
            peer.stop()

    def stop(self) -> None:
        self.node.stop()
        self.stop_peers()


def wait_for(predicate: Callable[[], object], timeout: float = 5.0) -> object:
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.05)
    return result
