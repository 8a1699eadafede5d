"""Virtual networks: one.vn.info, one.vnpool.info, and NIC leases from the address range.

With real guests the addresses are also claimed in the host-wide lease registry of
``testcloud.drivers.network`` so that parallel test clouds on the one bridge never hand out an address twice.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from testcloud.core import errors
from testcloud.core.errors import OneError
from testcloud.core.objects import AddressRange, VNet
from testcloud.core.pool import PoolStore

log = logging.getLogger("testcloud")


class VNetPool:
    def __init__(self, db: PoolStore) -> None:
        self.db = db

    _lease_registry: Any = None

    def vn_info(self, oid: int) -> str:
        with self.db.lock:
            return self.db.get("vnet", oid, errors.NET).to_xml(extended=True)

    def vnpool_info(self, filter_flag: int, start: int, end: int) -> str:
        def short(vnet: VNet) -> str:
            return vnet.to_xml(extended=False)

        return self.db.pool_xml("VNET_POOL", self.db.pools["vnet"].values(), filter_flag, start, end, short)

    # ------------------------------------------------------------------ leases
    def lease_registry(self) -> Any:
        """The host-wide registry, only when guests are real (the dummy driver needs no address)."""
        if self.db.config.driver == "dummy":
            return None
        if VNetPool._lease_registry is None:
            try:
                network = importlib.import_module("testcloud.drivers.network")
                VNetPool._lease_registry = network.LeaseRegistry()
            except (ImportError, AttributeError) as error:
                log.warning(
                    "no host-wide lease registry (%s): addresses are unique in this cloud only", error
                )
                VNetPool._lease_registry = False
        return VNetPool._lease_registry or None

    def _lease_owner(self, vm_id: int) -> str:
        return f"{self.db.state_dir}:vm{vm_id}"

    def resolve_vnet(self, nic: dict[str, str]) -> VNet:
        if "NETWORK_ID" in nic:
            raw = nic["NETWORK_ID"].strip()
            vnet = self.db.pools["vnet"].get(int(raw)) if raw.lstrip("-").isdigit() else None
            if vnet is None:
                raise OneError(errors.ALLOCATE, f"Virtual network with ID: {raw} does not exist")
            return vnet
        if "NETWORK" in nic:
            vnet = self.db.find_by_name("vnet", nic["NETWORK"])
            if vnet is None:
                raise OneError(
                    errors.ALLOCATE,
                    f"User 0 does not own a network with name: {nic['NETWORK']} . "
                    "Set NETWORK_UNAME or NETWORK_UID of owner in NIC.",
                )
            return vnet
        raise OneError(errors.ALLOCATE, "The NIC does not refer to any virtual network.")

    def lease_nic(self, vm_id: int, nic_id: int, nic: dict[str, str]) -> dict[str, str]:
        """Give the NIC an address of its network (the one it asks for, or the first free one)."""
        vnet = self.resolve_vnet(nic)
        ranges = vnet.address_ranges()
        wanted = nic.get("IP", "").strip()
        registry = self.lease_registry()
        chosen: tuple[AddressRange, str] | None = None
        for ar in ranges:
            for ip in ar.addresses():
                if wanted and ip != wanted:
                    continue
                if ip in ar.leases:
                    continue
                if registry is not None and not registry.claim(ip, self._lease_owner(vm_id)):
                    continue
                chosen = (ar, ip)
                break
            if chosen:
                break
        if chosen is None:
            raise OneError(errors.ALLOCATE, f"Cannot get IP/MAC lease from virtual network {vnet.id}.")
        ar, ip = chosen
        ar.leases[ip] = vm_id
        vnet.store_ranges(ranges)
        self.db.save(vnet)
        leased = dict(nic)
        leased.update(
            {
                "AR_ID": str(ar.ar_id),
                "BRIDGE": vnet.bridge,
                "BRIDGE_TYPE": "linux",
                "CLUSTER_ID": "0",
                "IP": ip,
                "MAC": AddressRange.mac_of(ip),
                "NAME": f"NIC{nic_id}",
                "NETWORK": vnet.name,
                "NETWORK_ID": str(vnet.id),
                "NETWORK_UNAME": vnet.uname,
                "NIC_ID": str(nic_id),
                "SECURITY_GROUPS": "0",
                "TARGET": f"one-{vm_id}-{nic_id}",
                "VN_MAD": vnet.vn_mad,
            }
        )
        return leased

    def release_leases(self, vm_id: int) -> None:
        registry = self.lease_registry()
        for vnet in self.db.pools["vnet"].values():
            ranges = vnet.address_ranges()
            changed = False
            for ar in ranges:
                for ip in [ip for ip, owner in ar.leases.items() if owner == vm_id]:
                    del ar.leases[ip]
                    changed = True
                    if registry is not None:
                        registry.release(ip, self._lease_owner(vm_id))
            if changed:
                vnet.store_ranges(ranges)
                self.db.save(vnet)

    def network_attribute(self, nic: dict[str, str], name: str) -> str:
        """``$NETWORK[NAME, NIC_ID=n]``: the attribute from the address range, else the network template."""
        vnet = self.db.pools["vnet"].get(int(nic.get("NETWORK_ID", "-1") or -1))
        if vnet is None:
            return ""
        return vnet.template.get(name) or ""
