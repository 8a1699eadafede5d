"""testcloud.network: leases, the shared bridge, names and namespaces (real ip/nft; needs root)."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from testcloud import network
from testcloud.host import run


def _unique(label: str) -> str:
    return hashlib.sha256(f"{Path.cwd()}-{os.getpid()}-{label}".encode()).hexdigest()[:6]


# ---------------------------------------------------------------------------------------------- names


def test_link_names_fit_the_kernel_limit_and_never_collide() -> None:
    vm_ids = [*range(0, 12000, 7), 99_999, 1_000_000, 30_000_000]
    names = {network.link_name("0a1b2c", vm_id, nic) for vm_id in vm_ids for nic in range(12)}
    assert len(names) == len(vm_ids) * 12
    assert all(len(name) <= 15 and name.startswith(network.link_prefix("0a1b2c")) for name in names)
    assert network.link_name("0a1b2c", 12, 0) == "fl0a1b2c-12-0"
    with pytest.raises(ValueError):
        network.link_name("0a1b2c", 1, 64)


def test_cloud_tag_is_six_hex_digits_per_state_directory(tmp_path: Path) -> None:
    first, second = network.cloud_tag(tmp_path / "a"), network.cloud_tag(tmp_path / "b")
    assert first != second and len(first) == 6 and int(first, 16) >= 0
    assert network.cloud_tag(tmp_path / "a") == first
    with pytest.raises(ValueError):
        network.link_name("flbr0x", 1, 0)


# ---------------------------------------------------------------------------------------------- leases


def test_a_lease_has_one_owner_until_released(tmp_path: Path) -> None:
    leases = network.LeaseRegistry(tmp_path)
    assert leases.claim("10.231.64.10", "cloud-a#vm1")
    assert not leases.claim("10.231.64.10", "cloud-b#vm1")
    assert leases.claim("10.231.64.10", "cloud-a#vm1"), "the same owner may claim again (restart)"
    holder = leases.holder("10.231.64.10")
    assert holder is not None and holder.owner == "cloud-a#vm1" and holder.process.pid == os.getpid()
    assert not leases.release("10.231.64.10", "cloud-b#vm1"), "only the owner releases"
    assert leases.holder("10.231.64.10") is not None
    assert leases.release("10.231.64.10", "cloud-a#vm1")
    assert leases.holder("10.231.64.10") is None
    assert leases.claim("10.231.64.10", "cloud-b#vm1")


def test_a_lease_of_a_dead_process_is_reclaimed(tmp_path: Path) -> None:
    leases = network.LeaseRegistry(tmp_path)
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        assert leases.claim("10.231.64.11", "gone-cloud#vm3", pid=sleeper.pid)
        assert not leases.claim("10.231.64.11", "other#vm1")
    finally:
        sleeper.kill()
        sleeper.wait()
    assert leases.holder("10.231.64.11") is None
    assert [lease.ip for lease in leases.leases(include_stale=True)] == ["10.231.64.11"]
    assert leases.claim("10.231.64.11", "other#vm1")
    leases.release("10.231.64.11", "other#vm1")

    (tmp_path / "10.231.64.12").write_text("not json")
    assert leases.reclaim_stale() == ["10.231.64.12"]


def test_bad_lease_requests_are_refused(tmp_path: Path) -> None:
    leases = network.LeaseRegistry(tmp_path)
    with pytest.raises(ValueError):
        leases.claim("10.231.64.300", "x")
    with pytest.raises(ValueError):
        leases.claim("../../etc/passwd", "x")
    with pytest.raises(ValueError):
        leases.claim("10.231.64.13", "")
    assert leases.leases(include_stale=True) == []


def _claim_many(directory: str, worker: int, queue: multiprocessing.Queue, done) -> None:
    leases = network.LeaseRegistry(Path(directory))
    candidates = [f"10.231.64.{host}" for host in range(100, 140)]
    queue.put([leases.claim_first(candidates, f"worker-{worker}#vm{n}") for n in range(8)])
    done.wait(60)  # a lease lives as long as its process: stay alive until every worker has claimed


def test_parallel_clouds_never_get_the_same_address(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    queue, done = context.Queue(), context.Event()
    workers = [context.Process(target=_claim_many, args=(str(tmp_path), n, queue, done)) for n in range(5)]
    for worker in workers:
        worker.start()
    try:
        results = [queue.get(timeout=60) for _ in workers]
    finally:
        done.set()
        for worker in workers:
            worker.join(timeout=60)
    addresses = [ip for taken in results for ip in taken]
    assert None not in addresses
    assert len(addresses) == 40 and len(set(addresses)) == 40


# ---------------------------------------------------------------------------------------------- bridge


@pytest.fixture
def scratch_bridge(tmp_path: Path):
    """A throw-away bridge (no address) with its own state directory: exercises creation and removal
    without touching the flbr0 that other test clouds on this host are using."""
    tag = _unique("bridge")
    bridge = network.Bridge(f"flt{tag}", None, 24, f"flower_testcloud_t{tag}", tmp_path / "state")
    yield bridge
    network.delete_link(f"flt{tag}p")
    network.delete_link(bridge.name)
    run(["nft", "delete", "table", "inet", bridge.nft_table], check=False)


def _nft_table(name: str) -> str:
    return subprocess.run(["nft", "list", "table", "inet", name], capture_output=True, text=True).stdout


def test_bridge_set_up_is_idempotent_and_safe_in_parallel(scratch_bridge: network.Bridge) -> None:
    threads = [threading.Thread(target=scratch_bridge.ensure) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    scratch_bridge.ensure()
    assert scratch_bridge.exists()
    details = json.loads(run(["ip", "-j", "-d", "link", "show", scratch_bridge.name]))[0]
    assert details["linkinfo"]["info_kind"] == "bridge" and "UP" in details["flags"]
    forwarding = Path(f"/proc/sys/net/ipv4/conf/{scratch_bridge.name}/forwarding").read_text().strip()
    assert forwarding == "0"
    rules = _nft_table(scratch_bridge.nft_table)
    assert f'iifname "{scratch_bridge.name}" oifname != "{scratch_bridge.name}" drop' in rules
    assert f'oifname "{scratch_bridge.name}" iifname != "{scratch_bridge.name}" drop' in rules


def test_bridge_is_removed_only_when_nothing_needs_it(scratch_bridge: network.Bridge) -> None:
    scratch_bridge.ensure(user="cloud-a")
    assert not scratch_bridge.remove_if_unused(), "a live user holds it"
    assert scratch_bridge.exists()
    assert scratch_bridge.remove_if_unused(user="cloud-a"), "its last user leaves"
    assert not scratch_bridge.exists()
    scratch_bridge.ensure()

    port = f"{scratch_bridge.name}p"
    run(["ip", "link", "add", port, "type", "veth", "peer", "name", f"{port}q"])
    scratch_bridge.attach(port)
    assert scratch_bridge.ports() == [port]
    assert not scratch_bridge.remove_if_unused(), "an interface is attached"
    network.delete_link(port)

    leases = scratch_bridge.leases()
    assert leases.claim("10.231.64.20", "cloud-b#vm0")
    assert not scratch_bridge.remove_if_unused(), "a live lease"
    leases.release("10.231.64.20", "cloud-b#vm0")

    # A user whose process is gone does not count.
    scratch_bridge.users_dir.mkdir(parents=True, exist_ok=True)
    (scratch_bridge.users_dir / "stale").write_text(
        json.dumps({"user": "gone", "process": {"pid": 999999, "start_time": 1, "boot": "x"}})
    )
    assert scratch_bridge.remove_if_unused()
    assert not scratch_bridge.exists()
    assert _nft_table(scratch_bridge.nft_table) == ""


def test_the_test_bridge_carries_the_host_address_and_the_guard() -> None:
    network.ensure_bridge()
    network.ensure_bridge()
    listing = json.loads(run(["ip", "-j", "-4", "addr", "show", "dev", network.BRIDGE]))
    addresses = [(entry["local"], entry["prefixlen"]) for entry in listing[0]["addr_info"]]
    assert addresses == [("10.231.64.1", 24)]
    assert Path("/proc/sys/net/ipv4/conf/flbr0/forwarding").read_text().strip() == "0"
    assert 'iifname "flbr0" oifname != "flbr0" drop' in _nft_table(network.NFT_TABLE)


# ---------------------------------------------------------------------------------------------- netns, links


def test_a_namespace_gets_a_veth_with_the_nics_mac_and_sweep_removes_all() -> None:
    tag = _unique("netns")
    namespace = network.namespace_name(tag, 5)
    host_link = network.link_name(tag, 5, 0)
    try:
        network.create_namespace(namespace)
        network.create_veth_into_namespace(host_link, namespace, "eth0", "02:00:0a:e7:40:fe")
        inside = json.loads(run(["ip", "-n", namespace, "-j", "link", "show", "eth0"]))[0]
        assert inside["address"] == "02:00:0a:e7:40:fe"
        loopback = json.loads(run(["ip", "-n", namespace, "-j", "link", "show", "lo"]))[0]
        assert "UP" in loopback["flags"]
        assert network.links_with_prefix(network.link_prefix(tag)) == [host_link]
        removed = network.sweep(tag)
        assert removed == [f"netns {namespace}", f"link {host_link}"]
        assert not Path("/run/netns", namespace).exists()
        assert not Path("/sys/class/net", host_link).exists()
    finally:
        network.delete_link(host_link)
        network.delete_namespace(namespace)


def test_the_bridge_keeps_its_address_as_ports_come_and_go(scratch_bridge: network.Bridge) -> None:
    # Without a fixed address Linux gives a bridge the lowest of its ports' MACs: guests would keep the
    # host's old MAC in their ARP tables after a guest with a lower one came or went.
    scratch_bridge.ensure()
    address = Path(f"/sys/class/net/{scratch_bridge.name}/address")
    assert address.read_text().strip() == network.BRIDGE_MAC
    port = f"{scratch_bridge.name}p"
    run(
        [
            "ip",
            "link",
            "add",
            port,
            "address",
            "02:00:00:00:00:02",
            "type",
            "veth",
            "peer",
            "name",
            f"{port}q",
        ]
    )
    scratch_bridge.attach(port)
    assert address.read_text().strip() == network.BRIDGE_MAC
    network.delete_link(port)
    assert address.read_text().strip() == network.BRIDGE_MAC


def test_a_guest_namespace_nothing_lives_in_is_an_orphan() -> None:
    tag = _unique("orphan")
    orphan, lived_in = network.namespace_name(tag, 1), network.namespace_name(tag, 2)
    supervised = network.namespace_name(tag, 3)  # empty, but a (supervisor) process outside names it
    sleeper = supervisor = None
    try:
        for name in (orphan, lived_in, supervised):
            network.create_namespace(name)
        sleeper = subprocess.Popen(["ip", "netns", "exec", lived_in, "sleep", "60"])
        supervisor = subprocess.Popen(["sh", "-c", "sleep 60", supervised])
        deadline = time.monotonic() + 10
        while not run(["ip", "netns", "pids", lived_in], check=False).split():
            assert time.monotonic() < deadline, "the sleeper never entered its namespace"
            time.sleep(0.05)
        found = network.orphan_namespaces(min_age=0)
        assert orphan in found and lived_in not in found and supervised not in found
        assert orphan not in network.orphan_namespaces(min_age=3600), "a young one may be a guest starting"
        assert f"netns {orphan}" not in network.sweep_orphans(min_age=3600)
        assert Path("/run/netns", orphan).exists()
    finally:
        for process in (sleeper, supervisor):
            if process is not None:
                process.kill()
                process.wait()
        for name in (orphan, lived_in, supervised):
            network.delete_namespace(name)
