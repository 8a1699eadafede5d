"""The OpenNebula driver: every OpenNebula call of the factory goes through this module (and flow.py).

A small, pycloudlib-like interface over OpenNebula's documented APIs (XML-RPC through pyone, OneFlow over
HTTP), the same against a real OpenNebula 7 and the local test cloud:

- :meth:`OneCloud.ensure_image` imports an image file, or reuses an image registered earlier for the same
  sha256 (the ``FLOWER_FACTORY_SHA256`` attribute only finds the candidate: where its datastore file can
  be read from here, as with the local test cloud, its content is hashed and must match, otherwise the
  reuse is refused; elsewhere publishing compares the MD5 the marketplace computes, see
  factory/release/publish.py);
- :meth:`OneCloud.create_vm_template` / :meth:`OneCloud.create_service_template` register templates;
- :meth:`OneCloud.launch_service` instantiates a OneFlow service (the networks the template declares bound to
  the harness's network, checked to exist first) and returns a :class:`ServiceDeployment`
  that waits (with progress and a deadline), lists its VMs, collects every VM's appliance logs, and is torn
  down by :meth:`ServiceDeployment.delete`;
- :meth:`OneCloud.create_marketapp` publishes to an ``http`` marketplace.
"""

from __future__ import annotations

import base64
import json
import time
import xmlrpc.client
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pyone
from lxml import etree

from factory.model.manifest import digests
from factory.one import service_checks, xmltemplate
from factory.one.flow import FAILED_STATES, OneFlow, service_body, state_name
from factory.one.settings import OneSettings
from hostkit.errors import FactoryError
from hostkit.progress import DEFAULT as PROGRESS
from hostkit.progress import Progress

CHECKSUM_ATTRIBUTE = "FLOWER_FACTORY_SHA256"
CREATED_BY_ATTRIBUTE = "FLOWER_FACTORY"
IMAGE_STATES = [
    "INIT", "READY", "USED", "DISABLED", "LOCKED", "ERROR", "CLONE", "DELETE", "USED_PERS", "LOCKED_USED",
    "LOCKED_USED_PERS",
]  # fmt: skip
VM_STATES = [
    "INIT", "PENDING", "HOLD", "ACTIVE", "STOPPED", "SUSPENDED", "DONE", "FAILED", "POWEROFF", "UNDEPLOYED",
    "CLONING", "CLONING_FAILURE",
]  # fmt: skip
# LCM states that mean the VM failed (oned's *_FAILURE states, and UNKNOWN).
LCM_FAILURES = {
    14: "FAILURE", 16: "UNKNOWN", 36: "BOOT_FAILURE", 37: "BOOT_MIGRATE_FAILURE", 39: "PROLOG_FAILURE",
    40: "EPILOG_FAILURE", 44: "PROLOG_MIGRATE_FAILURE", 47: "PROLOG_RESUME_FAILURE",
    48: "BOOT_UNDEPLOY_FAILURE", 49: "BOOT_STOPPED_FAILURE", 50: "PROLOG_UNDEPLOY_FAILURE",
}  # fmt: skip
MARKETAPP_STATES = ["INIT", "READY", "LOCKED", "ERROR", "DISABLED"]
# libxml2 refuses a text node over 10 MB (XML_MAX_TEXT_LENGTH) unless asked for huge trees, and pyone parses
# every answer with lxml's default parser; oned accepts far more (oned.conf MESSAGE_SIZE, 1 GiB by default,
# is also xmlrpc-c's XML size limit, src/rm/xml-rpc/RequestManagerXRPC.cc), and a guest sets attributes
# through OneGate. A VM's values over this length are cut when the driver reads it (see vm_info).
VALUE_LIMIT = 64 * 1024


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


@dataclass(frozen=True)
class ImageRef:
    id: int
    name: str
    sha256: str
    reused: bool
    verified: bool = True  # the content was hashed (imported from the file, or a readable reused file)


