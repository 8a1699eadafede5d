"""OpenNebula's own Ruby CLI (upstream source, unchanged; ``tests/onecli.py``) against the test cloud.

What a user runs after ``cloud up``: the read commands must answer without errors (``onevm show`` once
printed ``CLUSTER : ERROR`` because ``one.cluster.info`` was missing), and the write commands must change what
upstream's oned changes. The new answers are checked against upstream's XSDs too.
"""

from __future__ import annotations

import json
import re
import xmlrpc.client
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cloudtest_helpers import make_qcow2, ready_image, running_vm, wait_for
from lxml import etree
from onecli import UPSTREAM_ONE, OneCli

from hostkit import upstream
from testcloud import launcher

UPSTREAM_XSD = UPSTREAM_ONE / "share" / "doc" / "xsd"


@pytest.fixture
def cli(cloud: launcher.CloudHandle, make_one_cli: Callable[..., OneCli]) -> OneCli:
    return make_one_cli(cloud.endpoints)


def ok(cli: OneCli, *argv: str, stdin: str | None = None) -> str:
    done = cli.run(*argv, input=stdin)
    assert done.returncode == 0, f"{' '.join(argv)}: rc {done.returncode}\n{done.stdout}\n{done.stderr}"
    # a failed lookup inside a command shows as ``FIELD : ERROR``
    assert not re.search(r":\s+ERROR\s*$", done.stdout, re.MULTILINE), f"{' '.join(argv)}:\n{done.stdout}"
    return done.stdout


def raw_call(cloud: launcher.CloudHandle, method: str, *params: Any) -> list[Any]:
    proxy = xmlrpc.client.ServerProxy(cloud.endpoints["xmlrpc"])
    return getattr(proxy, method)(cloud.auth, *params)


def assert_upstream_valid(xml: str, xsd: str) -> None:
    namespace = "http://opennebula.org/XMLSchema"
    root = etree.fromstring(xml.encode())
    for element in root.iter():
        if isinstance(element.tag, str) and not element.tag.startswith("{"):
            element.tag = f"{{{namespace}}}{element.tag}"
    validator = etree.XMLSchema(etree.parse(str(UPSTREAM_XSD / xsd)))
    assert validator.validate(root), f"{xsd}: {validator.error_log}\n{xml[:2000]}"


def test_read_commands_answer_without_errors(
    cloud: launcher.CloudHandle, one: Any, cli: OneCli, tmp_path: Path
) -> None:
    vm_id = running_vm(one, 'NAME="vm"\nCPU="1"\nMEMORY="128"\nNIC=[NETWORK_ID="0"]')
    image_id = ready_image(one, make_qcow2(tmp_path / "os.qcow2"), "os")
    app_id = one.marketapp.allocate(f'NAME="app"\nORIGIN_ID="{image_id}"\nVERSION="1.0"', 1)
    wait_for(lambda: one.marketapp.info(app_id).STATE == 1)
    shown = ok(cli, "onevm", "show", str(vm_id))
    assert re.search(r"^CLUSTER\s+: default$", shown, re.MULTILINE), shown
    assert re.search(r"^LCM_STATE\s+: RUNNING$", shown, re.MULTILINE)
    assert "vm" in ok(cli, "onevm", "list")
    hosts = ok(cli, "onehost", "list")
    assert re.search(r"^\s+0 nspawn\s+default\s+1\b", hosts, re.MULTILINE), hosts
    assert re.search(r"^STATE\s+: MONITORED", ok(cli, "onehost", "show", "0"), re.MULTILINE)
    assert re.search(r"^\s+0 default\s+2\s+1\s+3$", ok(cli, "onecluster", "list"), re.MULTILINE)
    assert "CLUSTER 0 INFORMATION" in ok(cli, "onecluster", "show", "0")
    assert re.search(r"^NAME\s+: oneadmin", ok(cli, "oneuser", "show"), re.MULTILINE)
    assert "oneadmin" in ok(cli, "oneuser", "list")
    for command in ("onetemplate", "oneimage", "onemarket", "onemarketapp", "onedatastore"):
        ok(cli, command, "list")
    for command in ("oneflow-template", "oneflow"):
        ok(cli, command, "list")
    assert "IMAGE 0 INFORMATION" in ok(cli, "oneimage", "show", str(image_id))
    assert "MARKETPLACE APP 0 INFORMATION" in ok(cli, "onemarketapp", "show", str(app_id))
    assert "MARKETPLACE 1 INFORMATION" in ok(cli, "onemarket", "show", "1")
    assert "DATASTORE 1 INFORMATION" in ok(cli, "onedatastore", "show", "1")
    assert "testcloud" in ok(cli, "onevnet", "show", "0")
    # the OCA's VirtualMachine#monitoring (one.vm.monitoring), as Sunstone's graphs use it
    oca = cli.ruby(
        "require 'opennebula'; require 'json'\n"
        "vm = OpenNebula::VirtualMachine.new_with_id(ARGV[0].to_i, OpenNebula::Client.new)\n"
        "data = vm.monitoring(['MEMORY', 'CPU'])\n"
        "abort(data.message) if OpenNebula.is_error?(data)\n"
        "puts data.to_json",
        str(vm_id),
    )
    assert oca.returncode == 0, oca.stderr
    monitoring = json.loads(oca.stdout)
    assert monitoring["MEMORY"][-1][1] == str(128 * 1024), monitoring


