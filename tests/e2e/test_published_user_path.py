"""A released pair used the way docs/deploy.md tells a user to use it, with the user's own tools only.

A release's steps for one pair (test in the cloud, then publish to the cloud's marketplace), then nothing but
OpenNebula's Ruby CLI (``tests/onecli.py``: upstream source, unchanged), OpenSSH and Flower's ``flwr``:

1. ``oneuser update <user> key.tmpl --append``: the user's SSH key;
2. ``onemarketapp export <service app> flower -d <datastore>``: every app of the pair (the service app and,
   through its roles, the SuperLink and SuperNode IMAGE apps) becomes images, VM templates and a service
   template;
3. ``oneflow-template instantiate <id> values.json`` with the user inputs' defaults and the network;
4. ``oneflow show`` until RUNNING (every VM reported READY through OneGate);
5. ``ssh -N -L`` to the SuperLink's Control API, ``scp`` of its CA, and ``flwr run`` of a Flower app
   (the factory app, unchanged) over that tunnel: the run finishes.

Needs root, systemd-nspawn, the test bridge (marker ``cloud``) and OpenNebula's CLI source under
``ONE_UPSTREAM_DIR`` (the one upstream message, from the ``one_location`` fixture).
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from onecli import OneCli
from scratch import scratch_dir

from factory.harness.bareflower import free_port
from factory.harness.campaign import find_pair_specs, local_image
from factory.harness.flwrenv import FlowerEnv, flower_environment
from factory.harness.pair import PASSED
from factory.harness.pairtest import PairTestOptions, run_pair_in_cloud
from factory.one import OneCloud, load_settings
from factory.release.publish import publish
from factory.release.results import write_result
from hostkit.paths import APPS_DIR
from hostkit.progress import Progress
from hostkit.waiting import wait_until

pytestmark = pytest.mark.cloud

PAIR = "pair-sl1.42.0-sn1.42.0-debian12-cpu-edge-numpy"
# OneFlow service states (src/flow/lib/models/service.rb): RUNNING, and WARNING + every FAILED_*
RUNNING, FAILED_STATES = 2, {4, 6, 7, 9, 13, 14}
SSH_OPTIONS = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new", "-o", "ConnectTimeout=10"]


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, OneCloud]]:
    from testcloud.launcher import start

    with scratch_dir(tmp_path_factory, "cloud") as state, start(state, "auto") as handle:
        yield handle, OneCloud(load_settings(environ={}, cloud_dir=state), Progress())


def _ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"{done.args}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _ids(section: str, out: str) -> list[int]:
    """The ids ``onemarketapp export`` prints under ``IMAGE``, ``VMTEMPLATE``, ``SERVICE_TEMPLATE``."""
    match = re.search(rf"^{section}\n((?:\s+ID: \d+\n)+)", out, re.MULTILINE)
    assert match, f"no {section} in:\n{out}"
    return [int(i) for i in re.findall(r"ID: (\d+)", match.group(1))]


def _poll(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """hostkit's wait_until every 3 s, failing the test (AssertionError) at the deadline."""
    return wait_until(check, timeout, interval=3.0, what=what, error=AssertionError)


def _default_values(body: dict[str, Any], network_id: int) -> dict[str, Any]:
    """What a user sends, as docs/deploy.md says: every user input's default (the last ``|`` field) and a
    network for every entry of ``networks``."""
    inputs = {name: spec.split("|")[-1] for name, spec in (body.get("user_inputs") or {}).items()}
    networks = [{name: {"id": str(network_id)}} for name in body.get("networks") or {}]
    return {"user_inputs_values": inputs, "networks_values": networks}


def _service(cli: OneCli, service_id: str) -> dict[str, Any]:
    return json.loads(_ok(cli.run("oneflow", "show", service_id, "--json")))["DOCUMENT"]["TEMPLATE"]["BODY"]


def _wait_running(cli: OneCli, service_id: str) -> dict[str, Any]:
    def running() -> dict[str, Any] | None:
        body = _service(cli, service_id)
        if body["state"] in FAILED_STATES:
            raise AssertionError(f"service {service_id} went to state {body['state']}: {body.get('log')}")
        return body if body["state"] == RUNNING else None

    return _poll(running, 900, f"service {service_id} RUNNING")