@dataclass(frozen=True)
class VMInfo:
    id: int
    name: str
    role: str
    state: str
    lcm_state: int
    ip: str | None
    user_template: dict[str, str]
    # attributes whose values were over VALUE_LIMIT (name, length in characters): cut in user_template
    oversized: tuple[tuple[str, int], ...] = ()

    @property
    def failed(self) -> bool:
        return self.lcm_state in LCM_FAILURES or self.state in {"FAILED", "CLONING_FAILURE"}

    @property
    def ready(self) -> bool:
        return str(self.user_template.get("READY", "")).upper() == "YES"

    def describe(self) -> str:
        lcm = LCM_FAILURES.get(self.lcm_state, str(self.lcm_state))
        status = self.user_template.get("ONEAPP_FL_STATUS", "")
        error = self.user_template.get("ONEAPP_FL_ERROR", "")
        text = f"VM {self.id} {self.name} ({self.role}) {self.state}/{lcm} ip={self.ip or '-'}"
        if status:
            text += f" appliance={status}"
        if error:
            text += f" error={error!r}"
        if self.oversized:
            text += " oversized=" + ",".join(f"{name}:{length}" for name, length in self.oversized)
        return text


def appliance_reasons(vms: list[VMInfo]) -> str:
    """What the appliances reported (``ONEAPP_FL_ERROR``), each naming its VM, to lead a failure message:
    the reason a user acts on comes before the service and VM states."""
    reasons = [
        f"{vm.role or 'VM'} VM {vm.id}: {vm.user_template['ONEAPP_FL_ERROR']}"
        for vm in vms
        if vm.user_template.get("ONEAPP_FL_ERROR")
    ]
    return "; ".join(reasons) + ("; " if reasons else "")


class UnparsableAnswer(FactoryError):
    """oned answered, but pyone (lxml) could not parse the XML: a value over libxml2's limits."""


