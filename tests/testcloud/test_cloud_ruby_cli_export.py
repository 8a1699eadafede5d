"""``onemarketapp export`` (OpenNebula's Ruby CLI, unchanged) of IMAGE and SERVICE_TEMPLATE apps.

The apps are written the way upstream's marketplace monitor writes them
(``src/market_mad/remotes/one/monitor``: ``VMTEMPLATE64`` = the app's ``opennebula_template`` in ONE syntax,
``APPTEMPLATE64`` of a service = its JSON, one ``ROLE = [NAME, APP]`` per role). What the CLI then does is
``marketplaceapp_ext.rb``: an image FROM_APP, a VM template = decoded VMTEMPLATE64 + ``NAME`` +
``DISK=[IMAGE_ID]``, and for a service the child apps exported first, then the service template as a
document; on a failure the children are deleted again (recursively).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cloudtest_helpers import make_qcow2, ready_image, wait_for
from onecli import OneCli

from testcloud import launcher


@pytest.fixture
def cli(cloud: launcher.CloudHandle, make_one_cli: Callable[..., OneCli]) -> OneCli:
    return make_one_cli(cloud.endpoints)


def monitor_template_str(template: dict[str, Any]) -> str:
    """What the monitor's ``template_to_str`` makes of an ``opennebula_template`` hash."""
    parts = []
    for key, value in template.items():
        if isinstance(value, dict):
            members = ",".join(f'{k.upper()}  ="{v}"' for k, v in value.items() if v)
            parts.append(f"{key.upper()} = [ {members}]\n")
        elif isinstance(value, str) and value:
            parts.append(f'{key.upper()} = "{value}"')
    return "\n".join(parts)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


VM_TEMPLATE = {
    "CPU": "1",
    "MEMORY": "256",
    "CONTEXT": {
        "NETWORK": "YES",
        "TOKEN": "YES",
        "REPORT_READY": "YES",
        "SSH_PUBLIC_KEY": "$USER[SSH_PUBLIC_KEY]",
    },
    "NIC": {"NETWORK_ID": "0"},
}


def image_app(one: Any, tmp_path: Path, name: str) -> int:
    image = ready_image(one, make_qcow2(tmp_path / f"{name}.qcow2"), f"src-{name}")
    apptemplate = b64('DEV_PREFIX="vd"\nTYPE="OS"\n')
    app = one.marketapp.allocate(
        f'NAME="{name}"\nORIGIN_ID="{image}"\nTYPE="IMAGE"\nVERSION="1.0"\n'
        f'APPTEMPLATE64="{apptemplate}"\n'
        f'VMTEMPLATE64="{b64(monitor_template_str(VM_TEMPLATE))}"',
        1,
    )
    wait_for(lambda: one.marketapp.info(app).STATE == 1)
    return app


def service_app(one: Any, name: str, roles: dict[str, str], body: dict[str, Any]) -> int:
    role_lines = "".join(f'ROLE = [ NAME = "{r}", APP="{a}" ]\n' for r, a in roles.items())
    return one.marketapp.allocate(
        f'NAME="{name}"\nORIGIN_ID="-1"\nTYPE="SERVICE_TEMPLATE"\nVERSION="1.0"\n'
        f'APPTEMPLATE64="{b64(json.dumps(body))}"\n{role_lines}',
        1,
    )


def snapshot(one: Any) -> tuple[set[int], set[int], set[int]]:
    images = {i.ID for i in one.imagepool.info(-2, -1, -1).IMAGE}
    templates = {t.ID for t in one.templatepool.info(-2, -1, -1).VMTEMPLATE}
    documents = {d.ID for d in one.documentpool.info(-2, -1, -1, 101).DOCUMENT}
    return images, templates, documents


def ids(section: str, out: str) -> list[int]:
    match = re.search(rf"^{section}\n((?:\s+ID: \d+\n)+)", out, re.MULTILINE)
    assert match, f"no {section} in:\n{out}"
    return [int(i) for i in re.findall(r"ID: (\d+)", match.group(1))]


