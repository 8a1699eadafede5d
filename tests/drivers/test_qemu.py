"""The qemu driver: accelerator detection, QMP control and cleanup (fast, with a disk that does not boot),
and under the ``image`` marker a real boot of the test qcow2 with the CONTEXT CD (minutes under TCG)."""

from __future__ import annotations

import http.server
import json
import os
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from hostkit import diskimage
from testcloud.drivers import network, qemu, testimage
from testcloud.drivers.base import ContextSpec, DiskSpec, GuestState, LaunchSpec, NicSpec
from testcloud.drivers.errors import DriverError
from testcloud.drivers.qmp import Monitor

from .conftest import ADDRESS_POOL, SshKey, context_sh, mac_for


def test_the_accelerator_probe_runs_a_guest_and_rejects_what_cannot_run() -> None:
    assert qemu.probe_accelerator("tcg"), "the probe guest must run under TCG (software) everywhere"
    assert not qemu.probe_accelerator("no-such-accelerator")


def test_the_accelerator_can_be_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWER_TESTCLOUD_ACCEL", "tcg")
    assert qemu.detect_accelerator() == "tcg"
    assert qemu.detect_accelerator() in ("kvm", "tcg")


@pytest.fixture
def machines(
    tmp_path: Path,
) -> Iterator[tuple[qemu.QemuDriver, network.LeaseRegistry, list[tuple[str, str]]]]:
    network.ensure_bridge()
    driver = qemu.QemuDriver(network.cloud_tag(tmp_path), stop_timeout=3)
    leases, claimed = network.LeaseRegistry(), []
    try:
        yield driver, leases, claimed
    finally:
        driver.sweep()
        for ip, owner in claimed:
            leases.release(ip, owner)


def _spec(
    tmp_path: Path, leases, claimed, vm_id: int, disk: Path, fmt: str, context: dict[str, str]
) -> LaunchSpec:
    owner = f"{tmp_path}#qemu{vm_id}"
    ip = leases.claim_first(ADDRESS_POOL, owner)
    assert ip is not None
    claimed.append((ip, owner))
    variables = {"ETH0_IP": ip, "ETH0_MAC": mac_for(ip), "ETH0_MASK": "255.255.255.0", "VMID": str(vm_id)}
    return LaunchSpec(
        vm_id=vm_id,
        name=f"qemu-test-{vm_id}",
        disks=[DiskSpec(disk, fmt, "vda")],
        nics=[NicSpec(0, ip, mac_for(ip), network.BRIDGE, "255.255.255.0")],
        context=ContextSpec({"context.sh": context_sh({**variables, **context})}),
        vm_dir=tmp_path / f"vm{vm_id}",
        memory_mb=512,
    )


def test_a_machine_is_controlled_through_qmp_and_cleaned_up(machines, tmp_path: Path) -> None:
    """A blank disk: the firmware finds nothing to boot, but QEMU, QMP, the tap, the overlay and the CD
    are all real, which is what this test is about (no guest OS is needed for it)."""
    driver, leases, claimed = machines
    blank = tmp_path / "blank.raw"
    with open(blank, "wb") as stream:
        stream.truncate(16 * 1024 * 1024)
    before = diskimage.sha256_file(blank)
    spec = _spec(tmp_path, leases, claimed, 1, blank, "raw", {"SET_HOSTNAME": "first"})
    driver.launch(spec)
    deadline = time.monotonic() + 30
    while driver.state(1) != GuestState.RUNNING:
        assert time.monotonic() < deadline, driver.logs(1)
        time.sleep(0.2)
    machine = driver._get(1)
    tap = machine.taps[0]
    assert network.DEFAULT_BRIDGE.ports().count(tap) == 1
    overlay = Path(machine.disks[0])
    assert diskimage.image_info(overlay).backing_file == str(blank.resolve())
    with Monitor(machine.monitor_path) as monitor:
        block = {entry["device"]: entry for entry in monitor.execute("query-block")}
        nics = monitor.execute("query-rx-filter")
    assert block["context"]["inserted"]["file"] == str(spec.vm_dir / "context.iso")
    assert block["context"]["inserted"]["ro"] is True
    assert [nic["main-mac"] for nic in nics] == [spec.nics[0].mac]

    driver.update_context(1, ContextSpec({"context.sh": context_sh({"SET_HOSTNAME": "second"})}))
    with Monitor(machine.monitor_path) as monitor:
        block = {entry["device"]: entry for entry in monitor.execute("query-block")}
    new_iso = Path(block["context"]["inserted"]["file"])
    assert new_iso != spec.vm_dir / "context.iso" and new_iso.exists()
    assert not (spec.vm_dir / "context.iso").exists(), "the old disc is removed"

    with pytest.raises(DriverError, match="guest agent"):
        driver.execute(1, ["true"])  # no OS, no agent: a clear error, not a hang

    pid = machine.process.pid
    driver.terminate(1)  # the firmware ignores the power button: the driver falls back to quit
    assert driver.state(1) == GuestState.STOPPED
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    assert not Path("/sys/class/net", tap).exists()
    assert sorted(path.name for path in spec.vm_dir.iterdir()) == ["console.log", "disk-vda.qcow2"]

    overlay_inode = overlay.stat().st_ino
    driver.launch(spec)  # resume after a poweroff: the same overlay
    assert driver._get(1).disks == [str(overlay)] and overlay.stat().st_ino == overlay_inode
    driver.terminate(1, hard=True)
    assert not machine.monitor_path.exists() and not machine.agent_path.exists()
    assert diskimage.sha256_file(blank) == before


