"""Finding VM drivers by name, lazily, so the core runs before (or without) the real drivers.

A driver module ``testcloud.drivers.<name>`` offers ``create_driver(work_dir: Path) -> VMDriver``, or else a
class ``<Name>Driver`` taking the work directory (or nothing).
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

from testcloud.drivers.base import VMDriver


class DriverUnavailable(RuntimeError):
    pass


def load_driver(name: str, work_dir: Path) -> VMDriver:
    try:
        module = importlib.import_module(f"testcloud.drivers.{name}")
    except ImportError as error:
        raise DriverUnavailable(f"VM driver '{name}' is not available: {error}") from error
    factory = getattr(module, "create_driver", None)
    if callable(factory):
        return factory(work_dir)
    cls = getattr(module, f"{name.capitalize()}Driver", None)
    if cls is None:
        raise DriverUnavailable(
            f"module testcloud.drivers.{name} has no create_driver() nor {name.capitalize()}Driver"
        )
    parameters = inspect.signature(cls).parameters
    return cls(work_dir) if parameters else cls()
