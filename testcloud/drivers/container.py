"""The container driver (VM_MAD ``lxc``): an image's root filesystem booted as a systemd container.

Per VM, under ``spec.vm_dir``:
- ``container/lower``: the image's root filesystem, loop-mounted read-only (the image is never written);
- ``container/upper`` + ``work``: the VM's own persistent layer; ``container/rootfs``: the overlay;
- ``context/``: the context files, bind-mounted read-only at ``/context`` in the guest (where upstream's
  LXC driver mounts the context disk: one-context reads a non-empty ``/context`` when it finds no
  CONTEXT-labelled disc); ``update_context`` replaces them and runs one-context's reconfiguration;
- ``console.log``: everything the container's console printed, across reboots;
- ``container.json``: what the driver made (loop device, namespace, links, supervisor process), so
  cleanup and ``recover`` after a test-cloud restart find everything.

The guest runs in its own network namespace ``flower-<tag>-vm<id>``; its ``eth<n>`` carry the NICs'
MACs and their veth peers ``fl<tag>-<id>-<n>`` sit on the test bridge. ``systemd-nspawn -b
--register=no --keep-unit`` runs under a small supervisor (``nspawn-supervisor.sh``) that restarts it
when the guest reboots. The guest counts as RUNNING once its systemd has reached ``basic.target``
(``systemctl is-system-running`` says starting, running or degraded): the container's equivalent of a
hypervisor reporting a started domain.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from hostkit import diskimage
from hostkit.host import (
    PROCESS_GONE,
    HostError,
    ProcessIdentity,
    children,
    mounts_under,
    process_start_time,
    run,
    same_pid_namespace,
)
from hostkit.waiting import wait_until
from testcloud.drivers import contextmedia, network
from testcloud.drivers.base import ContextSpec, ExecResult, GuestState, LaunchSpec
from testcloud.drivers.errors import DriverError
from testcloud.drivers.processes import command_lines
from testcloud.drivers.records import GuestRecord, Guests
from testcloud.drivers.rootimage import RootFilesystem, root_filesystem

SUPERVISOR = Path(__file__).with_name("nspawn-supervisor.sh")
GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What upstream's LXC driver runs in the guest after replacing its context (container.rb, restart_context).
RECONFIGURE_COMMAND = ("service", "one-context-reconfigure", "restart")
RECONFIGURE_TIMEOUT_S = 900.0
BOOTED_STATES = ("starting", "running", "degraded", "maintenance", "stopping")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]")


@dataclass
class _Container(GuestRecord):
    RECORD: ClassVar[str] = "container.json"
    SAVED: ClassVar[tuple[str, ...]] = ("namespace", "machine", "links", "loop", "image", "supervisor")

    namespace: str
    machine: str
    links: list[str] = field(default_factory=list)
    loop: str | None = None
    image: str = ""
    supervisor: ProcessIdentity | None = None
    process: subprocess.Popen[bytes] | None = None
    booted: bool = False

    @property
    def base(self) -> Path:
        return self.vm_dir / "container"

    @property
    def rootfs(self) -> Path:
        return self.base / "rootfs"

    @property
    def lower(self) -> Path:
        return self.base / "lower"

    @property
    def context_dir(self) -> Path:
        return self.vm_dir / "context"

    @property
    def state_prefix(self) -> Path:
        return self.vm_dir / "container"

    def supervisor_alive(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            return False
        return self.supervisor is not None and self.supervisor.alive()

    def exit_status(self) -> int | None:
        try:
            return int((self.vm_dir / "container.exit").read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def nspawn_pid(self) -> int | None:
        """nspawn of this VM: the supervisor's child, or (supervisor gone) found by its machine name."""
        if self.supervisor is not None and self.supervisor.alive():
            for pid in children(self.supervisor.pid):
                with contextlib.suppress(*PROCESS_GONE):
                    if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd-nspawn":
                        return pid
        return _find_nspawn(self.machine)

    def running(self) -> bool:
        """The supervisor or (orphaned, its supervisor killed) the container itself still runs."""
        return self.supervisor_alive() or _find_nspawn(self.machine) is not None

    def leader_pid(self) -> int | None:
        """PID (on the host) of the container's init: the child of nspawn in another pid namespace."""
        nspawn = self.nspawn_pid()
        if nspawn is None:
            return None
        for pid in children(nspawn):
            if not same_pid_namespace(pid):
                return pid
        return None


def _find_nspawn(machine: str) -> int | None:
    """A live systemd-nspawn process running ``--machine=<machine>`` (machine names are host-unique)."""
    wanted = f"--machine={machine}"
    for pid, argv in command_lines():
        if argv[0].endswith("systemd-nspawn") and wanted in argv and process_start_time(pid) is not None:
            return pid
    return None


