"""The release pair with the service's monitoring role on (issue 12, "The factory proves it"), booted for
real in the local test cloud: the debian12 1.42.0 edge numpy pair as ``run_pair_in_cloud`` deploys a
campaign's monitoring pair (``monitoring_role=True``): 1 SuperLink + 2 SuperNodes + 1 VM of the SuperLink
image in ``ONEAPP_FL_APPLIANCE_ROLE=monitoring``, the metrics of the others open to the service network
and, the pair having Flower TLS (``tls-auth``), served over HTTPS with the appliance CA
(``ONEAPP_FL_METRICS_TLS=YES``, monitorcheck.metrics_context).

After the rounds the harness's check ``monitoring/monitoring_role`` (factory/harness/monitorcheck.py) asks
the monitoring VM's Prometheus for its targets, every dashboard panel's query and the loss per round; the
test wraps that check to look at the monitoring VM while the service still runs: no SuperLink there (no
unit, nothing published that a SuperNode would follow), Prometheus running as its own user on loopback,
READY reported, every target scraped over https (Prometheus' targets API), plain HTTP to an exporter
refused, and the same live Prometheus failing the check when the recorded losses are tampered with. The
``monitoring/metrics_endpoints`` check reads every VM's metrics over HTTPS too (curl with the VM's CA).

Needs root, systemd-nspawn and the test bridge (marker ``cloud``); a few minutes (``slow``).
"""

from __future__ import annotations

import copy
import json
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from scratch import scratch_dir

from factory.harness import monitorcheck, pairtest
from factory.harness.campaign import find_pair_specs, local_image
from factory.harness.pair import PASSED
from factory.harness.pairtest import PairTestOptions, run_pair_in_cloud
from factory.harness.tunnel import SSHSession
from factory.one import OneCloud, load_settings
from hostkit.progress import Progress

pytestmark = [pytest.mark.cloud, pytest.mark.slow]

PAIR = "pair-sl1.42.0-sn1.42.0-debian12-cpu-edge-numpy"


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OneCloud]:
    from testcloud.launcher import start

    with scratch_dir(tmp_path_factory, "cloud") as state, start(state, "auto"):
        yield OneCloud(load_settings(environ={}, cloud_dir=state), Progress())


