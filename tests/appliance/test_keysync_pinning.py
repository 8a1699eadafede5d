"""The SuperLink's key sync against a key takeover through OneGate (issue 9, item 1), on this host with the
test cloud's real OneGate (dummy driver) and a stand-in ``flwr`` that records what is registered.

The attack as found: a VM outside the service sends ``PUT /vm`` with `` SERVICE_ID=<service>`` (leading
space: the restricted-attribute check compares the raw key, the template parser trims it; upstream's
onegate-server.rb does the same, and the test cloud keeps that behaviour), then writes its own key into a
SuperNode's ``ONEAPP_FL_NODE_PUBKEY``. The key sync must keep the key it pinned for that VM."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests
from appliance_cloud import wait_for
from dummy_service import start_dummy_service

from hostkit.paths import CONTEXT_DIR

APPLIANCE_DIR = CONTEXT_DIR / "appliance"

B64_HEAD = "AAAAE2VjZHNhLXNoYTItbmlzdHAzODQAAAAIbmlzdHAzODQAAABh"
REAL = f"ecdsa-sha2-nistp384 {B64_HEAD}{'B' * 128}== supernode@real"
ROGUE = f"ecdsa-sha2-nistp384 {B64_HEAD}{'R' * 128}== rogue@attacker"
RENEWED = f"ecdsa-sha2-nistp384 {B64_HEAD}{'N' * 128}== supernode@renewed"

# flwr as the key sync calls it: "supernode register <keyfile> local --format json" and
# "supernode unregister <node id> local --format json"; the registered keys are the lines of $STUB/nodes.
FLWR_STUB = r"""#!/usr/bin/env bash
set -euo pipefail
nodes="${FLWR_STUB_STATE:?}/nodes"
touch "${nodes}"
case "$1 $2" in
    "supernode register")
        key=$(cat "$3")
        if grep -qF -- "${key}" "${nodes}"; then
            echo '{"success": false, "error-message": "Public key already in use"}'
            exit 1
        fi
        id=$((100 + $(wc -l <"${nodes}")))
        printf '%s %s\n' "${id}" "${key}" >>"${nodes}"
        printf '{"success": true, "node-id": %s}\n' "${id}"
        ;;
    "supernode unregister")
        grep -v "^$3 " "${nodes}" >"${nodes}.new" || true
        mv "${nodes}.new" "${nodes}"
        echo '{"success": true}'
        ;;
    *) echo "unexpected flwr call: $*" >&2; exit 2 ;;
esac
"""


@pytest.fixture(scope="module")
def pair(dummy_cloud: Any) -> dict[str, Any]:
    """A running service (one SuperLink, two SuperNodes) and a VM outside it (the attacker)."""
    service = start_dummy_service(dummy_cloud, "fl", supernodes=2)
    one = service.one
    rogue = one.template.instantiate(service.template, "rogue")
    wait_for(lambda: one.vm.info(rogue).LCM_STATE == 3, 60, interval=0.2, what="rogue VM RUNNING")
    return {
        "one": one,
        "service": service.service,
        "superlink": service.superlink,
        "supernodes": service.supernodes,
        "rogue": rogue,
    }


def gate(cloud: Any, vm_id: int) -> dict[str, str]:
    """ONEGATE_ENDPOINT, VMID and TOKENTXT as one-context exports them in that VM."""
    context = Path(cloud.state_dir) / "vms" / str(vm_id) / "context"
    values = dict(re.findall(r"^(\w+)='(.*)'$", (context / "context.sh").read_text(), flags=re.MULTILINE))
    token = (context / "token.txt").read_text().strip()
    return {"ONEGATE_ENDPOINT": values["ONEGATE_ENDPOINT"], "VMID": values["VMID"], "TOKENTXT": token}


def onegate_put(environment: dict[str, str], path: str, data: str) -> requests.Response:
    """A PUT as any OneGate client sends it (form field data=...), with that VM's token."""
    headers = {"X-ONEGATE-TOKEN": environment["TOKENTXT"], "X-ONEGATE-VMID": environment["VMID"]}
    return requests.put(
        environment["ONEGATE_ENDPOINT"] + path, data={"data": data}, headers=headers, timeout=30
    )


