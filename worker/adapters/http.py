"""The worker's HTTP endpoints: /metrics for Prometheus, /healthz (liveness) and /readyz (readiness).

/healthz answers 200 while the consume loop has polled Kafka recently; it checks no dependency, so a
database outage (during which the loop keeps polling) does not get the worker restarted. /readyz answers
200 when the database answers and the worker holds partitions.

The server is bounded whatever the clients do: one thread reads every connection's request head
(non-blocking, so a half-sent request holds no thread), a connection that has not sent its whole head
within `timeout_seconds` is closed, at most `max_connections` heads are read at once (the oldest is
dropped for a new one), and complete requests are answered by a fixed pool of `threads` handler threads
from a queue of at most `queue_size` (beyond that: 503 at once). Each request gets one response and the
connection is closed.
"""

from __future__ import annotations

import contextlib
import io
import queue
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, make_wsgi_app

Check = Callable[[], tuple[bool, str]]

MAX_HEAD_BYTES = 16 * 1024  # a request line and headers; ours are GETs with a few headers
_BUSY = b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nbusy\n"


class _Handler(WSGIRequestHandler):
    """Answers one request whose head the server has already read."""

    def __init__(self, request: socket.socket, client_address: Any, server: _BoundedServer, head: bytes) -> None:
        self._head = head
        self._timeout = server.timeout_seconds
        super().__init__(request, client_address, server)

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self._timeout)  # bounds each write of the response
        self.rfile = io.BytesIO(self._head)

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes and probes every few seconds are not news."""


class _Pending:
    __slots__ = ("address", "deadline", "head")

    def __init__(self, address: Any, deadline: float) -> None:
        self.address = address
        self.deadline = deadline
        self.head = bytearray()


class _BoundedServer(WSGIServer):
    request_queue_size = 64  # the listen backlog: connections the kernel holds before we accept them

    def __init__(
        self,
        address: tuple[str, int],
        *,
        threads: int,
        timeout_seconds: float,
        max_connections: int,
        queue_size: int,
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        # Handlers are made by _answer with the head already read, not by socketserver's own loop.
        super().__init__(address, WSGIRequestHandler)
        self.socket.setblocking(False)
        self.timeout_seconds = timeout_seconds
        self._threads = threads
        self._max_connections = max_connections
        self._requests: queue.Queue[tuple[socket.socket, Any, bytes] | None] = queue.Queue(maxsize=queue_size)
        self._pending: dict[socket.socket, _Pending] = {}  # insertion order: oldest first
        self._wake_r, self._wake_w = socket.socketpair()
        self._stopping = threading.Event()
        self._workers: list[threading.Thread] = []

    # --- the reading thread ---

    def start_handlers(self) -> None:
        self._workers = [
            threading.Thread(target=self._answer, name=f"http-{n}", daemon=True) for n in range(self._threads)
        ]
        for worker in self._workers:
            worker.start()

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self.socket, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping.is_set():
                for key, _ in selector.select(timeout=min(poll_interval, self.timeout_seconds / 4)):
                    conn = key.fileobj
                    if conn is self.socket:
                        self._accept(selector)
                    elif conn is not self._wake_r:
                        assert isinstance(conn, socket.socket)
                        self._read(selector, conn)
                self._expire(selector)
            for conn in list(self._pending):
                self._drop(selector, conn)
        for _ in self._workers:  # never blocks: a handler that finds no sentinel ends on the stopping flag
            with contextlib.suppress(queue.Full):
                self._requests.put_nowait(None)

    def _accept(self, selector: selectors.BaseSelector) -> None:
        while True:
            try:
                conn, address = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. out of file descriptors: try again on the next round
                return
            if len(self._pending) >= self._max_connections:
                self._drop(selector, next(iter(self._pending)))
            conn.setblocking(False)
            self._pending[conn] = _Pending(address, time.monotonic() + self.timeout_seconds)
            selector.register(conn, selectors.EVENT_READ)

    def _read(self, selector: selectors.BaseSelector, conn: socket.socket) -> None:
        pending = self._pending.get(conn)
        if pending is None:
            return
        try:
            data = conn.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data or len(pending.head) + len(data) > MAX_HEAD_BYTES:
            self._drop(selector, conn)
            return
        pending.head += data
        if b"\r\n\r\n" not in pending.head and b"\n\n" not in pending.head:
            return
        selector.unregister(conn)
        del self._pending[conn]
        try:
            self._requests.put_nowait((conn, pending.address, bytes(pending.head)))
        except queue.Full:
            with contextlib.suppress(OSError):
                conn.send(_BUSY)
            conn.close()

    def _expire(self, selector: selectors.BaseSelector) -> None:
        now = time.monotonic()
        for conn, pending in list(self._pending.items()):
            if pending.deadline > now:
                break  # the rest came later
            self._drop(selector, conn)

    def _drop(self, selector: selectors.BaseSelector, conn: socket.socket) -> None:
        selector.unregister(conn)
        del self._pending[conn]
        conn.close()

    # --- the handler threads ---

    def _answer(self) -> None:
        while not self._stopping.is_set():
            try:
                item = self._requests.get(timeout=0.5)
            except queue.Empty:
                continue
            if item is None:
                return
            conn, address, head = item
            try:
                conn.setblocking(True)
                _Handler(conn, address, self, head)
            except Exception:
                self.handle_error(conn, address)
            finally:
                self.shutdown_request(conn)

    def shutdown(self) -> None:
        """Stop accepting and reading; handler threads end after the request each is answering."""
        if not self._stopping.is_set():
            self._stopping.set()
            with contextlib.suppress(OSError):
                self._wake_w.send(b"x")

    def join_handlers(self, deadline: float) -> bool:
        """Wait for the handler threads until `deadline` (monotonic), all sharing it; True if all ended.
        Requests still queued are closed unanswered."""
        for worker in self._workers:
            worker.join(timeout=max(0.0, deadline - time.monotonic()))
        while True:
            try:
                item = self._requests.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                with contextlib.suppress(OSError):
                    item[0].close()
        return not any(worker.is_alive() for worker in self._workers)

    def server_close(self) -> None:
        super().server_close()
        self._wake_r.close()
        self._wake_w.close()


def _app(registry: CollectorRegistry, live: Check, ready: Check) -> Callable[..., Iterable[bytes]]:
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path in ("/healthz", "/readyz"):
            ok, detail = (live if path == "/healthz" else ready)()
            start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")])
            return [f"{'ok' if ok else 'not ok'}: {detail}\n".encode()]
        result: Iterable[bytes] = metrics(environ, start_response)
        return result

    return app


class HttpEndpoints:
    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        *,
        live: Check,
        ready: Check,
        threads: int = 4,
        timeout_seconds: float = 5.0,
        max_connections: int = 64,
        queue_size: int = 16,
    ) -> None:
        self._server = _BoundedServer(
            (host, port),
            threads=threads,
            timeout_seconds=timeout_seconds,
            max_connections=max_connections,
            queue_size=queue_size,
        )
        self._server.set_app(_app(registry, live, ready))
        self._thread = threading.Thread(target=self._server.serve_forever, name="http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    def start(self) -> None:
        self._server.start_handlers()
        self._thread.start()

    def stop_accepting(self) -> None:
        """Accept and read no more requests (returns at once); the ones being answered go on until `stop`."""
        self._server.shutdown()

    def stop(self, timeout_s: float = 5.0) -> bool:
        """Stop serving within `timeout_s` in all (the reading thread and every handler share that bound,
        slow clients or not); True if every thread ended, False if some were left behind (daemon threads:
        they end with the process)."""
        deadline = time.monotonic() + max(0.0, timeout_s)
        self._server.shutdown()
        if self._thread.is_alive():
            self._thread.join(timeout=max(0.0, deadline - time.monotonic()))
        ended = self._server.join_handlers(deadline) and not self._thread.is_alive()
        if not self._thread.is_alive():
            self._server.server_close()
        return ended
