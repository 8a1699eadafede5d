"""The container driver booting the tiny Debian test image with OpenNebula's one-context (real
systemd-nspawn)."""

from __future__ import annotations

import base64
import http.server
import json
import os
import subprocess
import threading
import time
import urllib.parse
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ClassVar

import paramiko
import pytest

from hostkit import diskimage
from hostkit.host import mounts_under, process_start_time
from testcloud.drivers import network
from testcloud.drivers.base import ContextSpec, GuestState
from testcloud.drivers.container import ContainerDriver, _find_nspawn
from testcloud.drivers.errors import DriverError

from .conftest import Guests, SshKey, context_sh, mac_for

pytestmark = pytest.mark.cloud


def _eth0_addresses(guests: Guests, vm_id: int) -> list[tuple[str, int]]:
    shown = json.loads(guests.run(vm_id, "ip", "-j", "-4", "addr", "show", "dev", "eth0"))
    return [(entry["local"], entry["prefixlen"]) for entry in shown[0]["addr_info"]]


def _ssh(ip: str, key: SshKey, command: str, timeout: float = 60, user: str = "root") -> str:
    deadline = time.monotonic() + timeout
    while True:
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        try:
            client.connect(
                ip, username=user, pkey=key.private, timeout=5, allow_agent=False, look_for_keys=False
            )
            _, stdout, _ = client.exec_command(command, timeout=20)
            return stdout.read().decode()
        except (OSError, paramiko.SSHException):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
        finally:
            client.close()


def test_the_agent_configures_the_guest_from_the_context_and_ssh_works(
    guests: Guests, ssh_key: SshKey, test_image: Path
) -> None:
    before = diskimage.sha256_file(test_image)
    context = {
        "SET_HOSTNAME": "flower-test-1",
        "SSH_PUBLIC_KEY": ssh_key.public_line,
        "DNS": "10.231.64.1",
        "START_SCRIPT_BASE64": base64.b64encode(
            b"#!/bin/sh\necho started >/root/start-script-ran\n"
        ).decode(),
    }
    spec = guests.spec(1, context)
    guests.driver.launch(spec)
    guests.wait(1)
    guests.contextualized(1)

    assert _eth0_addresses(guests, 1) == [(spec.nics[0].ip, 24)]
    eth0_mac = guests.run(1, "cat", "/sys/class/net/eth0/address").strip()
    assert eth0_mac == mac_for(spec.nics[0].ip)
    assert guests.run(1, "hostname").strip() == "flower-test-1"
    assert ssh_key.public_line in guests.run(1, "cat", "/root/.ssh/authorized_keys")
    assert "nameserver 10.231.64.1" in guests.run(1, "cat", "/etc/resolv.conf")
    assert guests.run(1, "cat", "/root/start-script-ran") == "started\n"
    # one_env as one-context's loc-16-gen-env writes it: what a shell sourcing it sees
    one_env = guests.run(1, "sh", "-c", '. /var/run/one-context/one_env && echo "$VMID $ETH0_IP"')
    assert one_env == f"1 {spec.nics[0].ip}\n"
    assert guests.run(1, "ls", "/context") == "context.sh\n"
    read_only = guests.driver.execute(1, ["touch", "/context/x"])
    assert read_only.returncode != 0, "the context is read-only in the guest"

    guests.wait_for(
        1, lambda: guests.run(1, "systemctl", "is-system-running").strip() != "starting", "boot end"
    )
    assert guests.run(1, "systemctl", "is-system-running").strip() == "running", "no failed unit"
    assert "ordering cycle" not in guests.driver.logs(1)

    # The guest's own view of the network: only its eth0 and lo, not the host's interfaces.
    assert sorted(guests.run(1, "ls", "/sys/class/net").split()) == ["eth0", "lo"]

    # SSH from the host over the test bridge, with the key from the context.
    assert (
        _ssh(spec.nics[0].ip, ssh_key, "hostname; systemctl is-system-running").split()[0] == "flower-test-1"
    )

    guests.driver.terminate(1)
    assert diskimage.sha256_file(test_image) == before, "booting must not write the image"


