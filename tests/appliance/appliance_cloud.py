"""Booting the appliance images on the local test cloud (container driver) for the cloud-level tests.

The images are the real debian12 appliance images (factory/images/localbuild.py, cached by content); VMs and
OneFlow services are made through the test cloud's XML-RPC (pyone) and OneFlow APIs as a user would; checks
inside the guests go over SSH (pytest-testinfra, paramiko backend) with a key given in the context.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyone
import requests
import testinfra.backend
import testinfra.host

from hostkit.waiting import wait_until

SUPERLINK_VARIANT = "superlink-1.42.0-debian12-cpu-standard-sklearn-x86_64"
SUPERNODE_VARIANT = "supernode-1.42.0-debian12-cpu-standard-sklearn-x86_64"
DEFAULT_VARIANTS = {"superlink": SUPERLINK_VARIANT, "supernode": SUPERNODE_VARIANT}
VM_STATE_DONE = 6
LCM_RUNNING = 3
SERVICE_RUNNING = 2


def wait_for(
    predicate: Callable[[], Any], timeout: float, interval: float = 2.0, what: str = "condition"
) -> Any:
    """hostkit's one deadline loop, failing the test (AssertionError) when the time is up."""
    return wait_until(predicate, timeout, interval=interval, what=what, error=AssertionError)


def context_section(values: dict[str, str]) -> str:
    items = ", ".join(f'{key}="{value}"' for key, value in values.items())
    return f"CONTEXT=[{items}]"


@dataclass
class Pair:
    """A booted service: its cloud, its id and its VMs."""

    cloud: ApplianceCloud
    service: int
    superlink: int
    supernodes: list[int]

    @property
    def superlink_ip(self) -> str:
        return self.cloud.ip(self.superlink)


