"""How the test cloud's core finds the drivers: ``testcloud.drivers.<name>.create_driver(work_dir)``."""

from __future__ import annotations

from pathlib import Path

from testcloud.drivers import container, network, qemu
from testcloud.drivers.base import VMDriver


def test_each_driver_module_creates_a_driver_named_after_its_cloud(tmp_path: Path) -> None:
    made: list[VMDriver] = [container.create_driver(tmp_path / "a"), qemu.create_driver(tmp_path / "a")]
    assert [driver.name for driver in made] == ["lxc", "kvm"]
    assert {driver.tag for driver in made} == {network.cloud_tag(tmp_path / "a")}  # type: ignore[attr-defined]
    assert container.create_driver(tmp_path / "b").tag != made[0].tag
    for driver in made:
        for method in (
            "launch",
            "state",
            "execute",
            "logs",
            "update_context",
            "reboot",
            "terminate",
            "recover",
        ):
            assert callable(getattr(driver, method))
