"""Accepted TLS connections after their context is chosen: the handshake, then an asyncio
transport for the client connection, with OpenSSL reading and writing the socket itself.

A non-blocking `ssl.SSLSocket` is driven from the loop's reader and writer callbacks: no
memory buffers copied between the socket and OpenSSL, no coroutine per handshake (50-90 µs
less per connection than uvloop's TLS transport, docs/benchmarks.md#tls). Policy is not
decided here: `listener.py` chooses the context and the protocol.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable

HIGH_WATER, LOW_WATER = 64 * 1024, 16 * 1024  # bytes written but not yet taken by the socket
WAIT = (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError, InterruptedError)


class TlsHandshake:
    """Runs the server handshake on `sock`; `done(sock)` or `failed()` once, `failed` also
    when it does not finish within `timeout` seconds."""

    __slots__ = ("loop", "sock", "fd", "timer", "done", "failed", "writing")

    def __init__(self, sock: ssl.SSLSocket, timeout: float, done: Callable[[ssl.SSLSocket], None],
                 failed: Callable[[], None]):
        self.loop = asyncio.get_running_loop()
        self.sock, self.fd = sock, sock.fileno()
        self.done, self.failed = done, failed
        self.writing = False  # waiting for the socket to take the rest of a flight
        self.timer = self.loop.call_later(timeout, self.fail)
        self.loop.add_reader(self.fd, self.step)
        self.step()

    def step(self) -> None:
        try:
            self.sock.do_handshake()
        except ssl.SSLWantReadError:
            self.want_write(False)
            return
        except ssl.SSLWantWriteError:
            self.want_write(True)
            return
        except (OSError, ValueError):  # ssl.SSLError is an OSError
            self.fail()
            return
        self.stop()
        self.done(self.sock)

    def want_write(self, wanted: bool) -> None:
        if wanted != self.writing:
            self.writing = wanted
            if wanted:
                self.loop.add_writer(self.fd, self.step)
            else:
                self.loop.remove_writer(self.fd)

    def stop(self) -> None:
        self.timer.cancel()
        self.loop.remove_reader(self.fd)
        self.want_write(False)

    def fail(self) -> None:
        self.stop()
        self.failed()


class TlsTransport(asyncio.Transport):
    """The transport of one client connection over a finished handshake. Writes the socket
    cannot take wait in a buffer (the protocol is paused above HIGH_WATER); close sends
    close_notify once the buffer is out, without waiting for the client's."""

    def __init__(self, sock: ssl.SSLSocket, protocol: asyncio.Protocol, peername: tuple):
        super().__init__()
        self.loop = asyncio.get_running_loop()
        self.sock, self.fd, self.protocol, self.peername = sock, sock.fileno(), protocol, peername
        self.buffer = bytearray()
        self.closing = self.lost = self.reading_paused = self.writing = self.protocol_paused = False
        self.read_waits_for_write = False  # OpenSSL must write (a TLS 1.3 KeyUpdate answer) to read on
        protocol.connection_made(self)
        if not self.closing:
            self.loop.add_reader(self.fd, self.read_ready)

    # --- reading ----------------------------------------------------------------------

    def read_ready(self) -> None:
        while not self.reading_paused and not self.closing:
            try:
                data = self.sock.recv(65536)
            except ssl.SSLWantWriteError:
                self.read_waits_for_write = True
                self.want_write(True)
                return
            except WAIT:
                return
            except (OSError, ValueError) as error:
                self.lose(error)
                return
            if not data:  # close_notify, or the client closed (a missing close_notify is an EOF too)
                if not self.protocol.eof_received():
                    self.close()
                return
            self.protocol.data_received(data)

    def pause_reading(self) -> None:
        if not self.reading_paused and not self.closing:
            self.reading_paused = True
            self.loop.remove_reader(self.fd)

    def resume_reading(self) -> None:
        if self.reading_paused and not self.closing:
            self.reading_paused = False
            self.loop.add_reader(self.fd, self.read_ready)
            if self.sock.pending():  # already decrypted: the socket will not wake us for it
                self.loop.call_soon(self.read_ready)

    def is_reading(self) -> bool:
        return not self.reading_paused and not self.closing

    # --- writing ----------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.lost or not data:
            return
        if not self.buffer:
            try:
                sent = self.sock.send(data)
            except WAIT:
                sent = 0
            except (OSError, ValueError) as error:
                self.lose(error)
                return
            if sent == len(data):
                return
            data = memoryview(data)[sent:]
            self.want_write(True)
        # (A write OpenSSL could not finish is retried with these same bytes first, as it requires.)
        self.buffer += data
        if len(self.buffer) > HIGH_WATER and not self.protocol_paused:
            self.protocol_paused = True
            self.protocol.pause_writing()

    def writelines(self, chunks) -> None:
        self.write(b"".join(chunks))

    def write_ready(self) -> None:
        if self.read_waits_for_write:
            self.read_waits_for_write = False
            if not self.buffer:
                self.want_write(False)
            self.read_ready()
            return
        try:
            sent = self.sock.send(self.buffer)
        except WAIT:
            return
        except (OSError, ValueError) as error:
            self.lose(error)
            return
        del self.buffer[:sent]
        if self.protocol_paused and len(self.buffer) <= LOW_WATER:
            self.protocol_paused = False
            self.protocol.resume_writing()
        if not self.buffer:
            self.want_write(False)
            if self.closing:
                self.finish()

    def want_write(self, wanted: bool) -> None:
        if wanted != self.writing:
            self.writing = wanted
            if wanted:
                self.loop.add_writer(self.fd, self.write_ready)
            else:
                self.loop.remove_writer(self.fd)

    def get_write_buffer_size(self) -> int:
        return len(self.buffer)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return LOW_WATER, HIGH_WATER

    def can_write_eof(self) -> bool:
        return False

    # --- closing ----------------------------------------------------------------------

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if self.closing:
            return
        self.closing = True
        self.loop.remove_reader(self.fd)
        if not self.buffer:
            self.finish()

    def finish(self) -> None:
        try:
            self.sock.unwrap()  # sends close_notify; the client's is not waited for
        except (OSError, ValueError):
            pass
        self.lose(None)

    def abort(self) -> None:
        self.closing = True
        self.lose(None)

    def lose(self, error: Exception | None) -> None:
        if self.lost:
            return
        self.lost = self.closing = True
        self.loop.remove_reader(self.fd)
        self.want_write(False)
        self.buffer.clear()
        self.sock.close()
        self.loop.call_soon(self.protocol.connection_lost, error)

    def get_extra_info(self, name: str, default: object = None) -> object:
        if name == "peername":
            return self.peername
        if name in ("ssl_object", "socket"):
            return self.sock
        if name == "sslcontext":
            return self.sock.context
        return default
