"""OneGate's virtual router and virtual network views (``GET /vrouter``, ``GET /vnet/:id``), as
``src/onegate/onegate-server.rb`` answers a VM that belongs to no virtual router (the test cloud has none)."""

from __future__ import annotations

from typing import Any

import requests
from cloudtest_helpers import gate_headers, running_vm

GUEST = 'NAME="guest"\nCPU="1"\nMEMORY="64"\nNIC=[NETWORK_ID="0"]\nCONTEXT=[TOKEN="YES", NETWORK="YES"]'


def test_vrouter_and_vnet_views_of_a_vm_without_virtual_router(cloud: Any, one: Any) -> None:
    vm_id = running_vm(one, GUEST)
    headers = gate_headers(cloud, vm_id)

    def get(path: str, with_headers: dict[str, str] | None = None) -> tuple[int, str]:
        reply = requests.get(cloud.endpoints["onegate"] + path, headers=with_headers or {}, timeout=10)
        return reply.status_code, reply.text

    assert get("/vrouter", headers) == (400, "Empty or invalid VROUTER_ID")
    assert get("/vnet/0", headers) == (
        400,
        "Virtual networks information can only be retrieved from Virtual Routers.",
    )
    assert get("/vnet/zero", headers) == (400, "Invalid id format (ID: zero). ID must be an integer.")
    # authentication comes first, as in upstream's routes
    assert get("/vrouter") == (401, "Not authorized")
    assert get("/vnet/0") == (401, "Not authorized")
