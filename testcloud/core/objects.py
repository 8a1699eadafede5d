"""The pool objects of the test cloud and their XML, element for element as oned writes it.

Element order follows oned's ``to_xml`` methods and the XSDs in ``shared/xsd``; numbers are plain text,
strings oned escapes are CDATA, template values are CDATA.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

from testcloud.core.states import LcmState, VmState
from testcloud.core.template import CData, Template, attribute_xml, element, elements

# Image states and types
IMG_INIT, IMG_READY, IMG_USED, IMG_DISABLED, IMG_LOCKED, IMG_ERROR = 0, 1, 2, 3, 4, 5
IMG_CLONE, IMG_DELETE, IMG_USED_PERS, IMG_LOCKED_USED, IMG_LOCKED_USED_PERS = 6, 7, 8, 9, 10
IMAGE_STATE_NAMES = [
    "INIT",
    "READY",
    "USED",
    "DISABLED",
    "LOCKED",
    "ERROR",
    "CLONE",
    "DELETE",
    "USED_PERS",
    "LOCKED_USED",
    "LOCKED_USED_PERS",
]
IMAGE_TYPES = {
    "OS": 0,
    "CDROM": 1,
    "DATABLOCK": 2,
    "KERNEL": 3,
    "RAMDISK": 4,
    "CONTEXT": 5,
    "BACKUP": 6,
    "FILESYSTEM": 7,
}
IMAGE_TYPE_NAMES = {number: name for name, number in IMAGE_TYPES.items()}

# Datastore types, marketplace app states and types
DS_IMAGE, DS_SYSTEM, DS_FILE = 0, 1, 2
APP_INIT, APP_READY, APP_LOCKED, APP_ERROR, APP_DISABLED = 0, 1, 2, 3, 4
APP_IMAGE, APP_VMTEMPLATE, APP_SERVICE_TEMPLATE = 1, 2, 3

DOC_SERVICE, DOC_SERVICE_TEMPLATE = 100, 101


class Space(NamedTuple):
    """A datastore's or marketplace's size in MB."""

    total_mb: int
    free_mb: int
    used_mb: int

    def xml(self) -> list[tuple[str, object]]:
        return [("TOTAL_MB", self.total_mb), ("FREE_MB", self.free_mb), ("USED_MB", self.used_mb)]


def ids_xml(tag: str, ids: list[int]) -> str:
    return elements((tag, [("ID", i) for i in sorted(ids)] if ids else None))


@dataclass
class PoolObject:
    """What every pool object has: id, owner, group, name, permissions (9 digits, owner/group/other) and
    its TEMPLATE."""

    KIND: ClassVar[str] = ""

    id: int
    name: str
    uid: int = 0
    gid: int = 0
    uname: str = "oneadmin"
    gname: str = "oneadmin"
    permissions: str = "110000000"
    template: Template = field(default_factory=Template)

    def permissions_xml(self) -> str:
        names = [
            "OWNER_U",
            "OWNER_M",
            "OWNER_A",
            "GROUP_U",
            "GROUP_M",
            "GROUP_A",
            "OTHER_U",
            "OTHER_M",
            "OTHER_A",
        ]
        return element("PERMISSIONS", *zip(names, self.permissions, strict=True))

    def owner_xml(self) -> str:
        return elements(*self.fields_xml("id", "uid", "gid", "uname", "gname"))

    def head_xml(self) -> str:
        """ID, owner, NAME and PERMISSIONS: how oned opens most pool objects."""
        return elements(self.owner_xml(), ("NAME", self.name), self.permissions_xml())

    def fields_xml(self, *names: str) -> list[tuple[str, object]]:
        """One element a field, named as the field upper-cased: ``reg_time`` is ``<REG_TIME>``."""
        return [(name.upper(), getattr(self, name)) for name in names]

    def cdata_xml(self, *names: str) -> list[tuple[str, object]]:
        """Like :meth:`fields_xml`, the values written as CDATA (the strings oned escapes)."""
        return [(name.upper(), CData(getattr(self, name))) for name in names]

    # ------------------------------------------------------------- persistence
    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name.startswith("_"):
                continue
            value = getattr(self, f.name)
            data[f.name] = value.to_json() if isinstance(value, Template) else value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PoolObject:
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name.startswith("_") or f.name not in data:
                continue
            value = data[f.name]
            if f.type in ("Template", Template):
                value = Template.from_json(value)
            kwargs[f.name] = value
        return cls(**kwargs)


@dataclass
class User(PoolObject):
    KIND: ClassVar[str] = "user"
    password_sha256: str = ""


@dataclass
class Datastore(PoolObject):
    KIND: ClassVar[str] = "datastore"
    type: int = DS_IMAGE
    ds_mad: str = "fs"
    tm_mad: str = "ssh"
    base_path: str = ""

    def to_xml(self, images: list[int], space: Space) -> str:
        return element(
            "DATASTORE",
            self.head_xml(),
            *self.cdata_xml("ds_mad", "tm_mad", "base_path"),
            ("TYPE", self.type),
            ("DISK_TYPE", 0),
            ("STATE", 0),
            ("CLUSTERS", [("ID", 0)]),
            *space.xml(),
            ids_xml("IMAGES", images),
            self.template.to_xml("TEMPLATE"),
        )


@dataclass
class Image(PoolObject):
    KIND: ClassVar[str] = "image"
    type: int = 0
    disk_type: int = 0
    persistent: int = 0
    regtime: int = 0
    modtime: int = 0
    source: str = ""
    path: str = ""
    format: str = ""
    fs: str = ""
    size_mb: int = 0
    state: int = IMG_LOCKED
    prev_state: int = IMG_INIT
    vms: list[int] = field(default_factory=list)
    app_clones: list[int] = field(default_factory=list)
    datastore_id: int = 1
    datastore: str = "default"

    def to_xml(self) -> str:
        return element(
            "IMAGE",
            self.head_xml(),
            *self.fields_xml("type", "disk_type", "persistent", "regtime", "modtime"),
            *self.cdata_xml("source", "path", "format", "fs"),
            ("SIZE", self.size_mb),
            *self.fields_xml("state", "prev_state"),
            ("RUNNING_VMS", len(self.vms)),
            ("CLONING_OPS", 0),
            ("CLONING_ID", -1),
            ("TARGET_SNAPSHOT", -1),
            *self.fields_xml("datastore_id", "datastore"),
            ids_xml("VMS", self.vms),
            ("CLONES", None),
            ids_xml("APP_CLONES", self.app_clones),
            self.template.to_xml("TEMPLATE"),
            ("SNAPSHOTS", [("ALLOW_ORPHANS", CData("NO")), ("CURRENT_BASE", -1), ("NEXT_SNAPSHOT", 0)]),
            ("BACKUP_INCREMENTS", None),
            ("BACKUP_DISK_IDS", None),
        )


@dataclass
class VMTemplate(PoolObject):
    KIND: ClassVar[str] = "template"
    regtime: int = 0

    def to_xml(self) -> str:
        return element(
            "VMTEMPLATE",
            self.head_xml(),
            ("REGTIME", self.regtime),
            self.template.to_xml("TEMPLATE"),
        )


@dataclass
class AddressRange:
    ar_id: int
    ip: str
    size: int
    leases: dict[str, int] = field(default_factory=dict)  # ip -> vm id

    def addresses(self) -> list[str]:
        first = ipaddress.IPv4Address(self.ip)
        return [str(first + offset) for offset in range(self.size)]

    @staticmethod
    def mac_of(ip: str) -> str:
        """oned's default MAC: prefix 02:00, then the four bytes of the IPv4 address."""
        octets = ipaddress.IPv4Address(ip).packed
        return "02:00:" + ":".join(f"{b:02x}" for b in octets)

    def xml(self, extended: bool) -> str:
        last = str(ipaddress.IPv4Address(self.ip) + self.size - 1)
        head = [
            ("AR_ID", CData(str(self.ar_id))),
            ("IP", CData(self.ip)),
            ("MAC", CData(self.mac_of(self.ip))),
            ("NEXT_INDEX", len(self.leases)),
            ("SIZE", self.size),
            ("TYPE", CData("IP4")),
        ]
        if not extended:
            return element("AR", *head)
        leases = [
            ("LEASE", [("IP", CData(ip)), ("MAC", CData(self.mac_of(ip))), ("VM", vm)])
            for ip, vm in sorted(self.leases.items(), key=lambda item: ipaddress.IPv4Address(item[0]))
        ]
        return element(
            "AR",
            *head,
            ("MAC_END", CData(self.mac_of(last))),
            ("IP_END", CData(last)),
            ("USED_LEASES", len(self.leases)),
            ("LEASES", leases),
        )