class OneCloud:
    """One connection to an OpenNebula front-end (oned + OneFlow)."""

    def __init__(self, settings: OneSettings, progress: Progress = PROGRESS) -> None:
        self.settings = settings
        self.progress = progress
        self.one = pyone.OneServer(settings.xmlrpc, session=settings.auth, timeout=60)
        self.flow = OneFlow(settings.oneflow, settings.auth)
        self._hashed: dict[tuple[str, int, int], str] = {}

    def reconnect(self, progress: Progress | None = None) -> OneCloud:
        """A new connection to the same cloud (pyone's XML-RPC proxy is one HTTP connection: a thread of its
        own needs one of its own), reporting to ``progress`` (default: this one's)."""
        return OneCloud(self.settings, self.progress if progress is None else progress)

    @contextmanager
    def _call(self, what: str) -> Iterator[None]:
        """Turn pyone/transport errors into FactoryError naming the operation (never the credentials)."""
        try:
            yield
        except etree.XMLSyntaxError as error:
            raise UnparsableAnswer(
                f"OpenNebula {what}: the answer cannot be parsed by pyone ({error}); an attribute over "
                "libxml2's 10 MB text limit (a guest can set one through OneGate)?"
            ) from None
        except pyone.OneAuthenticationException as error:
            raise FactoryError(
                f"OpenNebula refused the credentials for {self.settings.user} ({what}): {error}"
            ) from None
        except pyone.OneException as error:
            raise FactoryError(f"OpenNebula {what}: {error}") from None
        except OSError as error:
            raise FactoryError(f"OpenNebula {what}: cannot reach {self.settings.xmlrpc}: {error}") from None

    # -- front-end facts ---------------------------------------------------------------------------------

    def version(self) -> str:
        with self._call("system.version"):
            return str(self.one.system.version())

    def _pick(self, items: list[Any], wanted: str | None, what: str, accept: Callable[[Any], bool]) -> Any:
        candidates = [item for item in items if accept(item)]
        if wanted is not None:
            for item in candidates:
                if str(item.ID) == wanted or wanted == item.NAME:
                    return item
            names = ", ".join(f"{item.ID}:{item.NAME}" for item in candidates) or "none"
            raise FactoryError(f"{what} {wanted!r} not found (available: {names})")
        if not candidates:
            raise FactoryError(f"no {what} available on {self.settings.xmlrpc}")
        return candidates[0]

    def network_id(self) -> int:
        with self._call("vnpool.info"):
            pool = self.one.vnpool.info(-2, -1, -1)
        return int(
            self._pick(_as_list(pool.VNET), self.settings.network, "virtual network", lambda net: True).ID
        )

    def check_networks_values(self, values: list[dict[str, Any]]) -> None:
        """Each ``{"<name>": {"id": "<vnet>"}}`` of OneFlow ``networks_values`` names an existing network."""
        with self._call("vnpool.info"):
            pool = self.one.vnpool.info(-2, -1, -1)
        known = {str(net.ID): str(net.NAME) for net in _as_list(pool.VNET)}
        for value in values:
            for key, choice in value.items():
                if not isinstance(choice, dict) or "id" not in choice:
                    continue  # reserve_from / template_id: OneFlow creates the network
                if str(choice["id"]) not in known:
                    available = ", ".join(f"{i}:{n}" for i, n in known.items()) or "none"
                    raise FactoryError(
                        f"network {key!r}: virtual network id {str(choice['id'])!r} does not exist "
                        f"(available: {available}); no service was instantiated"
                    )

    def image_datastore_id(self) -> int:
        with self._call("datastorepool.info"):
            pool = self.one.datastorepool.info()
        stores = [store for store in _as_list(pool.DATASTORE) if int(store.TYPE) == 0]
        wanted = self.settings.datastore
        if wanted is None and any(store.NAME == "default" for store in stores):
            wanted = "default"
        return int(self._pick(stores, wanted, "image datastore", lambda store: True).ID)

    def marketplace_id(self) -> int:
        with self._call("marketpool.info"):
            pool = self.one.marketpool.info()
        return int(
            self._pick(
                _as_list(pool.MARKETPLACE),
                self.settings.marketplace,
                "http marketplace",
                lambda market: str(market.MARKET_MAD) == "http",
            ).ID
        )

    # -- images ----------------------------------------------------------------------------------------------

    def images(self) -> list[Any]:
        with self._call("imagepool.info"):
            return _as_list(self.one.imagepool.info(-3, -1, -1).IMAGE)

    @staticmethod
    def find_image_by_checksum(images: list[Any], sha256: str) -> Any | None:
        for image in images:
            template = image.TEMPLATE or {}
            if template.get(CHECKSUM_ATTRIBUTE) == sha256 and IMAGE_STATES[int(image.STATE)] != "ERROR":
                return image
        return None

    @staticmethod
    def free_image_name(images: list[Any], name: str, sha256: str) -> str:
        """``name``, or ``name-<first 12 hex of sha256>`` when an image of other content holds it already.

        oned refuses a second image of the same name and owner ("NAME is already taken by IMAGE n",
        OpenNebula/one ``src/image/ImagePool.cc``, ``ImagePool::allocate``; the test cloud likewise). A
        rebuilt image of a variant (new content, same variant name) meets the image of the last release,
        kept as the source of its marketplace app; the suffix keeps both and says which content each holds.
        """
        if name not in {str(image.NAME) for image in images}:
            return name
        return f"{name}-{sha256[:12]}"

    def image_source(self, path: Path) -> str:
        """Where oned fetches the file from: ONE_IMAGE_URL_BASE/<name>, or the local path (same host)."""
        if self.settings.image_url_base:
            return f"{self.settings.image_url_base}/{path.name}"
        return str(path.resolve())

    def ensure_image(
        self, path: Path, name: str, sha256: str, image_format: str, timeout: float = 1800.0
    ) -> ImageRef:
        """The READY image holding ``path`` (by sha256), importing it first when no such image exists."""
        images = self.images()
        existing = self.find_image_by_checksum(images, sha256)
        if existing is not None:
            self.wait_image(int(existing.ID), timeout)
            verified = self._verify_content(existing, sha256)
            return ImageRef(int(existing.ID), str(existing.NAME), sha256, reused=True, verified=verified)
        name = self.free_image_name(images, name, sha256)
        template = {
            "NAME": name,
            "PATH": self.image_source(path),
            "TYPE": "OS",
            "DEV_PREFIX": "vd",
            "FORMAT": image_format,
            "DRIVER": image_format,
            "PERSISTENT": "NO",
            CHECKSUM_ATTRIBUTE: sha256,
            CREATED_BY_ATTRIBUTE: "YES",
            "DESCRIPTION": f"Flower appliance image {name} (sha256 {sha256})",
        }
        with self._call(f"image.allocate {name}"):
            image_id = int(self.one.image.allocate(xmltemplate.render(template), self.image_datastore_id()))
        self.progress.line(f"image {name}: importing as image {image_id}")
        self.wait_image(image_id, timeout)
        self._remember_import(image_id, sha256)
        return ImageRef(image_id, name, sha256, reused=False)

    def _remember_import(self, image_id: int, sha256: str) -> None:
        """The datastore file of an image this process just imported from the tested file needs no second
        hashing when this process reuses it (release: the pair tests, then publishing)."""
        with self._call(f"image.info {image_id}"):
            source = Path(str(self.one.image.info(image_id).SOURCE or ""))
        try:
            if source.is_absolute() and source.is_file():
                stat = source.stat()
                self._hashed[(str(source), stat.st_size, stat.st_mtime_ns)] = sha256
        except OSError:
            return

    def _verify_content(self, image: Any, sha256: str) -> bool:
        """Hash the image's datastore file when it is readable here; refuse a content that is not ``sha256``.

        False: the file is not reachable from this host (a remote OpenNebula), nothing was compared.
        """
        source = Path(str(image.SOURCE or ""))
        if not source.is_absolute() or not source.is_file():
            return False
        try:
            stat = source.stat()
            key = (str(source), stat.st_size, stat.st_mtime_ns)
            if key not in self._hashed:
                self._hashed[key] = digests(source)[0]
        except OSError:
            return False
        if self._hashed[key] != sha256:
            raise FactoryError(
                f"image {image.ID} ({image.NAME}) carries {CHECKSUM_ATTRIBUTE}={sha256} but its content "
                f"({source}) has sha256 {self._hashed[key]}: refusing to reuse it; delete the image so that "
                "the tested file is imported again"
            )
        return True

    def wait_image(self, image_id: int, timeout: float) -> None:
        def info() -> Any:
            with self._call(f"image.info {image_id}"):
                return self.one.image.info(image_id)

        _wait_ready(f"image {image_id}", info, IMAGE_STATES, {"READY", "USED", "USED_PERS"}, timeout)

    def delete_image(self, image_id: int) -> None:
        with self._call(f"image.delete {image_id}"):
            self.one.image.delete(image_id)

    # -- templates -------------------------------------------------------------------------------------------

    def create_vm_template(self, template: dict[str, Any]) -> int:
        with self._call(f"template.allocate {template.get('NAME')}"):
            return int(
                self.one.template.allocate(xmltemplate.render({**template, CREATED_BY_ATTRIBUTE: "YES"}))
            )

    def delete_vm_template(self, template_id: int) -> None:
        with self._call(f"template.delete {template_id}"):
            self.one.template.delete(template_id)

    def create_service_template(self, body: dict[str, Any]) -> int:
        """Registers ``body`` after the checks OneFlow does not make (service_checks): nothing is sent if
        a role's parents, an integer key or a user input default is wrong."""
        service_checks.check_template(body)
        return self.flow.create_service_template(body)

    def delete_service_template(self, template_id: int) -> None:
        self.flow.delete_service_template(template_id)

    # -- VMs and services ------------------------------------------------------------------------------------

    def vm_info(self, vm_id: int, role: str = "") -> VMInfo:
        """The VM's state, IP and user template. A VM that pyone cannot parse (a guest set a value over
        libxml2's 10 MB limit) is read again without pyone, its oversized values cut and named."""
        try:
            with self._call(f"vm.info {vm_id}"):
                vm = self.one.vm.info(vm_id)
        except UnparsableAnswer as error:
            return self._vm_info_huge(vm_id, role, str(error))
        template = vm.TEMPLATE or {}
        nics = _as_list(template.get("NIC"))
        user_template = {
            str(key): str(value) for key, value in (vm.USER_TEMPLATE or {}).items() if value is not None
        }
        return VMInfo(
            id=int(vm.ID),
            name=str(vm.NAME),
            role=role or str(user_template.get("ROLE_NAME", template.get("ROLE_NAME", ""))),
            state=VM_STATES[int(vm.STATE)] if int(vm.STATE) < len(VM_STATES) else str(vm.STATE),
            lcm_state=int(vm.LCM_STATE),
            ip=str(nics[0].get("IP")) if nics and nics[0].get("IP") else None,
            user_template=user_template,
        )

    def _vm_info_huge(self, vm_id: int, role: str, why: str) -> VMInfo:
        """``one.vm.info`` over plain XML-RPC, parsed by lxml with huge_tree (no entities, no network)."""
        # pyone.OneServer(timeout=60) set the socket default timeout this call inherits
        proxy = xmlrpc.client.ServerProxy(self.settings.xmlrpc)
        try:
            answer = getattr(proxy, "one.vm.info")(self.settings.auth, vm_id, False)
            if not answer[0]:
                raise FactoryError(f"OpenNebula vm.info {vm_id}: {answer[1]}")
            parser = etree.XMLParser(huge_tree=True, resolve_entities=False, no_network=True)
            root = etree.fromstring(str(answer[1]).encode("utf-8"), parser)
        except (OSError, xmlrpc.client.Error, etree.XMLSyntaxError, IndexError) as error:
            raise FactoryError(f"VM {vm_id}: {why}; reading it without pyone failed too: {error}") from None
        oversized = []
        user_template = {}
        for element in root.findall("USER_TEMPLATE/*"):
            value = "".join(element.itertext())
            if len(value) > VALUE_LIMIT:
                oversized.append((element.tag, len(value)))
                value = value[:200] + f"... (cut: {len(value)} characters)"
            user_template[element.tag] = value
        ip = root.findtext("TEMPLATE/NIC/IP")
        state = int(root.findtext("STATE") or -1)
        return VMInfo(
            id=int(root.findtext("ID") or vm_id),
            name=str(root.findtext("NAME") or ""),
            role=role or user_template.get("ROLE_NAME", root.findtext("TEMPLATE/ROLE_NAME") or ""),
            state=VM_STATES[state] if 0 <= state < len(VM_STATES) else str(state),
            lcm_state=int(root.findtext("LCM_STATE") or -1),
            ip=ip or None,
            user_template=user_template,
            oversized=tuple(oversized),
        )

    def instantiate_vm(self, template_id: int, name: str, extra: dict[str, Any] | None = None) -> int:
        with self._call(f"template.instantiate {template_id}"):
            extra_template = xmltemplate.render(extra) if extra else ""
            return int(self.one.template.instantiate(template_id, name, False, extra_template, False))

    def terminate_vm(self, vm_id: int) -> None:
        with self._call(f"vm.action terminate-hard {vm_id}"):
            self.one.vm.action("terminate-hard", vm_id)

    def launch_service(
        self, template_id: int, name: str, merge_template: dict[str, Any] | None = None
    ) -> ServiceDeployment:
        """Instantiate the service template. The networks it declares (``networks``) are bound to this
        harness's network (``ONE_NETWORK``) unless ``merge_template`` gives ``networks_values``; every
        network id is checked to exist first, so a bad one is a clear error and no service is made."""
        merge = {"name": name, **(merge_template or {})}
        template = service_body(self.flow.service_template(template_id))
        service_checks.check_template(template)
        service_checks.check_user_input_values(template, merge)
        declared = template.get("networks") or {}
        if declared and not merge.get("networks_values"):
            network = self.network_id()
            merge["networks_values"] = [{key: {"id": str(network)}} for key in declared]
        self.check_networks_values(merge.get("networks_values") or [])
        service_id = self.flow.instantiate(template_id, merge)
        self.progress.line(f"service {name}: instantiated as OneFlow service {service_id}")
        return ServiceDeployment(self, service_id, name, started=time.monotonic())

    # -- marketplace -----------------------------------------------------------------------------------------

    def create_marketapp(
        self, template: dict[str, Any], market_id: int | None = None, timeout: float = 1800.0
    ) -> int:
        """Allocate a marketplace app (IMAGE apps need ORIGIN_ID = the image) and wait until it is READY.
        A SERVICE_TEMPLATE app's service body (APPTEMPLATE64) gets the checks OneFlow does not make first:
        a user's ``onemarketapp export`` turns it into a OneFlow template that OneFlow would accept."""
        if template.get("TYPE") == "SERVICE_TEMPLATE":
            try:
                body = json.loads(base64.b64decode(str(template.get("APPTEMPLATE64", ""))))
            except ValueError as error:
                raise FactoryError(
                    f"marketplace app {template.get('NAME')}: APPTEMPLATE64 is no service body: {error}"
                ) from None
            if not isinstance(body, dict):
                raise FactoryError(f"marketplace app {template.get('NAME')}: APPTEMPLATE64 is no JSON object")
            service_checks.check_template(body)
        market = self.marketplace_id() if market_id is None else market_id
        with self._call(f"marketapp.allocate {template.get('NAME')}"):
            app_id = int(self.one.marketapp.allocate(xmltemplate.render(template), market))
        info = partial(self.marketapp_info, app_id)
        _wait_ready(f"marketplace app {app_id}", info, MARKETAPP_STATES, {"READY"}, timeout)
        return app_id

    def marketapp_info(self, app_id: int) -> Any:
        with self._call(f"marketapp.info {app_id}"):
            return self.one.marketapp.info(app_id)

    def delete_marketapp(self, app_id: int) -> None:
        with self._call(f"marketapp.delete {app_id}"):
            self.one.marketapp.delete(app_id)

    def find_marketapp(self, name: str, market_id: int) -> Any | None:
        with self._call("marketapppool.info"):
            pool = self.one.marketapppool.info(-2, -1, -1)
        for app in _as_list(pool.MARKETPLACEAPP):
            if name == app.NAME and int(app.MARKETPLACE_ID) == market_id:
                return app
        return None


