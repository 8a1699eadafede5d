"""A pair deployed in OpenNebula: what it created, its SSH key, the SuperLink's CA and Control API, its logs.

Modelled on pycloudlib's ``BaseCloud``/``BaseInstance`` (pycloudlib/cloud.py, pycloudlib/instance.py): the
object records every thing it creates (VM templates, the service template, the OneFlow service, a rogue VM)
and ``clean()`` (or leaving the ``with`` block) removes them in reverse order, gathering the errors instead
of stopping at the first:

    with Deployment(cloud, tag="pair-x-run1", workdir=tmp) as deployment:
        refs = deployment.import_images(images, names)
        link = deployment.vm_template("superlink", refs["superlink"].id, "x86_64")
        node = deployment.vm_template("supernode", refs["supernode"].id, "x86_64")
        service = deployment.launch(deployment.service_template(link, node, 2, "tls-auth"), timeout=900)
        with deployment.control_api(service.role_vms("superlink")[0], ca_pem) as connection:
            ...  # FederationRunner(..., connection)

Images are imported or reused by checksum (OneCloud.ensure_image) and kept: they are the cache of the
next run, not something this pair made. ``keep()`` leaves everything in place for inspection.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from factory.harness import appliance_templates
from factory.harness.federation import Connection
from factory.harness.tlsmaterial import make_keypair
from factory.harness.tunnel import SSHSession
from hostkit.errors import FactoryError
from hostkit.progress import DEFAULT as PROGRESS
from hostkit.progress import Progress

APPLIANCE_LOG_COMMAND = (
    "cat /etc/one-appliance/status 2>/dev/null; echo; "
    "for f in /var/log/one-appliance/*.log /var/log/one-appliance/flower-job.jsonl; do "
    '[ -f "$f" ] && { echo "=== $f"; tail -n 200 "$f"; }; done; '
    "echo '=== journal (flower units)'; journalctl --no-pager -n 200 -u 'flower*' 2>/dev/null || true"
)


def appliance_log_reader(user: str, key: Path, known_hosts: Path | None = None) -> Callable[[Any], str]:
    """A ``remote_log`` for ``ServiceDeployment.collect_logs``: the VM's appliance status, logs and Flower
    journal over SSH, or why they could not be read."""

    def read(vm: Any) -> str:
        try:
            with SSHSession(vm.ip, user, key, known_hosts=known_hosts).connect(timeout=20) as session:
                _, out, err = session.execute(APPLIANCE_LOG_COMMAND, timeout=60)
                return out + err
        except (FactoryError, OSError) as error:
            return f"(appliance logs not collected: {error})"

    return read


class PairCloud(Protocol):
    """What a pair test needs of a cloud: the part of factory.one.OneCloud it calls."""

    settings: Any

    def ensure_image(self, path: Path, name: str, sha256: str, image_format: str = ...) -> Any: ...
    def network_id(self) -> int: ...
    def create_vm_template(self, template: dict[str, Any]) -> int: ...
    def delete_vm_template(self, template_id: int) -> None: ...
    def create_service_template(self, body: dict[str, Any]) -> int: ...
    def delete_service_template(self, template_id: int) -> None: ...
    def launch_service(self, template_id: int, name: str) -> Any: ...
    def instantiate_vm(self, template_id: int, name: str, extra: dict[str, Any] | None = None) -> int: ...
    def terminate_vm(self, vm_id: int) -> None: ...
    def vm_info(self, vm_id: int, role: str = "") -> Any: ...


def api_port() -> int:
    """The SuperLink's Control API port: the appliance's ONEAPP_FL_API_PORT default (images/params.yaml)."""
    from factory.model import params

    defaults = {param.name: param.default for param in params.load_params().for_role("superlink")}
    return int(defaults.get("ONEAPP_FL_API_PORT") or 9093)


class Deployment:
    """One pair's resources in ``cloud``, named after ``tag``; SSH material under ``workdir``."""

    def __init__(self, cloud: PairCloud, tag: str, workdir: Path, progress: Progress = PROGRESS) -> None:
        self.cloud = cloud
        self.tag = tag
        self.workdir = workdir
        self.progress = progress
        workdir.mkdir(parents=True, exist_ok=True)
        self.key = make_keypair(
            workdir / "ssh" / "id_ed25519", kind="ed25519", comment=f"flower-factory-{tag}"
        )
        self.known_hosts = workdir / "ssh" / "known_hosts"
        self.templates: dict[int, dict[str, Any]] = {}  # VM template id -> its body
        self.service: Any = None  # factory.one.ServiceDeployment once launched
        self.rogue_vm: int | None = None
        self._cleanups: list[tuple[str, Callable[[], None]]] = []
        self._kept = False

    # -- creating ----------------------------------------------------------------------------------------

    def import_images(self, images: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
        """role -> ImageRef: each ImageFile imported, or the image of the same checksum reused."""
        with self.progress.stage(f"{self.tag}: images"):
            return {
                role: self.cloud.ensure_image(
                    image.path, names[role], image.manifest["sha256"], image.manifest.get("format", "raw")
                )
                for role, image in images.items()
            }

    def vm_template(self, role: str, image_id: int, arch: str) -> int:
        """A VM template for ``role`` booting ``image_id``, on the cloud's network, with this key."""
        body = appliance_templates.vm_template(
            role,
            f"{role}-{self.tag}",
            image_id,
            self.cloud.network_id(),
            ssh_public_key=self.key.public_line(),
            arch=arch,
        )
        template_id = self.cloud.create_vm_template(body)
        self.templates[template_id] = body
        self._cleanups.append(
            (f"VM template {template_id}", lambda: self.cloud.delete_vm_template(template_id))
        )
        return template_id

    def service_template(
        self,
        superlink: int,
        supernode: int,
        supernodes: int,
        security: str,
        extra_context: dict[str, dict[str, str]] | None = None,
        monitoring: bool = False,
        metrics_allow: str = "",
    ) -> int:
        """The pair's OneFlow service template; ``extra_context``: role -> CONTEXT entries (e.g. a job);
        ``monitoring``: the monitoring role on, metrics open to ``metrics_allow`` (the network's CIDRs)."""
        body = appliance_templates.service_template(
            f"flower-{self.tag}", superlink, supernode, supernodes, security, extra_context=extra_context,
            monitoring=monitoring, metrics_allow=metrics_allow,
        )  # fmt: skip
        template_id = self.cloud.create_service_template(body)
        self._cleanups.append(
            (f"service template {template_id}", lambda: self.cloud.delete_service_template(template_id))
        )
        return template_id

    def launch(
        self, template_id: int, timeout: float, on_launched: Callable[[Any], None] | None = None
    ) -> Any:
        """The OneFlow service instantiated from ``template_id``, waited for until RUNNING.
        ``on_launched(service)`` runs right after the instantiation (e.g. to start following the VMs)."""
        self.service = self.cloud.launch_service(template_id, f"flower-{self.tag}")
        service = self.service
        self._cleanups.append((f"service {service.id}", service.delete))
        if on_launched is not None:
            on_launched(service)
        service.wait_running(timeout)
        return service

    def start_rogue_supernode(self, supernode_template: int, superlink: Any) -> int:
        """A SuperNode VM outside the service: pointed at the SuperLink, its key never enrolled."""
        context = dict(self.templates[supernode_template]["CONTEXT"])
        context["ONEAPP_FL_SUPERLINK"] = superlink.user_template.get("ONEAPP_FL_ENDPOINT", "")
        context["ONEAPP_FL_SUPERLINK_CA"] = superlink.user_template.get("ONEAPP_FL_CA_CERT", "")
        context["ONEAPP_FL_NODE_CONFIG"] = "partition-id=0 num-partitions=2"
        vm_id = int(self.cloud.instantiate_vm(supernode_template, f"rogue-{self.tag}", {"CONTEXT": context}))
        self.rogue_vm = vm_id
        self._cleanups.append((f"rogue VM {vm_id}", lambda: self.cloud.terminate_vm(vm_id)))
        return vm_id

    # -- using ---------------------------------------------------------------------------------------------

    def ssh_session(self, ip: str) -> SSHSession:
        """An SSH session to a VM of this deployment: the cloud's SSH user, this deployment's key and
        known_hosts file."""
        return SSHSession(ip, self.cloud.settings.ssh_user, self.key.private, known_hosts=self.known_hosts)

    @contextmanager
    def control_api(self, superlink: Any, ca_pem: bytes | None) -> Iterator[Connection]:
        """The SuperLink's Control API through an SSH tunnel (TLS with ``ca_pem`` when given)."""
        if superlink.ip is None:
            raise FactoryError(f"SuperLink VM {superlink.id} has no IP address")
        ca_path = None
        if ca_pem is not None:
            ca_path = self.workdir / "superlink-ca.crt"
            ca_path.write_bytes(ca_pem)
        session = self.ssh_session(superlink.ip)
        with session.connect(timeout=180) as ssh, ssh.forward("127.0.0.1", api_port()) as forward:
            yield Connection(forward.address, ca_path)

    def collect_logs(self) -> dict[str, str]:
        """Every VM's state and appliance logs (empty before the service was launched)."""
        if self.service is None:
            return {}
        try:
            return self.service.collect_logs(
                appliance_log_reader(self.cloud.settings.ssh_user, self.key.private, self.known_hosts)
            )
        except FactoryError as failure:
            return {"collect_logs": str(failure)}

    # -- tearing down --------------------------------------------------------------------------------------

    def keep(self) -> str:
        """Leave everything running (--keep-on-failure); returns what was kept, for the record."""
        self._kept = True
        service = self.service.id if self.service is not None else None
        return f"service {service}, rogue VM {self.rogue_vm}"

    def clean(self) -> list[str]:
        """Remove what was created, newest first; every failure is gathered and returned, none stops it."""
        problems = []
        with self.progress.stage("teardown"):
            while self._cleanups:
                what, remove = self._cleanups.pop()
                try:
                    remove()
                except FactoryError as error:
                    problems.append(f"{what}: {error}")
        for problem in problems:
            self.progress.line(f"teardown: {problem}")
        return problems

    def __enter__(self) -> Deployment:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if not self._kept:
            self.clean()