@dataclass
class VNet(PoolObject):
    KIND: ClassVar[str] = "vnet"
    bridge: str = "flbr0"
    vn_mad: str = "bridge"
    ars: list[dict] = field(default_factory=list)  # AddressRange fields, kept as dicts for JSON

    def address_ranges(self) -> list[AddressRange]:
        return [AddressRange(**ar) for ar in self.ars]

    def store_ranges(self, ranges: list[AddressRange]) -> None:
        self.ars = [dataclasses.asdict(ar) for ar in ranges]

    def used_leases(self) -> int:
        return sum(len(ar["leases"]) for ar in self.ars)

    def to_xml(self, extended: bool = True) -> str:
        return element(
            "VNET",
            self.head_xml(),
            ("CLUSTERS", [("ID", 0)]),
            ("BRIDGE", CData(self.bridge)),
            ("BRIDGE_TYPE", CData("linux")),
            ("STATE", 1),
            ("PREV_STATE", 0),
            ("PARENT_NETWORK_ID", CData("")),
            ("TEMPLATE_ID", CData("-1")),
            ("VN_MAD", CData(self.vn_mad)),
            ("PHYDEV", CData("")),
            ("VLAN_ID", CData("")),
            ("OUTER_VLAN_ID", CData("")),
            ("VLAN_ID_AUTOMATIC", 0),
            ("OUTER_VLAN_ID_AUTOMATIC", 0),
            ("USED_LEASES", self.used_leases()),
            *(
                (name, None)
                for name in ("VROUTERS", "UPDATED_VMS", "OUTDATED_VMS", "UPDATING_VMS", "ERROR_VMS")
            ),
            self.template.to_xml("TEMPLATE"),
            ("AR_POOL", [ar.xml(extended) for ar in self.address_ranges()]),
        )


