"""testcloud.drivers.network: leases, the shared bridge, names and namespaces (real ip/nft; needs root)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hostkit.host import run
from testcloud.drivers import network


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
        assert removed == [f"link {host_link}", f"netns {namespace}"]
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


# ---------------------------------------------------------------------------------------------- input guard
# The host side runs in a network namespace of its own (``ip netns exec`` gives it its own /sys too): a bridge
# named flbr0 with 10.231.64.1/24 and the real guard, without touching the flbr0 other test clouds use.

_PROBE = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()
    print("open")
except ConnectionRefusedError:
    print("refused")
except OSError as error:
    print(type(error).__name__)
"""


_PING = """
import socket, struct, sys
def checksum(data):
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF
packet = struct.pack("!BBHHH", 8, 0, 0, 7, 1) + b"flower"
packet = packet[:2] + struct.pack("!H", checksum(packet)) + packet[4:]
with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as raw:
    raw.settimeout(3)
    raw.sendto(packet, (sys.argv[1], 0))
    try:
        while True:
            reply = raw.recv(2048)
            if reply[20] == 0:  # echo reply (after the 20-byte IP header)
                print("echo-reply")
                break
    except TimeoutError:
        print("no-reply")
"""


def _listen(address: str) -> socket.socket:
    listener = socket.create_server((address, 0))
    threading.Thread(target=_accept_forever, args=(listener,), daemon=True).start()
    return listener


