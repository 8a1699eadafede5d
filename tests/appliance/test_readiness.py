"""A SuperLink that shuts down withdraws its readiness (issue 9, item 12): flower-readiness.service's
ExecStop publishes READY=NO (and ONEAPP_FL_STATUS=stopped after a successful bootstrap) through OneGate.
Host level: the script against the test cloud's real OneGate (dummy driver), the unit's ordering."""

from __future__ import annotations

import configparser
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyone
import pytest
import requests
from appliance_cloud import wait_for

from hostkit.paths import CONTEXT_DIR

APPLIANCE_DIR = CONTEXT_DIR / "appliance"


@pytest.fixture(scope="module")
def gate_vm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, int, dict[str, str]]]:
    """A dummy cloud, one VM with a OneGate token, and that VM's OneGate environment."""
    from testcloud import launcher

    handle = launcher.start(tmp_path_factory.mktemp("cloud") / "state", driver="dummy")
    try:
        one = pyone.OneServer(handle.endpoints["xmlrpc"], session=handle.auth)
        template = one.template.allocate('NAME="superlink"\nCPU="1"\nMEMORY="64"\nCONTEXT=[TOKEN="YES"]')
        vm_id = one.template.instantiate(template, "superlink")
        wait_for(lambda: one.vm.info(vm_id).LCM_STATE == 3, 60, interval=0.2, what="VM RUNNING")
        context = Path(handle.state_dir) / "vms" / str(vm_id) / "context"
        values = dict(re.findall(r"^(\w+)='(.*)'$", (context / "context.sh").read_text(), flags=re.MULTILINE))
        environment = {
            "ONEGATE_ENDPOINT": values["ONEGATE_ENDPOINT"],
            "VMID": values["VMID"],
            "TOKENTXT": (context / "token.txt").read_text().strip(),
        }
        yield one, vm_id, environment
    finally:
        handle.stop()


def publish(environment: dict[str, str], body: str) -> None:
    headers = {"X-ONEGATE-TOKEN": environment["TOKENTXT"], "X-ONEGATE-VMID": environment["VMID"]}
    reply = requests.put(
        environment["ONEGATE_ENDPOINT"] + "/vm", data={"data": body}, headers=headers, timeout=30
    )
    assert reply.ok, reply.text


def readiness(
    make_sandbox, status: str, environment: dict[str, str], **extra: str
) -> subprocess.CompletedProcess[str]:
    sandbox = make_sandbox("superlink")
    (sandbox.root / "status").write_text(status + "\n")
    return subprocess.run(
        ["bash", str(APPLIANCE_DIR / "bin" / "flower-readiness"), "down"],
        env=sandbox.env(**environment, **extra),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("status", "before", "withdrawn"),
    [
        # a ready SuperLink: READY=NO and stopped; the endpoint stays for the next boot
        (
            "bootstrap_success",
            {"ONEAPP_FL_STATUS": "ready", "ONEAPP_FL_ENDPOINT": "10.231.64.9:9092"},
            "stopped",
        ),
        # a failed one: only READY=NO, its failure report survives the shutdown
        ("configure_failure", {"ONEAPP_FL_STATUS": "failed", "ONEAPP_FL_ERROR": "bad port"}, None),
    ],
)
def test_a_superlink_that_shuts_down_withdraws_ready(
    make_sandbox, gate_vm, status: str, before: dict[str, str], withdrawn: str | None
) -> None:
    one, vm_id, environment = gate_vm
    publish(environment, "".join(f"{name}={value}\n" for name, value in ({"READY": "YES"} | before).items()))
    result = readiness(make_sandbox, status, environment)
    assert result.returncode == 0, result.stderr
    taken = {"READY": "NO"} | ({"ONEAPP_FL_STATUS": withdrawn} if withdrawn else {})
    published = one.vm.info(vm_id).USER_TEMPLATE
    assert {name: published.get(name) for name in before | taken} == before | taken
    said = " ".join(f"{name}={value}" for name, value in taken.items())
    assert f"published {said} through OneGate" in result.stderr


def test_an_unreachable_onegate_does_not_hold_the_shutdown(make_sandbox, gate_vm) -> None:
    _, _, environment = gate_vm
    started = time.monotonic()
    result = readiness(
        make_sandbox,
        "bootstrap_success",
        {**environment, "ONEGATE_ENDPOINT": "http://127.0.0.1:9"},
        FL_READINESS_DEADLINE="2",
    )
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 15
    assert "OneGate did not take READY=NO" in result.stderr


def test_the_unit_runs_at_shutdown_before_the_network_and_the_superlink_stop(make_sandbox) -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(APPLIANCE_DIR / "systemd" / "flower-readiness.service")
    service = unit["Service"]
    assert (service["Type"], service["RemainAfterExit"]) == ("oneshot", "yes"), "active until shutdown"
    assert service["ExecStop"] == "/etc/one-appliance/bin/flower-readiness down"
    after = unit["Unit"]["After"].split()
    assert "network-online.target" in after and "flower-superlink.service" in after  # stopped before them
    # Installed with the SuperLink's units and started by its bootstrap.
    listed = make_sandbox("superlink").bash(
        'printf "%s\\n" "${FL_SUPERLINK_UNITS[@]}"; declare -f superlink_bootstrap'
    )
    assert listed.returncode == 0, listed.stderr
    assert "flower-readiness.service" in listed.stdout.splitlines()
    assert "fl_unit_apply flower-readiness.service" in listed.stdout
