"""Prometheus targets from OneGate: a real SuperLink + SuperNodes service in the test cloud (dummy driver),
read through its OneGate (upstream's GET /service and GET /vms/:id shapes) with a guest's credentials,
scaled up and down through OneFlow: the file_sd JSON follows the service."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyone
import pytest
import requests

from hostkit.paths import REPO_ROOT
from monitoring import targets
from testcloud import launcher
from testcloud.core.config import Timings

FAST = Timings(pending=0.05, prolog=0.05, boot=0.05, shutdown=0.05, epilog=0.05, image_lock=0.05,
               app_lock=0.05, tick=0.02)  # fmt: skip
# A OneGate that is not there (the discard port on loopback): nothing answers.
DEAD_GATE = {"ONEGATE_ENDPOINT": "http://127.0.0.1:9", "ONEGATE_TOKEN": "t", "VMID": "1"}
RUNNING = 2  # OneFlow service state (src/flow/lib/models/service.rb STATE)


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {predicate}")
        time.sleep(0.05)
    return value


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[Any]:
    handle = launcher.start(tmp_path / "cloud", driver="dummy", timings=FAST, flow_cooldown=1)
    yield handle
    handle.stop()


def flow(cloud: Any, method: str, path: str, body: Any = None) -> Any:
    user, password = cloud.auth.split(":", 1)
    return requests.request(
        method, cloud.endpoints["oneflow"] + path, json=body, auth=(user, password), timeout=30
    )


def service(cloud: Any) -> int:
    one = pyone.OneServer(cloud.endpoints["xmlrpc"], session=cloud.auth)
    context = 'CONTEXT=[NETWORK="YES", TOKEN="YES"]'
    server = one.template.allocate(f'NAME="server"\nCPU="1"\nMEMORY="128"\nNIC=[NETWORK_ID="0"]\n{context}')
    client = one.template.allocate(f'NAME="client"\nCPU="1"\nMEMORY="128"\nNIC=[NETWORK_ID="0"]\n{context}')
    roles = [
        {"name": "superlink", "type": "vm", "template_id": server, "cardinality": 1},
        {"name": "supernode", "type": "vm", "template_id": client, "cardinality": 2, "min_vms": 1,
         "max_vms": 5, "parents": ["superlink"]},
    ]  # fmt: skip
    reply = flow(
        cloud, "POST", "/service_template", {"name": "flower", "deployment": "straight", "roles": roles}
    )
    assert reply.status_code == 201, reply.text
    action = {"action": {"perform": "instantiate", "params": {"merge_template": {"name": "fl-mon"}}}}
    reply = flow(cloud, "POST", f"/service_template/{reply.json()['DOCUMENT']['ID']}/action", action)
    assert reply.status_code == 201, reply.text
    service_id = int(reply.json()["DOCUMENT"]["ID"])
    wait_for(lambda: body(cloud, service_id)["state"] == RUNNING)
    return service_id


def body(cloud: Any, service_id: int) -> dict[str, Any]:
    return flow(cloud, "GET", f"/service/{service_id}").json()["DOCUMENT"]["TEMPLATE"]["BODY"]


def nodes(cloud: Any, service_id: int, role: str) -> list[int]:
    found = next(r for r in body(cloud, service_id)["roles"] if r["name"] == role)
    return [int(node["deploy_id"]) for node in found.get("nodes", [])]


def guest_env(cloud: Any, vm_id: int) -> dict[str, str]:
    """What one-context gives a guest: OneGate's endpoint, the token of its context and its VM id."""
    token = (cloud.state_dir / "vms" / str(vm_id) / "context" / "token.txt").read_text().strip()
    return {"ONEGATE_ENDPOINT": cloud.endpoints["onegate"], "ONEGATE_TOKEN": token, "VMID": str(vm_id)}


def vm_ip(cloud: Any, vm_id: int) -> str:
    one = pyone.OneServer(cloud.endpoints["xmlrpc"], session=cloud.auth)
    return str(one.vm.info(vm_id).TEMPLATE["NIC"]["IP"])


def scale(cloud: Any, service_id: int, cardinality: int) -> None:
    reply = flow(
        cloud, "POST", f"/service/{service_id}/scale", {"role_name": "supernode", "cardinality": cardinality}
    )
    assert reply.status_code == 204, reply.text
    wait_for(
        lambda: (
            len(nodes(cloud, service_id, "supernode")) == cardinality
            and body(cloud, service_id)["state"] == RUNNING
        )
    )


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "monitoring.targets", *args],
        capture_output=True, text=True, timeout=60, cwd=REPO_ROOT, env={"PATH": "/usr/bin:/bin", **env},
    )  # fmt: skip


