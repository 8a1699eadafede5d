"""The qemu driver (VM_MAD ``kvm``): a qcow2 or raw disk booted under QEMU with the CONTEXT CD-ROM.

Per VM, under ``spec.vm_dir``:
- ``disk-<target>.qcow2``: a copy-on-write overlay on the datastore image (``qemu-img create -b``): the image
  itself is only ever read;
- ``context.iso``: the context (``xorriso -as mkisofs -V CONTEXT -J -R``) on an IDE CD-ROM;
- ``console.log``: the serial console (``console=ttyS0``), appended across reboots;
- ``qemu.json``: the QEMU process, its sockets and taps, for cleanup and ``recover``.

NICs are tap devices ``fl<tag>-<id>-<n>`` on the test bridge with the NIC's MAC (virtio-net), so guests reach
each other and OneGate on 10.231.64.1. KVM is used only when a probe guest really runs under it (``/dev/kvm``
existing is not enough: nested KVM can hang); otherwise TCG with ``-cpu max``. QMP controls the VM (status,
ACPI power button, reset, CD change); ``execute`` goes through qemu-guest-agent on a virtio-serial port, so
only images with the agent support it (the test image has it).
"""

from __future__ import annotations

import base64
import contextlib
import math
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from hostkit import diskimage
from hostkit.host import HostError, ProcessIdentity, boot_id, run
from hostkit.waiting import wait_until
from testcloud.drivers import contextmedia, network
from testcloud.drivers.base import ContextSpec, ExecResult, GuestState, LaunchSpec
from testcloud.drivers.errors import DriverError
from testcloud.drivers.processes import command_lines
from testcloud.drivers.qmp import GuestAgent, Monitor
from testcloud.drivers.records import GuestRecord, Guests

QEMU = "qemu-system-x86_64"
GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SOCKET_DIR = network.STATE_ROOT / "qemu"  # unix socket paths must stay short (108 bytes)

# ---------------------------------------------------------------------------------------------- accelerator

# A 64 KiB "BIOS" whose reset vector (offset 0xFFF0) writes 0x2a to the isa-debug-exit port: QEMU then
# exits with status (0x2a << 1) | 1 = 85. A guest that cannot execute under KVM never gets there.
_PROBE_CODE = bytes([0xB0, 0x2A, 0xE6, 0xF4, 0xF4, 0xEB, 0xFD])  # mov al,0x2a; out 0xf4,al; hlt; jmp
_PROBE_EXIT = 85


