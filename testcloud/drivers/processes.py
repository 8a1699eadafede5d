"""The host's processes as the drivers look for their own: each one's command line, read from /proc."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path


def command_lines() -> Iterator[tuple[int, list[str]]]:
    """(pid, argv) of every process on the host; one that ends or cannot be read meanwhile is passed over.
    ``argv`` ends with an empty word, as /proc/<pid>/cmdline ends with a NUL."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:  # gone, or not ours to read
            continue
        yield int(entry.name), raw.decode(errors="replace").split("\0")
