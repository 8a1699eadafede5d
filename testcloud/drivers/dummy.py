"""The dummy driver: like oned's dummy VMM, a VM goes RUNNING without any guest.

It still does what a driver owes the core: it keeps a per-VM record in ``vm_dir`` (so a restarted cloud
re-attaches through ``recover``) and writes the context files it was given to ``vm_dir/context/``, where
tests read ``context.sh`` and ``token.txt`` exactly as a guest would see them.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

from testcloud.drivers.base import ContextSpec, ExecResult, GuestState, LaunchSpec


class DummyDriver:
    name = "dummy"

    def __init__(self, work_dir: Path | None = None) -> None:
        self._lock = threading.Lock()
        self._dirs: dict[int, Path] = {}
        self._states: dict[int, GuestState] = {}

    @staticmethod
    def _record(vm_dir: Path) -> Path:
        return vm_dir / "dummy-guest.json"

    def _write_context(self, vm_dir: Path, context: ContextSpec) -> None:
        directory = vm_dir / "context"
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        for name, data in context.files.items():
            (directory / name).write_bytes(data)

    def launch(self, spec: LaunchSpec) -> None:
        spec.vm_dir.mkdir(parents=True, exist_ok=True)
        self._write_context(spec.vm_dir, spec.context)
        self._record(spec.vm_dir).write_text(json.dumps({"vm_id": spec.vm_id, "name": spec.name}))
        with self._lock:
            self._dirs[spec.vm_id] = spec.vm_dir
            self._states[spec.vm_id] = GuestState.RUNNING

    def state(self, vm_id: int) -> GuestState:
        with self._lock:
            return self._states.get(vm_id, GuestState.STOPPED)

    def execute(self, vm_id: int, argv: list[str], timeout: float = 60.0) -> ExecResult:
        return ExecResult(127, "", "the dummy driver runs no guest")

    def logs(self, vm_id: int) -> str:
        return ""

    def update_context(self, vm_id: int, context: ContextSpec) -> None:
        with self._lock:
            vm_dir = self._dirs.get(vm_id)
        if vm_dir is not None:
            self._write_context(vm_dir, context)

    def reboot(self, vm_id: int, hard: bool = False) -> None:
        """Nothing to restart."""

    def terminate(self, vm_id: int, hard: bool = False) -> None:
        with self._lock:
            vm_dir = self._dirs.pop(vm_id, None)
            self._states.pop(vm_id, None)
        if vm_dir is not None:
            self._record(vm_dir).unlink(missing_ok=True)

    def recover(self, vm_id: int, spec: LaunchSpec) -> GuestState:
        if not self._record(spec.vm_dir).exists():
            return GuestState.STOPPED
        with self._lock:
            self._dirs[vm_id] = spec.vm_dir
            self._states[vm_id] = GuestState.RUNNING
        return GuestState.RUNNING


def create_driver(work_dir: Path) -> DummyDriver:
    return DummyDriver(work_dir)