def probe_accelerator(accel: str, timeout: float = 15.0) -> bool:
    """True when a minimal guest really runs under ``accel`` ("kvm" or "tcg") with the CPU model the
    driver would use. Here, for instance, ``/dev/kvm`` exists but ``-cpu host`` fails (nested KVM)."""
    with tempfile.TemporaryDirectory(prefix="flower-accel-probe-") as directory:
        rom = Path(directory) / "probe.rom"
        rom.write_bytes(b"\xf4" * 0xFFF0 + _PROBE_CODE + b"\xf4" * (16 - len(_PROBE_CODE)))
        cpu = "host" if accel == "kvm" else "max"  # the CPU model the driver would use with it
        argv = [
            QEMU,
            "-machine",
            f"pc,accel={accel}",
            "-cpu",
            cpu,
            "-nodefaults",
            "-display",
            "none",
            "-m",
            "16",
        ]
        argv += ["-bios", str(rom), "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]
        try:
            completed = subprocess.run(argv, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        except FileNotFoundError as error:
            raise DriverError(f"{QEMU} is not installed (run scripts/setup.sh)") from error
        return completed.returncode == _PROBE_EXIT


def detect_accelerator() -> str:
    """ "kvm" if it really works here, else "tcg"; ``FLOWER_TESTCLOUD_ACCEL`` overrides; cached per boot."""
    forced = os.environ.get("FLOWER_TESTCLOUD_ACCEL")
    if forced in ("kvm", "tcg"):
        return forced
    cache = network.STATE_ROOT / f"accel-{boot_id()}"
    with contextlib.suppress(FileNotFoundError):
        return cache.read_text().strip()
    accel = "kvm" if Path("/dev/kvm").exists() and probe_accelerator("kvm") else "tcg"
    network.STATE_ROOT.mkdir(parents=True, exist_ok=True)
    cache.write_text(accel + "\n")
    return accel


def _option(value: str) -> str:
    """A value inside a QEMU ``key=value,...`` option: commas are doubled."""
    return value.replace(",", ",,")


# ---------------------------------------------------------------------------------------------- VM record


@dataclass
class _Machine(GuestRecord):
    RECORD: ClassVar[str] = "qemu.json"
    SAVED: ClassVar[tuple[str, ...]] = ("tag", "taps", "disks", "iso", "process")

    tag: str
    taps: list[str] = field(default_factory=list)
    disks: list[str] = field(default_factory=list)
    iso: str = ""
    process: ProcessIdentity | None = None

    @property
    def monitor_path(self) -> Path:
        return SOCKET_DIR / f"{self.tag}-{self.vm_id}.qmp"

    @property
    def agent_path(self) -> Path:
        return SOCKET_DIR / f"{self.tag}-{self.vm_id}.qga"

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()

    def monitor(self) -> Monitor:
        return Monitor(self.monitor_path)


class QemuDriver:
    """VMDriver for QEMU guests. ``cloud_tag`` names the host-global objects (taps, sockets) of one cloud."""

    name = "kvm"

    def __init__(self, cloud_tag: str, *, accel: str | None = None, stop_timeout: float = 60.0) -> None:
        network.link_prefix(cloud_tag)  # validates the tag
        self.tag = cloud_tag
        self._accel = accel
        self.stop_timeout = stop_timeout
        self._machines: Guests[_Machine] = Guests("qemu")

    @property
    def accel(self) -> str:
        if self._accel is None:
            self._accel = detect_accelerator()
        return self._accel

    def _get(self, vm_id: int) -> _Machine:
        return self._machines.get(vm_id)

    def _live(self, vm_id: int) -> _Machine:
        machine = self._get(vm_id)
        if machine.gone or not machine.alive():
            raise DriverError(f"VM {vm_id}: QEMU is not running")
        return machine

    # ------------------------------------------------------------------------------------------ launch

    def launch(self, spec: LaunchSpec) -> None:
        if not spec.disks:
            raise DriverError(f"VM {spec.vm_id}: no disk to boot")
        for nic in spec.nics:
            if nic.bridge != network.BRIDGE:
                raise DriverError(f"VM {spec.vm_id}: NIC {nic.nic_id} wants bridge {nic.bridge!r}")
        machine = self._machines.add(_Machine(spec.vm_id, Path(spec.vm_dir), self.tag))
        with self._machines.launching(machine, self._clean_host_side):
            self._start(machine, self._prepare(machine, spec))

    @staticmethod
    def _disk_arguments(machine: _Machine, spec: LaunchSpec) -> list[str]:
        """One qcow2 overlay per disk, on the image as its backing file (kept across a poweroff)."""
        argv: list[str] = []
        for index, disk in enumerate(spec.disks):
            info = diskimage.image_info(Path(disk.image_path))
            overlay = machine.vm_dir / f"disk-{disk.target}.qcow2"
            machine.disks.append(str(overlay))
            machine.save()
            image = str(Path(disk.image_path).resolve())
            if not overlay.exists() or diskimage.image_info(overlay).backing_file != image:
                run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", info.format, "-b", image, str(overlay)])
            # else: a VM resumed after a poweroff boots on the overlay it left
            drive = f"file={_option(str(overlay))},if=none,id=disk{index},format=qcow2,discard=unmap"
            if disk.read_only:
                drive += ",readonly=on"
            argv += ["-drive", drive, "-device", f"virtio-blk-pci,drive=disk{index},bootindex={index + 1}"]
        return argv

    def _prepare(self, machine: _Machine, spec: LaunchSpec) -> list[str]:
        machine.vm_dir.mkdir(parents=True, exist_ok=True)
        SOCKET_DIR.mkdir(parents=True, exist_ok=True)
        accel = self.accel
        argv = [
            QEMU,
            "-name",
            f"guest={_option(spec.name)},process={network.namespace_name(self.tag, spec.vm_id)}",
            "-machine",
            f"pc,accel={accel}",
            "-cpu",
            "host" if accel == "kvm" else "max",
            "-smp",
            str(max(1, math.ceil(spec.cpu))),
            "-m",
            str(spec.memory_mb),
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-shutdown",
            "-device",
            "virtio-rng-pci",
            "-chardev",
            f"file,id=console,path={_option(str(machine.console))},append=on",
            "-serial",
            "chardev:console",
            "-qmp",
            f"unix:{machine.monitor_path},server=on,wait=off",
            "-chardev",
            f"socket,id=agent,path={machine.agent_path},server=on,wait=off",
            "-device",
            "virtio-serial",
            "-device",
            "virtserialport,chardev=agent,name=org.qemu.guest_agent.0",
            "-pidfile",
            str(machine.vm_dir / "qemu.pid"),
            "-daemonize",
        ]
        argv += self._disk_arguments(machine, spec)
        iso = machine.vm_dir / "context.iso"
        contextmedia.write_context_iso(spec.context, iso)
        machine.iso = str(iso)
        argv += ["-drive", f"file={_option(str(iso))},if=none,id=context,media=cdrom,readonly=on,format=raw"]
        argv += ["-device", "ide-cd,drive=context,id=context-cd,bus=ide.1"]
        for nic in sorted(spec.nics, key=lambda nic: nic.nic_id):
            tap = network.link_name(self.tag, spec.vm_id, nic.nic_id)
            machine.taps.append(tap)
            machine.save()
            network.create_tap(tap)
            network.attach_to_bridge(tap)
            argv += ["-netdev", f"tap,id=net{nic.nic_id},ifname={tap},script=no,downscript=no"]
            argv += ["-device", f"virtio-net-pci,netdev=net{nic.nic_id},mac={nic.mac}"]
        machine.save()
        return argv

    def _start(self, machine: _Machine, argv: list[str]) -> None:
        completed = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if completed.returncode != 0:
            raise DriverError(f"VM {machine.vm_id}: QEMU did not start: {completed.stderr.strip()[-1500:]}")
        pid = int((machine.vm_dir / "qemu.pid").read_text().strip())
        machine.process = ProcessIdentity.of(pid)
        machine.save()

    # ------------------------------------------------------------------------------------------ observe

    def state(self, vm_id: int) -> GuestState:
        machine = self._machines.find(vm_id)
        if machine is None or machine.gone:
            return GuestState.STOPPED
        with machine.lock:
            if not machine.alive():
                return GuestState.STOPPED if machine.terminating else GuestState.FAILED
            try:
                with machine.monitor() as monitor:
                    status = monitor.execute("query-status")["status"]
            except DriverError:
                return GuestState.BOOTING
            if status in ("running", "paused"):
                return GuestState.RUNNING
            if status == "shutdown":  # the guest powered itself off (-no-shutdown keeps QEMU for us)
                return GuestState.STOPPED
            if status in ("guest-panicked", "internal-error", "io-error"):
                return GuestState.FAILED
            return GuestState.BOOTING

    def execute(self, vm_id: int, argv: list[str], timeout: float = 60.0) -> ExecResult:
        if not argv:
            raise DriverError(f"VM {vm_id}: empty command")
        machine = self._live(vm_id)
        environment = ["-i", f"PATH={GUEST_PATH}", "HOME=/root", "LANG=C.UTF-8", "TERM=dumb"]
        arguments = {"path": "/usr/bin/env", "arg": [*environment, *argv], "capture-output": True}
        with GuestAgent(machine.agent_path) as agent:
            pid = agent.execute("guest-exec", arguments)["pid"]

            def exited() -> dict | None:
                reply = agent.execute("guest-exec-status", {"pid": pid})
                return reply if reply.get("exited") else None

            try:
                status = wait_until(exited, timeout, interval=0.1)
            except TimeoutError:
                return ExecResult(124, "", f"[timed out after {timeout:.0f} s]")

        def decoded(key: str) -> str:
            return base64.b64decode(status.get(key, "")).decode(errors="replace")

        code = status.get("exitcode", 128 + int(status.get("signal", 0)))
        return ExecResult(int(code), decoded("out-data"), decoded("err-data"))

    def logs(self, vm_id: int) -> str:
        machine = self._get(vm_id)
        try:
            return machine.console.read_bytes().decode(errors="replace").replace("\r\n", "\n")
        except FileNotFoundError:
            return ""

    # ------------------------------------------------------------------------------------------ change

    def update_context(self, vm_id: int, context: ContextSpec) -> None:
        """A new CONTEXT ISO swapped into the CD-ROM, as oned does on updateconf."""
        machine = self._live(vm_id)
        with machine.lock:
            old = Path(machine.iso)
            new = machine.vm_dir / f"context-{time.time_ns()}.iso"
            contextmedia.write_context_iso(context, new)
            # force: the guest's kernel keeps the tray locked; a real cloud swaps the disc regardless.
            arguments = {
                "force": True,
                "id": "context-cd",
                "filename": str(new),
                "format": "raw",
                "read-only-mode": "read-only",
            }
            try:
                with machine.monitor() as monitor:
                    monitor.execute("blockdev-change-medium", arguments)
            except DriverError:
                new.unlink(missing_ok=True)
                raise
            machine.iso = str(new)
            machine.save()
            old.unlink(missing_ok=True)

    def reboot(self, vm_id: int, hard: bool = False) -> None:
        machine = self._live(vm_id)
        with machine.lock:
            if not hard:
                with contextlib.suppress(DriverError), GuestAgent(machine.agent_path) as agent:
                    agent.send({"execute": "guest-shutdown", "arguments": {"mode": "reboot"}})
                    return  # no reply comes: the guest is going down
            with machine.monitor() as monitor:
                monitor.execute("system_reset")

    def terminate(self, vm_id: int, hard: bool = False) -> None:
        self._machines.terminate(vm_id, lambda machine: self._stop(machine, hard), self._clean_host_side)

    def _stop(self, machine: _Machine, hard: bool) -> None:
        """The ACPI power button (unless ``hard``), then QMP ``quit``, then SIGKILL."""
        if machine.alive() and not hard:
            with contextlib.suppress(DriverError), machine.monitor() as monitor:
                monitor.execute("system_powerdown")  # ACPI power button, as a VM shutdown does
            self._wait(machine, lambda: not machine.alive() or self._status(machine) == "shutdown")
        if machine.alive():
            with contextlib.suppress(DriverError), machine.monitor() as monitor:
                monitor.execute("quit")
            self._wait(machine, lambda: not machine.alive(), 10.0)
        if machine.alive() and machine.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(machine.process.pid, signal.SIGKILL)
            self._wait(machine, lambda: not machine.alive(), 10.0)

    def _status(self, machine: _Machine) -> str:
        try:
            with machine.monitor() as monitor:
                return str(monitor.execute("query-status")["status"])
        except DriverError:
            return "unknown"

    def _wait(self, machine: _Machine, done: Callable[[], bool], timeout: float | None = None) -> None:
        with contextlib.suppress(TimeoutError):
            wait_until(done, self.stop_timeout if timeout is None else timeout, interval=0.2)

    def _clean_host_side(self, machine: _Machine) -> None:
        """Remove taps, ISOs and sockets; every step is tried. The disk overlays and console.log stay: a VM
        powered off and resumed keeps its disks; the core deletes ``vm_dir`` when the VM is DONE."""
        for tap in machine.taps:
            network.delete_link(tap)
        for path in [machine.iso, *machine.vm_dir.glob("context*.iso")]:
            if path:
                Path(path).unlink(missing_ok=True)
        for path in (
            machine.monitor_path,
            machine.agent_path,
            machine.vm_dir / "qemu.pid",
            machine.record_file,
        ):
            path.unlink(missing_ok=True)

    # ------------------------------------------------------------------------------------------ restart

    def recover(self, vm_id: int, spec: LaunchSpec) -> GuestState:
        machine = _Machine.load(Path(spec.vm_dir))
        if machine is None:
            return GuestState.STOPPED
        self._machines.add_found(machine)
        if machine.alive():
            return self.state(vm_id)
        with machine.lock:
            self._clean_host_side(machine)
            machine.gone = True
        return GuestState.FAILED

    def known_vms(self) -> list[int]:
        return self._machines.known()

    def sweep(self) -> list[str]:
        """Terminate (hard) every QEMU guest of this cloud on the host, including ones from an earlier
        process, and remove its taps. Returns what was removed."""
        removed = []
        for vm_id in self.known_vms():
            self.terminate(vm_id, hard=True)
            removed.append(f"qemu VM {vm_id}")
        marker = f"process={network.namespace_prefix(self.tag)}"
        for _, words in command_lines():
            if words[0] != QEMU or not any(marker in word for word in words) or "-pidfile" not in words:
                continue
            vm_dir = Path(words[words.index("-pidfile") + 1]).parent
            orphan = _Machine.load(vm_dir)
            if orphan is not None:
                self._machines.add_found(orphan)
                self.terminate(orphan.vm_id, hard=True)
                removed.append(f"qemu VM {orphan.vm_id} ({vm_dir})")
        with contextlib.suppress(HostError):
            removed += network.sweep(self.tag)
        return removed


def create_driver(work_dir: Path) -> QemuDriver:
    """The test cloud's entry point (``testcloud.drivers.loader``), as for the container driver."""
    return QemuDriver(network.cloud_tag(work_dir))