@dataclass
class ApplianceCloud:
    """A test cloud with the two appliance images imported, and helpers to boot and inspect VMs."""

    handle: Any
    one: pyone.OneServer
    ssh_key: Path
    ssh_config: Path
    images: dict[str, int]
    templates: dict[str, int] = field(default_factory=dict)
    hosts: dict[str, Any] = field(default_factory=dict)  # SSH connections by address

    # --- objects --------------------------------------------------------------------------------------

    def base_context(self, hostname: str) -> dict[str, str]:
        return {
            "NETWORK": "YES",
            "TOKEN": "YES",
            "REPORT_READY": "YES",
            "SET_HOSTNAME": hostname,
            "SSH_PUBLIC_KEY": self.ssh_key.with_suffix(".pub").read_text().strip(),
        }

    def image_for(self, variant: str) -> int:
        """The image of a variant, built (or taken from the cache) and imported on first use."""
        if variant not in self.images:
            from factory.images.localbuild import build_appliance
            from factory.model.matrix import load_matrix

            built = build_appliance(load_matrix().variant(variant))
            image_id = self.one.image.allocate(f'NAME="{variant}"\nPATH="{built.image}"\nTYPE="OS"', 1)
            wait_for(lambda: self.one.image.info(image_id).STATE == 1, 600, what=f"image {variant}")
            self.images[variant] = image_id
        return self.images[variant]

    def template(
        self,
        role: str,
        name: str,
        context: dict[str, str] | None = None,
        memory: int = 1024,
        variant: str | None = None,
    ) -> int:
        values = self.base_context(name) | (context or {})
        image = self.image_for(variant or DEFAULT_VARIANTS[role])
        body = "\n".join(
            [
                f'NAME="{name}"',
                'CPU="1"',
                f'MEMORY="{memory}"',
                f'DISK=[IMAGE_ID="{image}"]',
                'NIC=[NETWORK_ID="0"]',
                context_section(values),
            ]
        )
        return self.one.template.allocate(body)

    def instantiate(
        self, role: str, name: str, context: dict[str, str] | None = None, variant: str | None = None
    ) -> int:
        template_id = self.template(role, name, context, variant=variant)
        return self.one.template.instantiate(template_id, name, False, "", False)

    def flow(self, method: str, path: str, body: Any = None) -> requests.Response:
        user, _, password = self.handle.auth.partition(":")
        return requests.request(
            method,
            self.handle.endpoints["oneflow"].rstrip("/") + path,
            json=body,
            auth=(user, password),
            timeout=30,
        )

    def service(
        self,
        name: str,
        superlink_context: dict[str, str] | None = None,
        supernode_context: dict[str, str] | None = None,
        cardinality: int = 2,
        variants: dict[str, str] | None = None,
    ) -> int:
        chosen = DEFAULT_VARIANTS | (variants or {})
        superlink = self.template(
            "superlink", f"{name}-superlink", superlink_context, variant=chosen["superlink"]
        )
        supernode = self.template(
            "supernode", f"{name}-supernode", supernode_context, variant=chosen["supernode"]
        )
        document = {
            "name": name,
            "deployment": "straight",
            "ready_status_gate": True,
            "roles": [
                {"name": "superlink", "type": "vm", "template_id": superlink, "cardinality": 1},
                {
                    "name": "supernode",
                    "type": "vm",
                    "template_id": supernode,
                    "cardinality": cardinality,
                    "parents": ["superlink"],
                },
            ],
        }
        reply = self.flow("POST", "/service_template", document)
        assert reply.status_code == 201, reply.text
        template_id = reply.json()["DOCUMENT"]["ID"]
        reply = self.flow(
            "POST", f"/service_template/{template_id}/action", {"action": {"perform": "instantiate"}}
        )
        assert reply.status_code == 201, reply.text
        return int(reply.json()["DOCUMENT"]["ID"])

    def service_body(self, service_id: int) -> dict[str, Any]:
        reply = self.flow("GET", f"/service/{service_id}")
        assert reply.status_code == 200, reply.text
        return reply.json()["DOCUMENT"]["TEMPLATE"]["BODY"]

    def role_vms(self, service_id: int, role: str) -> list[int]:
        for entry in self.service_body(service_id)["roles"]:
            if entry["name"] == role:
                return sorted(int(node["deploy_id"]) for node in entry.get("nodes", []))
        raise AssertionError(f"service {service_id} has no role {role}")

    def wait_service_running(self, service_id: int, timeout: float = 900) -> None:
        def running() -> bool:
            body = self.service_body(service_id)
            if body["state"] in (4, 7, 9):  # WARNING, FAILED_DEPLOYING, FAILED_SCALING
                report = self.diagnose_service(service_id)
                raise AssertionError(f"service {service_id} went to state {body['state']}:\n{report}")
            return body["state"] == SERVICE_RUNNING

        try:
            wait_for(running, timeout, what=f"service {service_id} RUNNING")
        except AssertionError as error:
            raise AssertionError(f"{error}\n{self.diagnose_service(service_id)}") from None

    def scale(self, service_id: int, role: str, cardinality: int) -> None:
        reply = self.flow(
            "POST", f"/service/{service_id}/scale", {"role_name": role, "cardinality": cardinality}
        )
        assert reply.status_code in (200, 201, 204), reply.text

    def delete_service(self, service_id: int) -> None:
        self.flow("DELETE", f"/service/{service_id}")

    @contextlib.contextmanager
    def booted_pair(self, name: str) -> Iterator[Pair]:
        """A OneFlow service ``name`` (1 SuperLink, 2 SuperNodes) RUNNING with every VM answering SSH;
        deleted on the way out."""
        service = self.service(name)
        try:
            self.wait_service_running(service)
            pair = Pair(
                self, service, self.role_vms(service, "superlink")[0], self.role_vms(service, "supernode")
            )
            for vm in [pair.superlink, *pair.supernodes]:
                self.wait_ssh(vm)
            yield pair
        finally:
            self.delete_service(service)

    def terminate(self, vm_id: int) -> None:
        with contextlib.suppress(Exception):  # its address goes to the next VM: forget the connection
            self._forget(self.ip(vm_id))
        with contextlib.suppress(pyone.OneException):
            self.one.vm.action("terminate-hard", vm_id)

    # --- VM facts -------------------------------------------------------------------------------------

    def ip(self, vm_id: int) -> str:
        nic = self.one.vm.info(vm_id).TEMPLATE["NIC"]
        nic = nic[0] if isinstance(nic, list) else nic
        return nic["IP"]

    def user_template(self, vm_id: int) -> dict[str, str]:
        return dict(self.one.vm.info(vm_id).USER_TEMPLATE or {})

    def attribute(self, vm_id: int, key: str) -> str:
        return str(self.user_template(vm_id).get(key) or "")

    def wait_attribute(
        self, vm_id: int, key: str, wanted: Callable[[str], bool], timeout: float = 600
    ) -> str:
        try:
            return wait_for(
                lambda: value if wanted(value := self.attribute(vm_id, key)) else "",
                timeout,
                what=f"VM {vm_id} {key}",
            )
        except AssertionError as error:
            raise AssertionError(f"{error}\n{self.diagnose(vm_id)}") from None

    def wait_ready(self, vm_id: int, timeout: float = 600) -> None:
        self.wait_attribute(vm_id, "READY", lambda value: value == "YES", timeout)

    def wait_status(self, vm_id: int, statuses: set[str], timeout: float = 600) -> str:
        return self.wait_attribute(vm_id, "ONEAPP_FL_STATUS", lambda value: value in statuses, timeout)

    # --- inside the guest -----------------------------------------------------------------------------

    def host(self, vm_id: int) -> Any:
        return self.host_at(self.ip(vm_id))

    def _new_host(self, ip: str) -> Any:
        # Not testinfra.get_host: its process-wide cache would hand a later VM that reuses an address
        # the dead connection to the earlier one.
        backend = testinfra.backend.get_backend(f"paramiko://root@{ip}", ssh_config=str(self.ssh_config))
        host = testinfra.host.Host(backend)
        backend.set_host(host)
        return host

    def _forget(self, ip: str) -> None:
        host = self.hosts.pop(ip, None)
        if host is not None and "client" in vars(host.backend):
            with contextlib.suppress(Exception):
                host.backend.client.close()

    def host_at(self, ip: str) -> Any:
        if ip not in self.hosts:
            self.hosts[ip] = self._new_host(ip)
        return self.hosts[ip]

    def wait_ssh(self, vm_id: int, timeout: float = 300, ip: str | None = None) -> Any:
        """SSH to the VM once it answers (a new connection each try); give ``ip`` when the cloud is down."""
        address = ip or self.ip(vm_id)
        self._forget(address)
        errors: list[str] = []

        def connected() -> Any:
            host = self._new_host(address)
            try:
                if host.run("true").rc == 0:
                    self.hosts[address] = host
                    return host
            except Exception as error:  # not up yet: any connection error means "try again"
                errors[:] = [f"{type(error).__name__}: {error}"]
            return None

        try:
            return wait_for(connected, timeout, what=f"SSH to VM {vm_id} at {address}")
        except AssertionError as error:
            raise AssertionError(f"{error}; last error: {errors}; {self.diagnose(vm_id)}") from None

    def sh(self, vm_id: int, command: str) -> Any:
        return self.host(vm_id).run(command)

    def flwr_nodes(self, superlink_vm: int) -> list[dict[str, Any]]:
        result = self.sh(superlink_vm, "/opt/flower/venv/bin/flwr supernode list --format json")
        document = json.loads(result.stdout)
        assert document.get("success"), result.stdout
        return document["nodes"]

    def diagnose(self, vm_id: int) -> str:
        """What a failure report needs: the VM's state and attributes, the appliance logs, the console."""
        lines = []
        try:
            vm = self.one.vm.info(vm_id)
            lines.append(f"VM {vm_id} {vm.NAME}: STATE {vm.STATE} LCM_STATE {vm.LCM_STATE}")
            for key, value in sorted(dict(vm.USER_TEMPLATE or {}).items()):
                if key.startswith(("ONEAPP_FL_STATUS", "ONEAPP_FL_STAGE", "ONEAPP_FL_ERROR", "READY")):
                    lines.append(f"  {key}={value}")
        except Exception as error:  # the cloud may be down on purpose
            lines.append(f"VM {vm_id}: {error}")
        try:
            logs = self.sh(
                vm_id, "tail -n 40 /var/log/one-appliance/*.log; journalctl -n 40 --no-pager -u 'flower-*'"
            )
            lines.append(logs.stdout[-6000:])
        except Exception as error:  # diagnostics must never hide the original failure
            lines.append(f"(no SSH: {error})")
            cloud = getattr(self.handle, "cloud", None)
            if cloud is not None:
                try:
                    driver = cloud.vms.driver_for(0)
                    probe = "systemctl --no-pager status ssh | tail -n 12; ss -ltn; ip -br -4 a"
                    inside = driver.execute(vm_id, ["sh", "-c", probe])
                    lines.append(f"in the guest: {inside.stdout}{inside.stderr}")
                    lines.append(driver.logs(vm_id)[-4000:])
                except Exception as console_error:
                    lines.append(f"(no console: {console_error})")
        return "\n".join(lines)

    def diagnose_service(self, service_id: int) -> str:
        body = self.service_body(service_id)
        reports = []
        for entry in body["roles"]:
            for node in entry.get("nodes", []):
                reports.append(self.diagnose(int(node["deploy_id"])))
        return "\n".join(reports)