def test_execute_and_logs(guests: Guests) -> None:
    guests.driver.launch(guests.spec(2, {"SET_HOSTNAME": "logs-test"}))
    guests.wait(2)
    result = guests.driver.execute(2, ["sh", "-c", "echo out; echo err >&2; exit 7"])
    assert (result.returncode, result.stdout, result.stderr) == (7, "out\n", "err\n")
    assert guests.driver.execute(2, ["id", "-u"]).stdout == "0\n"
    slow = guests.driver.execute(2, ["sleep", "30"], timeout=1)
    assert slow.returncode == 124 and "timed out" in slow.stderr
    guests.wait_for(2, lambda: "Multi-User System" in guests.driver.logs(2), "boot messages in the log")
    assert "\x1b[" not in guests.driver.logs(2)
    with pytest.raises(DriverError, match="empty command"):
        guests.driver.execute(2, [])


def test_a_reboot_keeps_what_the_guest_wrote(guests: Guests) -> None:
    guests.driver.launch(guests.spec(3))
    guests.wait(3)
    guests.contextualized(3)
    guests.run(3, "sh", "-c", "echo kept >/root/marker && sync")
    container = guests.driver._get(3)
    first_leader = container.leader_pid()

    guests.driver.reboot(3)
    guests.wait_for(3, lambda: container.leader_pid() not in (None, first_leader), "a new guest init", 60)
    guests.wait(3)
    guests.contextualized(3)
    assert guests.run(3, "cat", "/root/marker") == "kept\n"
    assert _eth0_addresses(guests, 3) != [], "the NIC is configured again after the reboot"

    second_leader = container.leader_pid()
    guests.driver.reboot(3, hard=True)
    guests.wait_for(3, lambda: container.leader_pid() not in (None, second_leader), "a hard reset", 60)
    guests.contextualized(3)
    assert guests.run(3, "cat", "/root/marker") == "kept\n"
    assert guests.driver.logs(3).count("--- container start") == 3


def test_terminate_leaves_nothing_behind(guests: Guests) -> None:
    spec = guests.spec(4)
    guests.driver.launch(spec)
    guests.wait(4)
    container = guests.driver._get(4)
    loop = container.loop
    pids = [container.supervisor.pid, container.nspawn_pid(), container.leader_pid()]
    assert None not in pids and loop
    namespace, link = container.namespace, container.links[0]
    assert Path("/run/netns", namespace).exists() and Path("/sys/class/net", link).exists()

    guests.driver.terminate(4)
    assert guests.driver.state(4) == GuestState.STOPPED
    assert mounts_under(spec.vm_dir) == []
    assert not Path("/run/netns", namespace).exists()
    assert not Path("/sys/class/net", link).exists()
    assert all(process_start_time(pid) is None for pid in pids)
    assert _processes_using(spec.vm_dir) == []
    if loop in diskimage.loops_backed_by(spec.disks[0].image_path):
        assert loop in _mounted_devices(), "only if another test's container has taken that loop device since"
    assert sorted(path.name for path in spec.vm_dir.iterdir()) == ["console.log", "container"]
    assert sorted(path.name for path in (spec.vm_dir / "container").iterdir()) == ["upper", "work"]
    assert "Halting system" in guests.driver.logs(4), "terminate shuts the guest down cleanly first"


def _processes_using(directory: Path) -> list[int]:
    """Processes, in any mount namespace, that still see a mount under ``directory`` (an orphaned guest)."""
    found = []
    for mountinfo in Path("/proc").glob("[0-9]*/mountinfo"):
        try:
            if str(directory) in mountinfo.read_text():
                found.append(int(mountinfo.parent.name))
        except OSError:  # gone, or exiting (EINVAL)
            continue
    return found


def _mounted_devices() -> set[str]:
    devices = set()
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        devices.add(fields[fields.index("-") + 2])
    return devices


