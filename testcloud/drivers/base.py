"""The contract between the test cloud's core (oned's role) and its VM drivers (the hypervisor's role).

The core owns VM records, states, address leases and context *contents*; a driver only turns a LaunchSpec into
a running guest and reports on it. Drivers must be safe to call from several threads for different VMs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Protocol


class GuestState(Enum):
    BOOTING = "booting"  # launched, not yet up (oned: BOOT)
    RUNNING = "running"  # the guest runs (oned: RUNNING)
    STOPPED = "stopped"  # the guest is gone after a shutdown or terminate (oned: EPILOG -> DONE)
    FAILED = "failed"  # the guest could not start or died unexpectedly (oned: BOOT_FAILURE / UNKNOWN)


@dataclass(frozen=True)
class DiskSpec:
    image_path: Path  # the image file in the datastore: never written by a driver
    image_format: str  # as `qemu-img info` reports it: raw, qcow2
    target: str  # vda, vdb, ...
    read_only: bool = False


@dataclass(frozen=True)
class NicSpec:
    nic_id: int
    ip: str
    mac: str
    bridge: str
    mask: str
    gateway: str | None = None


@dataclass(frozen=True)
class ContextSpec:
    """Files oned puts on the CONTEXT CD: ``context.sh``, ``token.txt`` (TOKEN=YES), FILES_DS files."""

    files: dict[str, bytes]
    label: str = "CONTEXT"


@dataclass(frozen=True)
class LaunchSpec:
    vm_id: int
    name: str
    disks: list[DiskSpec]
    nics: list[NicSpec]
    context: ContextSpec
    vm_dir: Path  # per-VM working directory owned by the driver (overlays, ISO, logs, pid files)
    cpu: float = 1.0
    memory_mb: int = 1024
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ExecResult:
    returncode: int
    stdout: str
    stderr: str


class VMDriver(Protocol):
    name: str  # shown as VM_MAD in HISTORY_RECORDS: "lxc" (container), "kvm" (qemu), "dummy"

    def launch(self, spec: LaunchSpec) -> None:
        """Start the guest and return quickly; progress is observed through state()."""

    def state(self, vm_id: int) -> GuestState: ...

    def execute(self, vm_id: int, argv: list[str], timeout: float = 60.0) -> ExecResult:
        """Run a command inside the running guest as root (not over the network)."""

    def logs(self, vm_id: int) -> str:
        """Console/boot log of the guest so far (for failure reports)."""

    def update_context(self, vm_id: int, context: ContextSpec) -> None:
        """Replace the guest's context (as oned does on one.vm.updateconf) and have the guest re-read it,
        as upstream's drivers do (LXC: ``service one-context-reconfigure restart``; qemu: the disc swap)."""

    def reboot(self, vm_id: int, hard: bool = False) -> None:
        """Restart the guest keeping its disks (the per-VM overlay), as a VM reboot does."""

    def terminate(self, vm_id: int, hard: bool = False) -> None:
        """Stop the guest and free everything the driver made for it (overlays, mounts, interfaces)."""

    def recover(self, vm_id: int, spec: LaunchSpec) -> GuestState:
        """After a test-cloud restart: re-attach to a guest still running from vm_dir, or report it gone."""