def test_export_image_app_gives_a_usable_vm_template(one: Any, cli: OneCli, tmp_path: Path) -> None:
    one.template.allocate('NAME="unrelated"\nCPU="1"\nMEMORY="64"')  # so template ids differ from image ids
    app = image_app(one, tmp_path, "flower-app")
    done = cli.run("onemarketapp", "export", str(app), "exported", "-d", "1")
    assert done.returncode == 0, done.stdout + done.stderr
    (image_id,) = ids("IMAGE", done.stdout)
    (template_id,) = ids("VMTEMPLATE", done.stdout)
    image = wait_for(lambda: (i := one.image.info(image_id)).STATE == 1 and i)
    assert image.NAME == "exported"
    assert image.TEMPLATE["FROM_APP"] == str(app)
    template = one.template.info(template_id)
    assert template.NAME == "exported"
    assert template.TEMPLATE["DISK"]["IMAGE_ID"] == str(image_id)
    assert template.TEMPLATE["CONTEXT"]["SSH_PUBLIC_KEY"] == "$USER[SSH_PUBLIC_KEY]"
    out = cli.run("onetemplate", "instantiate", str(template_id), "--name", "vm")
    assert out.returncode == 0, out.stdout + out.stderr
    vm_id = int(re.search(r"VM ID: (\d+)", out.stdout).group(1))
    wait_for(lambda: one.vm.info(vm_id).LCM_STATE == 3)


def test_export_service_app_exports_its_roles_and_deploys(one: Any, cli: OneCli, tmp_path: Path) -> None:
    one.template.allocate('NAME="unrelated"\nCPU="1"\nMEMORY="64"')
    image_app(one, tmp_path, "superlink-app")
    image_app(one, tmp_path, "supernode-app")
    # as the factory publishes it: roles without template_id, bound to the apps by the ROLE entries (the CLI
    # sets vm_template and the OCA's ServiceTemplate.validate converts it to template_id)
    body = {
        "name": "flower",
        "deployment": "straight",
        "networks": {"flower_net": "M|network|The network of the pair| |id:"},
        "user_inputs": {"ROUNDS": "O|number|Rounds| |3"},
        "roles": [
            {
                "name": "superlink",
                "type": "vm",
                "cardinality": 1,
                "template_contents": {"NIC": [{"NETWORK_ID": "$flower_net"}]},
            },
            {
                "name": "supernode",
                "type": "vm",
                "cardinality": 2,
                "parents": ["superlink"],
                "template_contents": {"NIC": [{"NETWORK_ID": "$flower_net"}]},
            },
        ],
    }
    app = service_app(
        one, "flower-service", {"superlink": "superlink-app", "supernode": "supernode-app"}, body
    )
    done = cli.run("onemarketapp", "export", str(app), "flower", "-d", "1")
    assert done.returncode == 0, done.stdout + done.stderr
    images, templates = ids("IMAGE", done.stdout), ids("VMTEMPLATE", done.stdout)
    (service_template_id,) = ids("SERVICE_TEMPLATE", done.stdout)
    assert len(images) == len(templates) == 2
    shown = cli.run("oneflow-template", "show", str(service_template_id), "--json")
    assert shown.returncode == 0, shown.stderr
    roles = json.loads(shown.stdout)["DOCUMENT"]["TEMPLATE"]["BODY"]["roles"]
    by_template = {r["name"]: one.template.info(r["template_id"]).NAME for r in roles}
    assert by_template == {
        "superlink": "flower-superlink-0",
        "supernode": "flower-supernode-1",
    }
    values = tmp_path / "values.json"
    values.write_text(
        json.dumps({"networks_values": [{"flower_net": {"id": "0"}}], "user_inputs_values": {"ROUNDS": "5"}})
    )
    out = cli.run("oneflow-template", "instantiate", str(service_template_id), str(values))
    assert out.returncode == 0, out.stdout + out.stderr
    service_id = re.search(r"ID: (\d+)", out.stdout).group(1)
    wait_for(lambda: '"state": 2' in cli.run("oneflow", "show", service_id, "--json").stdout, timeout=30)


