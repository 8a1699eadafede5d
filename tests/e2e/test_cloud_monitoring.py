"""Alerts on a live appliance pair (issue 12, "The factory proves it"): a real pair in the local test cloud
(1 SuperLink + 2 SuperNodes, TLS and SuperNode authentication, the debian12 1.42.0 edge images) with its
metrics opened to the host side of the test bridge (``ONEAPP_FL_METRICS_ALLOW``), and on the host what a
user with their own monitoring runs: ``python -m monitoring.targets file`` with the OneGate identity of a
VM of the service (read from the VM's one-context environment, as a user would), Debian's Prometheus
configured by ``python -m monitoring.config`` and loaded with the shipped rules rendered by
``python -m monitoring.alerts`` with shorter thresholds (the same rules; the shipped file keeps 15 minutes,
a test cannot wait that long: tests/unit/test_monitoring_rules.py runs promtool on both).

Both roles serve their metrics over HTTPS (``ONEAPP_FL_METRICS_TLS=YES``: the SuperLink its own
certificate, each SuperNode one the SuperLink issued through OneGate), which Prometheus verifies with the
appliance CA the SuperLink publishes, and nothing else.

A SuperNode's ``flower-supernode`` is stopped in the middle of a run: FlowerSuperNodeDroppedOut (the
SuperLink's connected count), FlowerSuperNodeDisconnected (the SuperNode's own exporter) and
FlowerTrainingStalled (the next round waits for its two nodes) fire, read from Prometheus'
``/api/v1/alerts``; the SuperNode is started again, the run goes on and every one of them clears.

Needs root, systemd-nspawn and the test bridge (marker ``cloud``); minutes (``slow``).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from scratch import scratch_dir

from e2e.test_faults import Pair, follow, journal_lines, online_ids, round_summary, wait, wait_online
from factory.harness import appliance_templates
from factory.harness.bareflower import free_port
from factory.harness.campaign import find_pair_specs, local_image
from factory.harness.deployment import Deployment
from factory.harness.federation import DEFAULT_APP, FlowerCLI
from factory.harness.flwrenv import FlowerEnv
from factory.harness.pairtest import ca_from_published
from factory.one import OneCloud, load_settings
from hostkit.errors import FactoryError
from hostkit.host import stop_process
from hostkit.paths import REPO_ROOT
from hostkit.progress import Progress
from monitoring import alerts
from testcloud.drivers.network import HOST_ADDRESS

pytestmark = [pytest.mark.cloud, pytest.mark.slow]

PAIR = "pair-sl1.42.0-sn1.42.0-debian12-cpu-edge-numpy"
METRICS_PORT = 9101
# The shipped rules with thresholds a test can wait for. A round of the numpy task takes seconds here, so
# 60 s without one is a stall; the "for" periods only have to outlast a scrape or two.
THRESHOLDS = alerts.Thresholds(
    stalled_after="60s",
    stalled_for="0s",
    dropped_for="10s",
    disconnected_for="10s",
    target_down_for="10s",
)
SCRAPE = "2s"
ROUNDS = 6
# A round waits this long for its replies: longer than the outage, so the stall is the SuperNode's absence
# and not a round given up.
ROUND_TIMEOUT = 400
OUTAGE_ALERTS = ("FlowerSuperNodeDroppedOut", "FlowerSuperNodeDisconnected", "FlowerTrainingStalled")
ONE_ENV = "/var/run/one-context/one_env"  # one-context's environment file (loc-16-gen-env): TOKENTXT, VMID


@dataclass
class Monitored:
    pair: Pair
    prometheus_url: str
    workdir: Path
    logs: dict[str, Path] = field(default_factory=dict)

    def api(self, path: str, **params: str) -> Any:
        query = ("?" + urllib.parse.urlencode(params)) if params else ""
        with urllib.request.urlopen(f"{self.prometheus_url}{path}{query}", timeout=10) as reply:
            answer = json.loads(reply.read())
        assert answer["status"] == "success", answer
        return answer["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.api("/api/v1/query", query=expr)["result"]

    def alerts(self) -> list[dict[str, Any]]:
        return self.api("/api/v1/alerts")["alerts"]

    def firing(self) -> dict[str, list[dict[str, str]]]:
        """alertname -> the labels of each firing instance."""
        found: dict[str, list[dict[str, str]]] = {}
        for alert in self.alerts():
            if alert["state"] == "firing":
                found.setdefault(alert["labels"]["alertname"], []).append(alert["labels"])
        return found

    def active(self) -> set[str]:
        """Names of the alerts pending or firing."""
        return {alert["labels"]["alertname"] for alert in self.alerts()}

    def tail(self, name: str) -> str:
        path = self.logs.get(name)
        return path.read_text(errors="replace")[-2000:] if path and path.exists() else ""


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OneCloud]:
    from testcloud.launcher import start

    with scratch_dir(tmp_path_factory, "cloud") as state, start(state, "auto"):
        yield OneCloud(load_settings(environ={}, cloud_dir=state), Progress())


def launch(cloud: OneCloud, workdir: Path, flower: FlowerEnv) -> tuple[Pair, int]:
    """The pair as the factory deploys it (test_faults.launch), its metrics open to the host's bridge
    address on both roles; returns it and its service template (the caller deletes that one after the
    deployment). The SuperNode role keeps its bounds but not the default elasticity policy: the test
    takes a SuperNode away on purpose, and that policy (CONNECTED < MIN for three 60 s periods) added a
    third SuperNode VM during the outage in two runs here, which is its job but not this test's."""
    spec = find_pair_specs([PAIR])[0]
    sides = {"superlink": spec.superlink, "supernode": spec.supernode}
    deployment = Deployment(cloud, "monitoring", workdir, Progress())
    pair = Pair(deployment, flower)
    allow = {
        "ONEAPP_FL_METRICS_ALLOW": f"{HOST_ADDRESS}/32",
        "ONEAPP_FL_METRICS_PORT": str(METRICS_PORT),
        "ONEAPP_FL_METRICS_TLS": "YES",  # every VM's metrics over HTTPS, one CA (docs/monitoring.md)
    }
    try:
        refs = deployment.import_images(
            {role: local_image(side.variant) for role, side in sides.items()},
            {role: f"flower-{side.variant}" for role, side in sides.items()},
        )
        templates = [deployment.vm_template(role, refs[role].id, side.arch) for role, side in sides.items()]
        body = appliance_templates.service_template(
            f"flower-{deployment.tag}", *templates, spec.supernode.count, "tls-auth",
            extra_context={"superlink": allow, "supernode": allow},
        )  # fmt: skip
        next(role for role in body["roles"] if role["name"] == "supernode")["elasticity_policies"] = []
        template_id = cloud.create_service_template(body)
    except BaseException:
        deployment.clean()
        raise
    try:
        deployment.launch(template_id, 900)
    except FactoryError as error:
        logs = pair.logs()
        deployment.clean()
        cloud.delete_service_template(template_id)
        raise AssertionError(f"{error}\n{logs}") from None
    except BaseException:
        deployment.clean()
        cloud.delete_service_template(template_id)
        raise
    return pair, template_id


