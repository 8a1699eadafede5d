"""Failure cases on the local test cloud: a bad ONEAPP_* value and SuperNode authentication without TLS
fail `configure` with the reason in OneGate and no READY; OneGate down while a VM boots is retried and
the VM becomes READY once it is back."""

from __future__ import annotations

import time

import pyone
import pytest
from appliance_cloud import LCM_RUNNING, ApplianceCloud, wait_for

pytestmark = pytest.mark.cloud


@pytest.mark.parametrize(
    ("context", "stage", "reason"),
    [
        ({"ONEAPP_FL_LOG_LEVEL": "VERBOSE"}, "configure", "ONEAPP_FL_LOG_LEVEL: 'VERBOSE' is not one of"),
        ({"ONEAPP_FL_TLS": "NO"}, "configure", "ONEAPP_FL_NODE_AUTH=YES needs ONEAPP_FL_TLS=YES"),
    ],
    ids=["bad-value", "auth-without-tls"],
)
def test_configure_failure_is_reported_through_onegate(
    appliance_cloud: ApplianceCloud, context: dict[str, str], stage: str, reason: str
) -> None:
    cloud = appliance_cloud
    vm = cloud.instantiate("superlink", f"failing-{'-'.join(context).lower().replace('_', '-')}", context)
    try:
        cloud.wait_status(vm, {"failed"})
        attributes = cloud.user_template(vm)
        assert attributes["ONEAPP_FL_STAGE"] == stage
        assert reason in attributes["ONEAPP_FL_ERROR"]
        host = cloud.wait_ssh(vm)
        assert host.file("/etc/one-appliance/status").content_string.strip() == f"{stage}_failure"
        assert reason in host.file("/etc/motd").content_string
        assert not host.service("flower-superlink").is_running
        time.sleep(5)  # net-99-report-ready has run by now: it must not have sent READY
        assert cloud.user_template(vm).get("READY") != "YES"
    finally:
        cloud.terminate(vm)


def test_onegate_down_at_boot_is_retried(appliance_cloud: ApplianceCloud) -> None:
    from testcloud import launcher

    cloud = appliance_cloud
    vm = cloud.instantiate("superlink", "onegate-outage")
    try:
        wait_for(lambda: cloud.one.vm.info(vm).LCM_STATE == LCM_RUNNING, 300, what="VM RUNNING")
        ip = cloud.ip(vm)
        state_dir = cloud.handle.state_dir
        cloud.handle.stop(keep_guests=True)  # the whole front-end, OneGate included, goes away
        try:
            # The guest boots and bootstraps while OneGate cannot be reached.
            host = cloud.wait_ssh(vm, ip=ip)
            wait_for(lambda: host.service("flower-superlink").is_running, 300, what="SuperLink started")
            time.sleep(20)
            assert host.file("/etc/one-appliance/status").content_string.strip() == "bootstrap_started"
        finally:
            cloud.handle = launcher.start(state_dir, driver="container")
            cloud.one = pyone.OneServer(cloud.handle.endpoints["xmlrpc"], session=cloud.handle.auth)
        cloud.wait_ready(vm, timeout=600)
        attributes = cloud.user_template(vm)
        assert attributes["ONEAPP_FL_STATUS"] == "ready"
        assert attributes["ONEAPP_FL_ENDPOINT"].endswith(":9092")
    finally:
        cloud.terminate(vm)
