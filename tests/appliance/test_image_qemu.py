"""The Packer-built qcow2 (a real `packer build` of the debian12 HCL from the local base, under TCG here)
boots under the test cloud's qemu driver and reaches READY. Opt-in: `pytest -m image` (tens of minutes
without KVM: the build, then a boot where Python runs ~20x slower than on the host)."""

from __future__ import annotations

import time
from pathlib import Path

import pyone
import pytest
from appliance_cloud import SUPERLINK_VARIANT, wait_for

pytestmark = pytest.mark.image


def test_packer_built_superlink_boots_under_qemu_and_reaches_ready(tmp_path: Path) -> None:
    from factory.images.localbuild import build_qcow2
    from factory.model.matrix import load_matrix
    from testcloud import launcher

    started = time.monotonic()
    built = build_qcow2(load_matrix().variant(SUPERLINK_VARIANT))
    build_seconds = time.monotonic() - started
    assert built.image.is_file() and built.manifest_path.is_file()
    handle = launcher.start(tmp_path / "cloud", driver="auto")
    try:
        one = pyone.OneServer(handle.endpoints["xmlrpc"], session=handle.auth)
        image_id = one.image.allocate(f'NAME="superlink-qcow2"\nPATH="{built.image}"\nTYPE="OS"', 1)
        wait_for(lambda: one.image.info(image_id).STATE == 1, 900, what="image READY")
        template = one.template.allocate(
            "\n".join(
                [
                    'NAME="superlink-qemu"',
                    'CPU="2"',
                    'VCPU="2"',
                    'MEMORY="2048"',
                    f'DISK=[IMAGE_ID="{image_id}"]',
                    'NIC=[NETWORK_ID="0"]',
                    'SCHED_REQUIREMENTS="HYPERVISOR=\\"kvm\\""',
                    'CONTEXT=[NETWORK="YES", TOKEN="YES", REPORT_READY="YES", SET_HOSTNAME="superlink-qemu"]',
                ]
            )
        )
        booted = time.monotonic()
        vm = one.template.instantiate(template, "superlink-qemu", False, "", False)

        def attributes() -> dict[str, str]:
            return dict(one.vm.info(vm).USER_TEMPLATE or {})

        try:
            wait_for(lambda: attributes().get("READY") == "YES", 1800, interval=5, what="READY under qemu")
        except AssertionError as error:
            console = handle.cloud.vms.driver_for(1).logs(vm)[-6000:] if handle.cloud else ""
            raise AssertionError(f"{error}\n{attributes()}\n{console}") from None
        ready_seconds = time.monotonic() - booted
        published = attributes()
        assert published["ONEAPP_FL_STATUS"] == "ready"
        assert published["ONEAPP_FL_ENDPOINT"].endswith(":9092")
        assert one.vm.info(vm).HISTORY_RECORDS.HISTORY[-1].VM_MAD == "kvm"
        reused = " (reused)" if built.reused else ""
        print(f"\nqcow2 build {build_seconds:.0f} s{reused}; qemu boot to READY {ready_seconds:.0f} s")
        one.vm.action("terminate-hard", vm)
    finally:
        handle.stop()