def test_the_monitoring_pair_is_scraped_and_its_dashboard_shows_the_rounds(
    cloud: OneCloud, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = find_pair_specs([PAIR])[0]
    images = {role: local_image(getattr(spec, role).variant) for role in ("superlink", "supernode")}
    seen: dict[str, Any] = {}
    original = monitorcheck.monitoring_check

    def observed(
        deployment: Any, service: Any, federations: list[dict[str, Any]], tls: bool = False
    ) -> dict[str, Any]:
        seen["tls"] = tls
        check = original(deployment, service, federations, tls=tls)
        monitor = service.role_vms("monitoring")[0]
        seen["monitor"] = monitor
        seen["superlinks"] = [vm.id for vm in service.role_vms("superlink")]
        seen["endpoints"] = {vm.id: vm.user_template.get("ONEAPP_FL_ENDPOINT") for vm in service.vms()}
        session = SSHSession(
            monitor.ip, deployment.cloud.settings.ssh_user, deployment.key.private,
            known_hosts=deployment.known_hosts,
        )  # fmt: skip
        with session.connect(timeout=60) as ssh:

            def run(command: str) -> str:
                return ssh.execute(command, timeout=60)[1].strip()

            seen["units"] = run(
                "for u in flower-superlink flower-fleet-proxy flower-keysync flower-metrics flower-targets "
                "flower-prometheus prometheus; do printf '%s=%s\\n' $u $(systemctl is-active $u); done"
            )
            seen["prometheus_user"] = run("ps -o user= -C prometheus")
            seen["listening"] = run("ss -Hltn 'sport = :9090'")
            seen["status"] = run("cat /etc/one-appliance/status")
            seen["ca"] = run("test -e /etc/flower/tls/ca.key && echo present || echo absent")
            targets = json.loads(run("curl -s 'http://127.0.0.1:9090/api/v1/targets?state=active'"))
            seen["scrape_urls"] = sorted(t["scrapeUrl"] for t in targets["data"]["activeTargets"])
            port = pairtest.metrics_port()
            seen["plain"] = {}
            for vm in service.role_vms("superlink") + service.role_vms("supernode"):
                url = shlex.quote(f"http://{vm.ip}:{port}/metrics")
                # the exporter speaks TLS only: a plain request gets no metrics (curl fails or the
                # answer is no exposition)
                status, out, err = ssh.execute(f"curl -sS --max-time 10 {url}", timeout=30)
                seen["plain"][vm.id] = (status, out[:200], err.strip()[:200])
            tampered = copy.deepcopy(federations)
            tampered[0]["rounds"][-1]["evaluate_metrics"]["eval_loss"] += 1.0
            roles = monitorcheck.SCRAPED_ROLES
            expected = {str(vm.id): role for role in roles for vm in service.role_vms(role)}
            seen["tampered"] = monitorcheck.evaluate(
                monitorcheck.curl_get(lambda command: ssh.execute(command, timeout=90)),
                expected, tampered, settle=0, scheme="https",
            )  # fmt: skip
        return check

    monkeypatch.setattr(monitorcheck, "monitoring_check", observed)
    options = PairTestOptions(rounds=3, monitoring_role=True)
    result = run_pair_in_cloud(spec, "ci", tmp_path / "work", options, cloud, images)
    check = next((c for c in result.checks if c["name"] == monitorcheck.CHECK), None)
    assert check is not None and check["passed"] and check["task"] == "monitoring", (
        check,
        result.error[:3000],
    )
    assert result.status == PASSED, (result.error, json.dumps(result.logs, indent=1)[-6000:])
    print(f"monitoring/monitoring_role: {check['detail']}")  # shown with -rP: what a release records
    # every VM of the service up, and the loss per round of every run equal to the recorded one
    assert "3 VMs of the service up as targets over https" in check["detail"], check
    assert seen["tls"] is True  # the harness turned the metrics' TLS on for this tls-auth pair
    # Prometheus' own view: all three exporters scraped at https://<VM address>:port/metrics
    assert len(seen["scrape_urls"]) == 3, seen["scrape_urls"]
    assert all(url.startswith("https://") for url in seen["scrape_urls"]), seen["scrape_urls"]
    print(f"scraped: {seen['scrape_urls']}")
    # plain HTTP to each exporter is refused: curl fails, no exposition comes back
    for vm_id, (status, out, err) in seen["plain"].items():
        print(f"plain HTTP to VM {vm_id}: curl exit {status}: {err}")
        assert status != 0 and "flower_" not in out, (vm_id, status, out, err)
    endpoints = next(c for c in result.checks if c["name"] == pairtest.METRICS_CHECK)
    assert endpoints["passed"] and "3 endpoints answer" in endpoints["detail"], endpoints
    print(f"monitoring/metrics_endpoints: {endpoints['detail']}")
    rounds = sum(len(f["rounds"]) for f in result.federations if f.get("run_id") is not None)
    assert f"; {rounds} round losses equal the results" in check["detail"], check

    monitor = seen["monitor"]
    assert monitor.ready and monitor.user_template.get("ONEAPP_FL_STATUS") == "ready"
    assert monitor.user_template.get("ONEAPP_FL_PROMETHEUS", "").startswith("http://127.0.0.1:9090")
    assert all(vm_id in seen["plain"] for vm_id in seen["superlinks"])
    # one SuperLink: the monitoring VM runs none and published no endpoint a SuperNode could follow
    assert len(seen["superlinks"]) == 1 and seen["endpoints"][monitor.id] is None
    units = dict(line.split("=", 1) for line in seen["units"].splitlines())
    assert units["flower-targets"] == units["flower-prometheus"] == "active", units
    assert {units[u] for u in ("flower-superlink", "flower-fleet-proxy", "flower-keysync", "prometheus")} == {
        "inactive"
    }, units
    assert seen["ca"] == "absent" and seen["status"] == "bootstrap_success"
    assert seen["prometheus_user"] == "prometheus"  # not root
    assert "127.0.0.1:9090" in seen["listening"] and "0.0.0.0:9090" not in seen["listening"]
    # the same live Prometheus fails the check when the results say otherwise
    assert not seen["tampered"]["passed"] and "the panel shows loss" in seen["tampered"]["detail"]
