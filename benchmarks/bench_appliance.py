#!/usr/bin/env python3
"""Appliance start-up cost on the container driver, next to the same Flower processes started bare.

In one run it measures:

- boot to READY per role: a OneFlow service (1 SuperLink + 1 SuperNode, straight, ready gate) on the local
  test cloud with the container driver; from the role's VM creation to READY=YES in OneGate (boot,
  one-context, configure, bootstrap, publish);
- SuperLink start to first SuperNode activated: inside the appliances, from the SuperLink process start
  (its journal) to the SuperNode's "SuperNode ID" line (its journal; the containers share the host's
  clock). It includes the SuperNode VM's deployment after the SuperLink is READY, its boot and the key
  registration by the SuperLink's key sync;
- the same Flower processes on loopback, bare: flower-superlink (TLS, node auth, SQLite) to /health, a
  SuperNode key registered with ``flwr supernode register``, flower-supernode to "SuperNode ID".

and prints the ratios. Usage: ``python benchmarks/bench_appliance.py [--runs N]`` (root, systemd-nspawn).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pyone
import requests

from factory.harness.flwrenv import ensure_flower, flower_environment
from factory.images.localbuild import build_appliance
from factory.model.matrix import load_matrix
from hostkit.waiting import wait_until

SUPERLINK = "superlink-1.42.0-debian12-cpu-standard-sklearn-x86_64"
SUPERNODE = "supernode-1.42.0-debian12-cpu-standard-sklearn-x86_64"
FLOWER = "1.42.0"


def wait_for(predicate, timeout: float, interval: float = 0.5, what: str = "condition"):
    """hostkit's wait_until, stopping the benchmark (RuntimeError) at the deadline."""
    return wait_until(predicate, timeout, interval=interval, what=what, error=RuntimeError)


def ssh(key: Path, ip: str, command: str) -> str:
    argv = ["ssh", "-i", str(key), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10", f"root@{ip}", command]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout


def journal_time(key: Path, ip: str, unit: str, pattern: str) -> float:
    """Wall-clock time (epoch seconds) of the first journal line of unit matching pattern."""
    output = ssh(key, ip, f"journalctl -u {unit} -o short-unix --no-pager | grep -m1 -E '{pattern}'")
    return float(output.split()[0])


# ------------------------------------------------------------------------------------------ appliance


def appliance_run(cloud, one, images: dict[str, int], key: Path) -> dict[str, float]:
    user, _, password = cloud.auth.partition(":")

    def flow(method: str, path: str, body=None) -> requests.Response:
        return requests.request(
            method, cloud.endpoints["oneflow"] + path, json=body, auth=(user, password), timeout=30
        )

    public_key = key.with_suffix(".pub").read_text().strip()
    context = f'CONTEXT=[NETWORK="YES", TOKEN="YES", REPORT_READY="YES", SSH_PUBLIC_KEY="{public_key}"]'
    templates = {
        role: one.template.allocate(
            f'NAME="bench-{role}-{time.monotonic_ns()}"\nCPU="1"\nMEMORY="1024"\n'
            f'DISK=[IMAGE_ID="{images[role]}"]\nNIC=[NETWORK_ID="0"]\n{context}'
        )
        for role in images
    }
    document = {
        "name": "bench",
        "deployment": "straight",
        "ready_status_gate": True,
        "roles": [
            {"name": "superlink", "type": "vm", "template_id": templates["superlink"], "cardinality": 1},
            {"name": "supernode", "type": "vm", "template_id": templates["supernode"], "cardinality": 1,
             "parents": ["superlink"]},
        ],
    }  # fmt: skip
    template_id = flow("POST", "/service_template", document).json()["DOCUMENT"]["ID"]
    created = time.time()
    reply = flow("POST", f"/service_template/{template_id}/action", {"action": {"perform": "instantiate"}})
    service = int(reply.json()["DOCUMENT"]["ID"])
    try:
        vms: dict[str, int] = {}
        ready: dict[str, float] = {}
        created_at: dict[str, float] = {"superlink": created}

        def progress() -> bool:
            body = flow("GET", f"/service/{service}").json()["DOCUMENT"]["TEMPLATE"]["BODY"]
            for entry in body["roles"]:
                for node in entry.get("nodes", []):
                    vm = int(node["deploy_id"])
                    vms[entry["name"]] = vm
                    if entry["name"] == "supernode" and "supernode" not in created_at:
                        created_at["supernode"] = float(one.vm.info(vm).STIME)
                    if (
                        entry["name"] not in ready
                        and (one.vm.info(vm).USER_TEMPLATE or {}).get("READY") == "YES"
                    ):
                        ready[entry["name"]] = time.time()
            return len(ready) == 2

        wait_for(progress, 900, interval=0.5, what="both roles READY")
        superlink_ip = one.vm.info(vms["superlink"]).TEMPLATE["NIC"]["IP"]
        supernode_ip = one.vm.info(vms["supernode"]).TEMPLATE["NIC"]["IP"]
        started = journal_time(key, superlink_ip, "flower-superlink", "Starting Flower SuperLink")
        activated = wait_for(
            lambda: _try(lambda: journal_time(key, supernode_ip, "flower-supernode", "SuperNode ID")),
            300,
            what="SuperNode activated",
        )
        return {
            "superlink_ready": ready["superlink"] - created_at["superlink"],
            "supernode_ready": ready["supernode"] - created_at["supernode"],
            "first_activated": activated - started,
        }
    finally:
        flow("DELETE", f"/service/{service}")


def _try(function):
    try:
        return function()
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, ValueError, IndexError):
        return None


