"""A driver's record of one guest: a small JSON file beside the VM, written atomically, so a restarted
test cloud finds (and can clean up) the guests its drivers started; and a driver's guests by VM id."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, Self, TypeVar

from hostkit.errors import FactoryError
from hostkit.fileio import write_atomic
from hostkit.host import ProcessIdentity
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


@dataclass
class GuestRecord:
    """What a driver keeps of one guest. ``vm_id`` and the fields named in ``SAVED`` go to the JSON file
    ``RECORD`` in ``vm_dir`` (a :class:`ProcessIdentity` as its JSON); the rest lives in memory only."""

    RECORD: ClassVar[str] = ""
    SAVED: ClassVar[tuple[str, ...]] = ()

    vm_id: int
    vm_dir: Path
    terminating: bool = field(default=False, kw_only=True)
    gone: bool = field(default=False, kw_only=True)
    lock: threading.RLock = field(default_factory=threading.RLock, kw_only=True)

    @property
    def record_file(self) -> Path:
        return self.vm_dir / self.RECORD

    @property
    def console(self) -> Path:
        return self.vm_dir / "console.log"

    def save(self) -> None:
        record: dict[str, Any] = {"vm_id": self.vm_id}
        for name in self.SAVED:
            value = getattr(self, name)
            record[name] = value.to_json() if isinstance(value, ProcessIdentity) else value
        save_record(self.record_file, record)

    @classmethod
    def load(cls, vm_dir: Path) -> Self | None:
        """The guest recorded in ``vm_dir``, None when there is no record."""
        data = load_record(vm_dir / cls.RECORD)
        if data is None:
            return None
        values = {name: data[name] for name in cls.SAVED if data.get(name) is not None}
        for name, value in values.items():
            if isinstance(value, dict):
                values[name] = ProcessIdentity.from_json(value)
        return cls(vm_id=int(data["vm_id"]), vm_dir=vm_dir, **values)


G = TypeVar("G", bound=GuestRecord)


class Guests(Generic[G]):
    """A driver's guests by VM id, behind one lock (the cloud calls a driver from several threads)."""

    def __init__(self, driver: str) -> None:
        self.driver = driver
        self._by_id: dict[int, G] = {}
        self._lock = threading.Lock()

    def find(self, vm_id: int) -> G | None:
        with self._lock:
            return self._by_id.get(vm_id)

    def get(self, vm_id: int) -> G:
        guest = self.find(vm_id)
        if guest is None:
            raise DriverError(f"VM {vm_id}: not known to the {self.driver} driver (never launched here)")
        return guest

    def add(self, guest: G) -> G:
        """Keep a new ``guest``; refused while a guest of that VM id is not gone."""
        with self._lock:
            existing = self._by_id.get(guest.vm_id)
            if existing is not None and not existing.gone:
                raise DriverError(f"VM {guest.vm_id}: already launched")
            self._by_id[guest.vm_id] = guest
        return guest

    def add_found(self, guest: G) -> G:
        """Keep ``guest``, whose record a recovery or a sweep found on disk, in place of any other."""
        with self._lock:
            self._by_id[guest.vm_id] = guest
        return guest

    def known(self) -> list[int]:
        """The VM ids of the guests not gone, in order."""
        with self._lock:
            return sorted(vm_id for vm_id, guest in self._by_id.items() if not guest.gone)

    def terminate(self, vm_id: int, stop: Callable[[G], None], clean: Callable[[G], None]) -> None:
        """End a guest once: under its lock and unless it is gone already, mark it terminating, ``stop``
        it, clean its host side and mark it gone."""
        guest = self.get(vm_id)
        with guest.lock:
            if guest.gone:
                return
            guest.terminating = True
            stop(guest)
            clean(guest)
            guest.gone = True

    @contextlib.contextmanager
    def launching(self, guest: G, clean: Callable[[G], None]) -> Iterator[None]:
        """Hold ``guest``'s lock while it is prepared and started. A failure cleans its host side, marks it
        gone and is raised again; a host error as a DriverError naming the VM."""
        with guest.lock:
            try:
                yield
            except BaseException as error:
                clean(guest)
                guest.gone = True
                if isinstance(error, FactoryError) and not isinstance(error, DriverError):
                    raise DriverError(f"VM {guest.vm_id}: launch failed: {error}") from error
                raise