def test_a_published_pair_deploys_and_trains_with_the_users_tools(
    cloud: tuple[Any, OneCloud],
    make_one_cli: Callable[..., OneCli],
    flower_current: FlowerEnv,
    tmp_path: Path,
) -> None:
    handle, one_cloud = cloud
    cli = make_one_cli(handle.endpoints)

    # a release of one pair: tested in the cloud, then published to its marketplace
    spec = find_pair_specs([PAIR])[0]
    images = {
        "superlink": local_image(spec.superlink.variant),
        "supernode": local_image(spec.supernode.variant),
    }
    result = run_pair_in_cloud(spec, "user", tmp_path / "work", PairTestOptions(rounds=2), one_cloud, images)
    assert result.status == PASSED, (result.error, json.dumps(result.logs, indent=1)[-4000:])
    results = tmp_path / "results"
    write_result(result, results)
    publication = publish("user", one_cloud, results_root=results)
    (service_app,) = [app for app in publication.apps if app["type"] == "SERVICE_TEMPLATE"]

    # 1. the user's SSH key in the user's template (append: keep what is there)
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    key_template = tmp_path / "key.tmpl"
    key_template.write_text(f'SSH_PUBLIC_KEY="{key.with_suffix(".pub").read_text().strip()}"\n')
    user = handle.endpoints["auth"].split(":", 1)[0]
    _ok(cli.run("oneuser", "update", user, str(key_template), "--append"))

    # 2. export every app of the pair with OpenNebula's CLI
    exported = _ok(
        cli.run(
            "onemarketapp", "export", str(service_app["id"]), "flower", "-d",
            str(one_cloud.image_datastore_id()), timeout=900,
        )
    )  # fmt: skip
    assert len(_ids("IMAGE", exported)) == len(_ids("VMTEMPLATE", exported)) == 2
    (template_id,) = _ids("SERVICE_TEMPLATE", exported)
    for image_id in _ids("IMAGE", exported):
        _poll(
            lambda i=image_id: "<STATE>1</STATE>" in _ok(cli.run("oneimage", "show", str(i), "-x")),
            600,
            f"exported image {image_id} READY",
        )

    # 3. instantiate with a values file: the user inputs' defaults and the network
    shown = json.loads(_ok(cli.run("oneflow-template", "show", str(template_id), "--json")))
    body = shown["DOCUMENT"]["TEMPLATE"]["BODY"]
    assert body.get("networks"), "the published service declares no network for the user to pick"
    values = tmp_path / "values.json"
    values.write_text(json.dumps(_default_values(body, one_cloud.network_id())))
    instantiated = _ok(cli.run("oneflow-template", "instantiate", str(template_id), str(values)))
    service_id = re.search(r"ID: (\d+)", instantiated).group(1)

    try:
        # 4. RUNNING: every VM reported READY through OneGate
        service = _wait_running(cli, service_id)
        superlink_vm = next(r for r in service["roles"] if r["name"] == "superlink")["nodes"][0]["deploy_id"]
        vm_xml = _ok(cli.run("onevm", "show", str(superlink_vm), "-x"))
        address = re.search(r"<ETH0_IP><!\[CDATA\[([\d.]+)\]\]></ETH0_IP>", vm_xml).group(1)
        assert re.search(r"<READY><!\[CDATA\[YES\]\]></READY>", vm_xml), "the SuperLink did not report READY"

        # 5. the SSH tunnel to the Control API, the CA, and a Flower app run with flwr
        known_hosts = tmp_path / "known_hosts"
        ssh = ["-i", str(key), "-o", f"UserKnownHostsFile={known_hosts}", *SSH_OPTIONS]
        ca = tmp_path / "superlink-ca.pem"
        _poll(
            lambda: subprocess.run(
                ["scp", *ssh, f"root@{address}:/etc/flower/tls/ca.pem", str(ca)], capture_output=True
            ).returncode == 0,
            180,
            "scp of the SuperLink's CA",
        )  # fmt: skip
        port = free_port()
        tunnel = subprocess.Popen(
            ["ssh", "-N", "-L", f"{port}:127.0.0.1:9093", *ssh, f"root@{address}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            _poll(lambda: _connects(port), 60, "the SSH tunnel")
            flwr_home = tmp_path / "flwr"
            flwr_home.mkdir()
            (flwr_home / "config.toml").write_text(
                f'[superlink]\ndefault = "appliance"\n\n[superlink.appliance]\n'
                f'address = "127.0.0.1:{port}"\nroot-certificates = "{ca}"\n'
            )
            app = tmp_path / "app"
            shutil.copytree(APPS_DIR / "factory-app", app)  # a copy: nothing of the project is changed
            env = flower_environment(flwr_home=flwr_home)
            ran = subprocess.run(
                [str(flower_current.executable("flwr")), "run", str(app), "appliance", "--stream",
                 "--run-config", "num-server-rounds=2"],
                capture_output=True, text=True, env=env, timeout=600,
            )  # fmt: skip
            output = ran.stdout + ran.stderr
            assert ran.returncode == 0, output[-4000:]
            listed = subprocess.run(
                [str(flower_current.executable("flwr")), "list", "appliance", "--format", "json"],
                capture_output=True, text=True, env=env, timeout=120,
            )  # fmt: skip
            runs = json.loads(listed.stdout[listed.stdout.find("{") :])["runs"]
            assert runs and all(run["status"] == "finished:completed" for run in runs), listed.stdout
        finally:
            tunnel.terminate()
            tunnel.wait(timeout=10)
    finally:
        cli.run("oneflow", "delete", service_id)


def _connects(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(2)
        return probe.connect_ex(("127.0.0.1", port)) == 0
