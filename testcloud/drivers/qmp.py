"""Minimal clients for QEMU's two JSON line protocols on unix sockets: QMP (the VM monitor) and the guest
agent (qemu-guest-agent inside the guest, reached through a virtio-serial port)."""

from __future__ import annotations

import json
import random
import socket
import time
from pathlib import Path
from typing import Any

from testcloud.drivers.errors import DriverError


class _JsonLines:
    def __init__(self, path: Path, timeout: float) -> None:
        self.path = path
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.socket.settimeout(timeout)
        try:
            self.socket.connect(str(path))
        except OSError as error:
            self.socket.close()
            raise DriverError(f"{path}: cannot connect: {error}") from error
        self.buffer = b""

    def close(self) -> None:
        self.socket.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def send(self, message: dict[str, Any]) -> None:
        self.socket.sendall(json.dumps(message).encode() + b"\n")

    def receive(self, deadline: float) -> dict[str, Any]:
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DriverError(f"{self.path}: no answer in time")
            self.socket.settimeout(remaining)
            try:
                chunk = self.socket.recv(65536)
            except TimeoutError as error:
                raise DriverError(f"{self.path}: no answer in time") from error
            if not chunk:
                raise DriverError(f"{self.path}: connection closed")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        line = line.lstrip(b"\xff")  # guest-sync-delimited's marker
        return json.loads(line) if line.strip() else self.receive(deadline)


class Monitor(_JsonLines):
    """QMP: ``with Monitor(path) as qmp: qmp.execute("query-status")``."""

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        super().__init__(path, timeout)
        deadline = time.monotonic() + timeout
        greeting = self.receive(deadline)
        if "QMP" not in greeting:
            self.close()
            raise DriverError(f"{path}: not a QMP socket")
        self.execute("qmp_capabilities")

    def execute(self, command: str, arguments: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
        self.send({"execute": command, **({"arguments": arguments} if arguments else {})})
        deadline = time.monotonic() + timeout
        while True:
            reply = self.receive(deadline)
            if "event" in reply:
                continue
            if "error" in reply:
                raise DriverError(f"QMP {command}: {reply['error'].get('desc', reply['error'])}")
            return reply.get("return")


class GuestAgent(_JsonLines):
    """qemu-guest-agent: synchronised on connect (guest-sync-delimited), then one command at a time."""

    def __init__(self, path: Path, timeout: float = 5.0) -> None:
        super().__init__(path, timeout)
        token = random.randrange(1, 2**31)
        self.send({"execute": "guest-sync-delimited", "arguments": {"id": token}})
        deadline = time.monotonic() + timeout
        while True:
            try:
                reply = self.receive(deadline)
            except DriverError as error:
                self.close()
                raise DriverError(
                    f"no guest agent answers on {path} (is qemu-guest-agent installed?)"
                ) from error
            if reply.get("return") == token:
                return

    def execute(self, command: str, arguments: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
        self.send({"execute": command, **({"arguments": arguments} if arguments else {})})
        reply = self.receive(time.monotonic() + timeout)
        if "error" in reply:
            raise DriverError(f"guest agent {command}: {reply['error'].get('desc', reply['error'])}")
        return reply.get("return")
