"""Helpers of the test cloud's fidelity tests (imported by conftest.py and the tests)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

from lxml import etree

from hostkit import upstream
from hostkit.paths import UPSTREAM_DIR
from hostkit.waiting import wait_until
from hostkit.xmldict import xml_to_dict
from testcloud.core.config import Timings

XSD_DIR = UPSTREAM_DIR / "one" / "share" / "doc" / "xsd"
NAMESPACE = "http://opennebula.org/XMLSchema"
FAST = Timings(
    pending=0.05,
    prolog=0.05,
    boot=0.05,
    shutdown=0.05,
    epilog=0.05,
    image_lock=0.05,
    app_lock=0.05,
    tick=0.02,
)
SLOW = Timings(
    pending=0.6, prolog=0.6, boot=0.6, shutdown=0.6, epilog=0.6, image_lock=0.6, app_lock=0.6, tick=0.02
)


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    return wait_until(predicate, timeout, interval=interval, error=AssertionError)


def make_qcow2(path: Path, size: str = "64M") -> Path:
    subprocess.run(["qemu-img", "create", "-f", "qcow2", str(path), size], check=True, capture_output=True)
    return path


def make_raw(path: Path, size_bytes: int = 3 * 2**20, fill: bytes = b"flower") -> Path:
    with open(path, "wb") as handle:
        handle.write(fill * 1000)
        handle.truncate(size_bytes)
    return path


def ready_image(one: Any, path: Path, name: str = "img") -> int:
    image_id = one.image.allocate(f'NAME="{name}"\nPATH="{path}"\nTYPE="OS"', 1)
    wait_for(lambda: one.image.info(image_id).STATE == 1)
    return image_id


def running_vm(one: Any, template: str = 'NAME="vm"\nCPU="1"\nMEMORY="128"') -> int:
    vm_id = one.vm.allocate(template)
    wait_for(lambda: one.vm.info(vm_id).LCM_STATE == 3)
    return vm_id


# ---------------------------------------------------------------------------------------------- XSD
@cache
def schema(name: str) -> etree.XMLSchema:
    """OpenNebula's XSD ``name`` (upstream, ``hostkit.upstream``: UpstreamMissing says how to get it)."""
    return etree.XMLSchema(etree.parse(str(upstream.path("one", "share", "doc", "xsd", name))))


def with_namespace(xml: str) -> etree._Element:
    """oned sends no namespace; the XSDs declare one: qualify every element before validating."""
    root = etree.fromstring(xml.encode())
    for element in root.iter():
        if isinstance(element.tag, str) and not element.tag.startswith("{"):
            element.tag = f"{{{NAMESPACE}}}{element.tag}"
    return root


def assert_valid(xml: str, xsd: str) -> None:
    validator = schema(xsd)
    if not validator.validate(with_namespace(xml)):
        raise AssertionError(f"{xsd}: {validator.error_log}\n{xml[:3000]}")


# ---------------------------------------------------------------------------------------------- pyone
TEMPLATED = {"TEMPLATE", "USER_TEMPLATE"}


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if value == "":
        return None
    return value


def assert_lossless(xml: str, parsed: Any) -> None:
    """Every element of our answer is in pyone's object, with the same value."""
    _compare(etree.fromstring(xml.encode()), parsed, etree.fromstring(xml.encode()).tag)


def _compare(element: etree._Element, obj: Any, path: str) -> None:
    seen: dict[str, int] = {}
    for child in element:
        name = child.tag
        index = seen.get(name, 0)
        seen[name] = index + 1
        where = f"{path}/{name}[{index}]"
        if not hasattr(obj, name) and hasattr(obj, "anytypeobjs_"):  # xs:any content: kept as XML strings
            serialized = etree.tostring(child, encoding="unicode", with_tail=False)
            assert any(
                etree.tostring(etree.fromstring(s), encoding="unicode") == serialized
                for s in obj.anytypeobjs_
            ), f"pyone lost {where}"
            continue
        assert hasattr(obj, name), f"pyone lost {where}"
        value = getattr(obj, name)
        if isinstance(value, list) and not isinstance(value, str):
            assert index < len(value), f"pyone lost {where}"
            value = value[index]
        if name in TEMPLATED and isinstance(value, dict):
            expected = xml_to_dict(child, empty=None)
            assert _plain(dict(value)) == _plain(expected if isinstance(expected, dict) else {}), where
            continue
        if len(child) or not isinstance(value, (str, int, float, type(None))):
            _compare(child, value, where)  # an element with children (or an empty one of a complex type)
        else:
            text = child.text or ""
            if isinstance(value, int) and not isinstance(value, bool):
                assert value == int(text), where
            elif isinstance(value, float):
                assert value == float(text), where
            else:
                assert (value or "") == text or (value is None and text == ""), (
                    f"{where}: {value!r} != {text!r}"
                )