def test_failed_exports_leave_nothing_behind(one: Any, cli: OneCli, tmp_path: Path) -> None:
    image_app(one, tmp_path, "superlink-app")
    body = {
        "name": "svc",
        "roles": [
            {"name": "a", "type": "vm", "template_id": 0},
            {"name": "b", "type": "vm", "template_id": 0},
        ],
    }
    missing_child = service_app(one, "svc-missing", {"a": "superlink-app", "b": "no-such-app"}, body)
    good = service_app(one, "svc-good", {"a": "superlink-app", "b": "superlink-app"}, body)
    image = one.marketapppool.info(-2, -1, -1).MARKETPLACEAPP[0].ID
    before = snapshot(one)
    # a child app that does not exist: the children exported so far are deleted with their images
    done = cli.run("onemarketapp", "export", str(missing_child), "x", "-d", "1")
    assert done.returncode != 0
    assert "App `no-such-app` not found" in done.stdout + done.stderr
    wait_for(lambda: snapshot(one) == before)
    # a datastore that does not exist: nothing is made
    for app in (image, good):
        done = cli.run("onemarketapp", "export", str(app), "y", "-d", "99")
        assert done.returncode != 0
        assert "Error getting datastore [99]" in done.stdout + done.stderr
        assert snapshot(one) == before


def test_xml_vmtemplate64_fails_as_on_opennebula(one: Any, cli: OneCli, tmp_path: Path) -> None:
    """Issue 8's first finding, reproduced: a VMTEMPLATE64 written as XML gets ONE-syntax lines appended by
    the CLI, which oned cannot parse. Upstream's export_image keeps the image it already made (it does not
    roll back an IMAGE export), and so does the test cloud; the fix is the ONE syntax the monitor writes."""
    image = ready_image(one, make_qcow2(tmp_path / "x.qcow2"), "src-x")
    xml = "<VMTEMPLATE><CPU>1</CPU><MEMORY>256</MEMORY></VMTEMPLATE>"
    app = one.marketapp.allocate(
        f'NAME="xml-app"\nORIGIN_ID="{image}"\nTYPE="IMAGE"\nVMTEMPLATE64="{b64(xml)}"', 1
    )
    wait_for(lambda: one.marketapp.info(app).STATE == 1)
    images, templates, _ = snapshot(one)
    done = cli.run("onemarketapp", "export", str(app), "from-xml", "-d", "1")
    assert done.returncode != 0
    assert "[one.template.allocate] Parse error: XML Template malformed" in done.stdout + done.stderr
    after_images, after_templates, _ = snapshot(one)
    assert after_templates == templates
    assert len(after_images - images) == 1  # the image upstream's CLI leaves behind


def test_a_service_body_the_oca_refuses_breaks_the_export_after_its_roles(
    one: Any, cli: OneCli, tmp_path: Path
) -> None:
    """The CLI validates the app's JSON (OCA ``ServiceTemplate.validate``) only after exporting the roles'
    apps, and a validation error is not rolled back: upstream leaves the children, so does the test cloud.
    ``OneCli.validate_service_template`` lets a publisher check a body first."""
    bad = {"name": "svc", "roles": [{"name": "super-link", "type": "vm"}]}
    good = {"name": "svc", "roles": [{"name": "superlink", "type": "vm", "template_id": 3}]}
    assert cli.validate_service_template(good) is None
    assert "'name' must match regexp" in (cli.validate_service_template(bad) or "")
    image_app(one, tmp_path, "img-app")
    app = service_app(one, "svc-app", {"super-link": "img-app"}, bad)
    images, templates, documents = snapshot(one)
    done = cli.run("onemarketapp", "export", str(app), "x", "-d", "1")
    assert done.returncode != 0
    assert "'name' must match regexp" in done.stdout + done.stderr
    after = snapshot(one)
    assert (len(after[0] - images), len(after[1] - templates), after[2]) == (1, 1, documents)
