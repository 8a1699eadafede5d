"""The edge profile on the local test cloud: an edge SuperNode (numpy image) keeps trying while its
SuperLink is powered off for longer than the standard backoff cap, and reconnects once it is back."""

from __future__ import annotations

import time

import pytest
from appliance_cloud import ApplianceCloud, wait_for

pytestmark = pytest.mark.cloud

EDGE_VARIANTS = {
    "superlink": "superlink-1.42.0-debian12-cpu-standard-numpy-x86_64",
    "supernode": "supernode-1.42.0-debian12-cpu-edge-numpy-x86_64",
}
VM_POWEROFF = 8


def online(cloud: ApplianceCloud, superlink: int) -> int:
    try:
        return sum(node["status"] == "online" for node in cloud.flwr_nodes(superlink))
    except Exception:  # the SuperLink is down or still starting
        return 0


def test_edge_supernode_survives_the_superlink_going_away(appliance_cloud: ApplianceCloud) -> None:
    cloud = appliance_cloud
    service = cloud.service("edge", cardinality=1, variants=EDGE_VARIANTS)
    try:
        cloud.wait_service_running(service)
        superlink = cloud.role_vms(service, "superlink")[0]
        node = cloud.role_vms(service, "supernode")[0]
        cloud.wait_ssh(superlink)
        wait_for(lambda: online(cloud, superlink) == 1, 240, what="the edge SuperNode online")
        host = cloud.wait_ssh(node)
        assert "FL_BACKOFF_MAX=300" in host.file("/etc/flower/supernode.env").content_string
        assert "--max-retries" not in host.file("/etc/flower/supernode.args").content_string

        cloud.one.vm.action("poweroff", superlink)
        wait_for(lambda: cloud.one.vm.info(superlink).STATE == VM_POWEROFF, 300, what="SuperLink POWEROFF")
        time.sleep(90)  # longer than the standard profile's 60 s backoff cap
        state = host.run("systemctl show -p ActiveState --value flower-supernode").stdout.strip()
        assert state in {"active", "activating"}, state
        journal = host.run("journalctl -u flower-supernode --no-pager -o cat --since '-80s'").stdout
        assert "Connection attempt failed" in journal or "flower-run: start number" in journal, journal[
            -2000:
        ]

        cloud.one.vm.action("resume", superlink)
        wait_for(lambda: online(cloud, superlink) == 1, 600, what="the edge SuperNode back online")
        assert cloud.user_template(node).get("READY") == "YES"
    finally:
        cloud.delete_service(service)
