"""The HTTP endpoints stay bounded whatever clients do: slow and half-sent requests hold no thread for long,
the thread count does not grow with connections, and /healthz keeps answering meanwhile."""

from __future__ import annotations

import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter

from worker.adapters.http import HttpEndpoints

TIMEOUT = 1.0  # the server's per-connection timeout in these tests (5 s by default)


@pytest.fixture
def endpoints() -> Iterator[HttpEndpoints]:
    registry = CollectorRegistry()
    Counter("backorder_test_total", "a series to scrape", registry=registry).inc()
    server = HttpEndpoints(
        "127.0.0.1",
        0,
        registry,
        live=lambda: (True, "polled 0.1 s ago"),
        ready=lambda: (False, "no partitions"),
        timeout_seconds=TIMEOUT,
    )
    server.start()
    yield server
    server.stop()


def get(server: HttpEndpoints, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def half_sent(server: HttpEndpoints) -> socket.socket:
    conn = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: worker\r\n")  # the blank line that ends the head never comes
    return conn


def closed_by_server(conn: socket.socket, wait_s: float = 0.05) -> bool:
    """Whether the server has closed `conn`, looked at for `wait_s`."""
    conn.settimeout(wait_s)
    try:
        return conn.recv(1024) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_the_endpoints_answer(endpoints: HttpEndpoints) -> None:
    assert get(endpoints, "/healthz") == (200, b"ok: polled 0.1 s ago\n")
    assert get(endpoints, "/readyz") == (503, b"not ok: no partitions\n")
    status, body = get(endpoints, "/metrics")
    assert status == 200 and b"backorder_test_total 1.0" in body


def test_200_half_sent_requests_hold_no_threads_and_healthz_still_answers(endpoints: HttpEndpoints) -> None:
    threads_before = threading.active_count()
    slow = [half_sent(endpoints) for _ in range(200)]
    try:
        check_bounded(endpoints, slow, threads_before)
    finally:
        for conn in slow:
            conn.close()


def check_bounded(endpoints: HttpEndpoints, slow: list[socket.socket], threads_before: int) -> None:
    time.sleep(0.2)
    threads_during = threading.active_count()
    started = time.monotonic()
    assert get(endpoints, "/healthz")[0] == 200
    answered_in = time.monotonic() - started
    print(
        f"threads before {threads_before}, with 200 half-sent requests {threads_during}; "
        f"/healthz in {answered_in:.3f} s"
    )
    assert threads_during <= threads_before
    assert answered_in < 2.0
    # Every slow connection is closed by the server once the timeout has passed.
    deadline = time.monotonic() + TIMEOUT + 2
    while time.monotonic() < deadline and not all(closed_by_server(conn) for conn in slow[-10:]):
        time.sleep(0.1)
    closed = sum(closed_by_server(conn) for conn in slow)
    print(f"closed by the server within {TIMEOUT + 2:.0f} s: {closed} of 200")
    assert closed == 200


def test_a_client_trickling_its_request_is_cut_off_at_the_timeout(endpoints: HttpEndpoints) -> None:
    conn = socket.create_connection(("127.0.0.1", endpoints.port), timeout=10)
    started = time.monotonic()
    cut_off = None
    for byte in b"GET /healthz HTTP/1.1\r\nHost: worker\r\nX-Padding: " + b"a" * 100:
        try:
            conn.sendall(bytes([byte]))
        except OSError:
            cut_off = time.monotonic() - started
            break
        if closed_by_server(conn):
            cut_off = time.monotonic() - started
            break
        time.sleep(0.05)
    conn.close()
    assert cut_off is not None and cut_off < TIMEOUT + 1.0, cut_off


def test_stop_returns_within_its_bound_while_slow_requests_hold_every_handler_and_fill_the_queue() -> None:
    release = threading.Event()

    def slow_check() -> tuple[bool, str]:  # as a client that does not read its answer holds a handler
        release.wait(30)
        return True, "slow"

    server = HttpEndpoints(
        "127.0.0.1",
        0,
        CollectorRegistry(),
        live=slow_check,
        ready=slow_check,
        threads=4,
        timeout_seconds=5.0,
        queue_size=4,
    )
    server.start()
    clients = []
    try:
        for _ in range(4 + 4):  # four held by the handler threads, four waiting in the full queue
            conn = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: worker\r\n\r\n")
            clients.append(conn)
        time.sleep(0.5)
        started = time.monotonic()
        ended = server.stop(1.0)
        took = time.monotonic() - started
        print(f"stop(1.0) with every handler held and the queue full: returned after {took:.2f} s")
        assert took < 1.5
        assert not ended  # the held handlers were left behind (daemon threads), not waited for
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", server.port), timeout=1).sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
    finally:
        release.set()
        for conn in clients:
            conn.close()


def test_stop_joins_idle_handlers_at_once(endpoints: HttpEndpoints) -> None:
    assert get(endpoints, "/healthz")[0] == 200
    started = time.monotonic()
    assert endpoints.stop(5.0)
    assert time.monotonic() - started < 1.0
