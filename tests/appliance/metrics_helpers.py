"""Running context/appliance/bin/flower-metrics as a process and scraping it (shared by the metrics tests)."""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from factory.harness.bareflower import free_port
from hostkit.host import stop_process
from hostkit.paths import CONTEXT_DIR
from hostkit.waiting import wait_until

EXPORTER = CONTEXT_DIR / "appliance" / "bin" / "flower-metrics"


@dataclass
class Exporter:
    process: subprocess.Popen
    port: int
    scheme: str = "http"
    ca: Path | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/metrics"

    def scrape(self, timeout: float = 10.0) -> str:
        context = ssl.create_default_context(cafile=str(self.ca)) if self.ca else None
        with urllib.request.urlopen(self.url, timeout=timeout, context=context) as reply:
            assert reply.status == 200
            assert reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            return reply.read().decode()

    def stop(self) -> None:
        stop_process(self.process)


def start_exporter(
    role: str, *args: str, path: str | None = None, ca: Path | None = None, timeout: float = 20.0
) -> Exporter:
    """The exporter on a free loopback port with the project's Python (prometheus-client is pinned there);
    ``path`` replaces PATH (fake or absent nvidia-smi/journalctl)."""
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if path is not None:
        env["PATH"] = path
    process = subprocess.Popen(
        [sys.executable, str(EXPORTER), role, "--port", str(port), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    exporter = Exporter(process, port, "https" if ca else "http", ca)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stdout.read().decode() if process.stdout else ""
            raise AssertionError(f"flower-metrics exited with {process.returncode}: {output}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return exporter
        except OSError:
            time.sleep(0.1)
    exporter.stop()
    raise AssertionError("flower-metrics did not listen in time")


def samples(text: str) -> dict[str, float]:
    """``name{labels}`` -> value of every sample line of an exposition."""
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            found[key] = float(value)
    return found


def promtool_check(text: str) -> None:
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == "", result.stdout + result.stderr


def get_url(url: str, timeout: float = 5.0) -> str:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return reply.read().decode()
    except urllib.error.HTTPError as error:
        return f"HTTP {error.code}"


def scrape_until(exporter: Exporter, done: Callable[[dict[str, float]], object], timeout: float = 20) -> str:
    """Scrape until ``done(samples)`` holds or ``timeout`` runs out (the caller asserts what it found);
    the exporter is stopped either way. Returns the last scrape."""
    last = {"text": ""}

    def scraped() -> bool:
        last["text"] = exporter.scrape()
        return bool(done(samples(last["text"])))

    try:
        with contextlib.suppress(TimeoutError):
            wait_until(scraped, timeout, interval=0.2, what="exporter samples")
    finally:
        exporter.stop()
    return last["text"]


UNREGISTERED = 'flower_keysync_key_events_total{event="unregistered"}'


def scrape_once(exporter: Exporter) -> str:
    """One scrape (the exporter stopped afterwards either way), checked by promtool."""
    try:
        text = exporter.scrape()
    finally:
        exporter.stop()
    promtool_check(text)
    return text
