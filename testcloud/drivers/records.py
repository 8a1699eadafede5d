"""A driver's record of one guest: a small JSON file beside the VM, written atomically, so a restarted
test cloud finds (and can clean up) the guests its drivers started."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hostkit.fileio import write_atomic
from testcloud.drivers.errors import DriverError


def save_record(path: Path, record: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(record, indent=1) + "\n")


def load_record(path: Path) -> dict[str, Any] | None:
    """The record at ``path``: None when there is none, a DriverError naming an unreadable one."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError as error:
        raise DriverError(f"{path}: unreadable driver record: {error}") from error
