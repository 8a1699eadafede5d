"""Small helpers for the host side of the test cloud: running commands, identifying processes.

A process is identified by its pid *and* its start time (and the host's boot id), so a pid reused by another
process after the first one died is never mistaken for it. That matters for lease files and pid files that
outlive the processes that wrote them.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from hostkit.errors import FactoryError


class HostError(FactoryError):
    """A host operation (command, mount, network set-up) failed; the message names the operation."""


def run(argv: list[str], *, check: bool = True, timeout: float = 120.0, input: bytes | None = None) -> str:
    """Run a host command and return its stdout; on failure raise HostError naming the command and stderr."""
    try:
        completed = subprocess.run(argv, input=input, capture_output=True, timeout=timeout)
    except FileNotFoundError as error:
        raise HostError(f"{argv[0]}: command not found (run scripts/setup.sh)") from error
    except subprocess.TimeoutExpired as error:
        raise HostError(f"{' '.join(argv)}: timed out after {timeout:.0f} s") from error
    if check and completed.returncode != 0:
        message = completed.stderr.decode(errors="replace").strip() or completed.stdout.decode(
            errors="replace"
        )
        raise HostError(f"{' '.join(argv)}: exit status {completed.returncode}: {message.strip()[-1500:]}")
    return completed.stdout.decode(errors="replace")


def boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


# What reading /proc/<pid>/... raises when the process is gone: ENOENT, or ESRCH while it is reaped.
PROCESS_GONE = (FileNotFoundError, ProcessLookupError)


def process_start_time(pid: int) -> int | None:
    """Start time of a live (non-zombie) process in clock ticks since boot, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may contain spaces and parentheses: split after its closing parenthesis.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


@dataclass(frozen=True)
class ProcessIdentity:
    pid: int
    start_time: int
    boot: str

    @classmethod
    def of(cls, pid: int) -> ProcessIdentity:
        start = process_start_time(pid)
        if start is None:
            raise HostError(f"process {pid} is not running")
        return cls(pid, start, boot_id())

    @classmethod
    def current(cls) -> ProcessIdentity:
        return cls.of(os.getpid())

    def alive(self) -> bool:
        return self.boot == boot_id() and process_start_time(self.pid) == self.start_time

    def to_json(self) -> dict[str, object]:
        return {"pid": self.pid, "start_time": self.start_time, "boot": self.boot}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> ProcessIdentity:
        return cls(int(data["pid"]), int(data["start_time"]), str(data["boot"]))  # type: ignore[arg-type]


def children(pid: int) -> list[int]:
    """Direct children of a process (all its threads), empty if it is gone."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except PROCESS_GONE:
        return found
    for task in tasks:
        try:
            found.extend(
                int(child) for child in Path(f"/proc/{pid}/task/{task}/children").read_text().split()
            )
        except PROCESS_GONE:
            continue
    return found


def same_pid_namespace(pid: int) -> bool:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid") == os.readlink("/proc/self/ns/pid")
    except PROCESS_GONE:
        return True


def stop_process(process: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM a child that still runs, SIGKILL it if it has not ended after ``grace`` seconds; reaped."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=grace)


def mounts_under(directory: Path) -> list[Path]:
    """Mount points at or below ``directory`` in this mount namespace, deepest first."""
    root = str(directory.resolve())
    found: list[Path] = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mount_point = line.split()[4].replace("\\040", " ")
        if mount_point == root or mount_point.startswith(root + "/"):
            found.append(Path(mount_point))
    return sorted(found, key=lambda path: len(path.parts), reverse=True)
