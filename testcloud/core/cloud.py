"""The test cloud's core (oned's role): pools, authentication, persistence and the lifecycle engine.

One ``Cloud`` per state directory. Every request and every engine step holds ``self.lock``; slow work
(copying image files, driver calls) runs in worker threads and commits its result under the lock.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path

from hostkit.fileio import write_atomic
from testcloud.core import errors
from testcloud.core.config import (
    AR_FIRST_IP,
    AR_SIZE,
    BRIDGE,
    NETWORK_ADDRESS,
    NETWORK_MASK,
    VERSION,
    CloudConfig,
)
from testcloud.core.documents import DocumentPool
from testcloud.core.errors import OneError
from testcloud.core.images import ImagePool
from testcloud.core.infra import InfraPool
from testcloud.core.market import MarketPool
from testcloud.core.objects import (
    DS_FILE,
    DS_IMAGE,
    DS_SYSTEM,
    AddressRange,
    Datastore,
    Marketplace,
    User,
    VMTemplate,
    VNet,
)
from testcloud.core.pool import PoolStore
from testcloud.core.template import Template
from testcloud.core.validate import check_name, parse_template
from testcloud.core.vms import VMPool
from testcloud.core.vnets import VNetPool

log = logging.getLogger("testcloud")


# The test network is IPv4 only and says so, as an operator says it: oned copies the network's IP6_METHOD into
# every NIC's context as ETH<n>_IP6_METHOD (OpenNebula/one src/vm/VirtualMachineContext.cc, NETWORK6_CONTEXT),
# and one-context then turns IPv6 off on the NIC instead of soliciting router advertisements that never come
# (~12 s of systemd-networkd-wait-online per boot; one-apps context-linux loc-10-network.d). A network without
# it keeps the images' default.
IPV4_ONLY = ("IP6_METHOD", "disable")


class Cloud:
    """oned: the pools composed around one shared :class:`PoolStore`, each given only what it uses.

    ``images``, ``vnets``, ``documents``: the store alone; ``market``: images (an app is exported from an
    image); ``vms``: images and vnets (a VM holds disks and leases); ``infra``: images and vms (a host reports
    the system datastore and its VMs). VM templates, datastores, users and authentication live here."""

    def __init__(self, config: CloudConfig) -> None:
        config.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(config.state_dir, 0o700)
        self.db = PoolStore(config)
        self.config = config
        self.state_dir = config.state_dir
        self.lock = self.db.lock
        self.pools = self.db.pools
        self.endpoints = self.db.endpoints
        self.images = ImagePool(self.db)
        self.vnets = VNetPool(self.db)
        self.documents = DocumentPool(self.db)
        self.market = MarketPool(self.db, self.images)
        self.vms = VMPool(self.db, self.images, self.vnets)
        self.infra = InfraPool(self.db, self.images, self.vms)
        self._stop = threading.Event()
        self._engine: threading.Thread | None = None
        if not self.pools["user"]:
            self._bootstrap()
        else:
            self._upgrade_vnet()
        self.images.resume_locked_images()
        self.market.resume_locked_apps()
        self.vms.resume()

    # ------------------------------------------------------------------ first start
    def _bootstrap(self) -> None:
        password = secrets.token_hex(16)
        user = User(
            id=0,
            name="oneadmin",
            password_sha256=hashlib.sha256(password.encode()).hexdigest(),
            template=Template(
                [("TOKEN_PASSWORD", hashlib.sha256(secrets.token_bytes(32)).hexdigest())]
                + ([("SSH_PUBLIC_KEY", self.config.ssh_public_key)] if self.config.ssh_public_key else [])
            ),
        )
        write_atomic(self.state_dir / "one_auth", f"oneadmin:{password}\n".encode(), 0o600)
        self.db.insert(user, "user")
        self._bootstrap_datastores()
        self._bootstrap_markets()
        self._bootstrap_vnet()
        self.db.counters.update({"user": 1, "datastore": 100, "market": 100, "vnet": 1})
        self.db.store.save_counters(self.db.counters)

    def _bootstrap_datastores(self) -> None:
        ds_root = self.state_dir / "datastores"
        system = Datastore(id=0, name="system", type=DS_SYSTEM, ds_mad="-", base_path=str(ds_root / "0"))
        system.template = Template([("SHARED", "NO"), ("TM_MAD", "ssh"), ("TYPE", "SYSTEM_DS")])
        default = Datastore(id=1, name="default", type=DS_IMAGE, base_path=str(ds_root / "1"))
        default.template = Template(
            [
                ("CLONE_TARGET", "SYSTEM"),
                ("DISK_TYPE", "FILE"),
                ("DS_MAD", "fs"),
                ("LN_TARGET", "SYSTEM"),
                ("TM_MAD", "ssh"),
                ("TYPE", "IMAGE_DS"),
            ]
        )
        if self.config.datastore_limit_mb is not None:
            default.template.add("LIMIT_MB", str(self.config.datastore_limit_mb))
        files = Datastore(id=2, name="files", type=DS_FILE, base_path=str(ds_root / "2"))
        files.template = Template([("DS_MAD", "fs"), ("TM_MAD", "ssh"), ("TYPE", "FILE_DS")])
        for ds in (system, default, files):
            ds.permissions = "110100000"
            Path(ds.base_path).mkdir(parents=True, exist_ok=True)
            self.db.insert(ds, "datastore")

    def _bootstrap_markets(self) -> None:
        public = Marketplace(id=0, name="OpenNebula Public", market_mad="one", permissions="110100100")
        public.template = Template(
            [
                ("DESCRIPTION", "OpenNebula Systems MarketPlace"),
                ("ENDPOINT", "https://marketplace.opennebula.io"),
                ("MARKET_MAD", "one"),
            ]
        )
        local = Marketplace(id=1, name="testcloud", market_mad="http", permissions="110100100")
        market_dir = self.state_dir / "market"
        market_dir.mkdir(parents=True, exist_ok=True)
        local.template = Template(
            [
                ("BASE_URL", "http://127.0.0.1/"),
                ("DESCRIPTION", "The test cloud's http marketplace"),
                ("MARKET_MAD", "http"),
                ("PUBLIC_DIR", str(market_dir)),
            ]
        )
        self.db.insert(public, "market")
        self.db.insert(local, "market")

    def _bootstrap_vnet(self) -> None:
        vnet = VNet(id=0, name="testcloud", bridge=BRIDGE, permissions="110100000")
        vnet.template = Template(
            [
                ("BRIDGE", BRIDGE),
                ("BRIDGE_TYPE", "linux"),
                ("DESCRIPTION", "The test bridge: nothing leaves it"),
                IPV4_ONLY,
                ("NETWORK_ADDRESS", NETWORK_ADDRESS),
                ("NETWORK_MASK", NETWORK_MASK),
                ("OUTER_VLAN_ID", ""),
                ("PHYDEV", ""),
                ("SECURITY_GROUPS", "0"),
                ("VLAN_ID", ""),
                ("VN_MAD", "bridge"),
            ]
        )
        vnet.store_ranges([AddressRange(ar_id=0, ip=AR_FIRST_IP, size=AR_SIZE)])
        self.db.insert(vnet, "vnet")

    def _upgrade_vnet(self) -> None:
        """A state bootstrapped before the network declared IPv4 only gets ``IP6_METHOD`` as an operator's
        ``onevnet update`` would add it; a value already there (an operator's) is kept."""
        vnet = self.pools["vnet"].get(0)
        if vnet is None or vnet.name != "testcloud" or IPV4_ONLY[0] in vnet.template:
            return
        vnet.template.add(*IPV4_ONLY)
        self.db.save(vnet)

    def password(self) -> str:
        return (self.state_dir / "one_auth").read_text().strip().split(":", 1)[1]

    # ------------------------------------------------------------------ authentication
    def authenticate(self, session: str) -> User:
        user_name, _, password = session.partition(":")
        with self.lock:
            user = self.db.find_by_name("user", user_name)
            digest = hashlib.sha256(password.encode()).hexdigest()
            if user is None or not secrets.compare_digest(digest, user.password_sha256):
                raise OneError(errors.AUTHENTICATION)
            return user

    # ------------------------------------------------------------------ system, datastores
    def system_version(self) -> str:
        return VERSION

    def datastore_xml(self, ds: Datastore) -> str:
        images = [i.id for i in self.pools["image"].values() if i.datastore_id == ds.id]
        return ds.to_xml(images, self.images.datastore_space(ds))

    def datastorepool_info(self) -> str:
        with self.lock:
            pool = sorted(self.pools["datastore"].values(), key=lambda d: d.id)
            return "<DATASTORE_POOL>" + "".join(self.datastore_xml(ds) for ds in pool) + "</DATASTORE_POOL>"

    def datastore_info(self, oid: int) -> str:
        with self.lock:
            return self.datastore_xml(self.db.get("datastore", oid, errors.DATASTORE))

    # ------------------------------------------------------------------ VM templates
    def template_allocate(self, text_in: str) -> int:
        tmpl = parse_template(text_in)
        with self.lock:
            name = tmpl.get("NAME") or ""
            reason = check_name(name)
            if reason is None:
                taken = self.db.find_by_name("template", name)
                if taken is not None:
                    reason = f"NAME is already taken by TEMPLATE {taken.id}."
            if reason:
                raise OneError(errors.INTERNAL, reason)
            tmpl.erase("NAME")
            obj = VMTemplate(
                id=self.db.next_id("template"), name=name, regtime=int(time.time()), template=tmpl
            )
            self.db.insert(obj, "template")
            return obj.id

    def template_clone(self, oid: int, name: str, recursive: bool) -> int:
        """``TemplateClone``: a copy of the template under a new name (``onetemplate clone``)."""
        with self.lock:
            source: VMTemplate = self.db.get("template", oid, errors.TEMPLATE)
            if recursive:
                raise errors.internal(
                    "Recursive cloning (copies of the template's images) is not supported by the test cloud"
                )
            copy = source.template.copy()
            copy.replace("NAME", name)
            return self.template_allocate(copy.to_one())

    def template_info(self, oid: int) -> str:
        with self.lock:
            return self.db.get("template", oid, errors.TEMPLATE).to_xml()

    def template_delete(self, oid: int, recursive: bool = False) -> int:
        """``TemplateDelete``: with ``recursive`` the images its DISKs name by IMAGE_ID go too (as
        ``onetemplate delete --recursive`` and the CLI's export rollback ask); those that cannot be deleted
        are named in the error, the template is gone regardless."""
        with self.lock:
            template: VMTemplate = self.db.get("template", oid, errors.TEMPLATE)
            self.db.drop(template)
            if not recursive:
                return oid
            image_ids: set[int] = set()
            for disk in template.template.vectors("DISK"):  # by IMAGE_ID, or by IMAGE name
                raw = (disk.get("IMAGE_ID") or "").strip()
                named = self.db.find_by_name("image", disk.get("IMAGE") or "") if not raw else None
                if raw.isdigit():
                    image_ids.add(int(raw))
                elif named is not None:
                    image_ids.add(named.id)
            failed = []
            for image_id in sorted(image_ids):
                try:
                    self.images.image_delete(image_id)
                except OneError:
                    failed.append(str(image_id))
            if failed:  # RequestManagerDelete's TemplateDelete: the template is gone, these images are not
                raise errors.action(f"Cannot delete image: {','.join(failed)}")
            return oid

    def template_update(self, oid: int, text_in: str, append: int) -> int:
        return self.db.update_template("template", oid, errors.TEMPLATE, text_in, append).id

    def templatepool_info(self, filter_flag: int, start: int, end: int) -> str:
        return self.db.pool_xml("VMTEMPLATE_POOL", self.pools["template"].values(), filter_flag, start, end)

    # ------------------------------------------------------------------ engine
    def start_engine(self, *after_vms: Callable[[], None]) -> None:
        """Run the lifecycle every tick: the VMs' step, then each of ``after_vms`` (the launcher passes the
        OneFlow engine's, which sits a layer above this one). Images and apps change state in their copy
        workers."""
        self._stop.clear()
        steps = (self.vms.tick_vms, *after_vms)
        self._engine = threading.Thread(
            target=self._engine_loop, args=(steps,), name="testcloud-engine", daemon=True
        )
        self._engine.start()

    def _engine_loop(self, steps: tuple[Callable[[], None], ...]) -> None:
        while not self._stop.wait(self.config.timings.tick):
            for step in steps:
                try:
                    step()
                except Exception:  # the engine must outlive any bug in one step
                    log.exception("lifecycle step failed")

    def shutdown(self, keep_guests: bool) -> None:
        """Stop the engine; with ``keep_guests`` the guests keep running for the next start to re-attach,
        otherwise they are stopped and their VMs left POWEROFF (resumable)."""
        self._stop.set()
        if self._engine is not None:
            self._engine.join(timeout=10)
        if not keep_guests:
            self.vms.power_off_all()
        # work not yet started is dropped: it is recorded in the objects and resumes at the next start
        self.db.workers.shutdown(wait=True, cancel_futures=True)
