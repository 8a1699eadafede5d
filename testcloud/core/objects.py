"""The pool objects of the test cloud and their XML, element for element as oned writes it.

Element order follows oned's ``to_xml`` methods and the XSDs in ``shared/xsd``; numbers are plain text,
strings oned escapes are CDATA, template values are CDATA.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass, field
from typing import Any, ClassVar

from testcloud.core.states import LcmState, VmState
from testcloud.core.template import Template, attribute_xml, cdata, text

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


def ids_xml(tag: str, ids: list[int]) -> str:
    if not ids:
        return f"<{tag}/>"
    return f"<{tag}>" + "".join(f"<ID>{i}</ID>" for i in sorted(ids)) + f"</{tag}>"


@dataclass
class PoolObject:
    """What every pool object has: id, owner, group, name, permissions (9 digits, owner/group/other)."""

    KIND: ClassVar[str] = ""

    id: int
    name: str
    uid: int = 0
    gid: int = 0
    uname: str = "oneadmin"
    gname: str = "oneadmin"
    permissions: str = "110000000"

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
        return (
            "<PERMISSIONS>"
            + "".join(f"<{n}>{d}</{n}>" for n, d in zip(names, self.permissions, strict=True))
            + ("</PERMISSIONS>")
        )

    def owner_xml(self) -> str:
        return (
            f"<ID>{self.id}</ID><UID>{self.uid}</UID><GID>{self.gid}</GID>"
            f"<UNAME>{text(self.uname)}</UNAME><GNAME>{text(self.gname)}</GNAME>"
        )

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
    template: Template = field(default_factory=Template)


@dataclass
class Datastore(PoolObject):
    KIND: ClassVar[str] = "datastore"
    type: int = DS_IMAGE
    ds_mad: str = "fs"
    tm_mad: str = "ssh"
    base_path: str = ""
    template: Template = field(default_factory=Template)

    def to_xml(self, images: list[int], total_mb: int, free_mb: int, used_mb: int) -> str:
        return (
            "<DATASTORE>"
            + self.owner_xml()
            + f"<NAME>{text(self.name)}</NAME>"
            + self.permissions_xml()
            + f"<DS_MAD>{cdata(self.ds_mad)}</DS_MAD><TM_MAD>{cdata(self.tm_mad)}</TM_MAD>"
            + f"<BASE_PATH>{cdata(self.base_path)}</BASE_PATH>"
            + f"<TYPE>{self.type}</TYPE><DISK_TYPE>0</DISK_TYPE>"
            + "<STATE>0</STATE><CLUSTERS><ID>0</ID></CLUSTERS>"
            + f"<TOTAL_MB>{total_mb}</TOTAL_MB><FREE_MB>{free_mb}</FREE_MB><USED_MB>{used_mb}</USED_MB>"
            + ids_xml("IMAGES", images)
            + self.template.to_xml("TEMPLATE")
            + "</DATASTORE>"
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
    template: Template = field(default_factory=Template)

    def to_xml(self) -> str:
        return (
            "<IMAGE>"
            + self.owner_xml()
            + f"<NAME>{text(self.name)}</NAME>"
            + self.permissions_xml()
            + f"<TYPE>{self.type}</TYPE><DISK_TYPE>{self.disk_type}</DISK_TYPE>"
            + f"<PERSISTENT>{self.persistent}</PERSISTENT><REGTIME>{self.regtime}</REGTIME>"
            + f"<MODTIME>{self.modtime}</MODTIME><SOURCE>{cdata(self.source)}</SOURCE>"
            + f"<PATH>{cdata(self.path)}</PATH><FORMAT>{cdata(self.format)}</FORMAT><FS>{cdata(self.fs)}</FS>"
            + f"<SIZE>{self.size_mb}</SIZE><STATE>{self.state}</STATE>"
            + f"<PREV_STATE>{self.prev_state}</PREV_STATE>"
            + f"<RUNNING_VMS>{len(self.vms)}</RUNNING_VMS>"
            + "<CLONING_OPS>0</CLONING_OPS><CLONING_ID>-1</CLONING_ID>"
            + f"<TARGET_SNAPSHOT>-1</TARGET_SNAPSHOT><DATASTORE_ID>{self.datastore_id}</DATASTORE_ID>"
            + f"<DATASTORE>{text(self.datastore)}</DATASTORE>"
            + ids_xml("VMS", self.vms)
            + "<CLONES/>"
            + ids_xml("APP_CLONES", self.app_clones)
            + self.template.to_xml("TEMPLATE")
            + "<SNAPSHOTS><ALLOW_ORPHANS><![CDATA[NO]]></ALLOW_ORPHANS><CURRENT_BASE>-1</CURRENT_BASE>"
            + "<NEXT_SNAPSHOT>0</NEXT_SNAPSHOT></SNAPSHOTS><BACKUP_INCREMENTS/><BACKUP_DISK_IDS/></IMAGE>"
        )


@dataclass
class VMTemplate(PoolObject):
    KIND: ClassVar[str] = "template"
    regtime: int = 0
    template: Template = field(default_factory=Template)

    def to_xml(self) -> str:
        return (
            "<VMTEMPLATE>"
            + self.owner_xml()
            + f"<NAME>{text(self.name)}</NAME>"
            + self.permissions_xml()
            + f"<REGTIME>{self.regtime}</REGTIME>"
            + self.template.to_xml("TEMPLATE")
            + "</VMTEMPLATE>"
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
        head = (
            f"<AR><AR_ID>{cdata(str(self.ar_id))}</AR_ID><IP>{cdata(self.ip)}</IP>"
            f"<MAC>{cdata(self.mac_of(self.ip))}</MAC><NEXT_INDEX>{len(self.leases)}</NEXT_INDEX>"
            f"<SIZE>{self.size}</SIZE><TYPE>{cdata('IP4')}</TYPE>"
        )
        if not extended:
            return head + "</AR>"
        leases = "".join(
            f"<LEASE><IP>{cdata(ip)}</IP><MAC>{cdata(self.mac_of(ip))}</MAC><VM>{vm}</VM></LEASE>"
            for ip, vm in sorted(self.leases.items(), key=lambda item: ipaddress.IPv4Address(item[0]))
        )
        return (
            head + f"<MAC_END>{cdata(self.mac_of(last))}</MAC_END><IP_END>{cdata(last)}</IP_END>"
            f"<USED_LEASES>{len(self.leases)}</USED_LEASES><LEASES>{leases}</LEASES></AR>"
        )


@dataclass
class VNet(PoolObject):
    KIND: ClassVar[str] = "vnet"
    bridge: str = "flbr0"
    vn_mad: str = "bridge"
    template: Template = field(default_factory=Template)
    ars: list[dict] = field(default_factory=list)  # AddressRange fields, kept as dicts for JSON

    def address_ranges(self) -> list[AddressRange]:
        return [AddressRange(**ar) for ar in self.ars]

    def store_ranges(self, ranges: list[AddressRange]) -> None:
        self.ars = [dataclasses.asdict(ar) for ar in ranges]

    def used_leases(self) -> int:
        return sum(len(ar["leases"]) for ar in self.ars)

    def to_xml(self, extended: bool = True) -> str:
        return (
            "<VNET>"
            + self.owner_xml()
            + f"<NAME>{text(self.name)}</NAME>"
            + self.permissions_xml()
            + f"<CLUSTERS><ID>0</ID></CLUSTERS><BRIDGE>{cdata(self.bridge)}</BRIDGE>"
            + f"<BRIDGE_TYPE>{cdata('linux')}</BRIDGE_TYPE><STATE>1</STATE><PREV_STATE>0</PREV_STATE>"
            + f"<PARENT_NETWORK_ID>{cdata('')}</PARENT_NETWORK_ID><TEMPLATE_ID>{cdata('-1')}</TEMPLATE_ID>"
            + f"<VN_MAD>{cdata(self.vn_mad)}</VN_MAD>"
            + f"<PHYDEV>{cdata('')}</PHYDEV><VLAN_ID>{cdata('')}</VLAN_ID>"
            + f"<OUTER_VLAN_ID>{cdata('')}</OUTER_VLAN_ID><VLAN_ID_AUTOMATIC>0</VLAN_ID_AUTOMATIC>"
            + "<OUTER_VLAN_ID_AUTOMATIC>0</OUTER_VLAN_ID_AUTOMATIC>"
            + f"<USED_LEASES>{self.used_leases()}</USED_LEASES><VROUTERS/><UPDATED_VMS/><OUTDATED_VMS/>"
            + "<UPDATING_VMS/><ERROR_VMS/>"
            + self.template.to_xml("TEMPLATE")
            + "<AR_POOL>"
            + "".join(ar.xml(extended) for ar in self.address_ranges())
            + "</AR_POOL></VNET>"
        )


@dataclass
class Marketplace(PoolObject):
    KIND: ClassVar[str] = "market"
    market_mad: str = "http"
    template: Template = field(default_factory=Template)

    def to_xml(self, apps: list[int], total_mb: int, free_mb: int, used_mb: int) -> str:
        return (
            "<MARKETPLACE>"
            + self.owner_xml()
            + f"<NAME>{text(self.name)}</NAME><STATE>0</STATE>"
            + f"<MARKET_MAD>{cdata(self.market_mad)}</MARKET_MAD><ZONE_ID>{cdata('0')}</ZONE_ID>"
            + f"<TOTAL_MB>{total_mb}</TOTAL_MB><FREE_MB>{free_mb}</FREE_MB><USED_MB>{used_mb}</USED_MB>"
            + ids_xml("MARKETPLACEAPPS", apps)
            + self.permissions_xml()
            + self.template.to_xml("TEMPLATE")
            + "</MARKETPLACE>"
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
    template: Template = field(default_factory=Template)

    def to_xml(self) -> str:
        return (
            "<MARKETPLACEAPP>"
            + self.owner_xml()
            + f"<REGTIME>{self.regtime}</REGTIME>"
            + f"<NAME>{text(self.name)}</NAME><ZONE_ID>{cdata('0')}</ZONE_ID>"
            + f"<ORIGIN_ID>{cdata(self.origin_id)}</ORIGIN_ID><SOURCE>{cdata(self.source)}</SOURCE>"
            + f"<MD5>{cdata(self.md5)}</MD5><SIZE>{self.size_mb}</SIZE>"
            + f"<DESCRIPTION>{cdata(self.description)}</DESCRIPTION><VERSION>{cdata(self.version)}</VERSION>"
            + f"<FORMAT>{cdata(self.format)}</FORMAT>"
            + f"<APPTEMPLATE64>{cdata(self.apptemplate64)}</APPTEMPLATE64>"
            + f"<MARKETPLACE_ID>{self.market_id}</MARKETPLACE_ID>"
            + f"<MARKETPLACE>{text(self.market_name)}</MARKETPLACE>"
            + f"<STATE>{self.state}</STATE><TYPE>{self.type}</TYPE>"
            + self.permissions_xml()
            + self.template.to_xml("TEMPLATE")
            + "</MARKETPLACEAPP>"
        )


@dataclass
class Document(PoolObject):
    KIND: ClassVar[str] = "document"
    type: int = DOC_SERVICE
    template: Template = field(default_factory=Template)

    def to_xml(self) -> str:
        return (
            "<DOCUMENT>"
            + self.owner_xml()
            + f"<NAME>{text(self.name)}</NAME><TYPE>{self.type}</TYPE>"
            + self.permissions_xml()
            + self.template.to_xml("TEMPLATE")
            + "</DOCUMENT>"
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
    template: Template = field(default_factory=Template)
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
        return (
            f"<MONITORING><CPU>0</CPU><ID>{self.id}</ID><MEMORY>{memory_kb}</MEMORY><NETRX>0</NETRX>"
            f"<NETTX>0</NETTX><TIMESTAMP>{self.last_poll}</TIMESTAMP></MONITORING>"
        )

    def monitoring_xml_short(self) -> str:
        if self.state != VmState.ACTIVE or self.lcm_state != LcmState.RUNNING:
            return "<MONITORING/>"
        memory_kb = int(self.template.get("MEMORY", "0") or 0) * 1024
        return f"<MONITORING><CPU>0</CPU><MEMORY>{memory_kb}</MEMORY></MONITORING>"

    def history_xml(self, short: bool) -> str:
        if not self.history:
            return "<HISTORY_RECORDS/>"
        records = self.history[-1:] if short else self.history
        parts = []
        for h in records:
            if short:
                parts.append(
                    f"<HISTORY><OID>{self.id}</OID><SEQ>{h['seq']}</SEQ>"
                    + f"<HOSTNAME>{text(h['hostname'])}</HOSTNAME>"
                    f"<HID>{h['hid']}</HID><CID>0</CID><DS_ID>{h['ds_id']}</DS_ID>"
                    f"<VM_MAD>{cdata(h['vm_mad'])}</VM_MAD><TM_MAD>{cdata(h['tm_mad'])}</TM_MAD>"
                    f"<ACTION>{h['action']}</ACTION></HISTORY>"
                )
                continue
            parts.append(
                f"<HISTORY><OID>{self.id}</OID><SEQ>{h['seq']}</SEQ>"
                + f"<HOSTNAME>{text(h['hostname'])}</HOSTNAME>"
                f"<HID>{h['hid']}</HID><CID>0</CID><STIME>{h['stime']}</STIME><ETIME>{h['etime']}</ETIME>"
                f"<VM_MAD>{cdata(h['vm_mad'])}</VM_MAD><TM_MAD>{cdata(h['tm_mad'])}</TM_MAD>"
                f"<DS_ID>{h['ds_id']}</DS_ID><PLAN_ID>-1</PLAN_ID><ACTION_ID>-1</ACTION_ID>"
                f"<PSTIME>{h['pstime']}</PSTIME><PETIME>{h['petime']}</PETIME><RSTIME>{h['rstime']}</RSTIME>"
                f"<RETIME>{h['retime']}</RETIME><ESTIME>{h['estime']}</ESTIME><EETIME>{h['eetime']}</EETIME>"
                f"<ACTION>{h['action']}</ACTION><UID>{h.get('uid', -1)}</UID><GID>{h.get('gid', -1)}</GID>"
                f"<REQUEST_ID>{cdata(str(h.get('request_id', -1)))}</REQUEST_ID></HISTORY>"
            )
        return "<HISTORY_RECORDS>" + "".join(parts) + "</HISTORY_RECORDS>"

    def to_xml(self) -> str:
        """The full VM of one.vm.info and one.vmpool.infoextended."""
        return (
            "<VM>"
            + self.owner_xml()
            + f"<NAME>{text(self.name)}</NAME>"
            + self.permissions_xml()
            + f"<LAST_POLL>{self.last_poll}</LAST_POLL><STATE>{self.state}</STATE>"
            + f"<LCM_STATE>{self.lcm_state}</LCM_STATE><PREV_STATE>{self.prev_state}</PREV_STATE>"
            + f"<PREV_LCM_STATE>{self.prev_lcm_state}</PREV_LCM_STATE><RESCHED>{self.resched}</RESCHED>"
            + f"<STIME>{self.stime}</STIME><ETIME>{self.etime}</ETIME>"
            + f"<DEPLOY_ID>{text(self.deploy_id)}</DEPLOY_ID>"
            + self.monitoring_xml()
            + "<SCHED_ACTIONS/>"
            + self.template.to_xml("TEMPLATE", order=VM_TEMPLATE_ORDER)
            + self.user_template.to_xml("USER_TEMPLATE")
            + self.history_xml(short=False)
            + "<BACKUPS><BACKUP_CONFIG/><BACKUP_IDS/></BACKUPS></VM>"
        )

    def to_xml_short(self) -> str:
        """The VM of one.vmpool.info: no CONTEXT, a few USER_TEMPLATE attributes (no READY)."""
        disks = "".join(
            "<DISK>" + "".join(f"<{k}>{cdata(disk.get(k, ''))}</{k}>" for k in SHORT_DISK) + "</DISK>"
            for disk in self.template.vectors("DISK")
        )
        nics = "".join(self._nic_short(nic) for nic in self.template.vectors("NIC"))
        graphics = self.template.get_vector("GRAPHICS")
        user = "".join(
            attribute_xml(name, value)
            for name in SHORT_USER_TEMPLATE
            if (value := self.user_template.get(name)) is not None and (value or name.startswith("SCHED_"))
        )
        return (
            "<VM>"
            + self.owner_xml()
            + f"<NAME>{text(self.name)}</NAME><LAST_POLL>{self.last_poll}</LAST_POLL>"
            + f"<STATE>{self.state}</STATE><LCM_STATE>{self.lcm_state}</LCM_STATE>"
            + f"<RESCHED>{self.resched}</RESCHED>"
            + f"<STIME>{self.stime}</STIME><ETIME>{self.etime}</ETIME>"
            + f"<DEPLOY_ID>{text(self.deploy_id)}</DEPLOY_ID>"
            + f"<TEMPLATE><CPU>{cdata(self.template.get('CPU', ''))}</CPU>"
            + f"<MEMORY>{cdata(self.template.get('MEMORY', ''))}</MEMORY>"
            + f"<VCPU>{cdata(self.template.get('VCPU', ''))}</VCPU>"
            + disks
            + nics
            + (attribute_xml("GRAPHICS", graphics) if graphics is not None else "")
            + "</TEMPLATE>"
            + self.monitoring_xml_short()
            + (f"<USER_TEMPLATE>{user}</USER_TEMPLATE>" if user else "<USER_TEMPLATE/>")
            + self.history_xml(short=True)
            + "</VM>"
        )

    @staticmethod
    def _nic_short(nic: dict[str, str]) -> str:
        out = "<NIC>"
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
        ):
            if nic.get(key):
                out += f"<{key}>{cdata(nic[key])}</{key}>"
        for key in ("MAC", "NETWORK", "NETWORK_ID", "NIC_ID", "SECURITY_GROUPS"):
            out += f"<{key}>{cdata(nic.get(key, ''))}</{key}>"
        return out + "</NIC>"


POOL_CLASSES: dict[str, type[PoolObject]] = {
    cls.KIND: cls for cls in (User, Datastore, Image, VMTemplate, VNet, Marketplace, MarketApp, Document, VM)
}