def test_new_answers_follow_the_upstream_xsds(cloud: launcher.CloudHandle, one: Any) -> None:
    upstream.path("one", "share", "doc", "xsd")  # UpstreamMissing: the one message saying how to get them
    vm_id = running_vm(one)
    for method, params, xsd in [
        ("one.cluster.info", (0,), "cluster.xsd"),
        ("one.clusterpool.info", (), "cluster_pool.xsd"),
        ("one.host.info", (0,), "host.xsd"),
        ("one.hostpool.info", (), "host_pool.xsd"),
        ("one.user.info", (-1,), "user.xsd"),
        ("one.userpool.info", (), "user_pool.xsd"),
        ("one.vm.monitoring", (vm_id,), "monitoring_data.xsd"),
    ]:
        answer = raw_call(cloud, method, *params)
        assert answer[0] is True, (method, answer)
        assert_upstream_valid(answer[1], xsd)


def test_missing_objects_are_refused_as_oned_does(cloud: launcher.CloudHandle) -> None:
    for method, obj in [
        ("one.cluster.info", "cluster"),
        ("one.host.info", "host"),
        ("one.user.info", "user"),
    ]:
        answer = raw_call(cloud, method, 7)
        assert answer[:3] == [False, f"[{method}] Error getting {obj} [7].", 0x400], answer
    answer = raw_call(cloud, "one.user.update", 0, 'A="1"', 2)
    assert answer[:3] == [False, "[one.user.update] Wrong update type", 0x1000]


def test_ssh_key_set_with_oneuser_update_reaches_the_context(
    cloud: launcher.CloudHandle, one: Any, cli: OneCli, tmp_path: Path
) -> None:
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDx/test user@host"
    keyfile = tmp_path / "user.tmpl"
    keyfile.write_text(f'SSH_PUBLIC_KEY="{key}"\n')
    ok(cli, "oneuser", "update", "0", str(keyfile), "--append")
    template = one.user.info(0).TEMPLATE
    assert template["SSH_PUBLIC_KEY"] == key
    assert template.get("TOKEN_PASSWORD"), "--append must keep the user's other attributes"
    tid = one.template.allocate(
        'NAME="t"\nCPU="1"\nMEMORY="64"\nCONTEXT=[SSH_PUBLIC_KEY="$USER[SSH_PUBLIC_KEY]", TOKEN="YES"]'
    )
    vm_id = one.template.instantiate(tid, "", False, "", False)
    assert one.vm.info(vm_id).TEMPLATE["CONTEXT"]["SSH_PUBLIC_KEY"] == key
    context_sh = wait_for(lambda: _context_file(cloud, vm_id, "context.sh"))
    assert f"SSH_PUBLIC_KEY='{key}'" in context_sh
    # without --append the template is replaced (update type 0): what the new one lacks is gone
    keyfile.write_text('NOTE="a"\n')
    ok(cli, "oneuser", "update", "0", str(keyfile), "--append")
    keyfile.write_text(f'SSH_PUBLIC_KEY="{key}"\nTOKEN_PASSWORD="{template["TOKEN_PASSWORD"]}"\n')
    ok(cli, "oneuser", "update", "0", str(keyfile))
    assert "NOTE" not in one.user.info(0).TEMPLATE


