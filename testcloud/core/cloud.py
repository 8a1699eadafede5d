"""The test cloud's core (oned's role): pools, authentication, persistence and the lifecycle engine.

One ``Cloud`` per state directory. Every request and every engine step holds ``self.lock``; slow work
(copying image files, driver calls) runs in worker threads and commits its result under the lock.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

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
from testcloud.core.documents import DocumentOps
from testcloud.core.errors import OneError
from testcloud.core.images import ImageOps
from testcloud.core.infra import InfraOps
from testcloud.core.market import MarketOps
from testcloud.core.objects import (
    DS_FILE,
    DS_IMAGE,
    DS_SYSTEM,
    AddressRange,
    Datastore,
    Marketplace,
    PoolObject,
    User,
    VMTemplate,
    VNet,
)
from testcloud.core.store import Store
from testcloud.core.template import Template
from testcloud.core.validate import check_name, parse_template
from testcloud.core.vms import VMOps
from testcloud.core.vnets import VNetOps

log = logging.getLogger("testcloud")

T = TypeVar("T", bound=PoolObject)


class Cloud(ImageOps, VMOps, VNetOps, MarketOps, DocumentOps, InfraOps):
    def __init__(self, config: CloudConfig) -> None:
        self.config = config
        self.state_dir = config.state_dir
        self.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o700)
        self.lock = threading.RLock()
        self.store = Store(self.state_dir)
        self.pools = self.store.load_all()
        self.counters = self.store.load_counters()
        self.endpoints: dict[str, str] = {}
        self.workers = ThreadPoolExecutor(max_workers=8, thread_name_prefix="testcloud-work")
        self._stop = threading.Event()
        self._engine: threading.Thread | None = None
        self.flow = None  # the OneFlow engine, attached by the launcher
        if not self.pools["user"]:
            self._bootstrap()
        self._init_vms()

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
        self._insert(user, "user")
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
            self._insert(ds, "datastore")
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
        self._insert(public, "market")
        self._insert(local, "market")
        vnet = VNet(id=0, name="testcloud", bridge=BRIDGE, permissions="110100000")
        vnet.template = Template(
            [
                ("BRIDGE", BRIDGE),
                ("BRIDGE_TYPE", "linux"),
                ("DESCRIPTION", "The test bridge: nothing leaves it"),
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
        self._insert(vnet, "vnet")
        self.counters.update({"user": 1, "datastore": 100, "market": 100, "vnet": 1})
        self.store.save_counters(self.counters)

    def password(self) -> str:
        return (self.state_dir / "one_auth").read_text().strip().split(":", 1)[1]

    # ------------------------------------------------------------------ pools
    def _insert(self, obj: PoolObject, kind: str) -> None:
        self.pools[kind][obj.id] = obj
        self.store.save(obj)

    def next_id(self, kind: str) -> int:
        value = self.counters.get(kind, 0)
        self.counters[kind] = value + 1
        self.store.save_counters(self.counters)
        return value

    def save(self, obj: PoolObject) -> None:
        self.store.save(obj)

    def drop(self, obj: PoolObject) -> None:
        self.pools[obj.KIND].pop(obj.id, None)
        self.store.drop(obj)

    def get(self, kind: str, oid: int, obj: str) -> PoolObject:
        found = self.pools[kind].get(oid)
        if found is None:
            raise errors.no_exists(oid, obj)
        return found

    def find_by_name(self, kind: str, name: str) -> PoolObject | None:
        return next((o for o in self.pools[kind].values() if o.name == name), None)

    @staticmethod
    def filter_pool(objects: list[T], filter_flag: int, start: int, end: int) -> list[T]:
        """oned's pool filters: -4 group, -3 mine, -2 all, -1 mine and group, >=0 that user; ids from
        ``start`` to ``end`` (-1: no bound), or a page (``end`` < -1: ``-end`` items from ``start`` on)."""
        if filter_flag < -4:
            raise OneError(errors.RPC_API, "Incorrect filter_flag")
        objects = sorted(objects, key=lambda o: o.id)
        if filter_flag >= 0:
            objects = [o for o in objects if o.uid == filter_flag]
        if end >= -1:
            if start != -1:
                objects = [o for o in objects if o.id >= start and (end == -1 or o.id <= end)]
            return objects
        offset = max(start, 0)
        return objects[offset : offset + (-end)]

    # ------------------------------------------------------------------ authentication
    def authenticate(self, session: str) -> User:
        user_name, _, password = session.partition(":")
        with self.lock:
            user = self.find_by_name("user", user_name)
            digest = hashlib.sha256(password.encode()).hexdigest()
            if user is None or not secrets.compare_digest(digest, user.password_sha256):
                raise OneError(errors.AUTHENTICATION)
            return user

    def token_password(self, uid: int) -> str:
        user = self.pools["user"].get(uid)
        return (user.template.get("TOKEN_PASSWORD") or "") if user else ""

    # ------------------------------------------------------------------ system, datastores
    def system_version(self) -> str:
        return VERSION

    def datastore_space(self, ds: Datastore) -> tuple[int, int, int]:
        """TOTAL_MB, FREE_MB, USED_MB of the filesystem holding the datastore (capped by LIMIT_MB)."""
        path = Path(ds.base_path)
        path.mkdir(parents=True, exist_ok=True)
        usage = shutil.disk_usage(path)
        total, free = usage.total // 2**20, usage.free // 2**20
        used = total - free
        limit = ds.template.get("LIMIT_MB")
        if limit is not None and limit.strip().isdigit():
            images_mb = sum(i.size_mb for i in self.pools["image"].values() if i.datastore_id == ds.id)
            total, free, used = int(limit), max(int(limit) - images_mb, 0), images_mb
        return total, free, used

    def datastore_xml(self, ds: Datastore) -> str:
        images = [i.id for i in self.pools["image"].values() if i.datastore_id == ds.id]
        return ds.to_xml(images, *self.datastore_space(ds))

    def datastorepool_info(self) -> str:
        with self.lock:
            pool = sorted(self.pools["datastore"].values(), key=lambda d: d.id)
            return "<DATASTORE_POOL>" + "".join(self.datastore_xml(ds) for ds in pool) + "</DATASTORE_POOL>"

    def datastore_info(self, oid: int) -> str:
        with self.lock:
            return self.datastore_xml(self.get("datastore", oid, errors.DATASTORE))

    # ------------------------------------------------------------------ VM templates
    def template_allocate(self, text_in: str) -> int:
        tmpl = parse_template(text_in)
        with self.lock:
            name = tmpl.get("NAME") or ""
            reason = check_name(name)
            if reason is None:
                taken = self.find_by_name("template", name)
                if taken is not None:
                    reason = f"NAME is already taken by TEMPLATE {taken.id}."
            if reason:
                raise OneError(errors.INTERNAL, reason)
            tmpl.erase("NAME")
            obj = VMTemplate(id=self.next_id("template"), name=name, regtime=int(time.time()), template=tmpl)
            self._insert(obj, "template")
            return obj.id

    def template_clone(self, oid: int, name: str, recursive: bool) -> int:
        """``TemplateClone``: a copy of the template under a new name (``onetemplate clone``)."""
        with self.lock:
            source: VMTemplate = self.get("template", oid, errors.TEMPLATE)
            if recursive:
                raise errors.internal(
                    "Recursive cloning (copies of the template's images) is not supported by the test cloud"
                )
            copy = source.template.copy()
            copy.replace("NAME", name)
            return self.template_allocate(copy.to_one())

    def template_info(self, oid: int) -> str:
        with self.lock:
            return self.get("template", oid, errors.TEMPLATE).to_xml()

    def template_delete(self, oid: int, recursive: bool = False) -> int:
        """``TemplateDelete``: with ``recursive`` the images its DISKs name by IMAGE_ID go too (as
        ``onetemplate delete --recursive`` and the CLI's export rollback ask); those that cannot be deleted
        are named in the error, the template is gone regardless."""
        with self.lock:
            template: VMTemplate = self.get("template", oid, errors.TEMPLATE)
            self.drop(template)
            if not recursive:
                return oid
            image_ids: set[int] = set()
            for disk in template.template.vectors("DISK"):  # by IMAGE_ID, or by IMAGE name
                raw = (disk.get("IMAGE_ID") or "").strip()
                named = self.find_by_name("image", disk.get("IMAGE") or "") if not raw else None
                if raw.isdigit():
                    image_ids.add(int(raw))
                elif named is not None:
                    image_ids.add(named.id)
            failed = []
            for image_id in sorted(image_ids):
                try:
                    self.image_delete(image_id)
                except OneError:
                    failed.append(str(image_id))
            if failed:  # RequestManagerDelete's TemplateDelete: the template is gone, these images are not
                raise errors.action(f"Cannot delete image: {','.join(failed)}")
            return oid

    def template_update(self, oid: int, text_in: str, append: int) -> int:
        if append not in (0, 1):
            raise OneError(errors.RPC_API, "Wrong update type")
        with self.lock:
            obj: VMTemplate = self.get("template", oid, errors.TEMPLATE)
            new = parse_template(text_in, errors.ACTION)
            new.erase("NAME")
            if append:
                obj.template.merge(new)
            else:
                obj.template = new
            self.save(obj)
            return oid

    def templatepool_info(self, filter_flag: int, start: int, end: int) -> str:
        with self.lock:
            pool = self.filter_pool(list(self.pools["template"].values()), filter_flag, start, end)
            return "<VMTEMPLATE_POOL>" + "".join(t.to_xml() for t in pool) + "</VMTEMPLATE_POOL>"

    # ------------------------------------------------------------------ engine
    def start_engine(self) -> None:
        self._stop.clear()
        self._engine = threading.Thread(target=self._engine_loop, name="testcloud-engine", daemon=True)
        self._engine.start()

    def _engine_loop(self) -> None:
        while not self._stop.wait(self.config.timings.tick):
            try:
                self.tick()
            except Exception:  # the engine must outlive any bug in one step
                log.exception("lifecycle step failed")

    def tick(self) -> None:
        self.tick_vms()  # images and apps change state in their copy workers
        if self.flow is not None:
            self.flow.tick()

    def shutdown(self, keep_guests: bool) -> None:
        """Stop the engine; with ``keep_guests`` the guests keep running for the next start to re-attach,
        otherwise they are stopped and their VMs left POWEROFF (resumable)."""
        self._stop.set()
        if self._engine is not None:
            self._engine.join(timeout=10)
        if not keep_guests:
            self.power_off_all()
        # work not yet started is dropped: it is recorded in the objects and resumes at the next start
        self.workers.shutdown(wait=True, cancel_futures=True)
