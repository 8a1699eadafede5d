"""The state every pool shares (the role Flower's ``linkstate`` plays): the objects by kind, their
persistent store and id counters, the one lock, the worker threads and the endpoints the cloud serves.

Pools (``images``, ``vms``, ``vnets``, ``market``, ``documents``, ``infra``) each take this object and the
other pools they need, and nothing else; :class:`testcloud.core.cloud.Cloud` composes them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from testcloud.core import errors
from testcloud.core.config import CloudConfig
from testcloud.core.errors import OneError
from testcloud.core.objects import PoolObject
from testcloud.core.store import Store
from testcloud.core.validate import parse_template

T = TypeVar("T", bound=PoolObject)


class PoolStore:
    def __init__(self, config: CloudConfig) -> None:
        self.config = config
        self.state_dir: Path = config.state_dir
        self.lock = threading.RLock()
        self.store = Store(self.state_dir)
        self.pools = self.store.load_all()
        self.counters = self.store.load_counters()
        self.endpoints: dict[str, str] = {}
        self.workers = ThreadPoolExecutor(max_workers=8, thread_name_prefix="testcloud-work")

    def insert(self, obj: PoolObject, kind: str) -> None:
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

    def info_xml(self, kind: str, oid: int, obj: str) -> str:
        """``one.<object>.info``: the object's XML; OpenNebula's "Error getting <obj>" when it is missing."""
        with self.lock:
            return self.get(kind, oid, obj).to_xml()

    def pool_xml(
        self,
        root: str,
        objects: Iterable[T],
        filter_flag: int,
        start: int,
        end: int,
        render: Callable[[T], str] = lambda o: o.to_xml(),
    ) -> str:
        """``one.<object>pool.info``: ``objects`` (read under the lock) filtered as oned does, in <root>."""
        with self.lock:
            pool = self.filter_pool(list(objects), filter_flag, start, end)
            return f"<{root}>" + "".join(render(o) for o in pool) + f"</{root}>"

    def find_by_name(self, kind: str, name: str) -> PoolObject | None:
        return next((o for o in self.pools[kind].values() if o.name == name), None)

    def update_template(
        self, kind: str, oid: int, obj: str, text_in: str, append: int, attribute: str = "template"
    ) -> PoolObject:
        """RequestManagerUpdateTemplate (``one.<object>.update``): ``text_in`` replaces (0) or is merged into
        (1) the object's ``attribute`` (TEMPLATE, or a VM's USER_TEMPLATE); NAME never changes by it."""
        if append not in (0, 1):
            raise OneError(errors.RPC_API, "Wrong update type")
        with self.lock:
            found = self.get(kind, oid, obj)
            new = parse_template(text_in, errors.ACTION)
            if kind == "template":
                new.erase("NAME")
            if append:
                getattr(found, attribute).merge(new)
            else:
                setattr(found, attribute, new)
            self.save(found)
            return found

    def token_password(self, uid: int) -> str:
        user = self.pools["user"].get(uid)
        return (user.template.get("TOKEN_PASSWORD") or "") if user else ""

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