class KeySync:
    """flower-keysync of the SuperLink VM, run here: its files under ``root``, flwr the stand-in."""

    def __init__(self, root: Path, make_sandbox, environment: dict[str, str]) -> None:
        self.sandbox = make_sandbox("superlink")
        self.root, self.environment = root, environment
        stub = root / "flwr-venv" / "bin"
        stub.mkdir(parents=True)
        (stub / "flwr").write_text(FLWR_STUB)
        (stub / "flwr").chmod(0o755)
        (root / "flwr-state").mkdir()
        self.sandbox.etc.mkdir(parents=True, exist_ok=True)
        (self.sandbox.etc / "keysync.env").write_text(
            "FL_KEYSYNC_AUTOENROLL=YES\nFL_KEYSYNC_KEYS_FILE=\nFL_KEYSYNC_DATABASE=persistent\n"
        )
        self.pin_dir = root / "pins"

    def __call__(self, *arguments: str) -> subprocess.CompletedProcess[str]:
        environment = self.sandbox.env(
            FL_VENV=str(self.root / "flwr-venv"),
            FLWR_STUB_STATE=str(self.root / "flwr-state"),
            FL_KEYSYNC_PIN_DIR=str(self.pin_dir),
            FL_ONEGATE_DEADLINE="10",
            **self.environment,
        )
        return subprocess.run(
            ["bash", str(APPLIANCE_DIR / "bin" / "flower-keysync"), *arguments],
            env=environment,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def registered(self) -> list[str]:
        path = self.root / "flwr-state" / "nodes"
        return [line.split(" ", 1)[1] for line in path.read_text().splitlines()] if path.exists() else []


def identity(key: str) -> str:
    return " ".join(key.split()[:2])


def test_a_rogue_key_written_through_onegate_is_refused(
    make_sandbox, dummy_cloud, pair, tmp_path: Path
) -> None:
    one, node = pair["one"], pair["supernodes"][0]
    assert onegate_put(gate(dummy_cloud, node), "/vm", f"ONEAPP_FL_NODE_PUBKEY={REAL}").ok
    sync = KeySync(tmp_path, make_sandbox, gate(dummy_cloud, pair["superlink"]))

    first = sync()
    assert first.returncode == 0, first.stderr
    assert sync.registered() == [identity(REAL)]
    assert "pinned SuperNode key" in first.stderr and f"to VM {node}" in first.stderr
    pins = sync.pin_dir / "pins"
    assert (sync.pin_dir.stat().st_mode & 0o777, pins.stat().st_mode & 0o777) == (0o700, 0o600)

    # The attack: join the service in OneGate's eyes, then replace the SuperNode's key.
    rogue = gate(dummy_cloud, pair["rogue"])
    joined = onegate_put(rogue, "/vm", f" SERVICE_ID={pair['service']}\n")
    assert joined.ok, "the test cloud keeps upstream's check (compares the untrimmed key)"
    assert onegate_put(rogue, f"/vms/{node}", f"ONEAPP_FL_NODE_PUBKEY={ROGUE}").ok
    assert one.vm.info(node).USER_TEMPLATE["ONEAPP_FL_NODE_PUBKEY"] == ROGUE

    second = sync()
    assert second.returncode == 0, second.stderr
    assert sync.registered() == [identity(REAL)], "the rogue key is not registered, the real one stays"
    assert f"refused a changed key for SuperNode VM {node}" in second.stderr
    assert f"flower-keysync --forget {node}" in second.stderr
    assert one.vm.info(pair["superlink"]).USER_TEMPLATE["ONEAPP_FL_KEY_REFUSED"] == str(node)

    third = sync()  # nothing new: no second log line, the report stands
    assert third.returncode == 0 and "refused" not in third.stderr, third.stderr
    assert sync.registered() == [identity(REAL)]

    # Erasing the attribute does not unregister the pinned key either.
    assert onegate_put(rogue, f"/vms/{node}", "ONEAPP_FL_NODE_PUBKEY=").ok
    assert sync().returncode == 0
    assert sync.registered() == [identity(REAL)]

    # The operator re-keys the VM explicitly: its new key is pinned, the old one unregistered.
    assert onegate_put(gate(dummy_cloud, node), "/vm", f"ONEAPP_FL_NODE_PUBKEY={RENEWED}").ok
    listed = sync("--pins")
    assert listed.returncode == 0 and listed.stdout.split()[0] == str(node)
    forgot = sync("--forget", str(node))
    assert forgot.returncode == 0 and f"forgot the pinned key of SuperNode VM {node}" in forgot.stderr
    after = sync()
    assert after.returncode == 0, after.stderr
    assert sync.registered() == [identity(RENEWED)]
    assert one.vm.info(pair["superlink"]).USER_TEMPLATE.get("ONEAPP_FL_KEY_REFUSED") in ("", None)


def test_forget_needs_a_vm_id(make_sandbox, dummy_cloud, pair, tmp_path: Path) -> None:
    sync = KeySync(tmp_path, make_sandbox, gate(dummy_cloud, pair["superlink"]))
    for arguments in (["--forget"], ["--forget", "12; rm -rf /"], ["--bogus"]):
        result = sync(*arguments)
        assert result.returncode == 2, (arguments, result.stderr)
        assert "ERROR:" in result.stderr and "Traceback" not in result.stderr


def test_a_supernode_that_left_the_service_releases_its_pinned_key(
    make_sandbox, dummy_cloud, pair, tmp_path: Path
) -> None:
    """Scale down (a OneFlow change, not a OneGate write): the VM's pinned key is unregistered."""
    one, (first, second) = pair["one"], pair["supernodes"]
    other = f"ecdsa-sha2-nistp384 {B64_HEAD}{'C' * 128}== supernode@second"
    assert onegate_put(gate(dummy_cloud, first), "/vm", f"ONEAPP_FL_NODE_PUBKEY={REAL}").ok
    assert onegate_put(gate(dummy_cloud, second), "/vm", f"ONEAPP_FL_NODE_PUBKEY={other}").ok
    sync = KeySync(tmp_path, make_sandbox, gate(dummy_cloud, pair["superlink"]))
    assert sync().returncode == 0
    assert sorted(sync.registered()) == sorted([identity(REAL), identity(other)])

    user, _, password = dummy_cloud.auth.partition(":")
    url = f"{dummy_cloud.endpoints['oneflow']}/service/{pair['service']}"
    reply = requests.post(
        f"{url}/scale", json={"role_name": "supernode", "cardinality": 1}, auth=(user, password), timeout=30
    )
    assert reply.ok, reply.text

    def supernodes() -> list[int]:
        body = requests.get(url, auth=(user, password), timeout=30).json()["DOCUMENT"]["TEMPLATE"]["BODY"]
        return [int(n["deploy_id"]) for r in body["roles"] if r["name"] == "supernode" for n in r["nodes"]]

    wait_for(lambda: len(supernodes()) == 1, 120, interval=0.5, what="scaled down to one SuperNode")
    (kept,) = supernodes()
    result = sync()
    assert result.returncode == 0, result.stderr
    assert sync.registered() == [identity(REAL if kept == first else other)]
    assert "left the service: releasing its pinned key" in result.stderr
    assert one.vm.info(pair["superlink"]).USER_TEMPLATE.get("ONEAPP_FL_KEY_REFUSED") in ("", None)
