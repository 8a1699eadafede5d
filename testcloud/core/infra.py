"""The fixed infrastructure of the test cloud as oned shows it: cluster 0 ``default``, two hosts, users.

The XML follows ``share/doc/xsd`` (cluster.xsd, host.xsd, user.xsd and their pools) element for element.
``one.user.info`` with id -1 answers for the caller (``UserInfo`` in oned's RequestManagerInfo);
``one.user.update`` replaces or merges the user's TEMPLATE (``RequestManagerUpdateTemplate``), which is where
``SSH_PUBLIC_KEY`` lives for ``$USER[SSH_PUBLIC_KEY]`` in a VM's CONTEXT.
"""

from __future__ import annotations

import os
import time

from testcloud.core import errors
from testcloud.core.images import ImagePool
from testcloud.core.objects import VM, User, ids_xml
from testcloud.core.pool import PoolStore
from testcloud.core.states import VmState
from testcloud.core.template import cdata, text
from testcloud.core.vms import HOSTS, VMPool

CLUSTER_ID, CLUSTER_NAME = 0, "default"
HOST_MONITORED = 2  # Host::HostState MONITORED
QUOTAS = ("DATASTORE_QUOTA", "NETWORK_QUOTA", "VM_QUOTA", "IMAGE_QUOTA")