def onegate_identity(pair: Pair, workdir: Path) -> tuple[dict[str, str], Path]:
    """What a user copies from a VM of the service: OneGate's endpoint, the VM id and its token (to a
    0600 file: the token is a secret and travels as --token-file, never on a command line)."""
    superlink = pair.superlink()
    lines = pair.sh(superlink, f'. {ONE_ENV} && printf "%s\\n" "$ONEGATE_ENDPOINT" "$VMID" "$TOKENTXT"')
    endpoint, vmid, token = [*lines.splitlines(), "", "", ""][:3]
    assert endpoint and vmid == str(superlink.id) and token, f"VM {superlink.id}: {ONE_ENV} lacks OneGate"
    token_file = workdir / "onegate.token"
    token_file.touch(mode=0o600)
    token_file.write_text(token + "\n")
    return {"ONEGATE_ENDPOINT": endpoint, "VMID": vmid}, token_file


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as reply:
            return reply.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def monitoring_stack(pair: Pair, workdir: Path) -> Iterator[Monitored]:
    """targets.py (file_sd, every 2 s) + Prometheus on loopback, with the rules of THRESHOLDS."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is missing: scripts/setup.sh installs Debian's prometheus package")
    env, token_file = onegate_identity(pair, workdir)
    sd_file, rules, config = (
        workdir / "flower-targets.json",
        workdir / "alerts.yml",
        workdir / "prometheus.yml",
    )
    rules.write_text(alerts.render(THRESHOLDS))
    ca = (
        workdir / "ca.pem"
    )  # the appliance CA as the SuperLink publishes it (checked against its fingerprint)
    ca.write_bytes(ca_from_published(pair.superlink().user_template))
    python = [sys.executable, "-m"]
    rendered = subprocess.run(
        [*python, "monitoring.config", "prometheus", "--rules", str(rules), "--sd-file", str(sd_file),
         "--service", pair.deployment.tag, "--scrape-interval", SCRAPE, "--evaluation-interval", SCRAPE,
         "--refresh-interval", SCRAPE, "--scheme", "https", "--ca-file", str(ca)],
        capture_output=True, text=True, timeout=60, cwd=REPO_ROOT,
    )  # fmt: skip
    assert rendered.returncode == 0, rendered.stderr
    config.write_text(rendered.stdout)
    logs = {name: workdir / f"{name}.log" for name in ("targets", "prometheus")}
    processes: list[subprocess.Popen] = []
    try:
        with logs["targets"].open("wb") as log:
            processes.append(
                subprocess.Popen(
                    [
                        *python,
                        "monitoring.targets",
                        "file",
                        "--out",
                        str(sd_file),
                        "--interval",
                        "2",
                        "--token-file",
                        str(token_file),
                        "--role",
                        f"superlink={METRICS_PORT}",
                        "--role",
                        f"supernode={METRICS_PORT}",
                        "--scheme",
                        "https",
                    ],
                    cwd=REPO_ROOT,
                    env={"PATH": "/usr/bin:/bin", **env},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        wait(
            sd_file.exists, 60, f"the targets file ({logs['targets'].read_text(errors='replace')[-500:]})", 1
        )
        port = free_port()
        with logs["prometheus"].open("wb") as log:
            processes.append(
                subprocess.Popen(
                    [
                        binary,
                        f"--config.file={config}",
                        f"--storage.tsdb.path={workdir / 'tsdb'}",
                        f"--web.listen-address=127.0.0.1:{port}",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        url = f"http://127.0.0.1:{port}"
        wait(lambda: _ready(url), 60, "Prometheus to be ready", 1)
        yield Monitored(pair, url, workdir, logs)
    finally:
        for process in reversed(processes):
            stop_process(process)


@pytest.fixture(scope="module")
def monitored(
    cloud: OneCloud, tmp_path_factory: pytest.TempPathFactory, flower_current: FlowerEnv
) -> Iterator[Monitored]:
    workdir = tmp_path_factory.mktemp("monitoring")
    workdir.chmod(0o700)
    pair, template_id = launch(cloud, workdir / "pair", flower_current)
    try:
        with pair.deployment, monitoring_stack(pair, workdir) as stack:
            yield stack
    finally:
        cloud.delete_service_template(template_id)


def test_prometheus_scrapes_every_vm_of_the_service(monitored: Monitored) -> None:
    pair = monitored.pair
    vms = {str(vm.id): (role, vm.ip) for role in ("superlink", "supernode") for vm in
           pair.deployment.service.role_vms(role)}  # fmt: skip
    assert len(vms) == 3

    def scraped() -> list[dict[str, Any]] | None:
        active = monitored.api("/api/v1/targets")["activeTargets"]
        healthy = [target for target in active if target["health"] == "up"]
        return active if len(active) == len(vms) == len(healthy) else None

    # a SuperNode's exporter starts once the SuperLink issued its certificate (sign every 30 s)
    # a SuperNode's exporter starts once the SuperLink issued its certificate (sign every 30 s)
    active = wait(
        scraped, 240, f"3 healthy targets\n{monitored.tail('targets')}\n{monitored.tail('prometheus')}"
    )
    found = {
        target["labels"]["one_vm_id"]: (target["labels"]["flower_role"], target["labels"]["instance"])
        for target in active
    }
    assert found == {vm: (role, f"{ip}:{METRICS_PORT}") for vm, (role, ip) in vms.items()}
    # over HTTPS, each VM's certificate verified by Prometheus with the appliance CA alone
    assert all(target["scrapeUrl"].startswith("https://") for target in active), active
    # the SuperLink's and each SuperNode's own series arrive through those targets
    connected = wait(
        lambda: monitored.query("flower_superlink_supernodes_connected == 2"), 180, "2 connected"
    )
    assert connected[0]["metric"]["flower_role"] == "superlink"
    assert len(monitored.query("flower_supernode_connected == 1")) == 2
    # the rules are loaded and healthy, the shortened stall threshold among them
    rules = [rule for group in monitored.api("/api/v1/rules")["groups"] for rule in group["rules"]]
    assert len(rules) == 9 and all(rule["health"] == "ok" for rule in rules), rules
    stalled = next(rule for rule in rules if rule["name"] == "FlowerTrainingStalled")
    assert "> 60)" in stalled["query"]


@dataclass
class Timeline:
    """Seconds from the SuperNode's stop (fired) and from its start again (cleared), per alert."""

    fired: dict[str, float] = field(default_factory=dict)
    cleared: dict[str, float] = field(default_factory=dict)


