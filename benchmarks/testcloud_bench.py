#!/usr/bin/env python3
"""Test cloud benchmark: ratios measured side by side in one run.

1. XML-RPC calls per second through pyone against the test cloud (a background daemon), next to the same
   client against a bare stdlib XML-RPC server that only returns a canned oned envelope: the ratio is the
   test cloud's own cost per call.
2. Time from ``template.instantiate`` to RUNNING with the dummy driver: the lifecycle engine alone.
3. With ``--rootfs IMAGE`` (and the container driver): instantiate -> RUNNING in a container, next to
   ``systemd-nspawn --boot`` of the same image reaching its default target.

    .venv/bin/python benchmarks/testcloud_bench.py [--seconds 3] [--rootfs IMAGE]
"""

from __future__ import annotations

import argparse
import os
import select
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pyone

from testcloud import launcher
from testcloud.core.config import Timings

BASELINE_SERVER = """
import sys, xmlrpc.server
class Quiet(xmlrpc.server.SimpleXMLRPCRequestHandler):
    rpc_paths = ("/RPC2",)
    disable_nagle_algorithm = True
    def log_message(self, *args): pass
server = xmlrpc.server.SimpleXMLRPCServer(("127.0.0.1", 0), requestHandler=Quiet, logRequests=False)
vm = sys.stdin.read()
server.register_function(lambda *a: [True, "7.3.80", 0], "one.system.version")
server.register_function(lambda *a: [True, vm, 0], "one.vm.info")
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def interleaved_rates(clients: list[Any], call: str, seconds: float, burst: float = 0.25) -> list[float]:
    """Calls per second of each client, measured in alternating short bursts so that both see the same
    machine load (this machine is shared)."""
    counts, spent = [0] * len(clients), [0.0] * len(clients)
    while min(spent) < seconds:
        for index, one in enumerate(clients):
            method = {
                "system.version": lambda o=one: o.system.version(),
                "vm.info": lambda o=one: o.vm.info(0),
            }
            start = time.perf_counter()
            while time.perf_counter() - start < burst:
                method[call]()
                counts[index] += 1
            spent[index] += time.perf_counter() - start
    return [count / elapsed for count, elapsed in zip(counts, spent, strict=True)]


def xmlrpc_part(state: Path, seconds: float) -> None:
    handle = launcher.start(state / "rpc", driver="dummy", background=True)
    try:
        one = pyone.OneServer(handle.endpoints["xmlrpc"], session=handle.auth)
        vm_id = one.vm.allocate(
            'NAME="bench"\nCPU="1"\nMEMORY="64"\nNIC=[NETWORK_ID="0"]\nCONTEXT=[TOKEN="YES"]'
        )
        time.sleep(1)
        import xmlrpc.client

        vm_xml = xmlrpc.client.ServerProxy(handle.endpoints["xmlrpc"]).one.vm.info(handle.auth, vm_id)[1]
        baseline = subprocess.Popen(
            [sys.executable, "-c", BASELINE_SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        try:
            assert baseline.stdin is not None and baseline.stdout is not None
            baseline.stdin.write(vm_xml)
            baseline.stdin.close()
            port = int(baseline.stdout.readline())
            bare = pyone.OneServer(f"http://127.0.0.1:{port}/RPC2", session="x:y")
            print("XML-RPC through pyone (calls/s; each client on its own server process)")
            for call in ("system.version", "vm.info"):
                cloud_rate, bare_rate = interleaved_rates([one, bare], call, seconds)
                print(
                    f"  {call:<15} test cloud {cloud_rate:8.0f}   bare stdlib server {bare_rate:8.0f}   "
                    f"ratio {cloud_rate / bare_rate:5.2f}"
                )
        finally:
            baseline.terminate()
            baseline.wait()
    finally:
        handle.stop()


def instantiate_to_running(one: Any, template_id: int, timeout: float = 600) -> float:
    start = time.perf_counter()
    vm_id = one.template.instantiate(template_id, "", False, "", False)
    while time.perf_counter() - start < timeout:
        vm = one.vm.info(vm_id)
        if vm.LCM_STATE == 3:
            elapsed = time.perf_counter() - start
            one.vm.action("terminate-hard", vm_id)
            return elapsed
        if vm.LCM_STATE in (36, 39):
            raise RuntimeError(f"VM {vm_id} failed: {vm.USER_TEMPLATE.get('ERROR')}")
        time.sleep(0.02)
    raise TimeoutError(f"VM {vm_id} not RUNNING after {timeout} s")


def dummy_part(state: Path, runs: int) -> None:
    with launcher.start(state / "dummy", driver="dummy", timings=Timings()) as handle:
        one = pyone.OneServer(handle.endpoints["xmlrpc"], session=handle.auth)
        template_id = one.template.allocate('NAME="t"\nCPU="1"\nMEMORY="64"\nNIC=[NETWORK_ID="0"]')
        times = [instantiate_to_running(one, template_id) for _ in range(runs)]
        timings = Timings()
        floor = timings.pending + timings.prolog + timings.boot
        print(
            f"instantiate -> RUNNING, dummy driver: median {statistics.median(times):.2f} s over {runs} runs "
            f"(the configured minimum PENDING+PROLOG+BOOT is {floor:.2f} s)"
        )


def nspawn_boot(rootfs: Path, timeout: float = 600) -> float:
    """``systemd-nspawn --boot`` of the image until its systemd reports the default target reached."""
    machine = f"bench-cloudapi-{os.getpid()}"
    start = time.perf_counter()
    process = subprocess.Popen(
        [
            "systemd-nspawn",
            "--quiet",
            f"--image={rootfs}",
            "--read-only",
            "--volatile=overlay",
            "--boot",
            f"--machine={machine}",
            "--register=no",
            "--console=pipe",
            "--private-network",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    try:
        while time.perf_counter() - start < timeout:
            ready, _, _ = select.select([process.stdout], [], [], 1)
            if not ready:
                continue
            line = process.stdout.readline()
            if not line:
                break
            if (
                "Reached target" in line and ("Multi-User" in line or "Graphical" in line)
            ) or "Startup finished" in line:
                return time.perf_counter() - start
        raise TimeoutError("systemd-nspawn did not report its default target")
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def container_part(state: Path, rootfs: Path, runs: int) -> None:
    with launcher.start(state / "container", driver="container") as handle:
        one = pyone.OneServer(handle.endpoints["xmlrpc"], session=handle.auth)
        image_id = one.image.allocate(f'NAME="rootfs"\nPATH="{rootfs}"', 1)
        while one.image.info(image_id).STATE != 1:
            time.sleep(0.2)
        template_id = one.template.allocate(
            f'NAME="t"\nCPU="1"\nMEMORY="256"\nDISK=[IMAGE_ID="{image_id}"]\nNIC=[NETWORK_ID="0"]\n'
            'CONTEXT=[NETWORK="YES", TOKEN="YES"]'
        )
        cloud_times, bare_times = [], []
        for _ in range(runs):  # interleaved, so both see the same machine load
            cloud_times.append(instantiate_to_running(one, template_id))
            bare_times.append(nspawn_boot(rootfs))
        cloud, bare = statistics.median(cloud_times), statistics.median(bare_times)
        print(
            f"container boot, median of {runs}: test cloud instantiate -> RUNNING {cloud:.2f} s, "
            f"systemd-nspawn --boot {bare:.2f} s, ratio {cloud / bare:.2f}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each calls/s measurement")
    parser.add_argument("--runs", type=int, default=5, help="boots per measurement")
    parser.add_argument("--rootfs", type=Path, help="rootfs image for the container comparison")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="testcloud-bench-") as tmp:
        state = Path(tmp)
        xmlrpc_part(state, args.seconds)
        dummy_part(state, args.runs)
        if args.rootfs is None:
            print("container boot: skipped (give --rootfs IMAGE; needs the container driver and root)")
        else:
            container_part(state, args.rootfs.resolve(), args.runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
