"""Waiting for a condition with a deadline: the one loop every stage and test uses.

    value = wait_until(lambda: service_state() == "RUNNING" or None, timeout=300, interval=2,
                       what="service RUNNING")

``predicate`` returns a truthy value when done (returned to the caller); ``TimeoutError`` names ``what`` and
the timeout otherwise. ``error`` lets a caller raise its own exception type instead (e.g. ``FactoryError``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T | None],
    timeout: float,
    *,
    interval: float = 1.0,
    what: str = "condition",
    error: Callable[[str], Exception] = TimeoutError,
) -> T:
    """Call ``predicate`` until it returns something truthy, at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise error(f"{what}: not met within {timeout:g} s")
        time.sleep(min(interval, remaining))


def deadline_after(seconds: float) -> Callable[[], float]:
    """A countdown: the returned function gives the seconds left (never below 0)."""
    end = time.monotonic() + seconds
    return lambda: max(0.0, end - time.monotonic())
