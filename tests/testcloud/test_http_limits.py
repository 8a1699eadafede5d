"""Stalled and slow clients: every connection times out, and none can take all the server's threads
(loopback only; the servers are those of a dummy-driver cloud, with short timeouts)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pyone
import pytest

from testcloud import launcher
from testcloud.api.httpbase import Server


def _server(cloud: launcher.CloudHandle, name: str) -> Server:
    port = urlsplit(cloud.endpoints[name]).port
    (server,) = [server for server in cloud.servers if server.port == port]
    return server


@pytest.fixture
def short(cloud: launcher.CloudHandle) -> Iterator[launcher.CloudHandle]:
    for server in cloud.servers:
        server.idle_timeout, server.request_timeout = 1.0, 2.0
    yield cloud


def _stall(port: int, request: bytes, source: str = "127.0.0.1") -> socket.socket:
    """A connection that sends ``request`` (headers and part of a body) and then nothing."""
    connection = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    connection.sendall(request)
    return connection


def _closed_within(connection: socket.socket, seconds: float) -> bytes | None:
    """What the server sent before closing, or None if it still holds the connection after ``seconds``."""
    connection.settimeout(seconds)
    received = b""
    with contextlib.suppress(ConnectionResetError):
        try:
            while chunk := connection.recv(4096):
                received += chunk
        except TimeoutError:
            return None
    return received


RPC_HEAD = b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\nContent-Length: 4000\r\n\r\n<?xml"


def test_stalled_xmlrpc_bodies_time_out_and_others_are_answered(short: launcher.CloudHandle) -> None:
    port = _server(short, "xmlrpc").port
    stalled = [_stall(port, RPC_HEAD) for _ in range(50)]
    try:
        one: Any = pyone.OneServer(short.endpoints["xmlrpc"], session=short.auth)
        started = time.monotonic()
        assert one.system.version()
        assert time.monotonic() - started < 1.0, "a normal request waits for no stalled one"
        deadline = time.monotonic() + 10
        for connection in stalled:
            answer = _closed_within(connection, max(0.1, deadline - time.monotonic()))
            assert answer == b"", "a stalled body is closed without an answer after the timeout"
        assert time.monotonic() - started < 10
    finally:
        for connection in stalled:
            connection.close()


def test_a_trickled_request_is_cut_off_at_its_deadline(short: launcher.CloudHandle) -> None:
    port = _server(short, "onegate").port
    connection = _stall(port, b"PUT /vm HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
    started, closed = time.monotonic(), False
    try:
        while time.monotonic() - started < 8:  # one byte every 0.4 s: never idle for the 1 s idle timeout
            try:
                connection.sendall(b"x")
            except OSError:
                closed = True
                break
            if _closed_within(connection, 0.4) is not None:
                closed = True
                break
    finally:
        connection.close()
    assert closed, "a body trickling in one byte at a time still ends at the request deadline"
    assert time.monotonic() - started < 5, "closed after the 1 + 2 s deadline, not later"


def test_an_idle_keep_alive_connection_is_closed(short: launcher.CloudHandle) -> None:
    port = _server(short, "onegate").port
    connection = _stall(port, b"")
    try:
        assert _closed_within(connection, 5) == b""
    finally:
        connection.close()


def test_hundreds_of_stalled_connections_hold_a_bounded_number_of_threads(
    cloud: launcher.CloudHandle,
) -> None:
    # Default timeouts: the stalled connections stay until the test closes them.
    gate = _server(cloud, "onegate")
    threads_before = threading.active_count()
    head = b"PUT /vm HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nREADY"
    stalled = [_stall(gate.port, head, source="127.0.0.2") for _ in range(300)]
    try:
        time.sleep(0.5)
        assert gate.open_connections() == gate.max_per_client
        assert threading.active_count() - threads_before <= gate.max_per_client + 2
        refused = _closed_within(stalled[-1], 5)
        assert refused is not None and refused.startswith(b"HTTP/1.1 503 "), "one over the bound: 503, closed"
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", gate.port), timeout=5) as other:  # another client
            other.sendall(b"GET /vm HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = _closed_within(other, 5)
        assert answer is not None and answer.startswith(b"HTTP/1.1 401 "), answer  # no token: but answered
        assert time.monotonic() - started < 2
    finally:
        for connection in stalled:
            connection.close()
    deadline = time.monotonic() + 10
    while gate.open_connections() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert gate.open_connections() == 0, "closed connections give their place back"