def test_a_missing_image_is_refused_and_nothing_is_left(machines, tmp_path: Path) -> None:
    driver, leases, claimed = machines
    spec = _spec(tmp_path, leases, claimed, 2, tmp_path / "missing.qcow2", "qcow2", {})
    with pytest.raises(DriverError, match=r"missing\.qcow2"):
        driver.launch(spec)
    assert driver.state(2) == GuestState.STOPPED
    assert not Path("/sys/class/net", network.link_name(driver.tag, 2, 0)).exists()
    assert not (spec.vm_dir / "qemu.json").exists()


# ---------------------------------------------------------------------------------------------- real boot


class _OneGate(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, str]]] = []

    def do_PUT(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
        self.received.append({"vmid": self.headers.get("X-ONEGATE-VMID", ""), "body": body})
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.image
def test_the_test_qcow2_boots_with_its_context_cd(machines, tmp_path: Path, ssh_key: SshKey) -> None:
    driver, leases, claimed = machines
    driver.stop_timeout = 120
    image = testimage.qcow2_image()
    before = diskimage.sha256_file(image)
    handler = type("OneGate", (_OneGate,), {"received": []})
    server = http.server.ThreadingHTTPServer((network.HOST_ADDRESS, 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://{network.HOST_ADDRESS}:{server.server_address[1]}"
    guest_ports_user = f"onegate-stand-in-{os.getpid()}-{server.server_address[1]}"
    network.allow_guest_ports(guest_ports_user, [server.server_address[1]])  # through the input guard
    context = {
        "SET_HOSTNAME": "qemu-guest",
        "SSH_PUBLIC_KEY": ssh_key.public_line,
        "TOKEN": "YES",
        "REPORT_READY": "YES",
        "ONEGATE_ENDPOINT": endpoint,
    }
    spec = _spec(tmp_path, leases, claimed, 3, image, "qcow2", context)
    spec = LaunchSpec(
        **{**spec.__dict__, "context": ContextSpec({**spec.context.files, "token.txt": b"dG9r"})}
    )
    started = time.monotonic()
    try:
        driver.launch(spec)
        while not handler.received:
            assert driver.state(3) != GuestState.FAILED, driver.logs(3)[-3000:]
            assert time.monotonic() - started < 600, "no READY within 10 minutes:\n" + driver.logs(3)[-3000:]
            time.sleep(1)
        ready_after = time.monotonic() - started
        print(f"\nqemu ({driver.accel}): launch to READY=YES through OneGate in {ready_after:.0f} s")
        # one-context's `onegate vm update --data READY=YES`: the form onegate-server.rb reads
        assert [(entry["vmid"], urllib.parse.parse_qs(entry["body"])) for entry in handler.received] == [
            ("3", {"data": ["READY=YES"], "type": ["1"]})
        ]

        assert driver.execute(3, ["hostname"]).stdout.strip() == "qemu-guest"
        shown = json.loads(driver.execute(3, ["ip", "-j", "-4", "addr", "show", "dev", "eth0"]).stdout)
        assert [(a["local"], a["prefixlen"]) for a in shown[0]["addr_info"]] == [(spec.nics[0].ip, 24)]
        assert "CONTEXT" in driver.execute(3, ["blkid", "-o", "value", "-s", "LABEL", "/dev/sr0"]).stdout

        from .test_container import _ssh  # the same paramiko helper as for containers

        assert _ssh(spec.nics[0].ip, ssh_key, "hostname", timeout=120).strip() == "qemu-guest"

        changed = {**context, "SET_HOSTNAME": "qemu-renamed", "ETH0_IP": spec.nics[0].ip}
        changed.update(ETH0_MAC=spec.nics[0].mac, ETH0_MASK="255.255.255.0", VMID="3")
        driver.update_context(3, ContextSpec({"context.sh": context_sh(changed), "token.txt": b"dG9r"}))
        deadline = time.monotonic() + 240
        while driver.execute(3, ["hostname"]).stdout.strip() != "qemu-renamed":
            assert time.monotonic() < deadline, "the new context was not applied"
            time.sleep(5)

        driver.terminate(3)
        assert "Power down" in driver.logs(3) or "reboot: Power down" in driver.logs(3)
        assert sorted(path.name for path in spec.vm_dir.iterdir()) == ["console.log", "disk-vda.qcow2"]
        assert diskimage.sha256_file(image) == before
    finally:
        server.shutdown()
        server.server_close()
        network.remove_bridge_if_unused(guest_ports_user)
