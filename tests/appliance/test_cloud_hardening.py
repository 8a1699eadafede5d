"""Issue 9 against a booted pair (slow; one pair for the module): a key takeover through OneGate by a VM
outside the service is refused by the SuperLink's key sync (item 1), a killed SuperNode rejoins at once
(item 13), and a SuperLink powered off and resumed withdraws READY while it is off and reports ready
again (item 12)."""

from __future__ import annotations

import base64
import hashlib
import shlex

import pytest
from appliance_cloud import ApplianceCloud, Pair, wait_for

pytestmark = [pytest.mark.cloud, pytest.mark.slow]


@pytest.fixture(scope="module")
def pair(appliance_cloud: ApplianceCloud):
    with appliance_cloud.booted_pair("harden") as booted:
        yield booted


def online(cloud: ApplianceCloud, superlink: int) -> set[str]:
    return {str(node["node-id"]) for node in cloud.flwr_nodes(superlink) if node["status"] == "online"}


def key_hash(line: str) -> str:
    return hashlib.sha256((" ".join(line.split()[:2]) + "\n").encode()).hexdigest()


def test_a_rogue_vm_cannot_take_over_a_supernode_key(pair: Pair) -> None:
    cloud = pair.cloud
    superlink, victim = pair.superlink, pair.supernodes[0]
    before = wait_for(lambda: len(nodes := online(cloud, superlink)) == 2 and nodes, 300, what="2 online")
    real_key = cloud.attribute(victim, "ONEAPP_FL_NODE_PUBKEY")

    # A SuperNode outside the service, pointed at the SuperLink: it runs, but its key is not registered.
    ca = base64.b64encode(cloud.host(superlink).file("/etc/flower/tls/ca.pem").content).decode()
    endpoint = cloud.attribute(superlink, "ONEAPP_FL_ENDPOINT")
    rogue = cloud.instantiate(
        "supernode", "rogue", {"ONEAPP_FL_SUPERLINK": endpoint, "ONEAPP_FL_SUPERLINK_CA": ca}
    )
    try:
        cloud.wait_ready(rogue)
        host = cloud.wait_ssh(rogue)
        rogue_key = host.file("/var/lib/flower/keys/supernode.pub").content_string.strip()
        # The attack, from inside the rogue VM with its own OneGate token: join the service in OneGate's
        # eyes (leading space), then write its key into the victim SuperNode.
        put = (
            '. /var/run/one-context/one_env; curl -sS -f -X PUT -H "X-ONEGATE-TOKEN: $TOKENTXT"'
            ' -H "X-ONEGATE-VMID: $VMID" --data-urlencode {data} "$ONEGATE_ENDPOINT{path}"'
        )
        joined = host.run(put.format(data=shlex.quote(f"data= SERVICE_ID={pair.service}"), path="/vm"))
        assert joined.rc == 0, joined.stderr
        written = host.run(
            put.format(data=shlex.quote(f"data=ONEAPP_FL_NODE_PUBKEY={rogue_key}"), path=f"/vms/{victim}")
        )
        assert written.rc == 0, written.stderr
        assert cloud.attribute(victim, "ONEAPP_FL_NODE_PUBKEY") == rogue_key, "the cloud behaves as upstream"

        refused = cloud.wait_attribute(superlink, "ONEAPP_FL_KEY_REFUSED", lambda value: value != "", 120)
        assert refused == str(victim)
        journal = cloud.sh(superlink, "journalctl -u flower-keysync --no-pager -o cat").stdout
        assert f"refused a changed key for SuperNode VM {victim}" in journal
        registered = cloud.sh(superlink, "cat /var/lib/flower/keysync/registered").stdout
        assert key_hash(rogue_key) not in registered and key_hash(real_key) in registered
        assert online(cloud, superlink) == before, "the real SuperNodes stay online, the rogue is not added"
        rogue_journal = host.run("journalctl -u flower-supernode --no-pager -o cat").stdout
        assert "SuperNode ID" not in rogue_journal
    finally:
        cloud.terminate(rogue)


def test_a_killed_supernode_rejoins_at_once(pair: Pair) -> None:
    """Item 13: killed, its node stays ONLINE on the SuperLink for up to 60 s and a plain restart is refused
    with code 2004; flower-node-release (ExecStartPre) releases it and the restart activates at once."""
    cloud = pair.cloud
    victim = pair.supernodes[1]
    wait_for(lambda: len(online(cloud, pair.superlink)) == 2, 300, what="2 online")
    host = cloud.host(victim)
    since = host.run("date +%s").stdout.strip()
    killed = host.run('kill -9 "$(systemctl show -p MainPID --value flower-supernode)"')
    assert killed.rc == 0, killed.stderr

    def journal() -> str:
        return host.run(f"journalctl -u flower-supernode --no-pager -o cat --since @{since}").stdout

    wait_for(lambda: "SuperNode ID" in journal() or "Failed to activate" in journal(), 120, what="restart")
    seen = journal()
    assert "released the previous activation of node" in seen, seen[-3000:]
    assert "Failed to activate" not in seen, seen[-3000:]
    restarts = host.run("systemctl show -p NRestarts --value flower-supernode").stdout.strip()
    assert int(restarts) >= 1, restarts
    assert len(online(cloud, pair.superlink)) == 2


def test_a_powered_off_superlink_is_not_ready_until_it_is_back(pair: Pair) -> None:
    cloud = pair.cloud
    superlink = pair.superlink
    assert cloud.attribute(superlink, "READY") == "YES"
    cloud.one.vm.action("poweroff", superlink)
    wait_for(lambda: cloud.one.vm.info(superlink).STATE == 8, 300, what="SuperLink POWEROFF")
    attributes = cloud.user_template(superlink)
    assert (attributes.get("READY"), attributes.get("ONEAPP_FL_STATUS")) == ("NO", "stopped"), attributes

    cloud.one.vm.action("resume", superlink)
    cloud.wait_ready(superlink, 600)
    assert cloud.attribute(superlink, "ONEAPP_FL_STATUS") == "ready"
    cloud.wait_ssh(superlink)
    wait_for(lambda: len(online(cloud, superlink)) == 2, 300, what="both SuperNodes online again")