# ------------------------------------------------------------------------------------------ bare


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def make_tls(directory: Path) -> None:
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    curve = ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]
    openssl("genpkey", *curve, "-out", str(directory / "ca.key"))
    openssl("req", "-x509", "-key", str(directory / "ca.key"), "-subj", "/CN=bench CA", "-days", "2",
            "-out", str(directory / "ca.pem"))  # fmt: skip
    openssl("genpkey", *curve, "-out", str(directory / "server.key"))
    openssl("req", "-new", "-key", str(directory / "server.key"), "-subj", "/CN=127.0.0.1",
            "-out", str(directory / "server.csr"))  # fmt: skip
    (directory / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", str(directory / "server.csr"), "-CA", str(directory / "ca.pem"),
            "-CAkey", str(directory / "ca.key"), "-set_serial", "1", "-days", "2",
            "-extfile", str(directory / "ext.cnf"), "-out", str(directory / "server.pem"))  # fmt: skip


def wait_line(path: Path, pattern: str, timeout: float) -> float:
    regex = re.compile(pattern)

    def seen() -> bool:
        return path.exists() and bool(regex.search(path.read_text(errors="replace")))

    wait_for(seen, timeout, interval=0.05, what=f"{pattern} in {path.name}")
    return time.time()


def start_logged(argv: list[str], log: Path, environment: dict[str, str]) -> subprocess.Popen:
    with open(log, "w") as stream:
        return subprocess.Popen(argv, stdout=stream, stderr=subprocess.STDOUT, env=environment)


def healthy(port: int, ca: Path) -> bool:
    try:
        return requests.get(f"https://127.0.0.1:{port}/health", verify=str(ca), timeout=2).status_code == 200
    except requests.RequestException:
        return False


