"""The appliance's OneGate client against the test cloud's real OneGate (dummy driver: no guests, the
client runs here with a VM's own token): publishing, reading what the other VMs of the service
published, SuperLink discovery, the key sync's wanted keys, node config, and failures."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from dummy_service import start_dummy_service

KEY_A = "ecdsa-sha2-nistp384 AAAAE2VjZHNhLXNoYTItbmlzdHAzODQAAAAIbmlzdHAzODQAAABh" + "B" * 128 + "== node-a@x"


@pytest.fixture(scope="module")
def service(dummy_cloud: Any) -> dict[str, Any]:
    """A running 1 + 3 service of dummy VMs; returns the VM ids."""
    started = start_dummy_service(dummy_cloud, "gate", supernodes=3)
    return {"one": started.one, "superlink": started.superlink, "supernodes": started.supernodes}


def gate_environment(cloud: Any, vm_id: int) -> dict[str, str]:
    """ONEGATE_ENDPOINT, VMID and TOKENTXT as one-context would export them in that VM."""
    context_dir = Path(cloud.state_dir) / "vms" / str(vm_id) / "context"
    text = (context_dir / "context.sh").read_text()
    values = dict(re.findall(r"^(\w+)='(.*)'$", text, flags=re.MULTILINE))
    return {
        "ONEGATE_ENDPOINT": values["ONEGATE_ENDPOINT"],
        "VMID": values["VMID"],
        "TOKENTXT": (context_dir / "token.txt").read_text().strip(),
    }


def run(
    make_sandbox, role: str, script: str, environment: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    return make_sandbox(role).bash(script, FL_ONEGATE_DEADLINE="10", **environment)


def test_publish_and_read_back(make_sandbox, dummy_cloud, service) -> None:
    environment = gate_environment(dummy_cloud, service["superlink"])
    reason = 'ONEAPP_FL_ERROR=a \\"quoted\\" reason, [with] structure'
    script = f'fl_onegate_publish "ONEAPP_FL_ENDPOINT=10.231.64.9:9092" "{reason}"\nfl_onegate_get /vm 5\n'
    result = run(make_sandbox, "superlink", script, environment)
    assert result.returncode == 0, result.stderr
    published = json.loads(result.stdout)["VM"]["USER_TEMPLATE"]
    assert published["ONEAPP_FL_ENDPOINT"] == "10.231.64.9:9092"
    # OneGate's escape_attr reads , [ ] as structure: the client replaces them
    assert published["ONEAPP_FL_ERROR"] == "a 'quoted' reason; (with) structure"


def test_empty_values_clear_attributes(make_sandbox, dummy_cloud, service) -> None:
    """A SuperNode clears its own attributes and leaves the SuperLink's alone. The SuperLink's endpoint is
    published here: this test must not rely on another test having run first in the same worker (xdist)."""
    link = gate_environment(dummy_cloud, service["superlink"])
    published_link = run(
        make_sandbox, "superlink", 'fl_onegate_publish "ONEAPP_FL_ENDPOINT=10.231.64.9:9092"\n', link
    )
    assert published_link.returncode == 0, published_link.stderr
    environment = gate_environment(dummy_cloud, service["supernodes"][2])
    script = "fl_onegate_publish ONEAPP_FL_STAGE=configure ONEAPP_FL_ERROR=oops\n"
    script += "fl_onegate_publish ONEAPP_FL_STATUS=ready ONEAPP_FL_STAGE= ONEAPP_FL_ERROR=\n"
    result = run(make_sandbox, "supernode", script, environment)
    assert result.returncode == 0, result.stderr
    published = service["one"].vm.info(service["supernodes"][2]).USER_TEMPLATE
    assert published["ONEAPP_FL_STATUS"] == "ready"
    assert not published.get("ONEAPP_FL_STAGE") and not published.get("ONEAPP_FL_ERROR")
    assert (
        service["one"].vm.info(service["superlink"]).USER_TEMPLATE["ONEAPP_FL_ENDPOINT"] == "10.231.64.9:9092"
    )


def test_a_supernode_discovers_what_the_superlink_published(make_sandbox, dummy_cloud, service) -> None:
    one = service["one"]
    one.vm.update(
        service["superlink"],
        'ONEAPP_FL_ENDPOINT="10.231.64.9:9092"\nONEAPP_FL_CA_CERT="Q0E="\nONEAPP_FL_FLOWER_VERSION="1.42.0"',
        1,
    )
    me = service["supernodes"][1]
    script = (
        "supernode_lookup_service 10\n"
        'printf "%s|%s|%s\\n" "$FL_SL_ENDPOINT" "$FL_SL_CA" "$FL_SL_VERSION"\n'
        'fl_node_config_from_service "$FL_SERVICE_JSON" "$VMID"\n'
    )
    result = run(make_sandbox, "supernode", script, gate_environment(dummy_cloud, me))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "10.231.64.9:9092|Q0E=|1.42.0"
    assert lines[1] == "partition-id=1 num-partitions=3"


def test_the_superlink_sees_the_keys_its_supernodes_published(make_sandbox, dummy_cloud, service) -> None:
    one = service["one"]
    one.vm.update(service["supernodes"][0], f'ONEAPP_FL_NODE_PUBKEY="{KEY_A}"', 1)
    keys = ".SERVICE.roles[].nodes[].vm_info.VM.USER_TEMPLATE.ONEAPP_FL_NODE_PUBKEY // empty"
    script = f"document=$(fl_onegate_service_vms 10)\njq -r '{keys}' <<<\"$document\"\n"
    result = run(make_sandbox, "superlink", script, gate_environment(dummy_cloud, service["superlink"]))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == KEY_A


def test_onegate_unreachable_is_retried_until_the_deadline(make_sandbox, dummy_cloud, service) -> None:
    environment = gate_environment(dummy_cloud, service["superlink"])
    environment["ONEGATE_ENDPOINT"] = "http://127.0.0.1:9"  # discard port: nothing answers
    result = run(
        make_sandbox,
        "superlink",
        "SECONDS=0; fl_onegate_publish --deadline 3 A=B || echo failed=$SECONDS",
        environment,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() in {"failed=3", "failed=4"}
    assert "did not accept the update within 3 s" in result.stderr


def test_a_wrong_token_is_refused(make_sandbox, dummy_cloud, service) -> None:
    environment = gate_environment(dummy_cloud, service["superlink"])
    environment["VMID"] = str(service["supernodes"][0])  # the token belongs to another VM
    result = run(make_sandbox, "superlink", "fl_onegate_get /vm 1 || echo refused", environment)
    assert result.stdout.strip() == "refused"


# Values a careless user or an attacker may put in a parameter that the appliance echoes back through
# OneGate (a failure reason names the bad value). Each must arrive as exactly one attribute holding exactly
# that value: an unencoded '&' used to start a new form field ('&data=...' replaced the whole update,
# '&type=2' turned it into an erase).
TRICKY_VALUES = {
    "ampersand": "x&data=HIJACK=1",
    "erase": "x&type=2",
    "equals": "a=b==c",
    "percent_plus": "100% + 1 %41",
    "single_quotes": "it's 'quoted'",
    "non_ascii": "héllo wörld ✓ ünïcode",
    "semicolon_hash": "a;b #c $HOME `id`",
}


@pytest.mark.parametrize("label", sorted(TRICKY_VALUES))
def test_values_are_form_encoded(make_sandbox, dummy_cloud, service, label: str) -> None:
    value = TRICKY_VALUES[label]
    vm_id = service["supernodes"][0]
    environment = gate_environment(dummy_cloud, vm_id)
    script = 'fl_onegate_publish "ONEAPP_FL_STATUS=failed" "ONEAPP_FL_ERROR=$VALUE"\n'
    result = run(make_sandbox, "supernode", script, {**environment, "VALUE": value})
    assert result.returncode == 0, result.stderr
    published = service["one"].vm.info(vm_id).USER_TEMPLATE
    assert published["ONEAPP_FL_ERROR"] == value
    assert published["ONEAPP_FL_STATUS"] == "failed"
    assert "HIJACK" not in published


def test_newlines_and_double_quotes_stay_inside_one_attribute(make_sandbox, dummy_cloud, service) -> None:
    """A KEY=VALUE body cannot carry a newline or a double quote inside a value (OneGate's escape_attr
    reads them as structure): the client folds newlines into spaces and turns double quotes into single
    ones, and nothing after them becomes an attribute of its own."""
    vm_id = service["supernodes"][1]
    environment = gate_environment(dummy_cloud, vm_id)
    value = 'line one\nINJECTED=1\r\n"quoted" \\ end'
    script = 'fl_onegate_publish "ONEAPP_FL_ERROR=$VALUE"\n'
    result = run(make_sandbox, "supernode", script, {**environment, "VALUE": value})
    assert result.returncode == 0, result.stderr
    published = service["one"].vm.info(vm_id).USER_TEMPLATE
    assert published["ONEAPP_FL_ERROR"] == "line one INJECTED=1 'quoted' / end"
    assert "INJECTED" not in published