def _wait_ready(
    what: str, info: Callable[[], Any], states: Sequence[str], ready: Collection[str], timeout: float
) -> None:
    """Poll ``info`` (an image or marketplace app) until its STATE, named by ``states``, is one of ``ready``;
    a FactoryError naming ``what`` with OpenNebula's reason when it turns ERROR, or at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        found = info()
        number = int(found.STATE)
        state = states[number] if number < len(states) else str(number)
        if state in ready:
            return
        if state == "ERROR":
            reason = (found.TEMPLATE or {}).get("ERROR", "no reason given")
            raise FactoryError(f"{what} ({found.NAME}) failed: {reason}")
        if time.monotonic() > deadline:
            raise FactoryError(f"{what} ({found.NAME}) still {state} after {timeout:.0f} s")
        time.sleep(1.0)


@dataclass
class ServiceDeployment:
    """A OneFlow service being deployed or running; pycloudlib's "instance" for a whole appliance pair."""

    cloud: OneCloud
    id: int
    name: str
    started: float
    running_at: float | None = None
    history: list[str] = field(default_factory=list)

    def document(self) -> dict[str, Any]:
        return self.cloud.flow.service(self.id)

    def body(self) -> dict[str, Any]:
        return service_body(self.document())

    def state(self) -> str:
        return state_name(self.body().get("state", -1))

    def vms(self) -> list[VMInfo]:
        result = []
        for role in self.body().get("roles", []):
            for node in role.get("nodes", []) or []:
                try:
                    result.append(self.cloud.vm_info(int(node["deploy_id"]), role=str(role.get("name", ""))))
                except FactoryError as error:
                    self.history.append(f"VM {node.get('deploy_id')}: {error}")
        return result

    def wait_running(self, timeout: float) -> None:
        """Until the service is RUNNING (with the ready gate: every VM reported READY=YES).

        Fails early, naming the VMs, when the service or a VM fails; fails at the deadline otherwise.
        """
        deadline = self.started + timeout
        last = ""
        while True:
            state = self.state()
            vms = self.vms() if state != "PENDING" else []
            summary = f"{state}; " + ", ".join(
                f"{vm.role}/{vm.id}:{vm.state}{'+READY' if vm.ready else ''}" for vm in vms
            )
            if summary != last:
                elapsed = time.monotonic() - self.started
                self.cloud.progress.line(f"service {self.id} [{elapsed:5.0f} s] {summary}")
                self.history.append(f"{elapsed:.0f}s {summary}")
                last = summary
            if state == "RUNNING":
                self.running_at = time.monotonic()
                return
            failed_vms = [
                vm for vm in vms if vm.failed or vm.user_template.get("ONEAPP_FL_STATUS") == "failed"
            ]
            if state in FAILED_STATES or failed_vms:
                detail = "; ".join(vm.describe() for vm in failed_vms) or "no VM reported why"
                raise FactoryError(
                    appliance_reasons(vms)
                    + f"service {self.id} ({self.name}) failed to deploy ({state}): {detail}"
                )
            if time.monotonic() > deadline:
                detail = "; ".join(vm.describe() for vm in vms) or "no VMs yet"
                raise FactoryError(
                    appliance_reasons(vms)
                    + f"service {self.id} ({self.name}) not RUNNING after {timeout:.0f} s ({state}): {detail}"
                )
            time.sleep(2.0)

    def role_vms(self, role: str) -> list[VMInfo]:
        return [vm for vm in self.vms() if vm.role == role]

    def collect_logs(self, remote_log: Callable[[VMInfo], str] | None = None) -> dict[str, str]:
        """Every VM's state and published attributes, plus what ``remote_log`` reads from the VM (the
        harness passes one that logs in over SSH: this driver opens no session of its own)."""
        logs: dict[str, str] = {"service": "\n".join(self.history)}
        for vm in self.vms():
            lines = [vm.describe()]
            lines += [
                f"{key}={value}"
                for key, value in sorted(vm.user_template.items())
                if key.startswith(("ONEAPP_FL_", "READY"))
            ]
            if remote_log is not None and vm.ip:
                lines.append(remote_log(vm))
            logs[f"{vm.role}-{vm.id}"] = "\n".join(lines)
        return logs

    def delete(self, timeout: float = 300.0) -> None:
        """Undeploy the service and wait until OneFlow reports it DONE (or it is gone).

        OneFlow refuses to undeploy a service still DEPLOYING (or failed): ``recover --delete`` forces it.
        """
        try:
            state = self.state()
        except FactoryError:
            return
        if state == "DONE":
            return
        try:
            if state in FAILED_STATES:
                raise FactoryError(f"service {self.id} is {state}")
            self.cloud.flow.delete_service(self.id)
        except FactoryError:
            self.cloud.flow.recover_delete(self.id)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                state = self.state()
            except FactoryError:
                return  # the document is gone: deleted
            if state == "DONE":
                return
            if state == "FAILED_UNDEPLOYING":
                self.cloud.flow.recover_delete(self.id)
            time.sleep(2.0)
        raise FactoryError(f"service {self.id} not deleted after {timeout:.0f} s (state {state})")