def test_file_sd_follows_the_service_as_it_scales(cloud: Any, tmp_path: Path) -> None:
    service_id = service(cloud)
    superlink = nodes(cloud, service_id, "superlink")[0]
    env = guest_env(cloud, superlink)
    out = tmp_path / "flower.json"

    def expected() -> list[tuple[str, str, str]]:
        wanted = [("superlink", str(superlink), f"{vm_ip(cloud, superlink)}:9101")]
        wanted += [
            ("supernode", str(vm), f"{vm_ip(cloud, vm)}:9102") for vm in nodes(cloud, service_id, "supernode")
        ]
        return wanted

    def written() -> list[tuple[str, str, str]]:
        result = run_cli(
            env, "file", "--out", str(out), "--role", "superlink=9101", "--role", "supernode=9102"
        )
        assert result.returncode == 0, result.stderr
        groups = json.loads(out.read_text())
        targets.validate_groups(groups)
        for group in groups:
            assert group["labels"]["flower_service_id"] == str(service_id)
            assert group["labels"]["flower_service"] == "fl-mon"
        return [(g["labels"]["flower_role"], g["labels"]["one_vm_id"], g["targets"][0]) for g in groups]

    first = written()
    assert len(first) == 3 and first == expected()
    scale(cloud, service_id, 4)
    grown = written()
    assert len(grown) == 5 and grown == expected()
    scale(cloud, service_id, 1)
    shrunk = written()
    assert len(shrunk) == 2 and shrunk == expected()
    assert {vm for _, vm, _ in shrunk} < {vm for _, vm, _ in grown}


def test_http_sd_serves_the_same_list(cloud: Any, tmp_path: Path) -> None:
    from factory.harness.bareflower import free_port

    service_id = service(cloud)
    env = guest_env(cloud, nodes(cloud, service_id, "supernode")[0])
    printed = run_cli(env, "print")
    assert printed.returncode == 0, printed.stderr
    port = free_port()
    command = ["-m", "monitoring.targets", "http", "--listen", f"127.0.0.1:{port}", "--interval", "1"]
    process = subprocess.Popen(
        [sys.executable, *command],
        cwd=REPO_ROOT,
        env={"PATH": "/usr/bin:/bin", **env},
        stderr=subprocess.PIPE,
    )
    try:
        reply = wait_for(lambda: _get(f"http://127.0.0.1:{port}/targets"))
        assert reply.headers["Content-Type"] == "application/json"
        assert reply.json() == json.loads(printed.stdout)
        assert len(reply.json()) == 3
        scale(cloud, service_id, 3)
        wait_for(lambda: len(_get(f"http://127.0.0.1:{port}/targets").json()) == 4, timeout=20)
        assert _get(f"http://127.0.0.1:{port}/nothing").status_code == 404
    finally:
        process.terminate()
        process.wait(timeout=10)


def _get(url: str) -> Any:
    try:
        reply = requests.get(url, timeout=5)
    except requests.ConnectionError:
        return None
    return reply if reply.status_code in (200, 404) else None


def test_prometheus_accepts_the_file(tmp_path: Path) -> None:
    """promtool checks a configuration that reads the generated file through file_sd."""
    document = {"SERVICE": {"name": "s", "id": "4", "roles": [{"name": "supernode", "nodes": [
        {"deploy_id": 7, "vm_info": {"VM": {"ID": "7", "NAME": "n", "STATE": "3",
                                            "TEMPLATE": {"NIC": [{"IP": "10.231.64.7"}]}}}},
        {"deploy_id": 8, "vm_info": {"VM": {"ID": "8", "NAME": "gone", "STATE": "6",
                                            "TEMPLATE": {"NIC": [{"IP": "10.231.64.8"}]}}}},
        {"deploy_id": 9, "vm_info": {"VM": {"ID": "9", "NAME": "v6", "STATE": "3",
                                            "TEMPLATE": {"NIC": {"IP": "fd00::9"}}}}},
    ]}]}}  # fmt: skip
    groups = targets.targets(document, {"supernode": 9101}, scheme="https")
    assert [group["targets"] for group in groups] == [["10.231.64.7:9101"], ["[fd00::9]:9101"]]
    assert groups[0]["labels"]["__scheme__"] == "https"
    path = tmp_path / "flower.json"
    assert targets.write_if_changed(path, groups) is True
    assert targets.write_if_changed(path, groups) is False
    config = tmp_path / "prometheus.yml"
    config.write_text(
        f"scrape_configs:\n  - job_name: flower\n    file_sd_configs:\n      - files: ['{path}']\n"
    )
    result = subprocess.run(
        ["promtool", "check", "config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("env", "args", "message"),
    [
        ({}, ["print"], "missing OneGate setting(s): ONEGATE_ENDPOINT, ONEGATE_TOKEN, VMID"),
        ({"ONEGATE_ENDPOINT": "ftp://x", "ONEGATE_TOKEN": "t", "VMID": "1"}, ["print"], "not an http(s) URL"),
        (DEAD_GATE, ["print", "--role", "x=99999"], "--role: 'x=99999' is not ROLE or ROLE=PORT"),
        (DEAD_GATE, ["file"], "needs --out"),
        (DEAD_GATE, ["print"], "OneGate /service"),
    ],
)  # fmt: skip
def test_bad_input_is_one_clear_line(
    env: dict[str, str], args: list[str], message: str, tmp_path: Path
) -> None:
    result = run_cli(env, *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_wrong_token_is_refused_by_onegate(cloud: Any) -> None:
    service_id = service(cloud)
    env = guest_env(cloud, nodes(cloud, service_id, "superlink")[0])
    result = run_cli({**env, "ONEGATE_TOKEN": "bm90IGEgdG9rZW4="}, "print")
    assert result.returncode == 2 and "HTTP 401" in result.stderr
