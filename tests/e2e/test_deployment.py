"""The Deployment records what it creates and tears it down newest first, gathering every failure (no cloud:
a stand-in that records the calls the pair test makes of factory.one.OneCloud)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from factory.harness.deployment import Deployment
from hostkit.errors import FactoryError
from hostkit.progress import Progress


class _Service:
    def __init__(self, calls: list[str]) -> None:
        self.id, self.calls = 7, calls

    def wait_running(self, timeout: float) -> None:
        self.calls.append("wait_running")

    def delete(self) -> None:
        self.calls.append("delete service 7")


class _Cloud:
    """Records calls; ``failing`` names the deletions that raise."""

    settings = None

    def __init__(self, failing: set[str]) -> None:
        self.calls: list[str] = []
        self.failing = failing
        self.next_id = 100

    def _new(self, what: str) -> int:
        self.next_id += 1
        self.calls.append(f"create {what} {self.next_id}")
        return self.next_id

    def _remove(self, what: str) -> None:
        self.calls.append(what)
        if what in self.failing:
            raise FactoryError(f"{what} refused")

    def network_id(self) -> int:
        return 0

    def create_vm_template(self, template: dict[str, Any]) -> int:
        return self._new("vm template")

    def delete_vm_template(self, template_id: int) -> None:
        self._remove(f"delete vm template {template_id}")

    def create_service_template(self, body: dict[str, Any]) -> int:
        return self._new("service template")

    def delete_service_template(self, template_id: int) -> None:
        self._remove(f"delete service template {template_id}")

    def launch_service(self, template_id: int, name: str) -> _Service:
        self.calls.append(f"launch {template_id}")
        return _Service(self.calls)

    def instantiate_vm(self, template_id: int, name: str, extra: dict[str, Any] | None = None) -> int:
        return self._new("vm")

    def terminate_vm(self, vm_id: int) -> None:
        self._remove(f"terminate vm {vm_id}")


class _Link:
    def __init__(self) -> None:
        self.user_template = {"ONEAPP_FL_ENDPOINT": "10.231.64.2:9092", "ONEAPP_FL_CA_CERT": "Q0E="}


def _deploy(deployment: Deployment) -> None:
    link = deployment.vm_template("superlink", 1, "x86_64")
    node = deployment.vm_template("supernode", 2, "x86_64")
    deployment.launch(deployment.service_template(link, node, 2, "tls-auth"), timeout=10)
    deployment.start_rogue_supernode(node, _Link())


def test_leaving_the_block_removes_everything_newest_first_and_gathers_errors(tmp_path: Path) -> None:
    cloud = _Cloud(failing={"terminate vm 104", "delete vm template 101"})
    stream = io.StringIO()
    progress = Progress(stream)
    with pytest.raises(RuntimeError), Deployment(cloud, "pair-x-run", tmp_path, progress) as deployment:
        _deploy(deployment)
        raise RuntimeError("the pair test broke")  # teardown still runs
    removals = [call for call in cloud.calls if call.startswith(("delete", "terminate"))]
    assert removals == [
        "terminate vm 104",
        "delete service 7",
        "delete service template 103",
        "delete vm template 102",
        "delete vm template 101",
    ]
    assert "teardown: rogue VM 104: terminate vm 104 refused" in stream.getvalue()
    assert "teardown: VM template 101: delete vm template 101 refused" in stream.getvalue()


def test_kept_deployments_are_left_in_place(tmp_path: Path) -> None:
    cloud = _Cloud(failing=set())
    with Deployment(cloud, "pair-x-run", tmp_path, Progress(io.StringIO())) as deployment:
        _deploy(deployment)
        assert deployment.keep() == "service 7, rogue VM 104"
    assert not [call for call in cloud.calls if call.startswith(("delete", "terminate"))]
    assert deployment.clean() == []  # an explicit clean() still removes it
    assert "delete service template 103" in cloud.calls
