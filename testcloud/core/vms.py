"""Virtual machines: creation as ``VirtualMachine::insert`` does it, one.vm.action with the
DispatchManager's state checks, and the lifecycle engine that walks the LCM states in time:

PENDING -> PROLOG -> BOOT -> RUNNING;  terminate: SHUTDOWN -> EPILOG -> DONE;  hold/release; poweroff,
undeploy, stop, suspend and resume through their own transient states. The guest itself belongs to
the VM driver of the host the VM is deployed on.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from testcloud.core import context as ctx
from testcloud.core import errors
from testcloud.core.errors import OneError
from testcloud.core.images import ImagePool
from testcloud.core.objects import (
    IMG_LOCKED_USED,
    VM,
    VM_TEMPLATE_ONCE,
    VM_TEMPLATE_SINGLES,
    VM_TEMPLATE_VECTORS,
    Image,
    VMTemplate,
)
from testcloud.core.pool import PoolStore
from testcloud.core.states import FAILURE_LCM_STATES, LcmState, VmState
from testcloud.core.template import Template
from testcloud.core.validate import check_name, parse_template
from testcloud.core.vnets import VNetPool
from testcloud.drivers.base import ContextSpec, DiskSpec, GuestState, LaunchSpec, NicSpec, VMDriver
from testcloud.drivers.loader import DriverUnavailable, load_driver

log = logging.getLogger("testcloud")

# hosts: id -> (name, VM_MAD, driver used when the cloud runs with driver="auto")
HOSTS = {0: ("nspawn", "lxc", "container"), 1: ("qemu", "kvm", "qemu")}

# history ACTION numbers (VMActions::Action)
A_NONE, A_UNDEPLOY, A_UNDEPLOY_HARD, A_STOP, A_SUSPEND = 0, 5, 6, 9, 10
A_POWEROFF, A_POWEROFF_HARD, A_TERMINATE, A_TERMINATE_HARD = 19, 20, 27, 28

PROLOG_TO_BOOT = {
    LcmState.PROLOG: LcmState.BOOT,
    LcmState.PROLOG_UNDEPLOY: LcmState.BOOT_UNDEPLOY,
    LcmState.PROLOG_RESUME: LcmState.BOOT_STOPPED,
}
BOOT_STATES = {
    LcmState.BOOT,
    LcmState.BOOT_UNDEPLOY,
    LcmState.BOOT_STOPPED,
    LcmState.BOOT_POWEROFF,
    LcmState.BOOT_SUSPENDED,
    LcmState.BOOT_UNKNOWN,
}
STOPPING_STATES = {
    LcmState.SHUTDOWN,
    LcmState.SHUTDOWN_POWEROFF,
    LcmState.SHUTDOWN_UNDEPLOY,
    LcmState.SAVE_STOP,
    LcmState.SAVE_SUSPEND,
    LcmState.CLEANUP_DELETE,
}
RUNNING_POLL_S = 2.0  # how often a running guest is asked whether it still runs
BOOT_POLL_S = 0.2  # and a booting one whether it is up

_INT_PREFIX = re.compile(r"^\s*[+-]?\d+")
_FLOAT_PREFIX = re.compile(r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def cpp_long(value: str | None) -> int | None:
    """What ``istringstream >> long`` reads from an attribute (a leading integer), or None."""
    match = _INT_PREFIX.match(value or "")
    return int(match.group(0)) if match else None


def cpp_float(value: str | None) -> float | None:
    match = _FLOAT_PREFIX.match(value or "")
    return float(match.group(0)) if match else None


# VirtualMachine::updateconf: the sections and the attributes of each it changes (VirtualMachineTemplate::
# UPDATECONF_ATTRS, as `onevm updateconf` lists them in src/cli/onevm); CONTEXT apart, any value
UPDATECONF_ATTRS: dict[str, tuple[str, ...]] = {
    "OS": (
        "ARCH", "MACHINE", "KERNEL", "INITRD", "BOOTLOADER", "BOOT", "KERNEL_CMD", "ROOT", "SD_DISK_BUS",
        "UUID", "FIRMWARE", "FIRMWARE_FORMAT",
    ),
    "FEATURES": (
        "ACPI", "PAE", "APIC", "LOCALTIME", "HYPERV", "GUEST_AGENT", "VIRTIO_SCSI_QUEUES",
        "VIRTIO_BLK_QUEUES", "IOTHREADS", "MIGRATE_AUTO_CONVERGE", "MIGRATE_COMPRESSED",
    ),
    "INPUT": ("TYPE", "BUS"),
    "GRAPHICS": ("TYPE", "LISTEN", "PASSWD", "KEYMAP", "COMMAND"),
    "VIDEO": ("TYPE", "IOMMU", "ATS", "VRAM", "RESOLUTION"),
    "RAW": ("DATA", "DATA_VMX", "TYPE", "VALIDATE"),
    "CPU_MODEL": ("MODEL", "FEATURES"),
}  # fmt: skip
UPDATECONF_SECTIONS = tuple(UPDATECONF_ATTRS)
UPDATECONF_STATES = {
    VmState.PENDING,
    VmState.HOLD,
    VmState.POWEROFF,
    VmState.UNDEPLOYED,
    VmState.CLONING,
    VmState.CLONING_FAILURE,
}
UPDATECONF_LCM_STATES = {
    LcmState.LCM_INIT,
    LcmState.PROLOG,
    LcmState.RUNNING,
    LcmState.EPILOG,
    LcmState.SHUTDOWN,
    15,
    LcmState.SHUTDOWN_POWEROFF,
    LcmState.CLEANUP_DELETE,
}
UPDATECONF_LCM_STATES |= {
    27,
    LcmState.SHUTDOWN_UNDEPLOY,
    LcmState.EPILOG_UNDEPLOY,
    LcmState.PROLOG_UNDEPLOY,
    33,
    34,
    LcmState.BOOT_FAILURE,
}
UPDATECONF_LCM_STATES |= {LcmState.PROLOG_FAILURE, 40, 42, 43, 44, 47, 50, 52, 53, 54}


def _updateconf_allowed(vm: VM) -> bool:
    if vm.state == VmState.ACTIVE:
        return vm.lcm_state in UPDATECONF_LCM_STATES
    return vm.state in UPDATECONF_STATES


def _replace_vector_values(old: Template, new: Template, name: str, append: bool) -> None:
    """oned's ``replace_vector_values``: a section absent from ``new`` goes (unless appending), a new one is
    taken (its known attributes), an existing one takes the new values of its known attributes and, unless
    appending, loses the known ones not given; attributes oned does not update are left alone."""
    known = UPDATECONF_ATTRS[name]
    given = new.get_vector(name)
    new_attr = {k: v for k, v in given.items() if k in known} if given is not None else None
    old_attr = old.get_vector(name)
    if new_attr is None:
        if not append:
            old.erase(name)
    elif old_attr is None:
        old.add(name, new_attr)
    else:
        merged = dict(old_attr)
        for key in known:
            if key in new_attr:
                merged[key] = new_attr[key]
            elif not append:
                merged.pop(key, None)
        old.replace(name, merged)


def wrong_state(action: str, vm: VM) -> OneError:
    return errors.action(
        f'Error performing action "{action}": This action is not available for state {vm.state_str()}'
    )


class VMPool:
    def __init__(self, db: PoolStore, images: ImagePool, vnets: VNetPool) -> None:
        self.db = db
        self.images = images
        self.vnets = vnets
        self._driver_cache: dict[str, VMDriver] = {}
        self._last_running_poll: dict[int, float] = {}

    def resume(self) -> None:
        """At start: carry on with the work the VMs recorded (the images' and apps' copies resume first)."""
        for vm in self.db.pools["vm"].values():
            assert isinstance(vm, VM)
            if vm.state != VmState.ACTIVE:
                continue
            if vm.pending_op in ("prolog",):
                self._submit(vm, "prolog", self._prolog_work)
            elif vm.pending_op == "launch":
                self._submit(vm, "launch", self._launch_work)
            elif vm.pending_op == "stop":
                self._submit(vm, "stop", self._stop_work)
            elif vm.lcm_state in BOOT_STATES | {LcmState.RUNNING, LcmState.UNKNOWN} and vm.pending_op in (
                "",
                "launched",
                "reboot",
            ):
                self._submit(vm, "recover", self._recover_work)

    # ------------------------------------------------------------------ drivers and hosts
    def vm_mad(self, host_id: int) -> str:
        return "dummy" if self.db.config.driver == "dummy" else HOSTS[host_id][1]

    def driver_for(self, host_id: int) -> VMDriver:
        name = HOSTS[host_id][2] if self.db.config.driver == "auto" else self.db.config.driver
        with self.db.lock:
            driver = self._driver_cache.get(name)
            if driver is None:
                driver = load_driver(name, self.db.state_dir / "drivers" / name)
                self._driver_cache[name] = driver
            return driver

    @staticmethod
    def pick_host(vm: VM) -> int:
        requirements = vm.user_template.get("SCHED_REQUIREMENTS") or ""
        if re.search(r'HYPERVISOR\s*=\s*\\?"?kvm\\?"?', requirements, re.IGNORECASE):
            return 1
        if re.search(r'(HOSTNAME\s*=\s*\\?"?qemu|\bID\s*=\s*\\?"?1\b)', requirements):
            return 1
        return 0

    def vm_dir(self, vm_id: int) -> Path:
        return self.db.state_dir / "vms" / str(vm_id)

    # ------------------------------------------------------------------ creation
    def vm_allocate(self, text_in: str, hold: bool = False) -> int:
        tmpl = parse_template(text_in)
        with self.db.lock:
            try:
                return self._create_vm(tmpl, hold).id
            except OneError as error:  # VirtualMachineAllocateAPI answers a refused VM with INTERNAL
                if error.code == errors.ALLOCATE:
                    raise errors.internal(error.reason) from None
                raise

    def template_instantiate(self, tid: int, name: str, hold: bool, extra: str, persistent: bool) -> int:
        with self.db.lock:
            source: VMTemplate = self.db.get("template", tid, errors.TEMPLATE)
            if persistent:
                raise errors.internal(
                    "Persistent instantiation (a private copy of template and images) "
                    "is not supported by the test cloud"
                )
            tmpl = source.template.copy()
            if extra:
                extra_tmpl = parse_template(extra)
                tmpl.merge(extra_tmpl)
            for key in ("NAME", "TEMPLATE_NAME", "TEMPLATE_ID"):
                tmpl.erase(key)
            tmpl.add("TEMPLATE_NAME", source.name)
            tmpl.add("TEMPLATE_ID", str(tid))
            if name:
                tmpl.add("NAME", name)
            return self._create_vm(tmpl, hold).id

    def _create_vm(self, utmpl: Template, hold: bool) -> VM:
        oid = self.db.counters.get("vm", 0)
        acquired: list[int] = []
        leased = False
        try:
            otmpl = Template()
            utmpl.erase("VMID")
            template_id = utmpl.get("TEMPLATE_ID")
            utmpl.erase("TEMPLATE_ID")
            name = utmpl.get("NAME") or ""
            prefix = utmpl.get("TEMPLATE_NAME") or "one"
            utmpl.erase("NAME")
            utmpl.erase("TEMPLATE_NAME")
            name = name or f"{prefix}-{oid}"
            self._check_capacity(name, utmpl)
            self._move_template_attributes(utmpl, otmpl)
            # ---- NICs: an address from the network of each
            nics = utmpl.vectors("NIC")
            utmpl.erase("NIC")
            for nic_id, nic in enumerate(nics):
                leased = True
                otmpl.add("NIC", self.vnets.lease_nic(oid, nic_id, nic))
            # ---- DISKs: acquire the images
            disks = utmpl.vectors("DISK")
            utmpl.erase("DISK")
            built: list[tuple[dict[str, str], Image]] = []
            for disk_id, disk in enumerate(disks):
                image = self.images.acquire_image(oid, disk)
                acquired.append(image.id)
                built.append((self._disk_attributes(disk, disk_id, image), image))
            context_vector = utmpl.get_vector("CONTEXT")
            utmpl.erase("CONTEXT")
            context_target = self._assign_targets([d for d, _ in built], context_vector is not None)
            for disk, _ in built:
                otmpl.add("DISK", disk)
            on_hold = self._submit_on_hold(utmpl, otmpl, hold)
            if template_id is not None:
                otmpl.add("TEMPLATE_ID", template_id)
            vm = VM(id=oid, name=name, stime=int(time.time()), template=otmpl, user_template=utmpl)
            if context_vector is not None:
                context = {k: v for k, v in context_vector.items() if k != "FILES_DS"}
                context.update(DISK_ID=str(len(built)), TARGET=context_target)
                otmpl.add("CONTEXT", self._parse_context(vm, context))
            self._add_scheduling(otmpl, oid, bool(nics))
            if on_hold:
                vm.state = vm.prev_state = VmState.HOLD
            elif any(img.state == IMG_LOCKED_USED for _, img in built):
                vm.state = vm.prev_state = VmState.CLONING
            vm.op_since = time.time()
        except OneError:
            for image_id in acquired:
                self.images.release_image(oid, image_id)
            if leased:
                self.vnets.release_leases(oid)
            raise
        self.db.counters["vm"] = oid + 1
        self.db.store.save_counters(self.db.counters)
        self.db.insert(vm, "vm")
        return vm

    @staticmethod
    def _submit_on_hold(utmpl: Template, otmpl: Template, hold: bool) -> bool:
        on_hold = hold or (utmpl.get("SUBMIT_ON_HOLD") or "").upper() == "YES"
        if utmpl.get("SUBMIT_ON_HOLD") is not None:
            otmpl.add("SUBMIT_ON_HOLD", "YES" if on_hold else "NO")
            utmpl.erase("SUBMIT_ON_HOLD")
        return on_hold

    @staticmethod
    def _check_capacity(name: str, utmpl: Template) -> None:
        """VirtualMachine::parse_template's checks of the name, MEMORY, CPU, VCPU and the costs."""
        reason = check_name(name)
        if reason:
            raise errors.allocate(reason)
        memory = cpp_long(utmpl.get("MEMORY"))
        if memory is None or memory <= 0:
            raise errors.allocate("MEMORY attribute must be a positive integer value.")
        cpu = cpp_float(utmpl.get("CPU"))
        if cpu is None or cpu <= 0:
            raise errors.allocate("CPU attribute must be a positive float or integer value.")
        vcpu = utmpl.get("VCPU")
        if vcpu:
            number = cpp_long(vcpu)
            if number is None or number <= 0:
                raise errors.allocate("VCPU attribute must be a positive integer value.")
        for cost in ("CPU_COST", "MEMORY_COST", "DISK_COST"):
            value = utmpl.get(cost)
            if value is not None and (cpp_float(value) or 0) < 0:
                raise errors.allocate(f"{cost} attribute must be a positive float or integer value.")

    @staticmethod
    def _move_template_attributes(utmpl: Template, otmpl: Template) -> None:
        """The attributes oned keeps in the VM's TEMPLATE (not USER_TEMPLATE), bar NICs, DISKs and CONTEXT."""
        for key in VM_TEMPLATE_SINGLES:
            value = utmpl.get(key)
            if value is not None:
                utmpl.erase(key)
                otmpl.add(key, value)
        for key in VM_TEMPLATE_VECTORS - {"NIC", "DISK", "CONTEXT"}:
            vectors = utmpl.vectors(key)
            if vectors:
                utmpl.erase(key)
                for vector in vectors[:1] if key in VM_TEMPLATE_ONCE else vectors:
                    otmpl.add(key, vector)

    @staticmethod
    def _add_scheduling(otmpl: Template, oid: int, with_nics: bool) -> None:
        otmpl.add("AUTOMATIC_DS_REQUIREMENTS", '("CLUSTERS/ID" @> 0)')
        if with_nics:
            otmpl.add("AUTOMATIC_NIC_REQUIREMENTS", '("CLUSTERS/ID" @> 0)')
        otmpl.add(
            "AUTOMATIC_REQUIREMENTS", "(CLUSTER_ID = 0) & !(PUBLIC_CLOUD = YES) & !(PIN_POLICY = PINNED)"
        )
        otmpl.add("TM_MAD_SYSTEM", "ssh")
        otmpl.add("VMID", str(oid))

    @staticmethod
    def _disk_attributes(disk: dict[str, str], disk_id: int, image: Image) -> dict[str, str]:
        cdrom = image.type == 1
        attrs = dict(disk)
        attrs.update(
            {
                "ALLOW_ORPHANS": "NO",
                "CLONE": "NO" if image.persistent else "YES",
                "CLONE_TARGET": "SYSTEM",
                "CLUSTER_ID": "0",
                "DATASTORE": image.datastore,
                "DATASTORE_ID": str(image.datastore_id),
                "DEV_PREFIX": disk.get("DEV_PREFIX")
                or image.template.get("DEV_PREFIX")
                or ("hd" if cdrom else "vd"),
                "DISK_ID": str(disk_id),
                "DISK_SNAPSHOT_TOTAL_SIZE": "0",
                "DISK_TYPE": "FILE",
                "DRIVER": image.format or "raw",
                "FORMAT": image.format or "raw",
                "IMAGE": image.name,
                "IMAGE_ID": str(image.id),
                "IMAGE_STATE": str(image.state),
                "IMAGE_UNAME": image.uname,
                "LN_TARGET": "SYSTEM",
                "ORIGINAL_SIZE": str(image.size_mb),
                "READONLY": "YES" if cdrom else "NO",
                "SAVE": "YES" if image.persistent else "NO",
                "SIZE": str(image.size_mb),
                "SOURCE": image.source,
                "TM_MAD": "ssh",
                "TYPE": "CDROM" if cdrom else "FILE",
            }
        )
        return attrs

    @staticmethod
    def _assign_targets(disks: list[dict[str, str]], with_context: bool) -> str:
        """OS disks first (vda), CD-ROMs and the context disk on hd*, then the datablocks."""
        used = {d["TARGET"] for d in disks if d.get("TARGET")}

        def take(prefix: str) -> str:
            for letter in "abcdefghijklmnopqrstuvwxyz":
                if prefix + letter not in used:
                    used.add(prefix + letter)
                    return prefix + letter
            return prefix + "z"

        pending = [d for d in disks if not d.get("TARGET")]
        for disk in [d for d in pending if d["TYPE"] != "CDROM"][:1] + [
            d for d in pending if d["TYPE"] == "CDROM"
        ]:
            disk["TARGET"] = take(disk["DEV_PREFIX"])
        context_target = take("hd") if with_context else ""
        for disk in [d for d in pending if not d.get("TARGET")]:
            disk["TARGET"] = take(disk["DEV_PREFIX"])
        return context_target

    def _parse_context(self, vm: VM, vector: dict[str, str]) -> dict[str, str]:
        """Substitute the variables, then add the network and OneGate variables."""
        user = self.db.pools["user"][vm.uid]

        def single(name: str) -> str:
            special = {
                "UID": str(vm.uid),
                "UNAME": vm.uname,
                "GID": str(vm.gid),
                "GNAME": vm.gname,
                "NAME": vm.name,
            }
            if name in special:
                return special[name]
            if name == "TEMPLATE":
                return ""
            return vm.template.get(name) or vm.user_template.get(name) or ""

        def vector_value(name: str, attr: str, key: str, wanted: str) -> str:
            if name == "USER":
                return user.template.get(attr) or ""
            if name in ("NETWORK", "IMAGE"):
                lookup = "NIC" if name == "NETWORK" else "DISK"
                keys = ("NETWORK", "NETWORK_ID", "NIC_ID") if name == "NETWORK" else ("IMAGE", "IMAGE_ID")
                if key not in keys:
                    return ""
                for item in vm.template.vectors(lookup):
                    if item.get(key) == wanted:
                        if name == "NETWORK":
                            return self.vnets.network_attribute(item, attr)
                        image = self.db.pools["image"].get(int(item.get("IMAGE_ID", "-1")))
                        return (image.template.get(attr) or "") if image else ""
                return ""
            candidates = vm.template.vectors(name) or vm.user_template.vectors(name)
            if not key:
                return candidates[0].get(attr, "") if candidates else ""
            for candidate in candidates:
                if candidate.get(key) == wanted:
                    return candidate.get(attr, "")
            return ""

        parsed: dict[str, str] = {}
        for key, value in vector.items():
            try:
                parsed[key] = ctx.substitute(value, single, vector_value)
            except ctx.ContextVariableError as error:
                raise errors.allocate(f"Cannot parse CONTEXT: {error}") from None
        if (parsed.get("NETWORK") or "").upper() == "YES":
            parsed.update(ctx.network_context(vm.template.vectors("NIC"), self.vnets.network_attribute))
        if (parsed.get("TOKEN") or "").upper() == "YES":
            parsed["ONEGATE_ENDPOINT"] = self.db.endpoints.get("onegate_guest") or self.db.endpoints.get(
                "onegate", ""
            )
            parsed["VMID"] = str(vm.id)
            vm.created_by = vm.uid
        return parsed

    # ------------------------------------------------------------------ info
    def vm_info(self, oid: int) -> str:
        with self.db.lock:
            return self.db.get("vm", oid, errors.VM).to_xml()

    def _vm_pool(self, filter_flag: int, start: int, end: int, state: int) -> list[VM]:
        if state < -2 or state > VmState.CLONING_FAILURE:
            raise OneError(errors.RPC_API, f"Incorrect state filter {state}")
        vms = list(self.db.pools["vm"].values())
        if state == -1:
            vms = [v for v in vms if v.state != VmState.DONE]
        elif state >= 0:
            vms = [v for v in vms if v.state == state]
        return self.db.filter_pool(vms, filter_flag, start, end)

    def vmpool_info(self, filter_flag: int, start: int, end: int, state: int) -> str:
        with self.db.lock:
            return (
                "<VM_POOL>"
                + "".join(v.to_xml_short() for v in self._vm_pool(filter_flag, start, end, state))
                + ("</VM_POOL>")
            )

    def vmpool_infoextended(self, filter_flag: int, start: int, end: int, state: int) -> str:
        with self.db.lock:
            return (
                "<VM_POOL>"
                + "".join(v.to_xml() for v in self._vm_pool(filter_flag, start, end, state))
                + ("</VM_POOL>")
            )

    def vm_update(self, oid: int, text_in: str, append: int) -> int:
        return self.db.update_template("vm", oid, errors.VM, text_in, append, "user_template").id

    def vm_monitoring(self, oid: int) -> str:
        """``one.vm.monitoring``: the VM's monitoring records (the test cloud keeps the last one)."""
        with self.db.lock:
            vm: VM = self.db.get("vm", oid, errors.VM)
            record = vm.monitoring_xml()
            records = "" if record == "<MONITORING/>" else record
            return f"<MONITORING_DATA>{records}</MONITORING_DATA>"

    def vm_updateconf(self, oid: int, text_in: str, update_type: int) -> int:
        """``VirtualMachine::updateconf``: replace (0) or merge (1) the OS, FEATURES, INPUT, GRAPHICS, RAW and
        CPU_MODEL sections, regenerate CONTEXT; a RUNNING guest gets the new context through its driver."""
        if update_type not in (0, 1):
            raise OneError(errors.RPC_API, "Wrong update type")
        new = parse_template(text_in)
        append = update_type == 1
        with self.db.lock:
            vm: VM = self.db.get("vm", oid, errors.VM)
            if not _updateconf_allowed(vm):
                raise errors.internal(f"configuration cannot be updated in state {vm.state_str()}")
            old_context = vm.template.get_vector("CONTEXT")
            new_context = new.get_vector("CONTEXT")
            if old_context is None and new_context is not None:
                raise errors.internal("Virtual machine does not have context, cannot add a new one.")
            updated = vm.template.copy()  # a failure below leaves the VM as it was (oned does not save it)
            for section in UPDATECONF_SECTIONS:
                _replace_vector_values(updated, new, section, append)
            if old_context is not None and new_context is not None:
                updated.replace("CONTEXT", self._updated_context(vm, old_context, new_context, append))
            vm.template = updated
            self.db.save(vm)
            live = vm.state == VmState.ACTIVE and vm.lcm_state == LcmState.RUNNING and vm.host_id >= 0
            if live:
                self.db.workers.submit(self._guarded, self._update_context_work, vm.id, "updateconf")
            return oid

    def _updated_context(
        self, vm: VM, old: dict[str, str], new: dict[str, str], append: bool
    ) -> dict[str, str]:
        """Values equal to the old ones are kept as they are (not substituted again); the rest is parsed as at
        creation (variables, network and OneGate values), then replaces or is merged into the old context."""
        equal = {k: v for k, v in new.items() if old.get(k) == v}
        fresh = {k: v for k, v in new.items() if k not in equal}
        fresh["TARGET"] = old.get("TARGET", "")
        fresh["DISK_ID"] = old.get("DISK_ID", "")
        try:
            parsed = self._parse_context(vm, fresh)
        except OneError as error:  # updateconf answers a context it cannot parse with INTERNAL
            raise errors.internal(error.reason) from None
        if append:
            return {**old, **parsed}
        return {**parsed, **equal}

    def _update_context_work(self, vm_id: int) -> None:
        with self.db.lock:
            vm = self.db.pools["vm"].get(vm_id)
            if vm is None or not (vm.state == VmState.ACTIVE and vm.lcm_state == LcmState.RUNNING):
                return
            spec = ContextSpec(files=self.context_files(vm))
            host_id = vm.host_id
        self.driver_for(host_id).update_context(vm_id, spec)

    # ------------------------------------------------------------------ actions
    def vm_action(self, action: str, oid: int) -> int:
        with self.db.lock:
            vm: VM = self.db.get("vm", oid, errors.VM)
            handlers = {
                "terminate": lambda: self._terminate(vm, False, action),
                "terminate-hard": lambda: self._terminate(vm, True, action),
                "hold": lambda: self._hold(vm, action),
                "release": lambda: self._release(vm, action),
                "stop": lambda: self._save(vm, LcmState.SAVE_STOP, A_STOP, action),
                "suspend": lambda: self._save(vm, LcmState.SAVE_SUSPEND, A_SUSPEND, action),
                "resume": lambda: self._resume(vm, action),
                "reboot": lambda: self._reboot(vm, False, action),
                "reboot-hard": lambda: self._reboot(vm, True, action),
                "resched": lambda: self._resched(vm, 1, action),
                "unresched": lambda: self._resched(vm, 0, action),
                "poweroff": lambda: self._shutdown_to(vm, LcmState.SHUTDOWN_POWEROFF, False, action),
                "poweroff-hard": lambda: self._shutdown_to(vm, LcmState.SHUTDOWN_POWEROFF, True, action),
                "undeploy": lambda: self._shutdown_to(vm, LcmState.SHUTDOWN_UNDEPLOY, False, action),
                "undeploy-hard": lambda: self._shutdown_to(vm, LcmState.SHUTDOWN_UNDEPLOY, True, action),
            }
            handler = handlers.get(action)
            if handler is None:
                raise errors.action(f'Action "{action}" is not supported')
            handler()
            self.db.save(vm)
            return oid

    def _terminate(self, vm: VM, hard: bool, action: str) -> None:
        history_action = A_TERMINATE_HARD if hard else A_TERMINATE
        if vm.state in (VmState.SUSPENDED, VmState.POWEROFF, VmState.STOPPED, VmState.UNDEPLOYED):
            self._open_history_if_needed(vm)
            self._close_history_action(vm, history_action)
            self._enter(vm, VmState.ACTIVE, LcmState.EPILOG)
        elif vm.state in (
            VmState.INIT,
            VmState.PENDING,
            VmState.HOLD,
            VmState.CLONING,
            VmState.CLONING_FAILURE,
        ):
            self._finish(vm, history_action)
        elif vm.state == VmState.DONE:
            return
        elif vm.lcm_state in (LcmState.RUNNING, LcmState.UNKNOWN) or (
            vm.lcm_state == LcmState.SHUTDOWN and hard
        ):
            self._close_history_action(vm, history_action)
            self._enter(vm, VmState.ACTIVE, LcmState.SHUTDOWN)
            self._submit(vm, "stop", self._stop_work, hard=hard)
        elif vm.lcm_state in FAILURE_LCM_STATES:
            self._close_history_action(vm, history_action)
            self._enter(vm, VmState.ACTIVE, LcmState.CLEANUP_DELETE)
            self._submit(vm, "stop", self._stop_work, hard=True)
        else:
            raise errors.action(
                f'Error performing action "{action}": Could not terminate VM {vm.id}, '
                f"wrong state {vm.state_str()}."
            )

    def _hold(self, vm: VM, action: str) -> None:
        if vm.state != VmState.PENDING:
            raise wrong_state(action, vm)
        self._enter(vm, VmState.HOLD, LcmState.LCM_INIT)

    def _release(self, vm: VM, action: str) -> None:
        if vm.state != VmState.HOLD:
            raise wrong_state(action, vm)
        self._enter(vm, VmState.PENDING, LcmState.LCM_INIT)

    def _save(self, vm: VM, lcm_state: int, history_action: int, action: str) -> None:
        running = vm.state == VmState.ACTIVE and vm.lcm_state == LcmState.RUNNING
        if lcm_state == LcmState.SAVE_STOP and vm.state == VmState.SUSPENDED:
            self._close_history_action(vm, history_action)
            self._enter(vm, VmState.ACTIVE, LcmState.EPILOG_STOP)
            return
        if not running:
            raise wrong_state(action, vm)
        self._close_history_action(vm, history_action)
        self._enter(vm, VmState.ACTIVE, lcm_state)
        self._submit(vm, "stop", self._stop_work, hard=False)

    def _resume(self, vm: VM, action: str) -> None:
        if vm.state in (VmState.STOPPED, VmState.UNDEPLOYED):
            origin = vm.state
            self._enter(vm, VmState.PENDING, LcmState.LCM_INIT)
            vm.pending_op = "resume_undeployed" if origin == VmState.UNDEPLOYED else "resume_stopped"
        elif vm.state in (VmState.SUSPENDED, VmState.POWEROFF) or (
            vm.state == VmState.ACTIVE and vm.lcm_state == LcmState.UNKNOWN
        ):
            boot = {VmState.SUSPENDED: LcmState.BOOT_SUSPENDED, VmState.POWEROFF: LcmState.BOOT_POWEROFF}.get(
                vm.state, LcmState.BOOT_UNKNOWN
            )
            self._open_history_if_needed(vm)
            self._enter(vm, VmState.ACTIVE, boot)
            self._submit(vm, "launch", self._launch_work)
        else:
            raise wrong_state(action, vm)

    def _reboot(self, vm: VM, hard: bool, action: str) -> None:
        if not (vm.state == VmState.ACTIVE and vm.lcm_state == LcmState.RUNNING):
            raise wrong_state(action, vm)
        vm.resched = 0
        self._submit(vm, "reboot", self._reboot_work, hard=hard)

    def _resched(self, vm: VM, flag: int, action: str) -> None:
        if not (
            vm.state == VmState.POWEROFF
            or (vm.state == VmState.ACTIVE and vm.lcm_state in (LcmState.RUNNING, LcmState.UNKNOWN))
        ):
            raise wrong_state(action, vm)
        vm.resched = flag

    def _shutdown_to(self, vm: VM, lcm_state: int, hard: bool, action: str) -> None:
        undeploy = lcm_state == LcmState.SHUTDOWN_UNDEPLOY
        history_action = (
            (A_UNDEPLOY_HARD if hard else A_UNDEPLOY)
            if undeploy
            else (A_POWEROFF_HARD if hard else A_POWEROFF)
        )
        if undeploy and vm.state == VmState.POWEROFF:
            self._close_history_action(vm, history_action)
            self._enter(vm, VmState.ACTIVE, LcmState.EPILOG_UNDEPLOY)
            return
        active = vm.state == VmState.ACTIVE and vm.lcm_state in (LcmState.RUNNING, LcmState.UNKNOWN)
        if not (active or (hard and vm.state == VmState.ACTIVE and vm.lcm_state == lcm_state)):
            raise wrong_state(action, vm)
        self._close_history_action(vm, history_action)
        self._enter(vm, VmState.ACTIVE, lcm_state)
        self._submit(vm, "stop", self._stop_work, hard=hard)

    # ------------------------------------------------------------------ state bookkeeping
    def _enter(self, vm: VM, state: int, lcm_state: int) -> None:
        vm.set_state(state, lcm_state)
        vm.op_since = time.time()
        vm.pending_op = ""
        self.db.save(vm)

    def _open_history(self, vm: VM, host_id: int) -> None:
        now = int(time.time())
        vm.host_id = host_id
        vm.history.append(
            {
                "seq": len(vm.history),
                "hostname": HOSTS[host_id][0],
                "hid": host_id,
                "vm_mad": self.vm_mad(host_id),
                "tm_mad": "ssh",
                "ds_id": 0,
                "stime": now,
                "etime": 0,
                "pstime": 0,
                "petime": 0,
                "rstime": 0,
                "retime": 0,
                "estime": 0,
                "eetime": 0,
                "action": A_NONE,
            }
        )

    def _open_history_if_needed(self, vm: VM) -> None:
        if not vm.history or vm.history[-1]["etime"]:
            self._open_history(vm, vm.host_id if vm.host_id >= 0 else self.pick_host(vm))

    def _close_history_action(self, vm: VM, action: int) -> None:
        if vm.history:
            vm.history[-1]["action"] = action

    def _close_history(self, vm: VM, action: int | None = None) -> None:
        if not vm.history or vm.history[-1]["etime"]:
            return
        record = vm.history[-1]
        now = int(time.time())
        if action is not None:
            record["action"] = action
        if record["rstime"] and not record["retime"]:
            record["retime"] = now
        record["etime"] = now

    def _finish(self, vm: VM, action: int | None = None) -> None:
        """DONE: give back the addresses and the images, close the history."""
        self._close_history(vm, action)
        if vm.history and vm.history[-1]["estime"] and not vm.history[-1]["eetime"]:
            vm.history[-1]["eetime"] = int(time.time())
        self.vnets.release_leases(vm.id)
        for disk in vm.template.vectors("DISK"):
            self.images.release_image(vm.id, int(disk.get("IMAGE_ID", "-1")))
        vm.etime = int(time.time())
        self._enter(vm, VmState.DONE, LcmState.LCM_INIT)
        shutil.rmtree(self.vm_dir(vm.id), ignore_errors=True)

    # ------------------------------------------------------------------ workers
    def _submit(self, vm: VM, op: str, work, **kwargs) -> None:
        vm.pending_op = op
        vm.op_hard = bool(kwargs.get("hard", False))
        self.db.save(vm)
        self.db.workers.submit(self._guarded, work, vm.id, op, **kwargs)

    def _guarded(self, work, vm_id: int, op: str, **kwargs) -> None:
        try:
            work(vm_id, **kwargs)
        except Exception:
            log.exception("VM %s: %s failed", vm_id, op)

    def _current(self, vm_id: int, op: str) -> VM | None:
        vm = self.db.pools["vm"].get(vm_id)
        if vm is None or vm.pending_op != op:
            return None
        return vm

    def _fail(self, vm: VM, lcm_state: int, message: str) -> None:
        stamp = time.strftime("%a %b %d %H:%M:%S %Y")
        vm.user_template.replace("ERROR", f"{stamp}: {message}")
        self._enter(vm, VmState.ACTIVE, lcm_state)

    def _prolog_work(self, vm_id: int) -> None:
        with self.db.lock:
            vm = self._current(vm_id, "prolog")
            if vm is None:
                return
            problem = ""
            disks = vm.template.vectors("DISK")
            for disk in disks:
                image = self.db.pools["image"].get(int(disk.get("IMAGE_ID", "-1")))
                if image is None or not image.source or not Path(image.source).exists():
                    problem = (
                        f"Error copying disk {disk.get('DISK_ID')}: image {disk.get('IMAGE_ID')} has no file"
                    )
                    break
                disk.update(
                    {
                        "SOURCE": image.source,
                        "FORMAT": image.format or "raw",
                        "DRIVER": image.format or "raw",
                        "SIZE": str(image.size_mb),
                    }
                )
            vm.template.erase("DISK")
            for disk in disks:
                vm.template.add("DISK", disk)
            if problem:
                self._fail(vm, LcmState.PROLOG_FAILURE, problem)
                return
            self.vm_dir(vm_id).mkdir(parents=True, exist_ok=True)
            vm.history[-1]["petime"] = int(time.time())
            vm.pending_op = "prolog_done"
            self.db.save(vm)

    def launch_spec(self, vm: VM) -> LaunchSpec:
        disks = [
            DiskSpec(
                Path(d.get("SOURCE", "")),
                d.get("FORMAT") or "raw",
                d.get("TARGET", "vda"),
                d.get("READONLY", "NO").upper() == "YES",
            )
            for d in vm.template.vectors("DISK")
        ]
        nics = []
        for nic in vm.template.vectors("NIC"):
            mask = self.vnets.network_attribute(nic, "NETWORK_MASK") or "255.255.255.0"
            gateway = self.vnets.network_attribute(nic, "GATEWAY") or None
            nics.append(NicSpec(int(nic["NIC_ID"]), nic["IP"], nic["MAC"], nic["BRIDGE"], mask, gateway))
        return LaunchSpec(
            vm_id=vm.id,
            name=vm.name,
            disks=disks,
            nics=nics,
            context=ContextSpec(files=self.context_files(vm)),
            vm_dir=self.vm_dir(vm.id),
            cpu=cpp_float(vm.template.get("CPU")) or 1.0,
            memory_mb=cpp_long(vm.template.get("MEMORY")) or 1024,
            extra={"DEPLOY_ID": f"one-{vm.id}", "HOSTNAME": HOSTS[max(vm.host_id, 0)][0]},
        )

    def context_files(self, vm: VM) -> dict[str, bytes]:
        context = vm.template.get_vector("CONTEXT")
        if context is None:
            return {}
        files = {"context.sh": ctx.context_sh(context).encode()}
        if (context.get("TOKEN") or "").upper() == "YES":
            token = ctx.onegate_token(vm.id, vm.stime, self.db.token_password(vm.created_by))
            files["token.txt"] = (token + "\n").encode()
        return files

    def _launch_work(self, vm_id: int) -> None:
        with self.db.lock:
            vm = self._current(vm_id, "launch")
            if vm is None:
                return
            spec = self.launch_spec(vm)
            host_id = vm.host_id
            vm.history[-1]["rstime"] = vm.history[-1]["rstime"] or int(time.time())

        def launch(driver: VMDriver) -> None:
            spec.vm_dir.mkdir(parents=True, exist_ok=True)
            driver.launch(spec)

        # the driver's failure, or its absence, becomes the VM's BOOT_FAILURE
        error = self._driver_failure(host_id, launch, unavailable_fails=True)
        with self.db.lock:
            vm = self._current(vm_id, "launch")
            if vm is None:
                return
            if error:
                self._fail(vm, LcmState.BOOT_FAILURE, f"Error deploying virtual machine: {error}")
                return
            vm.deploy_id = f"one-{vm_id}"
            vm.pending_op = "launched"
            self.db.save(vm)

    def _driver_failure(
        self, host_id: int, call: Callable[[VMDriver], object], unavailable_fails: bool = False
    ) -> str:
        """``call`` the host's driver, outside the cloud's lock: "" when it worked, else the failure as the
        text the VM's ERROR gets (a missing driver only ``unavailable_fails``)."""
        try:
            call(self.driver_for(host_id))
        except DriverUnavailable as failure:
            return str(failure) if unavailable_fails else ""
        except Exception as failure:
            return f"{type(failure).__name__}: {failure}"
        return ""

    def _stop_work(self, vm_id: int, hard: bool = False) -> None:
        with self.db.lock:
            vm = self._current(vm_id, "stop")
            if vm is None:
                return
            host_id = vm.host_id
        error = ""
        if host_id >= 0:  # a driver that does not exist never launched anything
            error = self._driver_failure(host_id, lambda driver: driver.terminate(vm_id, hard=hard))
        with self.db.lock:
            vm = self._current(vm_id, "stop")
            if vm is None:
                return
            if error and vm.lcm_state == LcmState.SHUTDOWN:
                self._fail(vm, LcmState.RUNNING, f"Error shutting down virtual machine: {error}")
                return
            vm.pending_op = "stopped"
            self.db.save(vm)

    def _reboot_work(self, vm_id: int, hard: bool = False) -> None:
        with self.db.lock:
            vm = self._current(vm_id, "reboot")
            if vm is None:
                return
            host_id = vm.host_id
        try:
            self.driver_for(host_id).reboot(vm_id, hard=hard)
        finally:
            with self.db.lock:
                vm = self._current(vm_id, "reboot")
                if vm is not None:
                    vm.pending_op = ""
                    self.db.save(vm)

    def _recover_work(self, vm_id: int) -> None:
        """After a restart: re-attach to a guest still running, or learn it is gone."""
        with self.db.lock:
            vm = self._current(vm_id, "recover")
            if vm is None:
                return
            spec = self.launch_spec(vm)
            host_id = vm.host_id
        try:
            state = self.driver_for(host_id).recover(vm_id, spec)
        except Exception as failure:
            log.warning("VM %s: recover failed: %s", vm_id, failure)
            state = GuestState.FAILED
        with self.db.lock:
            vm = self._current(vm_id, "recover")
            if vm is None:
                return
            if state == GuestState.RUNNING:
                if vm.lcm_state in BOOT_STATES:
                    vm.pending_op = "launched"
                else:
                    vm.pending_op = ""
                    if vm.lcm_state == LcmState.UNKNOWN:
                        vm.set_state(VmState.ACTIVE, LcmState.RUNNING)
            elif state == GuestState.BOOTING:
                vm.pending_op = "launched"
            elif state == GuestState.STOPPED:
                self._close_history_action(vm, A_POWEROFF)
                self._enter(vm, VmState.POWEROFF, LcmState.LCM_INIT)
                return
            else:
                self._enter(vm, VmState.ACTIVE, LcmState.UNKNOWN)
                return
            self.db.save(vm)

    # ------------------------------------------------------------------ the engine
    def tick_vms(self) -> None:
        now = time.time()
        polls: list[tuple[int, int, str]] = []
        with self.db.lock:
            for vm in list(self.db.pools["vm"].values()):
                assert isinstance(vm, VM)
                if vm.state != VmState.DONE:
                    self._advance(vm, now, polls)
        results = []
        for vm_id, host_id, op in polls:
            try:
                state = self.driver_for(host_id).state(vm_id)
            except Exception as failure:
                log.warning("VM %s: driver state failed: %s", vm_id, failure)
                state = GuestState.FAILED
            results.append((vm_id, op, state))
        if results:
            with self.db.lock:
                for vm_id, op, state in results:
                    self._apply_poll(vm_id, op, state, time.time())

    def _advance(self, vm: VM, now: float, polls: list[tuple[int, int, str]]) -> None:
        timings = self.db.config.timings
        elapsed = now - vm.op_since
        if vm.state == VmState.CLONING:
            ready = [
                self.images.image_is_ready_for(int(d.get("IMAGE_ID", "-1")))
                for d in vm.template.vectors("DISK")
            ]
            if any(r is False for r in ready):
                vm.user_template.replace("ERROR", "Error cloning the disk images of the VM")
                self._enter(vm, VmState.CLONING_FAILURE, LcmState.LCM_INIT)
            elif all(ready):
                self._enter(vm, VmState.PENDING, LcmState.LCM_INIT)
        elif vm.state == VmState.PENDING and elapsed >= timings.pending:
            self._deploy(vm)
        elif vm.state != VmState.ACTIVE:
            return
        elif vm.lcm_state in PROLOG_TO_BOOT and vm.pending_op == "prolog_done" and elapsed >= timings.prolog:
            self._enter(vm, VmState.ACTIVE, PROLOG_TO_BOOT[vm.lcm_state])
            self._submit(vm, "launch", self._launch_work)
        elif vm.lcm_state in BOOT_STATES and vm.pending_op == "launched":
            if now - self._last_running_poll.get(vm.id, 0.0) >= BOOT_POLL_S:
                self._last_running_poll[vm.id] = now
                polls.append((vm.id, vm.host_id, "boot"))
        elif vm.lcm_state in (LcmState.RUNNING, LcmState.UNKNOWN) and vm.pending_op == "":
            if now - self._last_running_poll.get(vm.id, 0.0) >= RUNNING_POLL_S:
                self._last_running_poll[vm.id] = now
                polls.append((vm.id, vm.host_id, "running"))
        elif vm.lcm_state in STOPPING_STATES and vm.pending_op == "stopped" and elapsed >= timings.shutdown:
            self._after_stop(vm)
        elif (
            vm.lcm_state in (LcmState.EPILOG, LcmState.EPILOG_UNDEPLOY, LcmState.EPILOG_STOP)
            and elapsed >= timings.epilog
        ):
            if vm.history:
                vm.history[-1]["eetime"] = int(now)
            if vm.lcm_state == LcmState.EPILOG:
                self._finish(vm)
            else:
                self._close_history(vm)
                self._enter(
                    vm,
                    VmState.UNDEPLOYED if vm.lcm_state == LcmState.EPILOG_UNDEPLOY else VmState.STOPPED,
                    LcmState.LCM_INIT,
                )

    def _deploy(self, vm: VM) -> None:
        origin = vm.pending_op
        self._open_history(vm, self.pick_host(vm))
        vm.history[-1]["pstime"] = int(time.time())
        prolog = {
            "resume_undeployed": LcmState.PROLOG_UNDEPLOY,
            "resume_stopped": LcmState.PROLOG_RESUME,
        }.get(origin, LcmState.PROLOG)
        self._enter(vm, VmState.ACTIVE, prolog)
        self._submit(vm, "prolog", self._prolog_work)

    def _after_stop(self, vm: VM) -> None:
        lcm = vm.lcm_state
        if vm.history and vm.history[-1]["rstime"] and not vm.history[-1]["retime"]:
            vm.history[-1]["retime"] = int(time.time())
        if lcm == LcmState.CLEANUP_DELETE:
            self._finish(vm)
        elif lcm == LcmState.SHUTDOWN_POWEROFF:
            self._enter(vm, VmState.POWEROFF, LcmState.LCM_INIT)
        elif lcm == LcmState.SAVE_SUSPEND:
            self._enter(vm, VmState.SUSPENDED, LcmState.LCM_INIT)
        else:
            if vm.history:
                vm.history[-1]["estime"] = int(time.time())
            epilog = {
                LcmState.SHUTDOWN: LcmState.EPILOG,
                LcmState.SHUTDOWN_UNDEPLOY: LcmState.EPILOG_UNDEPLOY,
                LcmState.SAVE_STOP: LcmState.EPILOG_STOP,
            }[lcm]
            self._enter(vm, VmState.ACTIVE, epilog)

    def _apply_poll(self, vm_id: int, op: str, state: GuestState, now: float) -> None:
        vm: VM | None = self.db.pools["vm"].get(vm_id)
        if vm is None or vm.state != VmState.ACTIVE:
            return
        if op == "boot" and vm.lcm_state in BOOT_STATES and vm.pending_op == "launched":
            if state == GuestState.RUNNING and now - vm.op_since >= self.db.config.timings.boot:
                vm.last_poll = int(now)
                self._enter(vm, VmState.ACTIVE, LcmState.RUNNING)
            elif state in (GuestState.FAILED, GuestState.STOPPED):
                logs = ""
                try:
                    logs = self.driver_for(vm.host_id).logs(vm_id)[-2000:]
                except Exception:  # the failure report must not fail
                    logs = ""
                self._fail(
                    vm,
                    LcmState.BOOT_FAILURE,
                    "Error deploying virtual machine: the guest did not start"
                    + (f"\n{logs}" if logs else ""),
                )
        elif op == "running" and vm.lcm_state in (LcmState.RUNNING, LcmState.UNKNOWN) and vm.pending_op == "":
            vm.last_poll = int(now)
            if state == GuestState.RUNNING and vm.lcm_state == LcmState.UNKNOWN:
                self._enter(vm, VmState.ACTIVE, LcmState.RUNNING)
            elif state == GuestState.STOPPED:  # the guest shut itself down: oned sees it powered off
                self._close_history_action(vm, A_POWEROFF)
                self._enter(vm, VmState.POWEROFF, LcmState.LCM_INIT)
            elif state == GuestState.FAILED and vm.lcm_state == LcmState.RUNNING:
                self._enter(vm, VmState.ACTIVE, LcmState.UNKNOWN)

    def power_off_all(self) -> None:
        """Stop every guest (``cloud down``); their VMs stay POWEROFF and can be resumed later."""
        with self.db.lock:
            active = [vm for vm in self.db.pools["vm"].values() if vm.state == VmState.ACTIVE]
        for vm in active:
            assert isinstance(vm, VM)
            try:
                if vm.host_id >= 0 and vm.lcm_state not in (
                    LcmState.PROLOG,
                    LcmState.PROLOG_UNDEPLOY,
                    LcmState.PROLOG_RESUME,
                ):
                    self.driver_for(vm.host_id).terminate(vm.id, hard=True)
            except Exception as failure:
                log.warning("VM %s: stopping the guest failed: %s", vm.id, failure)
            with self.db.lock:
                if (
                    vm.lcm_state in (LcmState.EPILOG, LcmState.CLEANUP_DELETE)
                    or vm.lcm_state == LcmState.SHUTDOWN
                ):
                    self._finish(vm)
                else:
                    self._close_history_action(vm, A_POWEROFF_HARD)
                    self._enter(vm, VmState.POWEROFF, LcmState.LCM_INIT)