def _submit(cli: FlowerCLI) -> int:
    config = {"task": "numpy", "num-server-rounds": ROUNDS, "min-nodes": 2, "round-timeout": ROUND_TIMEOUT}
    return cli.submit(DEFAULT_APP, config)


def _rounds_finished(monitored: Monitored, run_id: int) -> float:
    found = monitored.query(f'flower_superlink_run_rounds_finished_total{{run_id="{run_id}"}}')
    return float(found[0]["value"][1]) if found else 0.0


def test_a_stopped_supernode_fires_the_dropout_and_stall_alerts_and_they_clear(monitored: Monitored) -> None:
    pair = monitored.pair
    victim = pair.supernodes()[0]
    victim_instance = f"{victim.ip}:{METRICS_PORT}"
    timeline = Timeline()
    wait(
        lambda: monitored.query("flower_superlink_supernodes_connected == 2"),
        180,
        "2 SuperNodes in Prometheus",
    )
    assert not monitored.active() & set(OUTAGE_ALERTS), monitored.alerts()
    with pair.control("alerts") as cli:
        nodes = wait_online(cli)
        run_id = _submit(cli)
        first = follow(cli, run_id, lambda seen: bool(seen.rounds) or seen.status.startswith("finished"), 300)
        assert first.rounds and not first.status.startswith("finished"), (
            f"run {run_id} never reached a first round while running: {first.status}\n{first.log[-3000:]}"
        )
        wait(lambda: _rounds_finished(monitored, run_id) >= 1, 60, "Prometheus to see round 1")
        since = pair.sh(victim, "date +%s")
        pair.sh(victim, "systemctl stop flower-supernode")
        stopped = time.monotonic()
        rounds_at_stop = _rounds_finished(monitored, run_id)

        def all_fired() -> bool:
            firing = monitored.firing()
            for name in OUTAGE_ALERTS:
                if name in firing and name not in timeline.fired:
                    timeline.fired[name] = time.monotonic() - stopped
            return set(OUTAGE_ALERTS) <= timeline.fired.keys()

        try:
            wait(all_fired, 420, "the outage alerts to fire", 2)
        except AssertionError as error:
            raise AssertionError(f"{error}: fired {timeline.fired}; alerts {monitored.alerts()}") from None
        firing = monitored.firing()
        # each alert names the right thing: the SuperLink for the count and the stall, the victim itself
        assert [labels["instance"] for labels in firing["FlowerSuperNodeDisconnected"]] == [victim_instance]
        assert [labels["flower_role"] for labels in firing["FlowerSuperNodeDroppedOut"]] == ["superlink"]
        assert [labels["run_id"] for labels in firing["FlowerTrainingStalled"]] == [str(run_id)]
        assert _rounds_finished(monitored, run_id) <= rounds_at_stop + 1  # no training went on meanwhile
        pair.sh(victim, "systemctl start flower-supernode")
        started = time.monotonic()

        at_stall_clear: dict[str, float] = {}

        def all_cleared() -> bool:
            active = monitored.active()
            for name in OUTAGE_ALERTS:
                if name not in active and name not in timeline.cleared:
                    timeline.cleared[name] = time.monotonic() - started
                    if name == "FlowerTrainingStalled":
                        run = monitored.query(f'flower_superlink_run_active{{run_id="{run_id}"}}')
                        at_stall_clear["active"] = float(run[0]["value"][1]) if run else -1.0
                        at_stall_clear["rounds"] = _rounds_finished(monitored, run_id)
            return set(OUTAGE_ALERTS) <= timeline.cleared.keys()

        try:
            wait(all_cleared, 420, "the outage alerts to clear", 2)
        except AssertionError as error:
            raise AssertionError(
                f"{error}: cleared {timeline.cleared}; alerts {monitored.alerts()}"
            ) from None
        end = follow(cli, run_id, lambda seen: seen.status.startswith("finished"), 900)
        after = online_ids(cli)
        listing = cli.supernodes()
    supernode_vms = sorted(vm.id for vm in pair.supernodes())
    journal = journal_lines(
        pair.sh(victim, f"journalctl -u flower-supernode --no-pager -o cat --since @{since}")
    )
    record = (
        f"run {run_id}: flower-supernode stopped on VM {victim.id} after round {first.rounds[-1].round}; "
        f"fired (s after the stop) {timeline.fired}; cleared (s after the start) {timeline.cleared}; "
        f"rounds finished at the stop {rounds_at_stop}, at the stall's clear {at_stall_clear}; "
        f"run {end.status!r}: {round_summary(end.rounds)}; online before {sorted(nodes)}, after "
        f"{sorted(after)}; SuperNode VMs {supernode_vms}; the SuperLink's nodes {listing}\n"
        f"the victim's journal since the stop:\n{journal}"
    )
    print(record)
    # the stall cleared because training resumed (a round finished after the restart) while the run was
    # still active, not because the run ended
    assert at_stall_clear["active"] == 1 and at_stall_clear["rounds"] > rounds_at_stop, record
    assert end.status == "finished:completed", record
    assert [r.round for r in end.rounds] == list(range(1, ROUNDS + 1)), record
    assert end.rounds[-1].train_replies == 2, record
    assert after == nodes and len(supernode_vms) == 2, record
    (monitored.workdir / "timeline.json").write_text(
        json.dumps({"fired": timeline.fired, "cleared": timeline.cleared})
    )
