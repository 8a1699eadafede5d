"""The test cloud's network: one host bridge on one private /24, address leases shared by all clouds.

- ``flbr0`` carries ``10.231.64.1/24`` (the host: OneGate listens there). Guests get addresses from the
  same /24. Nothing is routed or forwarded off the bridge: IPv4 forwarding is off for it, an nftables
  table drops anything forwarded between the bridge and another interface, and there is no NAT.
- Guests reach the host itself only on the ports test clouds registered for them (OneGate's), ICMP
  echo and errors, and replies to connections the host opened: the same table's input chain answers
  everything else from the bridge with a reset. The allowed ports are one nftables set rebuilt, under the
  bridge's lock, from the records of the live users of the bridge: a cloud that stops or dies takes its
  ports with it.
- Several test clouds (xdist workers, other worktrees) share the bridge. Host-wide state lives under
  ``/run/flower-testcloud/``: ``leases/<ip>`` (who holds an address), ``flbr0-users/`` (who needs the
  bridge). Every entry records its owner's pid, start time and boot id: entries of dead processes are
  reclaimed.
- Host-side interfaces and namespaces are named after the cloud (``cloud_tag``) and the VM, so cleanup
  finds everything a cloud made: ``fl<tag>-<vmid>-<nic>`` (links), ``flower-<tag>-vm<vmid>`` (netns and
  nspawn machine name).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from hostkit.fileio import write_atomic
from hostkit.host import HostError, ProcessIdentity, run
from testcloud.drivers.processes import command_lines

BRIDGE = "flbr0"
SUBNET = ipaddress.IPv4Network("10.231.64.0/24")
HOST_ADDRESS = "10.231.64.1"
BRIDGE_MAC = "02:00:0a:e7:40:01"  # locally administered, OpenNebula's 02:00:<IP> form for the host address
NETMASK = str(SUBNET.netmask)
PREFIX_LENGTH = SUBNET.prefixlen
STATE_ROOT = Path(os.environ.get("FLOWER_TESTCLOUD_RUN", "/run/flower-testcloud"))
LEASE_DIR = STATE_ROOT / "leases"
NFT_TABLE = "flower_testcloud"
GUEST_PORTS_SET = "guest_ports"
# ICMP a guest may send to the host: ping, and the errors path MTU discovery and refused connections need.
ICMP_ALLOWED = "echo-request, destination-unreachable, time-exceeded, parameter-problem"

_TAG_PATTERN = re.compile(r"^[0-9a-f]{6}$")


# ---------------------------------------------------------------------------------------------- naming


def cloud_tag(state_dir: Path) -> str:
    """Six hex digits naming one test cloud on this host (from its state directory)."""
    return hashlib.sha256(str(Path(state_dir).resolve()).encode()).hexdigest()[:6]


def _check_port(port: int) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"a guest port must be a number from 1 to 65535, got {port!r}")
    return port


def _check_tag(tag: str) -> str:
    if not _TAG_PATTERN.match(tag):
        raise ValueError(f"cloud tag must be six lower-case hex digits, got {tag!r}")
    return tag


def link_name(tag: str, vm_id: int, nic_id: int) -> str:
    """Host-side interface (veth end or tap) of one NIC: ``fl<tag>-<vmid>-<nic>`` (at most 15 characters,
    the kernel's limit); past that, ``fl<tag>x<base36(vmid * 64 + nic)>``. Both start with ``fl<tag>``."""
    if not 0 <= nic_id < 64 or vm_id < 0:
        raise ValueError(f"no interface name for VM {vm_id} NIC {nic_id}")
    name = f"fl{_check_tag(tag)}-{vm_id}-{nic_id}"
    if len(name) <= 15:
        return name
    number, digits = vm_id * 64 + nic_id, ""
    while number:
        number, digit = divmod(number, 36)
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"[digit] + digits
    if len(digits) > 6:
        raise ValueError(f"no interface name for VM {vm_id}: id too large")
    return f"fl{tag}x{digits}"


def link_prefix(tag: str) -> str:
    return f"fl{_check_tag(tag)}"


def namespace_name(tag: str, vm_id: int) -> str:
    """Network namespace (and nspawn machine name) of one VM."""
    return f"flower-{_check_tag(tag)}-vm{vm_id}"


NAMESPACE_PATTERN = re.compile(r"^flower-[0-9a-f]{6}-vm[0-9]+$")


def namespace_prefix(tag: str) -> str:
    return f"flower-{_check_tag(tag)}-vm"


# ---------------------------------------------------------------------------------------------- files


def _write_record(path: Path, record: dict) -> None:
    write_atomic(path, json.dumps(record) + "\n")


def _record_files(directory: Path) -> list[Path]:
    """The record files in ``directory`` (none when it is missing), less dot files (locks, temporaries)."""
    if not directory.is_dir():
        return []
    return [path for path in sorted(directory.iterdir()) if not path.name.startswith(".")]


# ---------------------------------------------------------------------------------------------- leases


@dataclass(frozen=True)
class Lease:
    ip: str
    owner: str
    process: ProcessIdentity

    def live(self) -> bool:
        return self.process.alive()


class LeaseRegistry:
    """Host-wide address leases: one file per address, claimed and released under one lock.

    ``owner`` is a free string that names the holder (e.g. ``"<state_dir>#vm12"``). A claim by the same owner
    from a new process (a restarted test cloud) takes the lease over; a lease whose process is gone is stale
    and may be claimed by anyone.
    """

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory if directory is not None else LEASE_DIR

    def _path(self, ip: str) -> Path:
        address = ipaddress.IPv4Address(ip)  # raises ValueError on a malformed address
        return self.directory / str(address)

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read(self, path: Path) -> Lease | None:
        try:
            data = json.loads(path.read_text())
            return Lease(path.name, str(data["owner"]), ProcessIdentity.from_json(data["process"]))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            return Lease(path.name, "", ProcessIdentity(0, 0, ""))  # unreadable: treated as stale

    def holder(self, ip: str) -> Lease | None:
        """The live lease on ``ip``, or None if it is free or stale."""
        lease = self._read(self._path(ip))
        return lease if lease is not None and lease.live() else None

    def claim(self, ip: str, owner: str, pid: int | None = None) -> bool:
        """Take ``ip`` for ``owner`` (held by process ``pid``, default: this one); False if taken."""
        if not owner:
            raise ValueError("a lease needs a non-empty owner")
        path = self._path(ip)
        identity = ProcessIdentity.of(pid if pid is not None else os.getpid())
        with self._lock():
            current = self._read(path)
            if current is not None and current.live() and current.owner != owner:
                return False
            record = {"owner": owner, "process": identity.to_json()}
            _write_record(path, record)
            return True

    def claim_first(self, candidates: Iterable[str], owner: str, pid: int | None = None) -> str | None:
        """Claim the first free address of ``candidates``; None when all are taken."""
        for ip in candidates:
            if self.claim(ip, owner, pid):
                return ip
        return None

    def release(self, ip: str, owner: str) -> bool:
        """Free ``ip`` if ``owner`` holds it (live or stale); True when a lease was removed."""
        path = self._path(ip)
        with self._lock():
            current = self._read(path)
            if current is None or current.owner != owner:
                return False
            path.unlink(missing_ok=True)
            return True

    def leases(self, include_stale: bool = False) -> list[Lease]:
        found = []
        for path in _record_files(self.directory):
            lease = self._read(path)
            if lease is not None and (include_stale or lease.live()):
                found.append(lease)
        return found

    def reclaim_stale(self) -> list[str]:
        """Delete the lease files of dead owners; returns the freed addresses."""
        freed = []
        with self._lock():
            for lease in self.leases(include_stale=True):
                if not lease.live():
                    (self.directory / lease.ip).unlink(missing_ok=True)
                    freed.append(lease.ip)
        return freed


# ---------------------------------------------------------------------------------------------- bridge


def _link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def _write_sysctl(path: str, value: str) -> None:
    target = Path("/proc/sys", path)
    if target.exists() and target.read_text().strip() != value:
        target.write_text(value)


@dataclass(frozen=True)
class Bridge:
    """A host bridge shared by test clouds. The module functions use ``DEFAULT_BRIDGE`` (flbr0); tests can
    make a throw-away one (no address, own state directory) to exercise set-up and removal safely."""

    name: str
    address: str | None  # the host's address on it, or None
    prefix_length: int
    nft_table: str
    state_root: Path

    @property
    def users_dir(self) -> Path:
        return self.state_root / f"{self.name}-users"

    def leases(self) -> LeaseRegistry:
        return LeaseRegistry(self.state_root / "leases")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.state_root.mkdir(parents=True, exist_ok=True)
        with open(self.state_root / f"{self.name}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def exists(self) -> bool:
        return _link_exists(self.name)

    def ports(self) -> list[str]:
        directory = Path("/sys/class/net", self.name, "brif")
        return sorted(os.listdir(directory)) if directory.is_dir() else []

    def has_address(self) -> bool:
        listing = json.loads(run(["ip", "-j", "-4", "addr", "show", "dev", self.name]) or "[]")
        return any(
            entry.get("local") == self.address and entry.get("prefixlen") == self.prefix_length
            for link in listing
            for entry in link.get("addr_info", [])
        )

    def guard_rules(self, ports: Iterable[int] = ()) -> str:
        """nftables, one transaction that leaves the table in the same state however often it runs:

        - ``forward_guard``: drop anything forwarded between the bridge and any other interface (no way
          out);
        - ``input_guard``: from the bridge, the host accepts replies to its own connections, ICMP echo and
          errors, and TCP to the ports of the set ``guest_ports`` (``ports``); everything else is refused
          (TCP reset, ICMP port unreachable), so a guest never reaches a host socket bound to 0.0.0.0.

        The table is not deleted first: chains and the set are flushed and refilled in the same
        transaction, so there is never a moment without the guard.
        """
        table, bridge = f"inet {self.nft_table}", f'"{self.name}"'
        elements = ", ".join(str(port) for port in sorted(set(ports)))
        lines = [
            f"add table {table}",
            f"add chain {table} forward_guard {{ type filter hook forward priority -10; policy accept; }}",
            f"flush chain {table} forward_guard",
            f"add rule {table} forward_guard iifname {bridge} oifname != {bridge} drop",
            f"add rule {table} forward_guard oifname {bridge} iifname != {bridge} drop",
            f"add set {table} {GUEST_PORTS_SET} {{ type inet_service; }}",
            f"flush set {table} {GUEST_PORTS_SET}",
            *([f"add element {table} {GUEST_PORTS_SET} {{ {elements} }}"] if elements else []),
            f"add chain {table} input_guard {{ type filter hook input priority -10; policy accept; }}",
            f"flush chain {table} input_guard",
            f"add rule {table} input_guard iifname {bridge} ct state established,related accept",
            f"add rule {table} input_guard iifname {bridge} ct state invalid drop",
            f"add rule {table} input_guard iifname {bridge} icmp type {{ {ICMP_ALLOWED} }} accept",
            f"add rule {table} input_guard iifname {bridge} tcp dport @{GUEST_PORTS_SET} accept",
            f"add rule {table} input_guard iifname {bridge} meta l4proto tcp reject with tcp reset",
            f"add rule {table} input_guard iifname {bridge} reject",
        ]
        return "\n".join(lines) + "\n"

    def _install_guard(self) -> None:
        script = self.guard_rules(self.guest_ports())
        try:
            run(["nft", "-f", "-"], input=script.encode())
        except HostError:
            # Without nftables the guard is the kernel's forwarding switch: accept only if it is off.
            if Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() != "0":
                raise

    def _ensure_locked(self) -> None:
        if not self.exists():
            try:
                # A fixed address: a bridge without one takes the lowest of its ports' addresses and
                # changes it as guests come and go, leaving the guests' ARP entries for the host stale.
                run(["ip", "link", "add", self.name, "address", BRIDGE_MAC, "type", "bridge"])
            except HostError:
                if not self.exists():  # created meanwhile by a process that does not use our lock
                    raise
        if Path(f"/sys/class/net/{self.name}/address").read_text().strip() != BRIDGE_MAC:
            run(["ip", "link", "set", self.name, "address", BRIDGE_MAC])  # a bridge made before it had one
        _write_sysctl(f"net/ipv4/conf/{self.name}/forwarding", "0")
        _write_sysctl(f"net/ipv6/conf/{self.name}/disable_ipv6", "1")
        if self.address and not self.has_address():
            run(["ip", "addr", "replace", f"{self.address}/{self.prefix_length}", "dev", self.name])
        run(["ip", "link", "set", self.name, "up"])
        self._install_guard()

    def _user_file(self, user: str) -> Path:
        return self.users_dir / hashlib.sha256(user.encode()).hexdigest()[:16]

    def live_users(self) -> list[str]:
        if not self.users_dir.is_dir():
            return []
        return [str(record["user"]) for record in self._live_user_records()]

    def _live_user_records(self) -> list[dict]:
        """The records of users whose process lives; those of dead ones are deleted."""
        records = []
        for path in _record_files(self.users_dir):
            try:
                data = json.loads(path.read_text())
                alive = ProcessIdentity.from_json(data["process"]).alive()
            except (OSError, ValueError, KeyError, TypeError):
                alive = False
            if alive:
                records.append(data)
            else:
                path.unlink(missing_ok=True)
        return records

    def guest_ports(self) -> list[int]:
        """The host TCP ports guests may reach: those registered by live users of the bridge."""
        ports: set[int] = set()
        for record in self._live_user_records():
            for port in record.get("ports", []):
                if isinstance(port, int) and 0 < port < 65536:
                    ports.add(port)
        return sorted(ports)

    def ensure(self, user: str | None = None, ports: Iterable[int] | None = None) -> None:
        """Create the bridge, its address and the guards if missing; idempotent and race-safe.

        ``user`` (e.g. a test cloud's state directory) registers this process as needing the bridge
        until it calls ``remove_if_unused(user)`` or dies. ``ports`` are the host TCP ports this user
        serves guests on (its OneGate): guests may reach them while the user lives; None keeps those
        the user registered before.
        """
        wanted = None if ports is None else sorted({_check_port(port) for port in ports})
        if wanted and not user:
            raise ValueError("guest ports belong to a user of the bridge: name one")
        with self._locked():
            if user:
                self.users_dir.mkdir(parents=True, exist_ok=True)
                path = self._user_file(user)
                if wanted is None:
                    wanted = self._recorded_ports(path, user)
                record = {"user": user, "process": ProcessIdentity.current().to_json(), "ports": wanted}
                _write_record(path, record)
            self._ensure_locked()

    def allow_guest_ports(self, user: str, ports: Iterable[int]) -> None:
        """Let guests reach the host on ``ports`` (replacing ``user``'s earlier ones) while ``user``'s
        process lives; ``remove_if_unused(user)`` or its death withdraws them."""
        self.ensure(user, ports)

    @staticmethod
    def _recorded_ports(path: Path, user: str) -> list[int]:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return []
        if not isinstance(data, dict) or data.get("user") != user:
            return []
        try:  # a restarted cloud (new process) registers its own ports: the dead one's are not kept
            if ProcessIdentity.from_json(data["process"]) != ProcessIdentity.current():
                return []
        except (KeyError, TypeError, ValueError):
            return []
        return [port for port in data.get("ports", []) if isinstance(port, int) and 0 < port < 65536]

    def attach(self, link: str) -> None:
        """Put a host-side interface on the bridge (re-creating the bridge if it was just removed)."""
        with self._locked():
            self._ensure_locked()
            run(["ip", "link", "set", link, "master", self.name, "up"])

    def remove_if_unused(self, user: str | None = None) -> bool:
        """Remove the bridge and its guard unless an interface, a live lease or a live user needs it.

        Returns True when it is gone (removed now or already absent).
        """
        with self._locked():
            if user:
                self._user_file(user).unlink(missing_ok=True)
            if not self.exists():
                run(["nft", "delete", "table", "inet", self.nft_table], check=False)
                return True
            if self.ports() or self.leases().leases() or self.live_users():
                self._install_guard()  # the set loses the ports of the user that left
                return False
            run(["ip", "link", "del", self.name])
            run(["nft", "delete", "table", "inet", self.nft_table], check=False)
            return True


DEFAULT_BRIDGE = Bridge(BRIDGE, HOST_ADDRESS, PREFIX_LENGTH, NFT_TABLE, STATE_ROOT)


def ensure_bridge(user: str | None = None, ports: Iterable[int] | None = None) -> None:
    """``flbr0`` with ``10.231.64.1/24`` and the guards, created if missing (see Bridge.ensure)."""
    DEFAULT_BRIDGE.ensure(user, ports)


def allow_guest_ports(user: str, ports: Iterable[int]) -> None:
    """Guests on ``flbr0`` may reach the host on ``ports`` while ``user`` lives (see Bridge)."""
    DEFAULT_BRIDGE.allow_guest_ports(user, ports)


def attach_to_bridge(link: str) -> None:
    DEFAULT_BRIDGE.attach(link)


def remove_bridge_if_unused(user: str | None = None) -> bool:
    """Remove ``flbr0`` unless an interface, a live lease or a live user needs it (see Bridge)."""
    return DEFAULT_BRIDGE.remove_if_unused(user)


# ---------------------------------------------------------------------------------------------- links, netns


def create_namespace(name: str) -> None:
    if not Path("/run/netns", name).exists():
        run(["ip", "netns", "add", name])
    run(["ip", "-n", name, "link", "set", "lo", "up"])


def delete_namespace(name: str) -> None:
    if Path("/run/netns", name).exists():
        run(["ip", "netns", "delete", name])


def namespaces_with_prefix(prefix: str) -> list[str]:
    directory = Path("/run/netns")
    return (
        sorted(entry for entry in os.listdir(directory) if entry.startswith(prefix))
        if directory.is_dir()
        else []
    )


def create_veth_into_namespace(host_link: str, namespace: str, guest_link: str, mac: str) -> None:
    """A veth pair: ``host_link`` stays here (attach it to the bridge), the peer becomes ``guest_link`` with
    ``mac`` inside ``namespace``."""
    delete_link(host_link)
    run(
        [
            "ip",
            "link",
            "add",
            host_link,
            "type",
            "veth",
            "peer",
            "name",
            guest_link,
            "address",
            mac,
            "netns",
            namespace,
        ]
    )


def create_tap(name: str) -> None:
    delete_link(name)
    run(["ip", "tuntap", "add", "dev", name, "mode", "tap"])


def delete_link(name: str) -> None:
    if _link_exists(name):
        run(["ip", "link", "delete", name], check=False)


def links_with_prefix(prefix: str) -> list[str]:
    return sorted(entry for entry in os.listdir("/sys/class/net") if entry.startswith(prefix))


def orphan_namespaces(min_age: float = 120.0) -> list[str]:
    """Guest namespaces of any test cloud that no process lives in any more (a cloud killed before it could
    clean up). Their eth0 still holds a guest's address and answers for it on the bridge, so a new guest
    given that address would be unreachable. ``min_age`` (seconds) spares one a driver is setting up."""
    directory = Path("/run/netns")
    old_enough = []
    for name in namespaces_with_prefix("flower-"):
        try:
            age = time.time() - (directory / name).stat().st_mtime
        except FileNotFoundError:
            continue
        if NAMESPACE_PATTERN.match(name) and age >= min_age:
            old_enough.append(name)
    if not old_enough:  # no guest older than min_age: no need to scan /proc
        return []
    named = [words for _, words in command_lines()]
    # Nothing lives in it, and no supervisor names it (between a guest's reboots, for a moment, nothing
    # lives in a guest's namespace).
    return [
        name
        for name in old_enough
        if not any(word.endswith(name) for words in named for word in words)
        and not run(["ip", "netns", "pids", name], check=False).split()
    ]


def sweep_orphans(min_age: float = 120.0) -> list[str]:
    """Delete :func:`orphan_namespaces` (their veth pairs go with them); returns what was removed."""
    removed = []
    for name in orphan_namespaces(min_age):
        if not run(["ip", "netns", "pids", name], check=False).split():  # still empty, just before
            delete_namespace(name)
            removed.append(f"netns {name}")
    return removed


def sweep(tag: str) -> list[str]:
    """Remove every link and namespace named for cloud ``tag``; returns what was removed.

    Links first: deleting a namespace also destroys the host end of its veth, but asynchronously, so a
    namespace-first sweep saw that link or not depending on the machine's load."""
    removed = []
    for link in links_with_prefix(link_prefix(tag)):
        delete_link(link)
        removed.append(f"link {link}")
    for namespace in namespaces_with_prefix(namespace_prefix(tag)):
        delete_namespace(namespace)
        removed.append(f"netns {namespace}")
    return removed