def _context_file(cloud: launcher.CloudHandle, vm_id: int, name: str) -> str | None:
    path = cloud.state_dir / "vms" / str(vm_id) / "context" / name
    return path.read_text() if path.exists() else None


def test_onetemplate_clone_and_instantiate(one: Any, cli: OneCli) -> None:
    tid = one.template.allocate('NAME="base"\nCPU="1"\nMEMORY="64"\nDESCRIPTION="d"')
    out = ok(cli, "onetemplate", "clone", str(tid), "copy")
    copy_id = int(re.search(r"ID: (\d+)", out).group(1))
    copy = one.template.info(copy_id)
    assert copy.NAME == "copy"
    assert copy.TEMPLATE["DESCRIPTION"] == "d"
    taken = cli.run("onetemplate", "clone", str(tid), "copy")
    assert taken.returncode != 0
    assert "NAME is already taken by TEMPLATE" in taken.stderr + taken.stdout
    vm_out = ok(cli, "onetemplate", "instantiate", str(copy_id), "--name", "from-copy")
    vm_id = int(re.search(r"VM ID: (\d+)", vm_out).group(1))
    assert one.vm.info(vm_id).NAME == "from-copy"
    assert "copy" in ok(cli, "onetemplate", "list")
    assert "DESCRIPTION" in ok(cli, "onetemplate", "show", str(copy_id))


def test_onevm_updateconf_regenerates_the_context_and_reaches_the_guest(
    cloud: launcher.CloudHandle, one: Any, cli: OneCli, tmp_path: Path
) -> None:
    vm_id = running_vm(
        one, 'NAME="vm"\nCPU="1"\nMEMORY="64"\nNIC=[NETWORK_ID="0"]\nCONTEXT=[NETWORK="YES", A="1"]'
    )
    before = one.vm.info(vm_id).TEMPLATE["CONTEXT"]
    conf = tmp_path / "conf"
    # what `onevm updateconf` without a file puts in the editor: the current CONTEXT; a user edits it
    edited = {k: v for k, v in before.items() if k not in ("TARGET", "DISK_ID")} | {"A": "2", "B": "$NAME"}
    members = ", ".join(f'{k}="{v or ""}"' for k, v in edited.items())
    conf.write_text(f'CONTEXT=[{members}]\nOS=[ARCH="x86_64"]\n')
    ok(cli, "onevm", "updateconf", str(vm_id), str(conf))
    vm = one.vm.info(vm_id)
    context = vm.TEMPLATE["CONTEXT"]
    assert context["A"] == "2"
    assert context["B"] == "vm"  # substituted as at creation
    assert context["ETH0_IP"] == before["ETH0_IP"]
    assert (context["TARGET"], context["DISK_ID"]) == (before["TARGET"], before["DISK_ID"])
    assert vm.TEMPLATE["OS"]["ARCH"] == "x86_64"
    # the driver's update_context hook got the regenerated context (the dummy driver writes it out)
    wait_for(lambda: "A='2'" in (_context_file(cloud, vm_id, "context.sh") or ""))
    # append merges; replace drops sections that are not given
    conf.write_text('CONTEXT=[C="3"]\n')
    ok(cli, "onevm", "updateconf", str(vm_id), str(conf), "--append")
    context = one.vm.info(vm_id).TEMPLATE["CONTEXT"]
    assert (context["A"], context["C"]) == ("2", "3")
    assert "OS" in one.vm.info(vm_id).TEMPLATE
    conf.write_text('CONTEXT=[NETWORK="YES", A="4"]\n')
    ok(cli, "onevm", "updateconf", str(vm_id), str(conf))
    template = one.vm.info(vm_id).TEMPLATE
    assert "OS" not in template
    # oned drops values equal to the old ones before parsing, so NETWORK=YES alone regenerates no ETH*
    assert "C" not in template["CONTEXT"]
    assert "ETH0_IP" not in template["CONTEXT"]