def test_two_guests_reach_each_other_over_the_bridge_and_nothing_else(guests: Guests) -> None:
    first, second = guests.spec(5), guests.spec(6, {"ETH0_GATEWAY": network.HOST_ADDRESS})
    guests.driver.launch(first)
    guests.driver.launch(second)
    for vm_id in (5, 6):
        guests.wait(vm_id)
        guests.contextualized(vm_id)
    first_ip, second_ip = first.nics[0].ip, second.nics[0].ip
    guests.run(5, "ping", "-c", "1", "-W", "5", second_ip)
    guests.run(6, "ping", "-c", "1", "-W", "5", first_ip)
    guests.run(5, "bash", "-c", f"exec 3<>/dev/tcp/{second_ip}/22 && head -c 4 <&3")
    guests.run(5, "ping", "-c", "1", "-W", "5", network.HOST_ADDRESS)

    # Without a gateway there is no route off the /24: the kernel refuses before any packet is sent.
    routes = json.loads(guests.run(5, "ip", "-j", "route", "show"))
    assert [route["dst"] for route in routes] == ["10.231.64.0/24"]
    unreachable = guests.driver.execute(5, ["ip", "route", "get", "192.0.2.1"])
    assert unreachable.returncode != 0 and "unreachable" in unreachable.stderr.lower()
    # With the host as gateway, the host forwards nothing off the bridge.
    assert (
        json.loads(guests.run(6, "ip", "-j", "route", "show", "default"))[0]["gateway"]
        == network.HOST_ADDRESS
    )
    assert Path(f"/proc/sys/net/ipv4/conf/{network.BRIDGE}/forwarding").read_text().strip() == "0"
    guard = subprocess.run(
        ["nft", "list", "table", "inet", network.NFT_TABLE], capture_output=True, text=True
    )
    assert 'iifname "flbr0" oifname != "flbr0" drop' in guard.stdout


def test_parallel_guests_get_distinct_addresses_from_the_lease_registry(guests: Guests) -> None:
    vm_ids = [7, 8, 9]
    with ThreadPoolExecutor(len(vm_ids)) as pool:
        specs = list(pool.map(guests.spec, vm_ids))
        list(pool.map(guests.driver.launch, specs))
    addresses = [spec.nics[0].ip for spec in specs]
    assert len(set(addresses)) == 3
    for spec in specs:
        holder = guests.leases.holder(spec.nics[0].ip)
        assert holder is not None and holder.owner == f"{guests.root}#vm{spec.vm_id}"
    for vm_id in vm_ids:
        guests.wait(vm_id)
        guests.contextualized(vm_id)
    for spec in specs:
        assert _eth0_addresses(guests, spec.vm_id) == [(spec.nics[0].ip, 24)]
    for address in addresses[1:]:
        guests.run(7, "ping", "-c", "1", "-W", "5", address)