def bare_run() -> dict[str, float]:
    venv = ensure_flower(FLOWER)
    with tempfile.TemporaryDirectory(prefix="fl-bench-appliance-") as name:
        work = Path(name)
        make_tls(work)
        ca = work / "ca.pem"
        home = work / "flwr"
        home.mkdir()
        port = free_port()
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "local"\n[superlink.local]\naddress = "127.0.0.1:{port}"\n'
            f'root-certificates = "{ca}"\n'
        )
        environment = flower_environment(flwr_home=home)
        environment["PATH"] = f"{venv.bin_dir}:{environment['PATH']}"
        superlink = [
            str(venv.executable("flower-superlink")),
            *("--ssl-ca-certfile", str(ca), "--ssl-certfile", str(work / "server.pem")),
            *("--ssl-keyfile", str(work / "server.key"), "--host", "127.0.0.1", "--port", str(port)),
            *("--database", str(work / "state.db"), "--enable-supernode-auth"),
            "--disable-runtime-dependency-installation",
        ]
        supernode = [
            str(venv.executable("flower-supernode")),
            *("--root-certificates", str(ca), "--superlink", f"127.0.0.1:{port}", "--port", str(free_port())),
            *("--auth-supernode-private-key", str(work / "node")),
            *("--node-config", "partition-id=0 num-partitions=1"),
        ]
        processes = []
        try:
            started = time.time()
            processes.append(start_logged(superlink, work / "superlink.log", environment))
            wait_for(lambda: healthy(port, ca), 120, interval=0.1, what="bare SuperLink /health")
            superlink_ready = time.time() - started
            keygen = ["ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-f", str(work / "node")]
            subprocess.run(keygen, check=True)
            register = [
                str(venv.executable("flwr")),
                "supernode",
                "register",
                str(work / "node.pub"),
                "local",
            ]
            subprocess.run(register, check=True, capture_output=True, env=environment)
            supernode_started = time.time()
            processes.append(start_logged(supernode, work / "supernode.log", environment))
            activated = wait_line(work / "supernode.log", "SuperNode ID", 120)
            return {
                "superlink_ready": superlink_ready,
                "supernode_ready": activated - supernode_started,
                "first_activated": activated - started,
            }
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()


# ------------------------------------------------------------------------------------------ main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    from testcloud import launcher

    matrix = load_matrix()
    built = {"superlink": build_appliance(matrix.variant(SUPERLINK)),
             "supernode": build_appliance(matrix.variant(SUPERNODE))}  # fmt: skip
    appliance: list[dict[str, float]] = []
    bare: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="fl-bench-appliance-cloud-") as name:
        state = Path(name)
        key = state / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        cloud = launcher.start(state / "cloud", driver="container")
        try:
            one = pyone.OneServer(cloud.endpoints["xmlrpc"], session=cloud.auth)
            images = {}
            for role, image in built.items():
                images[role] = one.image.allocate(f'NAME="{role}"\nPATH="{image.image}"\nTYPE="OS"', 1)
                wait_for(lambda role=role: one.image.info(images[role]).STATE == 1, 600, what="image READY")
            for run in range(1, args.runs + 1):
                print(f"run {run}/{args.runs}: bare processes on loopback ...", file=sys.stderr)
                bare.append(bare_run())
                print(f"run {run}/{args.runs}: appliance pair on the container driver ...", file=sys.stderr)
                appliance.append(appliance_run(cloud, one, images, key))
        finally:
            cloud.stop()

    rows = [
        ("SuperLink: start -> ready", "superlink_ready", "boot->READY", "process->/health"),
        ("SuperNode: start -> ready", "supernode_ready", "boot->READY", "process->activated"),
        ("SuperLink start -> 1st SuperNode activated", "first_activated", "in the guests", "bare processes"),
    ]
    print(f"Appliance (container driver) vs bare Flower {FLOWER} on loopback; median of {args.runs} run(s),"
          f" {os.cpu_count()} CPUs")  # fmt: skip
    print(f"{'measure':45} {'appliance':>12} {'bare':>12} {'ratio':>8}")
    results = {}
    for label, key_name, appliance_what, bare_what in rows:
        a = statistics.median(run[key_name] for run in appliance)
        b = statistics.median(run[key_name] for run in bare)
        results[key_name] = {"appliance_s": round(a, 2), "bare_s": round(b, 2), "ratio": round(a / b, 2)}
        print(f"{label:45} {a:10.1f} s {b:10.1f} s {a / b:7.1f}x   ({appliance_what} / {bare_what})")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