@dataclass
class Marketplace(PoolObject):
    KIND: ClassVar[str] = "market"
    market_mad: str = "http"

    def to_xml(self, apps: list[int], space: Space) -> str:
        return element(
            "MARKETPLACE",
            self.owner_xml(),
            ("NAME", self.name),
            ("STATE", 0),
            ("MARKET_MAD", CData(self.market_mad)),
            ("ZONE_ID", CData("0")),
            *space.xml(),
            ids_xml("MARKETPLACEAPPS", apps),
            self.permissions_xml(),
            self.template.to_xml("TEMPLATE"),
        )


@dataclass
class MarketApp(PoolObject):
    KIND: ClassVar[str] = "marketapp"
    regtime: int = 0
    origin_id: str = "-1"
    source: str = ""
    md5: str = ""
    size_mb: int = 0
    description: str = ""
    version: str = "0.0"
    format: str = ""
    apptemplate64: str = ""
    market_id: int = 1
    market_name: str = ""
    state: int = APP_LOCKED
    type: int = APP_IMAGE

    def to_xml(self) -> str:
        return element(
            "MARKETPLACEAPP",
            self.owner_xml(),
            *self.fields_xml("regtime", "name"),
            ("ZONE_ID", CData("0")),
            *self.cdata_xml("origin_id", "source", "md5"),
            ("SIZE", self.size_mb),
            *self.cdata_xml("description", "version", "format", "apptemplate64"),
            ("MARKETPLACE_ID", self.market_id),
            ("MARKETPLACE", self.market_name),
            *self.fields_xml("state", "type"),
            self.permissions_xml(),
            self.template.to_xml("TEMPLATE"),
        )


@dataclass
class Document(PoolObject):
    KIND: ClassVar[str] = "document"
    type: int = DOC_SERVICE

    def to_xml(self) -> str:
        return element(
            "DOCUMENT",
            self.owner_xml(),
            ("NAME", self.name),
            ("TYPE", self.type),
            self.permissions_xml(),
            self.template.to_xml("TEMPLATE"),
        )