def test_updateconf_refusals(cloud: launcher.CloudHandle, one: Any) -> None:
    with_context = running_vm(one, 'NAME="c"\nCPU="1"\nMEMORY="64"\nCONTEXT=[A="1"]')
    answer = raw_call(cloud, "one.vm.updateconf", with_context, 'CONTEXT=[A="$["]\nOS=[ARCH="x"]', 0)
    assert answer[0] is False and answer[2] == 0x2000, answer
    assert answer[1].startswith("[one.vm.updateconf] Cannot parse CONTEXT: syntax error in variable"), answer
    template = one.vm.info(with_context).TEMPLATE
    assert template["CONTEXT"]["A"] == "1" and "OS" not in template  # nothing changed
    no_context = running_vm(one)
    answer = raw_call(cloud, "one.vm.updateconf", no_context, 'CONTEXT=[A="1"]', 0)
    assert answer[:3] == [
        False,
        "[one.vm.updateconf] Virtual machine does not have context, cannot add a new one.",
        0x2000,
    ]
    one.vm.action("terminate", no_context)
    wait_for(lambda: one.vm.info(no_context).STATE == 6)
    answer = raw_call(cloud, "one.vm.updateconf", no_context, 'OS=[ARCH="x86_64"]', 0)
    assert answer[:3] == [False, "[one.vm.updateconf] configuration cannot be updated in state DONE", 0x2000]
    answer = raw_call(cloud, "one.vm.updateconf", no_context, 'OS=[ARCH="x86_64"]', 3)
    assert answer[:3] == [False, "[one.vm.updateconf] Wrong update type", 0x1000]


def test_onetemplate_delete_recursive_takes_the_images_along(
    cloud: launcher.CloudHandle, one: Any, cli: OneCli, tmp_path: Path
) -> None:
    by_id = ready_image(one, make_qcow2(tmp_path / "a.qcow2"), "a")
    by_name = ready_image(one, make_qcow2(tmp_path / "b.qcow2"), "b")
    kept = ready_image(one, make_qcow2(tmp_path / "c.qcow2"), "c")
    tid = one.template.allocate(
        f'NAME="t"\nCPU="1"\nMEMORY="64"\nDISK=[IMAGE_ID="{by_id}"]\nDISK=[IMAGE="b"]'
    )
    plain = one.template.allocate(f'NAME="plain"\nCPU="1"\nMEMORY="64"\nDISK=[IMAGE_ID="{kept}"]')
    ok(cli, "onetemplate", "delete", str(plain))
    ok(cli, "onetemplate", "delete", str(tid), "--recursive")
    remaining = {i.ID for i in one.imagepool.info(-2, -1, -1).IMAGE}
    assert remaining == {kept} and not {by_id, by_name} & remaining
    assert not one.templatepool.info(-2, -1, -1).VMTEMPLATE
    # an image in use cannot go: the template does, and the answer names the image
    vm_id = running_vm(one, f'NAME="user"\nCPU="1"\nMEMORY="64"\nDISK=[IMAGE_ID="{kept}"]')
    used = one.template.allocate(f'NAME="used"\nCPU="1"\nMEMORY="64"\nDISK=[IMAGE_ID="{kept}"]')
    answer = raw_call(cloud, "one.template.delete", used, True)
    assert answer[:3] == [False, f"[one.template.delete] Cannot delete image: {kept}", 0x800], answer
    assert not one.templatepool.info(-2, -1, -1).VMTEMPLATE
    assert one.vm.info(vm_id).STATE == 3


def test_updateconf_changes_only_the_attributes_oned_updates(one: Any) -> None:
    vm_id = running_vm(one, 'NAME="vm"\nCPU="1"\nMEMORY="64"\nOS=[ARCH="x86_64", KEPT="k"]')
    one.vm.updateconf(vm_id, 'OS=[MACHINE="q35", JUNK="j"]\nGRAPHICS=[TYPE="VNC", JUNK="j"]', 0)
    template = one.vm.info(vm_id).TEMPLATE
    assert template["OS"] == {"KEPT": "k", "MACHINE": "q35"}  # ARCH not given: gone; KEPT is not oned's
    assert template["GRAPHICS"] == {"TYPE": "VNC"}
    one.vm.updateconf(vm_id, 'OS=[ARCH="aarch64"]', 1)
    assert one.vm.info(vm_id).TEMPLATE["OS"] == {"ARCH": "aarch64", "KEPT": "k", "MACHINE": "q35"}