def _accept_forever(listener: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while True:
            listener.accept()[0].close()


def _host_side(state_dir: str, guest_namespace: str, host_link: str, guest_ip: str) -> dict[str, object]:
    """Runs inside the host-side namespace: set up, register, probe from the guest; returns what it saw."""
    bridge = network.Bridge(network.BRIDGE, network.HOST_ADDRESS, 24, network.NFT_TABLE, Path(state_dir))
    host = network.HOST_ADDRESS
    bridge.ensure()
    anything = _listen("0.0.0.0").getsockname()[1]  # a host socket on every address
    onegate = _listen(host).getsockname()[1]
    other_cloud = _listen("0.0.0.0").getsockname()[1]

    def probe(port: int) -> str:
        argv = ["ip", "netns", "exec", guest_namespace, sys.executable, "-c", _PROBE, host, str(port)]
        return run(argv).strip()

    seen: dict[str, object] = {}
    bridge.ensure(user="cloud-a", ports=[onegate])
    bridge.ensure(user="cloud-a")  # again, as every guest's attach does: nothing changes
    bridge.attach(host_link)
    seen["alone"] = {"anything": probe(anything), "onegate": probe(onegate), "other": probe(other_cloud)}
    seen["ping"] = run(["ip", "netns", "exec", guest_namespace, sys.executable, "-c", _PING, host]).strip()
    with socket.create_connection((guest_ip, 8022), timeout=5) as connection:  # the host opens: replies pass
        seen["host_to_guest"] = connection.recv(2).decode()
    seen["rules_once"] = run(["nft", "list", "table", "inet", network.NFT_TABLE]).count("@guest_ports")

    bridge.ensure(user="cloud-b", ports=[other_cloud])
    seen["two_clouds"] = {"onegate": probe(onegate), "other": probe(other_cloud)}
    bridge.users_dir.joinpath("dead").write_text(
        json.dumps(
            {"user": "gone", "process": {"pid": 999999, "start_time": 1, "boot": "x"}, "ports": [anything]}
        )
    )
    bridge.ensure()
    seen["dead_cloud"] = probe(anything)
    # A cloud restarted on the same state directory (same user, new process) does not inherit the ports.
    dead = {"pid": 999999, "start_time": 1, "boot": "x"}
    bridge._user_file("cloud-c").write_text(
        json.dumps({"user": "cloud-c", "process": dead, "ports": [anything]})
    )
    bridge.ensure(user="cloud-c")
    seen["restarted_cloud"] = probe(anything)
    bridge.remove_if_unused(user="cloud-c")
    assert not bridge.remove_if_unused(user="cloud-b")
    seen["b_left"] = {"onegate": probe(onegate), "other": probe(other_cloud)}
    network.delete_link(host_link)
    seen["removed"] = bridge.remove_if_unused(user="cloud-a")
    seen["table_after"] = run(["nft", "list", "tables"])
    return seen


def test_guests_reach_only_the_host_ports_their_clouds_registered(tmp_path: Path) -> None:
    tag = _unique("input")
    host_namespace, guest_namespace = f"flt{tag}h", f"flt{tag}g"
    host_link, guest_ip = f"flt{tag}v", "10.231.64.250"
    guest_listener = None
    try:
        for name in (host_namespace, guest_namespace):
            network.create_namespace(name)
        run(
            ["ip", "link", "add", host_link, "type", "veth", "peer", "name", "eth0", "netns", guest_namespace]
        )
        run(["ip", "link", "set", host_link, "netns", host_namespace])
        run(["ip", "-n", guest_namespace, "addr", "add", f"{guest_ip}/24", "dev", "eth0"])
        run(["ip", "-n", guest_namespace, "link", "set", "eth0", "up"])
        serve_once = (
            "import socket; s = socket.create_server(('0.0.0.0', 8022)); print('up', flush=True);"
            " c = s.accept()[0]; c.sendall(b'hi'); c.close()"
        )
        guest_listener = subprocess.Popen(
            ["ip", "netns", "exec", guest_namespace, sys.executable, "-c", serve_once], stdout=subprocess.PIPE
        )
        assert guest_listener.stdout is not None and guest_listener.stdout.readline() == b"up\n"
        call = (
            "import json, sys; from tests.drivers.test_network import _host_side;"
            " print(json.dumps(_host_side(*sys.argv[1:])))"
        )
        argv = ["ip", "netns", "exec", host_namespace, sys.executable, "-c", call]
        output = run([*argv, str(tmp_path / "state"), guest_namespace, host_link, guest_ip], timeout=120)
        seen = json.loads(output.splitlines()[-1])
    finally:
        if guest_listener is not None:
            guest_listener.kill()
            guest_listener.wait()
        for name in (host_namespace, guest_namespace):
            network.delete_namespace(name)
    assert seen["alone"] == {"anything": "refused", "onegate": "open", "other": "refused"}
    assert seen["ping"] == "echo-reply", "ICMP echo to the host stays allowed"
    assert seen["host_to_guest"] == "hi", "replies to connections the host opens come back"
    assert seen["rules_once"] == 1, "re-running the set-up does not stack rules"
    assert seen["two_clouds"] == {"onegate": "open", "other": "open"}
    assert seen["dead_cloud"] == "refused", "a dead cloud's ports are not allowed"
    assert seen["restarted_cloud"] == "refused", "a restarted cloud registers its own ports"
    assert seen["b_left"] == {"onegate": "open", "other": "refused"}, "a cloud's ports go with it"
    assert seen["removed"] is True and network.NFT_TABLE not in str(seen["table_after"])


def test_a_cloud_opens_only_its_servers_on_the_bridge_to_guests(monkeypatch, tmp_path: Path) -> None:
    from testcloud import launcher

    class Bound:
        def __init__(self, address: str, port: int) -> None:
            self.server_address, self.port = (address, port), port

    calls: list[tuple[str, list[int]]] = []
    monkeypatch.setattr(network, "allow_guest_ports", lambda user, ports: calls.append((user, list(ports))))
    servers = [Bound("127.0.0.1", 2633), Bound(network.HOST_ADDRESS, 5030), Bound("127.0.0.1", 8099)]
    launcher._allow_guests(tmp_path, servers)  # type: ignore[arg-type]
    assert calls == [(str(tmp_path), [5030])], "OneGate on the bridge; XML-RPC, OneFlow, market on loopback"
