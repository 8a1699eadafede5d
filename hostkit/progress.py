"""Progress for long operations: one line per stage, and a counter for loops.

Lines go to stderr so that machine-readable output on stdout (``--format json``) stays clean; ``quiet``
(the command line's ``--quiet``) silences them. On a terminal the counter redraws one line in place with
the count, a bar and an ETA (the mean time per item so far times the items left). Elsewhere (CI logs) a
loop writes at most one line every ``LOG_INTERVAL_S`` seconds and one when it ends, so a quick stage is one
line and a stage of long steps (image builds) still shows it is alive.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TextIO, TypeVar

T = TypeVar("T")


class Progress:
    def __init__(self, stream: TextIO | None = None, quiet: bool = False) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.quiet = quiet

    def _write(self, text: str) -> None:
        if not self.quiet:
            self.stream.write(text)
            self.stream.flush()

    def line(self, message: str) -> None:
        self._write(f"==> {message}\n")

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Print ``==> name ...`` on entry and ``<== name: ok (1.2 s)`` or ``failed`` on exit."""
        started = time.monotonic()
        self._write(f"==> {name} ...\n")
        try:
            yield
        except BaseException:
            self._write(f"<== {name}: failed after {time.monotonic() - started:.1f} s\n")
            raise
        self._write(f"<== {name}: ok ({time.monotonic() - started:.1f} s)\n")

    def interactive(self) -> bool:
        return hasattr(self.stream, "isatty") and self.stream.isatty()

    def iterate(self, items: Iterable[T], label: str, total: int | None = None) -> Iterator[T]:
        """Yield items while showing ``label [k/n]`` with an ETA (a bar on a terminal)."""
        materialised = list(items)
        count = total if total is not None else len(materialised)
        interactive = self.interactive()
        started = last_line = time.monotonic()
        for index, item in enumerate(materialised):
            if interactive:
                self._write(f"\r{_counter(label, index, count, started)}")
            yield item
            now = time.monotonic()
            if not interactive and index + 1 < count and now - last_line >= LOG_INTERVAL_S:
                self._write(_counter(label, index + 1, count, started) + "\n")
                last_line = now
        elapsed = time.monotonic() - started
        if interactive:
            self._write(f"\r{_counter(label, count, count, started)}\n")
        elif count:
            self._write(f"{label} [{count}/{count}] done ({_clock(elapsed)})\n")


LOG_INTERVAL_S = 10.0
BAR_WIDTH = 30


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds + 0.5), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02}:{secs:02}" if hours else f"{minutes}:{secs:02}"


def _counter(label: str, done: int, count: int, started: float) -> str:
    """``label [####......] 3/10 eta 0:42`` (no ETA before the first item finished, none at the end)."""
    filled = int(BAR_WIDTH * done / max(count, 1))
    text = f"{label} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {done}/{count}"
    elapsed = time.monotonic() - started
    if 0 < done < count:
        text += f" eta {_clock(elapsed / done * (count - done))}"
    elif done == count:
        text += f" ({_clock(elapsed)})"
    return text


DEFAULT = Progress()
