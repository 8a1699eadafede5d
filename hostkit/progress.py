"""Progress for long operations: one line per stage, and a counter for loops.

Lines go to stderr so that machine-readable output on stdout (``--format json``) stays clean.
On a terminal the counter redraws in place; elsewhere (CI logs) it prints one line per step.
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

    def iterate(self, items: Iterable[T], label: str, total: int | None = None) -> Iterator[T]:
        """Yield items while showing ``label [k/n]`` (a bar on a terminal)."""
        materialised = list(items)
        count = total if total is not None else len(materialised)
        interactive = hasattr(self.stream, "isatty") and self.stream.isatty()
        for index, item in enumerate(materialised, start=1):
            if interactive:
                width = 30
                filled = int(width * index / max(count, 1))
                self._write(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {index}/{count}")
            else:
                self._write(f"{label} [{index}/{count}]\n")
            yield item
        if interactive and count:
            self._write("\n")


DEFAULT = Progress()