# The VM TEMPLATE element: its children in the order vm.xsd fixes, and which of them are strings.
VM_TEMPLATE_ORDER = [
    "AUTOMATIC_DS_REQUIREMENTS",
    "AUTOMATIC_NIC_REQUIREMENTS",
    "AUTOMATIC_REQUIREMENTS",
    "CLONING_TEMPLATE_ID",
    "CONTEXT",
    "CPU",
    "CPU_COST",
    "DISK",
    "DISK_COST",
    "EMULATOR",
    "FEATURES",
    "HYPERV_OPTIONS",
    "GRAPHICS",
    "VIDEO",
    "IMPORTED",
    "INPUT",
    "MEMORY",
    "MEMORY_COST",
    "MEMORY_MAX",
    "MEMORY_SLOTS",
    "MEMORY_RESIZE_MODE",
    "NIC",
    "NIC_ALIAS",
    "NIC_DEFAULT",
    "NUMA_NODE",
    "OS",
    "PCI",
    "QEMU_GA_EXEC",
    "RAW",
    "SECURITY_GROUP_RULE",
    "SNAPSHOT",
    "SPICE_OPTIONS",
    "SUBMIT_ON_HOLD",
    "TEMPLATE_ID",
    "TM_MAD_SYSTEM",
    "TOPOLOGY",
    "TPM",
    "MEMORY_ENCRYPTION",
    "VCPU",
    "VCPU_MAX",
    "VMGROUP",
    "VMID",
    "VROUTER_ID",
    "VROUTER_KEEPALIVED_ID",
    "VROUTER_KEEPALIVED_PASSWORD",
    "SCHED_ACTION",
]
# User-given attributes oned moves into TEMPLATE: vectors (anyType in vm.xsd) and single strings.
VM_TEMPLATE_VECTORS = {
    "CONTEXT",
    "DISK",
    "FEATURES",
    "GRAPHICS",
    "HYPERV_OPTIONS",
    "INPUT",
    "NIC",
    "NIC_DEFAULT",
    "NUMA_NODE",
    "OS",
    "RAW",
    "SPICE_OPTIONS",
    "TOPOLOGY",
}
VM_TEMPLATE_SINGLES = {
    "CPU",
    "CPU_COST",
    "DISK_COST",
    "EMULATOR",
    "MEMORY",
    "MEMORY_COST",
    "MEMORY_MAX",
    "MEMORY_SLOTS",
    "MEMORY_RESIZE_MODE",
    "VCPU",
    "VCPU_MAX",
    "CLONING_TEMPLATE_ID",
}
VM_TEMPLATE_ONCE = {
    "CONTEXT",
    "FEATURES",
    "GRAPHICS",
    "HYPERV_OPTIONS",
    "INPUT",
    "NIC_DEFAULT",
    "NUMA_NODE",
    "OS",
    "RAW",
    "SPICE_OPTIONS",
    "TOPOLOGY",
}
# What the short VM of vmpool.info keeps of USER_TEMPLATE (VirtualMachineTemplate::to_xml_short)
SHORT_USER_TEMPLATE = [
    "LABELS",
    "ERROR",
    "SCHED_MESSAGE",
    "SCHED_RANK",
    "SCHED_DS_RANK",
    "SCHED_REQUIREMENTS",
    "SCHED_DS_REQUIREMENTS",
    "USER_PRIORITY",
]
SHORT_DISK = [
    "DISK_ID",
    "DATASTORE",
    "DATASTORE_ID",
    "IMAGE",
    "IMAGE_ID",
    "SIZE",
    "TYPE",
    "CLONE",
    "CLONE_TARGET",
    "LN_TARGET",
    "DISK_SNAPSHOT_TOTAL_SIZE",
]