class InfraPool:
    def __init__(self, db: PoolStore, images: ImagePool, vms: VMPool) -> None:
        self.db = db
        self.images = images
        self.vms = vms

    # ------------------------------------------------------------------ clusters
    def _cluster_xml(self) -> str:
        datastores = [d.id for d in self.db.pools["datastore"].values()]
        vnets = [v.id for v in self.db.pools["vnet"].values()]
        return (
            f"<CLUSTER><ID>{CLUSTER_ID}</ID><NAME>{text(CLUSTER_NAME)}</NAME>"
            + ids_xml("HOSTS", list(HOSTS))
            + ids_xml("DATASTORES", datastores)
            + ids_xml("VNETS", vnets)
            + f"<TEMPLATE><RESERVED_CPU>{cdata('')}</RESERVED_CPU>"
            + f"<RESERVED_MEM>{cdata('')}</RESERVED_MEM></TEMPLATE></CLUSTER>"
        )

    def cluster_info(self, oid: int) -> str:
        with self.db.lock:
            if oid != CLUSTER_ID:
                raise errors.no_exists(oid)
            return self._cluster_xml()

    def clusterpool_info(self) -> str:
        with self.db.lock:
            return "<CLUSTER_POOL>" + self._cluster_xml() + "</CLUSTER_POOL>"

    # ------------------------------------------------------------------ hosts
    def _host_xml(self, host_id: int) -> str:
        name, vm_mad, _ = HOSTS[host_id]
        mad = self.vms.vm_mad(host_id)
        running = [
            vm
            for vm in self.db.pools["vm"].values()
            if isinstance(vm, VM) and vm.state == VmState.ACTIVE and vm.host_id == host_id
        ]
        cpus = os.cpu_count() or 1
        total_cpu = cpus * 100
        page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        total_mem = os.sysconf("SC_PHYS_PAGES") * page // 1024 if hasattr(os, "sysconf") else 0
        cpu_usage = int(sum(float(vm.template.get("CPU") or 0) for vm in running) * 100)
        mem_usage = sum(int(vm.template.get("MEMORY") or 0) for vm in running) * 1024
        system = self.db.pools["datastore"][0]
        total_mb, free_mb, used_mb = self.images.datastore_space(system)
        now = int(time.time())
        return (
            f"<HOST><ID>{host_id}</ID><NAME>{text(name)}</NAME><STATE>{HOST_MONITORED}</STATE>"
            f"<PREV_STATE>{HOST_MONITORED}</PREV_STATE><IM_MAD>{cdata(mad)}</IM_MAD>"
            f"<VM_MAD>{cdata(mad)}</VM_MAD><CLUSTER_ID>{CLUSTER_ID}</CLUSTER_ID>"
            f"<CLUSTER>{text(CLUSTER_NAME)}</CLUSTER>"
            f"<HOST_SHARE><MEM_USAGE>{mem_usage}</MEM_USAGE><CPU_USAGE>{cpu_usage}</CPU_USAGE>"
            f"<TOTAL_MEM>{total_mem}</TOTAL_MEM><TOTAL_CPU>{total_cpu}</TOTAL_CPU>"
            f"<MAX_MEM>{total_mem}</MAX_MEM><MAX_CPU>{total_cpu}</MAX_CPU>"
            f"<RUNNING_VMS>{len(running)}</RUNNING_VMS><VMS_THREAD>1</VMS_THREAD>"
            f"<DATASTORES><DISK_USAGE>0</DISK_USAGE>"
            f"<DS><FREE_MB>{free_mb}</FREE_MB><ID>0</ID><TOTAL_MB>{total_mb}</TOTAL_MB>"
            f"<USED_MB>{used_mb}</USED_MB></DS>"
            f"<FREE_DISK>{free_mb}</FREE_DISK><MAX_DISK>{total_mb}</MAX_DISK><USED_DISK>{used_mb}</USED_DISK>"
            f"</DATASTORES><PCI_DEVICES/><NUMA_NODES/></HOST_SHARE>"
            + ids_xml("VMS", [vm.id for vm in running])
            + f"<TEMPLATE><ARCH>{cdata(os.uname().machine)}</ARCH><CPUSPEED>{cdata('0')}</CPUSPEED>"
            f"<HOSTNAME>{cdata(name)}</HOSTNAME><HYPERVISOR>{cdata(vm_mad)}</HYPERVISOR>"
            f"<IM_MAD>{cdata(mad)}</IM_MAD><VM_MAD>{cdata(mad)}</VM_MAD></TEMPLATE>"
            f"<MONITORING><TIMESTAMP>{now}</TIMESTAMP><ID>{host_id}</ID><CAPACITY>"
            f"<FREE_CPU>{max(total_cpu - cpu_usage, 0)}</FREE_CPU>"
            f"<FREE_MEMORY>{max(total_mem - mem_usage, 0)}</FREE_MEMORY>"
            f"<USED_CPU>{cpu_usage}</USED_CPU><USED_MEMORY>{mem_usage}</USED_MEMORY></CAPACITY>"
            f"<SYSTEM><NETRX>0</NETRX><NETTX>0</NETTX></SYSTEM></MONITORING></HOST>"
        )

    def host_info(self, oid: int) -> str:
        with self.db.lock:
            if oid not in HOSTS:
                raise errors.no_exists(oid)
            return self._host_xml(oid)

    def hostpool_info(self) -> str:
        with self.db.lock:
            return "<HOST_POOL>" + "".join(self._host_xml(h) for h in sorted(HOSTS)) + "</HOST_POOL>"

    # ------------------------------------------------------------------ users
    @staticmethod
    def _user_body(user: User) -> str:
        return (
            f"<ID>{user.id}</ID><GID>{user.gid}</GID><GROUPS><ID>{user.gid}</ID></GROUPS>"
            f"<GNAME>{text(user.gname)}</GNAME><NAME>{text(user.name)}</NAME>"
            f"<PASSWORD>{text(user.password_sha256)}</PASSWORD><AUTH_DRIVER>{text('core')}</AUTH_DRIVER>"
            f"<ENABLED>1</ENABLED>" + user.template.to_xml("TEMPLATE")
        )

    @staticmethod
    def _default_quotas() -> str:
        return "<DEFAULT_USER_QUOTAS>" + "".join(f"<{q}/>" for q in QUOTAS) + "</DEFAULT_USER_QUOTAS>"

    def user_info(self, caller: User, oid: int) -> str:
        with self.db.lock:
            user: User = self.db.get("user", caller.id if oid == -1 else oid, errors.USER)
            return (
                "<USER>"
                + self._user_body(user)
                + "".join(f"<{q}/>" for q in QUOTAS)
                + self._default_quotas()
                + "</USER>"
            )

    def userpool_info(self) -> str:
        with self.db.lock:
            users = sorted(self.db.pools["user"].values(), key=lambda u: u.id)
            return (
                "<USER_POOL>"
                + "".join(f"<USER>{self._user_body(u)}</USER>" for u in users)
                + "".join(f"<QUOTAS><ID>{u.id}</ID></QUOTAS>" for u in users)
                + self._default_quotas()
                + "</USER_POOL>"
            )

    def user_update(self, oid: int, text_in: str, append: int) -> int:
        return self.db.update_template("user", oid, errors.USER, text_in, append).id
