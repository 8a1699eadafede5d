"""What the test cloud's HTTP servers share: a threaded server that never dies of one bad request, and
that no client holds for ever.

- **Idle and slow requests time out.** Every read and write on a connection waits at most
  ``Server.idle_timeout`` seconds (a keep-alive connection with no next request, a stalled body); a whole
  request (request line, headers and body) must arrive within ``Server.request_timeout`` seconds, extended
  for large bodies at ``MIN_BODY_RATE`` bytes per second, so a client trickling one byte at a time is cut off
  too. A timed-out connection is closed without an answer.
- **Connections are bounded**: at most ``Server.max_per_client`` at once from one address and
  ``Server.max_connections`` in all; one more is answered 503 at once and closed, without a thread. A guest
  stalling hundreds of connections to OneGate only blocks itself.
"""

from __future__ import annotations

import io
import logging
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger("testcloud")

MAX_BODY = 64 * 2**20
IDLE_TIMEOUT = 30.0  # seconds one read or write may wait
REQUEST_TIMEOUT = 60.0  # seconds for a whole request (plus the time of a large body at MIN_BODY_RATE)
MIN_BODY_RATE = 1 * 2**20  # bytes per second a large body must at least arrive at
MAX_CONNECTIONS = 512
MAX_PER_CLIENT = 128
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 21\r\nConnection: close\r\n\r\ntoo many connections\n"
)


class BodyTooLarge(Exception):
    pass


class _DeadlineReader(io.RawIOBase):
    """A connection's reads: each waits at most ``idle`` seconds and none goes past ``deadline``."""

    def __init__(self, connection: socket.socket, idle: float) -> None:
        self.connection, self.idle, self.deadline = connection, idle, time.monotonic() + idle

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the request took too long")
        self.connection.settimeout(min(self.idle, remaining))
        try:
            return self.connection.recv_into(buffer)
        finally:
            self.connection.settimeout(self.idle)  # writes keep the idle timeout


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], app: object) -> None:
        super().__init__(address, handler)
        self.app = app
        self._thread: threading.Thread | None = None
        self.idle_timeout = IDLE_TIMEOUT
        self.request_timeout = REQUEST_TIMEOUT
        self.max_connections = MAX_CONNECTIONS
        self.max_per_client = MAX_PER_CLIENT
        self._open: Counter[str] = Counter()
        self._open_lock = threading.Lock()
        self._refused, self._refusal_logged = 0, -1e9

    def open_connections(self) -> int:
        with self._open_lock:
            return sum(self._open.values())

    def process_request(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        client = str(client_address[0]) if isinstance(client_address, tuple) else ""
        with self._open_lock:
            admitted = (
                sum(self._open.values()) < self.max_connections and self._open[client] < self.max_per_client
            )
            if admitted:
                self._open[client] += 1
        if not admitted:
            self._refused += 1
            if time.monotonic() - self._refusal_logged >= 10:  # one line per 10 s, not one per connection
                log.warning("refused %d connection(s), last from %s: too many open", self._refused, client)
                self._refused, self._refusal_logged = 0, time.monotonic()
            try:
                request.settimeout(1)
                request.sendall(_BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release(client)
            raise

    def process_request_thread(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release(str(client_address[0]) if isinstance(client_address, tuple) else "")

    def _release(self, client: str) -> None:
        with self._open_lock:
            self._open[client] -= 1
            if self._open[client] <= 0:
                del self._open[client]

    @property
    def port(self) -> int:
        return self.server_address[1]

    def start(self, name: str) -> None:
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.1}, name=name, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def handle_error(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: object
    ) -> None:
        log.exception("request from %s failed", client_address)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall
    server_version = "testcloud"
    sys_version = ""

    server: Server

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # socket.makefile's reader: the socket closes only once it is closed too
        self.connection.settimeout(self.server.idle_timeout)
        self._reader = _DeadlineReader(self.connection, self.server.idle_timeout)
        self.rfile = io.BufferedReader(
            self._reader, self.rbufsize if self.rbufsize > 0 else io.DEFAULT_BUFFER_SIZE
        )

    def handle_one_request(self) -> None:
        # The whole next request, from waiting for its first line to its last body byte, has one deadline.
        self._reader.deadline = time.monotonic() + self.server.idle_timeout + self.server.request_timeout
        super().handle_one_request()

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def read_body(self) -> bytes:
        """The request body (Content-Length bytes; none without the header), read by its deadline.

        Raises BodyTooLarge over MAX_BODY; a body that stalls or trickles raises TimeoutError, which
        BaseHTTPRequestHandler turns into a closed connection.
        """
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            return b""
        try:
            length = int(length_header)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY:
            raise BodyTooLarge(length_header)
        started = time.monotonic()
        self._reader.deadline = max(
            self._reader.deadline, started + self.server.request_timeout + length / MIN_BODY_RATE
        )
        body = self.rfile.read(length)
        if len(body) < length:  # the client closed the connection early
            self.close_connection = True
            raise TimeoutError(f"the body ended after {len(body)} of {length} bytes")
        return body

    def body_or_refusal(
        self, status: int, refusal: str, content_type: str = "text/plain; charset=utf-8"
    ) -> bytes | None:
        """The request body (:meth:`read_body`); None once a body over MAX_BODY was answered with
        ``status`` and ``refusal`` and the connection marked to close."""
        try:
            return self.read_body()
        except BodyTooLarge:
            self.close_connection = True
            self.send(status, refusal, content_type)
            return None

    def send(
        self,
        status: int,
        body: bytes | str,
        content_type: str = "text/plain; charset=utf-8",
        headers: dict[str, str] | None = None,
    ) -> None:
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