class _OneGate(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, str]]] = []

    def do_PUT(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
        token, vmid = self.headers.get("X-ONEGATE-TOKEN", ""), self.headers.get("X-ONEGATE-VMID", "")
        self.received.append({"path": self.path, "token": token, "vmid": vmid, "body": body})
        self.send_response(200 if token == "dGVzdA==" else 401)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def onegate_on_the_bridge() -> Iterator[tuple[str, list[dict[str, str]]]]:
    network.ensure_bridge()
    handler = type("OneGate", (_OneGate,), {"received": []})
    server = http.server.ThreadingHTTPServer((network.HOST_ADDRESS, 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    user = f"onegate-stand-in-{os.getpid()}-{server.server_address[1]}"
    network.allow_guest_ports(user, [server.server_address[1]])  # the input guard lets guests reach it
    yield f"http://{network.HOST_ADDRESS}:{server.server_address[1]}", handler.received
    server.shutdown()
    server.server_close()
    network.remove_bridge_if_unused(user)


def test_the_guest_reports_ready_through_onegate(guests: Guests, onegate_on_the_bridge) -> None:
    endpoint, received = onegate_on_the_bridge
    context = {"TOKEN": "YES", "REPORT_READY": "YES", "ONEGATE_ENDPOINT": endpoint}
    guests.driver.launch(guests.spec(10, context, files={"token.txt": b"dGVzdA=="}))
    guests.wait(10)
    guests.contextualized(10)
    # one-context's net-99-report-ready runs its `onegate vm update --data READY=YES`, which sends the
    # form onegate-server.rb reads (data=<attributes>&type=1: merge into the user template)
    assert len(received) == 1, received
    request = received[0]
    assert (request["path"], request["token"], request["vmid"]) == ("/vm", "dGVzdA==", "10")
    assert urllib.parse.parse_qs(request["body"]) == {"data": ["READY=YES"], "type": ["1"]}


def test_a_changed_context_is_applied_by_the_running_guest(guests: Guests, ssh_key: SshKey) -> None:
    spec = guests.spec(11, {"SET_HOSTNAME": "before"})
    guests.driver.launch(spec)
    guests.wait(11)
    guests.contextualized(11)
    assert guests.run(11, "hostname").strip() == "before"
    assert ssh_key.public_line not in guests.driver.execute(11, ["cat", "/root/.ssh/authorized_keys"]).stdout
    variables = {
        "ETH0_IP": spec.nics[0].ip,
        "ETH0_MAC": spec.nics[0].mac,
        "ETH0_MASK": "255.255.255.0",
        "NETWORK": "YES",
        "SET_HOSTNAME": "after",
        "SSH_PUBLIC_KEY": ssh_key.public_line,
        "VMID": "11",
    }
    # As upstream's LXC driver: new /context, then `service one-context-reconfigure restart` in the guest.
    guests.driver.update_context(11, ContextSpec({"context.sh": context_sh(variables)}))
    guests.wait_for(11, lambda: guests.run(11, "hostname").strip() == "after", "the new hostname", 60)
    keys = guests.run(11, "cat", "/root/.ssh/authorized_keys")
    assert ssh_key.public_line in keys
    log = spec.vm_dir / "reconfigure.log"
    guests.wait_for(11, log.exists, "the reconfiguration's record", 60)
    assert "service one-context-reconfigure restart: exit 0" in log.read_text()
    assert _eth0_addresses(guests, 11) == [(spec.nics[0].ip, 24)], "the network came back"


def test_a_new_driver_recovers_running_guests_and_cleans_dead_ones(guests: Guests) -> None:
    alive, orphaned, dying = guests.spec(12), guests.spec(13), guests.spec(14)
    for spec in (alive, orphaned, dying):
        guests.driver.launch(spec)
    for vm_id in (12, 13, 14):
        guests.wait(vm_id)
    guests.run(12, "sh", "-c", "echo survived >/root/marker")
    # VM 13 loses its supervisor but its container keeps running; VM 14's guest dies.
    os.kill(guests.driver._get(13).supervisor.pid, 9)
    doomed = guests.driver._get(14)
    doomed_namespace, doomed_machine = doomed.namespace, doomed.machine
    os.kill(doomed.leader_pid(), 9)
    guests.wait_for(
        14, lambda: (dying.vm_dir / "container.exit").exists(), "the supervisor's exit record", 30
    )

    restarted = ContainerDriver(guests.driver.tag)  # as after a test-cloud restart: nothing in memory
    guests.driver = restarted
    assert restarted.recover(12, alive) == GuestState.RUNNING
    assert guests.run(12, "cat", "/root/marker") == "survived\n"
    assert restarted.recover(13, orphaned) == GuestState.RUNNING, "an orphaned container is still the guest"
    assert guests.run(13, "true") == ""
    assert restarted.recover(14, dying) == GuestState.FAILED
    assert mounts_under(dying.vm_dir) == [] and not Path("/run/netns", doomed_namespace).exists()
    assert _find_nspawn(doomed_machine) is None
    assert restarted.recover(99, guests.spec(99)) == GuestState.STOPPED, "never launched: nothing to recover"

    orphan_machine = restarted._get(13).machine
    restarted.terminate(13)
    assert _find_nspawn(orphan_machine) is None, "terminate finds the container without its supervisor"
    assert mounts_under(orphaned.vm_dir) == []


def test_a_qcow2_image_boots_through_the_raw_cache(guests: Guests, tmp_path: Path) -> None:
    qcow2 = diskimage.convert(guests.image, tmp_path / "image.qcow2", "qcow2", compress=False)
    guests.driver = ContainerDriver(guests.driver.tag, raw_cache_dir=tmp_path / "raw-cache")
    guests.driver.launch(guests.spec(14, image=qcow2, image_format="qcow2"))
    guests.wait(14)
    assert guests.run(14, "cat", "/etc/debian_version").startswith("12")
    cached = list((tmp_path / "raw-cache").glob("*.raw"))
    assert [path.stem for path in cached] == [diskimage.sha256_file(qcow2)]


def test_an_image_without_a_filesystem_is_refused_and_nothing_is_left(guests: Guests, tmp_path: Path) -> None:
    junk = tmp_path / "junk.img"
    junk.write_bytes(os.urandom(4 * 1024 * 1024))
    spec = guests.spec(15, image=junk)
    with pytest.raises(DriverError, match=r"junk\.img"):
        guests.driver.launch(spec)
    assert guests.driver.state(15) == GuestState.STOPPED
    assert mounts_under(tmp_path) == []
    assert not Path("/run/netns", network.namespace_name(guests.driver.tag, 15)).exists()


def test_username_password_and_key_go_to_the_context_user(guests: Guests, ssh_key: SshKey) -> None:
    context = {"USERNAME": "flower", "PASSWORD": "s3cret-pw", "SSH_PUBLIC_KEY": ssh_key.public_line}
    spec = guests.spec(16, context)
    guests.driver.launch(spec)
    guests.wait(16)
    guests.contextualized(16)
    assert guests.run(16, "getent", "passwd", "flower").split(":")[5] == "/home/flower"
    shadow = guests.run(16, "getent", "shadow", "flower").split(":")[1]
    assert shadow.startswith("$") and "s3cret-pw" not in shadow
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # the host's libcrypt checks the guest's hash (yescrypt on Debian 12)

    assert crypt.crypt("s3cret-pw", shadow) == shadow
    keys = guests.run(16, "stat", "-c", "%U %a", "/home/flower/.ssh/authorized_keys").split()
    assert keys == ["flower", "600"]
    # one-contextd logs through syslog: the journal here
    journal = guests.run(16, "journalctl", "-b", "--no-pager", "-o", "cat")
    assert "loc-20-set-username-password" in journal and "s3cret-pw" not in journal, "no password in a log"
    assert _ssh(spec.nics[0].ip, ssh_key, "id -un", user="flower").strip() == "flower"


def test_sweep_finds_guests_of_a_lost_driver_even_without_their_supervisor(guests: Guests) -> None:
    first, second = guests.spec(17), guests.spec(18)
    guests.driver.launch(first)
    guests.driver.launch(second)
    guests.wait(17)
    guests.wait(18)
    machines = [guests.driver._get(vm_id).machine for vm_id in (17, 18)]
    os.kill(guests.driver._get(18).supervisor.pid, 9)  # VM 18's container is now an orphan

    fresh = ContainerDriver(guests.driver.tag)  # knows nothing: finds everything on the host by name
    removed = fresh.sweep()
    assert any("VM 17" in entry for entry in removed) and any("VM 18" in entry for entry in removed)
    assert [_find_nspawn(machine) for machine in machines] == [None, None]
    assert mounts_under(first.vm_dir) == [] and mounts_under(second.vm_dir) == []
    assert network.links_with_prefix(network.link_prefix(fresh.tag)) == []
    assert network.namespaces_with_prefix(network.namespace_prefix(fresh.tag)) == []


def test_a_powered_off_guest_resumes_on_the_disk_it_left(guests: Guests) -> None:
    spec = guests.spec(19)
    guests.driver.launch(spec)
    guests.wait(19)
    guests.run(19, "sh", "-c", "echo before-poweroff >/root/marker && sync")
    guests.driver.terminate(19)  # what the core does on poweroff, stop, suspend and undeploy
    assert mounts_under(spec.vm_dir) == []
    guests.driver.launch(spec)  # resume: the same vm_dir
    guests.wait(19)
    assert guests.run(19, "cat", "/root/marker") == "before-poweroff\n"


def test_terminating_a_guest_that_is_still_starting_orphans_nothing(guests: Guests) -> None:
    specs = [guests.spec(vm_id) for vm_id in (20, 21, 22)]
    for delay, spec in zip((0.0, 0.05, 0.3), specs, strict=True):
        guests.driver.launch(spec)
        time.sleep(delay)
        guests.driver.terminate(spec.vm_id, hard=True)
        assert _processes_using(spec.vm_dir) == [], f"a guest outlived its nspawn (delay {delay} s)"
        assert mounts_under(spec.vm_dir) == []
        assert _find_nspawn(network.namespace_name(guests.driver.tag, spec.vm_id)) is None