# ------------------------------------------------------------------------------------ OneFlow, OneGate
def flow(cloud: Any, method: str, path: str, body: Any = None, auth: tuple[str, str] | None = None) -> Any:
    """A OneFlow call as the oneflow CLI makes it: Basic auth, JSON body."""
    import requests

    user, password = cloud.auth.split(":", 1)
    return requests.request(
        method, cloud.endpoints["oneflow"] + path, json=body, auth=auth or (user, password), timeout=30
    )


def service_body(cloud: Any, service_id: int) -> dict[str, Any]:
    reply = flow(cloud, "GET", f"/service/{service_id}")
    assert reply.status_code == 200, reply.text
    return reply.json()["DOCUMENT"]["TEMPLATE"]["BODY"]


def gate_headers(cloud: Any, vm_id: int) -> dict[str, str]:
    """What one-context exports for a guest: the token of its context and its VM id."""
    token = (cloud.state_dir / "vms" / str(vm_id) / "context" / "token.txt").read_text().strip()
    return {"X-ONEGATE-TOKEN": token, "X-ONEGATE-VMID": str(vm_id)}


def two_role_service(
    cloud: Any, one: Any, ready_gate: bool = True, cardinality: int = 2, deployment: str = "straight"
) -> int:
    """Instantiate a SuperLink + SuperNodes service (``deployment``: straight by default; the SuperNodes
    have the SuperLink as parent either way); returns its id."""
    context = 'CONTEXT=[NETWORK="YES", TOKEN="YES", REPORT_READY="YES"]'
    server = one.template.allocate(f'NAME="server"\nCPU="1"\nMEMORY="128"\nNIC=[NETWORK_ID="0"]\n{context}')
    client = one.template.allocate(f'NAME="client"\nCPU="1"\nMEMORY="128"\nNIC=[NETWORK_ID="0"]\n{context}')
    parent_ip = {"ONEAPP_FL_SUPERLINK": "${superlink.template.context.eth0_ip}"}
    template = {
        "name": "flower",
        "deployment": deployment,
        "ready_status_gate": ready_gate,
        "roles": [
            {
                "name": "superlink",
                "type": "vm",
                "template_id": server,
                "cardinality": 1,
                "template_contents": {"CONTEXT": {"ONEAPP_ROLE": "server"}},
            },
            {
                "name": "supernode",
                "type": "vm",
                "template_id": client,
                "cardinality": cardinality,
                "min_vms": 1,
                "max_vms": 5,
                "parents": ["superlink"],
                "template_contents": {"CONTEXT": parent_ip},
            },
        ],
    }
    reply = flow(cloud, "POST", "/service_template", template)
    assert reply.status_code == 201, reply.text
    template_id = int(reply.json()["DOCUMENT"]["ID"])
    action = {"action": {"perform": "instantiate", "params": {"merge_template": {"name": "fl-test"}}}}
    reply = flow(cloud, "POST", f"/service_template/{template_id}/action", action)
    assert reply.status_code == 201, reply.text
    return int(reply.json()["DOCUMENT"]["ID"])


def role_nodes(cloud: Any, service_id: int, role: str) -> list[int]:
    body = service_body(cloud, service_id)
    found = next(r for r in body["roles"] if r["name"] == role)
    return [int(n["deploy_id"]) for n in found.get("nodes", [])]


def report_ready(cloud: Any, vm_id: int) -> None:
    """What one-context's net-99-report-ready does: PUT READY=YES through OneGate."""
    import requests

    reply = requests.put(
        cloud.endpoints["onegate"] + "/vm",
        data={"data": "READY=YES"},
        headers=gate_headers(cloud, vm_id),
        timeout=10,
    )
    assert reply.status_code == 200, reply.text