def _mount_options(fstype: str) -> str:
    # Never replay a journal: the device is read-only and the image must stay byte-for-byte unchanged.
    return {"ext4": "ro,noload", "xfs": "ro,norecovery,nouuid"}[fstype]


def _unmount(path: Path) -> None:
    for _ in range(20):
        if subprocess.run(["umount", str(path)], capture_output=True).returncode == 0:
            return
        if path.resolve() not in mounts_under(path):
            return
        time.sleep(0.1)
    subprocess.run(["umount", "--lazy", str(path)], capture_output=True)


def _signal(pid: int | None, signum: int) -> None:
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


class ContainerDriver:
    """VMDriver for systemd-nspawn containers. ``cloud_tag`` (six hex digits, see ``network.cloud_tag``) names
    every host-global object this driver creates, so several test clouds can share the host."""

    name = "lxc"

    def __init__(
        self, cloud_tag: str, *, stop_timeout: float = 30.0, raw_cache_dir: Path | None = None
    ) -> None:
        network.link_prefix(cloud_tag)  # validates the tag
        self.tag = cloud_tag
        self.stop_timeout = stop_timeout
        self.raw_cache_dir = raw_cache_dir
        self._containers: Guests[_Container] = Guests("container")

    # ------------------------------------------------------------------------------------------ bookkeeping

    def _get(self, vm_id: int) -> _Container:
        return self._containers.get(vm_id)

    def _running(self, vm_id: int) -> tuple[_Container, int]:
        container = self._get(vm_id)
        leader = container.leader_pid() if not container.gone else None
        if leader is None:
            raise DriverError(f"VM {vm_id}: the container is not running")
        return container, leader

    # ------------------------------------------------------------------------------------------ launch

    def launch(self, spec: LaunchSpec) -> None:
        if not spec.disks:
            raise DriverError(f"VM {spec.vm_id}: no disk to boot")
        for nic in spec.nics:
            if nic.bridge != network.BRIDGE:
                raise DriverError(
                    f"VM {spec.vm_id}: NIC {nic.nic_id} wants bridge {nic.bridge!r}; only {network.BRIDGE}"
                )
        name = network.namespace_name(self.tag, spec.vm_id)
        container = self._containers.add(_Container(spec.vm_id, Path(spec.vm_dir), name, name))
        network.sweep_orphans()  # a killed cloud's guest namespace would still answer for its address
        with self._containers.launching(container, self._clean_host_side):
            self._prepare(container, spec)
            self._start(container)

    def _prepare(self, container: _Container, spec: LaunchSpec) -> None:
        root: RootFilesystem = root_filesystem(spec.disks[0], self.raw_cache_dir)
        container.vm_dir.mkdir(parents=True, exist_ok=True)
        (container.vm_dir / "container.exit").unlink(missing_ok=True)
        for directory in (
            container.lower,
            container.base / "upper",
            container.base / "work",
            container.rootfs,
        ):
            directory.mkdir(parents=True, exist_ok=True)
        container.image = str(spec.disks[0].image_path)
        container.loop = diskimage.attach_loop(root.path, offset=root.offset, size=root.size, read_only=True)
        container.save()  # from here on, cleanup knows about the loop device
        run(
            [
                "mount",
                "-t",
                root.fstype,
                "-o",
                _mount_options(root.fstype),
                container.loop,
                str(container.lower),
            ]
        )
        base = container.base
        overlay = f"lowerdir={container.lower},upperdir={base / 'upper'},workdir={base / 'work'}"
        run(["mount", "-t", "overlay", "overlay", "-o", overlay, str(container.rootfs)])
        contextmedia.write_context_directory(spec.context, container.context_dir)
        network.create_namespace(container.namespace)
        for nic in sorted(spec.nics, key=lambda nic: nic.nic_id):
            link = network.link_name(self.tag, spec.vm_id, nic.nic_id)
            container.links.append(link)
            container.save()
            network.create_veth_into_namespace(link, container.namespace, f"eth{nic.nic_id}", nic.mac)
            network.attach_to_bridge(link)

    def _nspawn_argv(self, container: _Container) -> list[str]:
        # The supervisor starts nspawn inside the VM's network namespace (see nspawn-supervisor.sh). nspawn
        # then sees no private network of its own and would drop CAP_NET_ADMIN, which the guest needs to
        # configure its eth<n>: keep it.
        return [
            "systemd-nspawn",
            "--quiet",
            f"--directory={container.rootfs}",
            "--boot",
            "--register=no",
            "--keep-unit",
            f"--machine={container.machine}",
            "--capability=CAP_NET_ADMIN",
            f"--bind-ro={container.context_dir}:/context",
            "--resolv-conf=off",
            "--timezone=off",
            "--link-journal=no",
            "--console=read-only",
            "--setenv=SYSTEMD_COLORS=0",
        ]

    def _start(self, container: _Container) -> None:
        with open(container.console, "ab") as console:
            container.process = subprocess.Popen(
                [
                    "bash",
                    str(SUPERVISOR),
                    str(container.state_prefix),
                    container.namespace,
                    *self._nspawn_argv(container),
                ],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        try:
            container.supervisor = ProcessIdentity.of(container.process.pid)
        except HostError as error:
            raise DriverError(
                f"VM {container.vm_id}: the container exited at once; see {container.console}"
            ) from error
        container.save()

    # ------------------------------------------------------------------------------------------ observe

    def state(self, vm_id: int) -> GuestState:
        container = self._containers.find(vm_id)
        if container is None:
            return GuestState.STOPPED
        with container.lock:
            if container.gone:
                return GuestState.STOPPED
            if not container.running():
                if container.terminating:
                    return GuestState.STOPPED
                return GuestState.STOPPED if container.exit_status() == 0 else GuestState.FAILED
            if container.booted:
                return GuestState.RUNNING
            leader = container.leader_pid()
            if leader is None:
                return GuestState.BOOTING
            result = self._nsenter(leader, ["systemctl", "is-system-running"], timeout=10)
            if result.stdout.strip() in BOOTED_STATES:
                container.booted = True
                return GuestState.RUNNING
            return GuestState.BOOTING

    def _nsenter(self, leader: int, argv: list[str], timeout: float) -> ExecResult:
        command = ["nsenter", "-t", str(leader), "-m", "-u", "-i", "-n", "-p", "-r", "-w", "--"]
        command += [
            "/usr/bin/env",
            "-i",
            f"PATH={GUEST_PATH}",
            "HOME=/root",
            "LANG=C.UTF-8",
            "TERM=dumb",
            *argv,
        ]
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            message = stderr.decode(errors="replace") + f"\n[timed out after {timeout:.0f} s]"
            return ExecResult(124, stdout.decode(errors="replace"), message)
        return ExecResult(
            process.returncode, stdout.decode(errors="replace"), stderr.decode(errors="replace")
        )

    def execute(self, vm_id: int, argv: list[str], timeout: float = 60.0) -> ExecResult:
        if not argv:
            raise DriverError(f"VM {vm_id}: empty command")
        _, leader = self._running(vm_id)
        return self._nsenter(leader, argv, timeout)

    def logs(self, vm_id: int) -> str:
        container = self._get(vm_id)
        try:
            text = container.console.read_bytes().decode(errors="replace")
        except FileNotFoundError:
            return ""
        return _ANSI.sub("", text).replace("\r\n", "\n")

    # ------------------------------------------------------------------------------------------ change

    def update_context(self, vm_id: int, context: ContextSpec) -> None:
        """Replace ``/context`` and have the guest's one-context re-run, as upstream's LXC driver does on
        one.vm.updateconf (src/vmm_mad/remotes/lxc/reconfigure: ``attach_context`` then
        ``restart_context``, i.e. ``service one-context-reconfigure restart`` run in the container, detached,
        its success not enforced; src/vmm_mad/remotes/lib/lxc/container.rb). A stopped guest reads the new
        context at its next boot. Each run's outcome is appended to ``<vm_dir>/reconfigure.log``."""
        container = self._get(vm_id)
        with container.lock:
            contextmedia.write_context_directory(context, container.context_dir)
            leader = container.leader_pid() if not container.gone else None
        if leader is None:
            return
        thread = threading.Thread(
            target=self._reconfigure, args=(container, leader), name=f"reconfigure-vm{vm_id}", daemon=True
        )
        thread.start()

    def _reconfigure(self, container: _Container, leader: int) -> None:
        started = time.monotonic()
        result = self._nsenter(leader, list(RECONFIGURE_COMMAND), timeout=RECONFIGURE_TIMEOUT_S)
        line = (
            f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {' '.join(RECONFIGURE_COMMAND)}: "
            f"exit {result.returncode} after {time.monotonic() - started:.1f} s"
        )
        detail = (result.stderr or result.stdout).strip()
        with contextlib.suppress(OSError), open(container.vm_dir / "reconfigure.log", "a") as log:
            log.write(line + (f": {detail[-500:]}" if detail and result.returncode else "") + "\n")

    def reboot(self, vm_id: int, hard: bool = False) -> None:
        container, leader = self._running(vm_id)
        with container.lock:
            if hard:
                (container.vm_dir / "container.restart").touch()
                _signal(leader, signal.SIGKILL)
            else:
                _signal(leader, signal.SIGINT)  # systemd: ctrl-alt-del.target, i.e. an orderly reboot

    def terminate(self, vm_id: int, hard: bool = False) -> None:
        self._containers.terminate(
            vm_id, lambda container: self._stop(container, hard), self._clean_host_side
        )

    def _stop(self, container: _Container, hard: bool) -> None:
        """An orderly poweroff (unless ``hard``), then SIGKILL to the guest's init, then to everything."""
        (container.vm_dir / "container.restart").unlink(missing_ok=True)
        if not hard:
            _signal(container.nspawn_pid(), signal.SIGTERM)  # nspawn -b: orderly poweroff of the guest
            self._wait_stopped(container, self.stop_timeout)
        if container.running():
            _signal(container.leader_pid(), signal.SIGKILL)
            self._wait_stopped(container, 5.0)
        if container.running():
            self._kill_everything(container)
            self._wait_stopped(container, 5.0)

    def _kill_everything(self, container: _Container) -> None:
        """SIGKILL nspawn without orphaning its container: nspawn is stopped first so that it cannot start
        a guest any more, then all its children (the guest's init, a half-started helper) are killed,
        twice to catch one being cloned meanwhile, then nspawn and the supervisor."""
        nspawn = container.nspawn_pid()
        _signal(nspawn, signal.SIGSTOP)
        if nspawn is not None:
            for _ in range(2):
                for child in children(nspawn):
                    _signal(child, signal.SIGKILL)
                time.sleep(0.1)
        _signal(container.supervisor.pid if container.supervisor_alive() else None, signal.SIGKILL)
        _signal(nspawn, signal.SIGKILL)

    def _wait_stopped(self, container: _Container, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: not container.running(), timeout, interval=0.05)

    def _clean_host_side(self, container: _Container) -> None:
        """Remove links, namespace, mounts and loop device; try every step. The VM's disk layer
        (``container/upper``) and console.log stay: a VM powered off and resumed keeps its disk, as on a
        hypervisor; the core deletes ``vm_dir`` when the VM is DONE."""
        for link in container.links:
            network.delete_link(link)
        with contextlib.suppress(HostError):
            network.delete_namespace(container.namespace)
        for mount_point in mounts_under(container.base):
            _unmount(mount_point)
        if container.loop:
            diskimage.detach_loop(container.loop)
        for mount_point in (container.rootfs, container.lower):
            with contextlib.suppress(OSError):  # rmdir, never rmtree: refuses if anything is still mounted
                mount_point.rmdir()
        shutil.rmtree(container.context_dir, ignore_errors=True)
        with contextlib.suppress(OSError):  # an empty directory; never anything mounted in this namespace
            (container.vm_dir / "container.cgroup").rmdir()
        for leftover in ("container.restart", "container.json", "container.exit"):
            (container.vm_dir / leftover).unlink(missing_ok=True)

    # ------------------------------------------------------------------------------------------ restart

    def recover(self, vm_id: int, spec: LaunchSpec) -> GuestState:
        container = _Container.load(Path(spec.vm_dir))
        if container is None:
            return GuestState.STOPPED
        self._containers.add_found(container)
        with container.lock:
            if container.running():
                return self.state(vm_id)
            status = container.exit_status()
            self._clean_host_side(container)
            container.gone = True
            return GuestState.STOPPED if status == 0 else GuestState.FAILED

    def known_vms(self) -> list[int]:
        return self._containers.known()

    def sweep(self) -> list[str]:
        """Terminate (hard) every container of this driver's cloud still running on the host, including ones
        from an earlier process, and remove their links and namespaces. Returns what was removed."""
        removed = []
        for vm_id in self.known_vms():
            self.terminate(vm_id, hard=True)
            removed.append(f"container VM {vm_id}")
        prefix = f"--machine={network.namespace_prefix(self.tag)}"
        for _, words in command_lines():
            if not any(word.startswith(prefix) for word in words):
                continue
            if len(words) > 3 and words[1] == str(SUPERVISOR):  # a supervisor: its state prefix
                vm_dir = Path(words[2]).parent
            elif words[0].endswith("systemd-nspawn"):  # an nspawn whose supervisor was killed
                directory = next((word for word in words if word.startswith("--directory=")), "")
                vm_dir = Path(directory.removeprefix("--directory=")).parent.parent
            else:
                continue
            orphan = _Container.load(vm_dir)
            if orphan is not None:
                self._containers.add_found(orphan)
                self.terminate(orphan.vm_id, hard=True)
                removed.append(f"container VM {orphan.vm_id} ({vm_dir})")
        removed += network.sweep(self.tag)
        return removed


def create_driver(work_dir: Path) -> ContainerDriver:
    """The test cloud's entry point (``testcloud.drivers.loader``): one driver per cloud, named after the
    cloud's driver work directory so that two clouds on the host never share a name."""
    return ContainerDriver(network.cloud_tag(work_dir))