@dataclass
class VM(PoolObject):
    KIND: ClassVar[str] = "vm"
    state: int = VmState.PENDING
    lcm_state: int = LcmState.LCM_INIT
    prev_state: int = VmState.PENDING
    prev_lcm_state: int = LcmState.LCM_INIT
    resched: int = 0
    stime: int = 0
    etime: int = 0
    deploy_id: str = ""
    last_poll: int = 0
    user_template: Template = field(default_factory=Template)
    history: list[dict] = field(default_factory=list)
    created_by: int = 0
    host_id: int = -1
    # work in progress of the lifecycle engine (persisted so a restart resumes it)
    pending_op: str = ""
    op_since: float = 0.0
    op_hard: bool = False

    def set_state(self, state: int, lcm_state: int = LcmState.LCM_INIT) -> None:
        self.prev_state, self.prev_lcm_state = self.state, self.lcm_state
        self.state, self.lcm_state = state, lcm_state

    def state_str(self) -> str:
        if self.state == VmState.ACTIVE:
            return LcmState(self.lcm_state).name
        return VmState(self.state).name

    def monitoring_xml(self) -> str:
        if self.state != VmState.ACTIVE or self.lcm_state != LcmState.RUNNING:
            return "<MONITORING/>"
        memory_kb = int(self.template.get("MEMORY", "0") or 0) * 1024
        return element(
            "MONITORING",
            ("CPU", 0),
            ("ID", self.id),
            ("MEMORY", memory_kb),
            ("NETRX", 0),
            ("NETTX", 0),
            ("TIMESTAMP", self.last_poll),
        )

    def monitoring_xml_short(self) -> str:
        if self.state != VmState.ACTIVE or self.lcm_state != LcmState.RUNNING:
            return "<MONITORING/>"
        memory_kb = int(self.template.get("MEMORY", "0") or 0) * 1024
        return element("MONITORING", ("CPU", 0), ("MEMORY", memory_kb))

    def history_xml(self, short: bool) -> str:
        if not self.history:
            return "<HISTORY_RECORDS/>"
        records = self.history[-1:] if short else self.history
        return element("HISTORY_RECORDS", *(("HISTORY", self._history_parts(h, short)) for h in records))

    def _history_parts(self, h: dict[str, Any], short: bool) -> list[tuple[str, object]]:
        head = [
            ("OID", self.id),
            ("SEQ", h["seq"]),
            ("HOSTNAME", h["hostname"]),
            ("HID", h["hid"]),
            ("CID", 0),
        ]
        mads = [("VM_MAD", CData(h["vm_mad"])), ("TM_MAD", CData(h["tm_mad"]))]
        if short:
            return [*head, ("DS_ID", h["ds_id"]), *mads, ("ACTION", h["action"])]
        times = [
            (name.upper(), h[name]) for name in ("pstime", "petime", "rstime", "retime", "estime", "eetime")
        ]
        return [
            *head,
            ("STIME", h["stime"]),
            ("ETIME", h["etime"]),
            *mads,
            ("DS_ID", h["ds_id"]),
            ("PLAN_ID", -1),
            ("ACTION_ID", -1),
            *times,
            ("ACTION", h["action"]),
            ("UID", h.get("uid", -1)),
            ("GID", h.get("gid", -1)),
            ("REQUEST_ID", CData(str(h.get("request_id", -1)))),
        ]

    def to_xml(self) -> str:
        """The full VM of one.vm.info and one.vmpool.infoextended."""
        return element(
            "VM",
            self.head_xml(),
            *self.fields_xml("last_poll", "state", "lcm_state", "prev_state", "prev_lcm_state"),
            *self.fields_xml("resched", "stime", "etime", "deploy_id"),
            self.monitoring_xml(),
            ("SCHED_ACTIONS", None),
            self.template.to_xml("TEMPLATE", order=VM_TEMPLATE_ORDER),
            self.user_template.to_xml("USER_TEMPLATE"),
            self.history_xml(short=False),
            ("BACKUPS", [("BACKUP_CONFIG", None), ("BACKUP_IDS", None)]),
        )

    def to_xml_short(self) -> str:
        """The VM of one.vmpool.info: no CONTEXT, a few USER_TEMPLATE attributes (no READY)."""
        disks = elements(
            *(
                ("DISK", [(k, CData(disk.get(k, ""))) for k in SHORT_DISK])
                for disk in self.template.vectors("DISK")
            )
        )
        nics = "".join(self._nic_short(nic) for nic in self.template.vectors("NIC"))
        graphics = self.template.get_vector("GRAPHICS")
        user = "".join(
            attribute_xml(name, value)
            for name in SHORT_USER_TEMPLATE
            if (value := self.user_template.get(name)) is not None and (value or name.startswith("SCHED_"))
        )
        template = [(name, CData(self.template.get(name, ""))) for name in ("CPU", "MEMORY", "VCPU")]
        return element(
            "VM",
            self.owner_xml(),
            *self.fields_xml(
                "name", "last_poll", "state", "lcm_state", "resched", "stime", "etime", "deploy_id"
            ),
            (
                "TEMPLATE",
                [*template, disks, nics, attribute_xml("GRAPHICS", graphics) if graphics is not None else ""],
            ),
            self.monitoring_xml_short(),
            ("USER_TEMPLATE", [user] if user else None),
            self.history_xml(short=True),
        )

    @staticmethod
    def _nic_short(nic: dict[str, str]) -> str:
        given = [
            (key, CData(nic[key]))
            for key in (
                "IP",
                "EXTERNAL_IP",
                "IP6",
                "IP6_ULA",
                "IP6_LINK",
                "IP6_GLOBAL",
                "NETWORK_MODE",
                "SCHED_REQUIREMENTS",
                "SCHED_RANK",
            )
            if nic.get(key)
        ]
        always = ("MAC", "NETWORK", "NETWORK_ID", "NIC_ID", "SECURITY_GROUPS")
        return element("NIC", *given, *((key, CData(nic.get(key, ""))) for key in always))


POOL_CLASSES: dict[str, type[PoolObject]] = {
    cls.KIND: cls for cls in (User, Datastore, Image, VMTemplate, VNet, Marketplace, MarketApp, Document, VM)
}
