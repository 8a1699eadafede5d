"""The fault suite (issue 9, "Done means"): a real appliance pair in the local test cloud (container driver),
hurt while it works, each fault ending in a completed run or a clear failure with nothing lost.

1. a SuperNode's ``flower-supernode`` killed (``kill -9``) mid-run: systemd restarts it, flower-node-release
   frees its stale activation, and the run finishes with every round;
2. the SuperLink powered off (``one.vm.action("poweroff")``) mid-run and resumed: the interrupted run is
   reported finished (not "running" for ever), the CA and the SuperNodes' registrations survive, both
   SuperNodes come back online and a new run completes;
3. OneGate stopped while the service boots (as its VMs are created: the SuperLink and the SuperNodes boot
   together, OneFlow deployment none; before the SuperNodes found the SuperLink), started again 45 s
   later: the appliances retry, the service reaches RUNNING and a run completes.

The pieces are the factory's own: the pair's images, VM and service templates, OneFlow service, logs and
teardown through factory/harness/deployment.py (Deployment, on factory/one's OneCloud, with its SSH tunnel
to the SuperLink's Control API) and the ``flwr`` CLI (factory/harness/federation.py FlowerCLI,
FederationRunner).
Guests are reached as root over SSH with the test's key. The OneGate test (its own pair) comes first in
the file, so that one pair runs at a time. Needs root, systemd-nspawn and the test bridge (marker
``cloud``) and the debian12 1.42.0 edge images (built here, cached by content); minutes (``slow``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from scratch import scratch_dir

from factory.harness.campaign import find_pair_specs, local_image
from factory.harness.deployment import Deployment
from factory.harness.federation import (
    DEFAULT_APP,
    FederationRunner,
    FlowerCLI,
    RoundRecord,
    parse_report_lines,
    supernode_is_online,
)
from factory.harness.flwrenv import FlowerEnv
from factory.harness.pairtest import ca_from_published
from factory.harness.tunnel import SSHSession
from factory.one import OneCloud, load_settings
from factory.one.cloud import ServiceDeployment, VMInfo
from hostkit.errors import FactoryError
from hostkit.progress import Progress
from hostkit.waiting import wait_until

pytestmark = [pytest.mark.cloud, pytest.mark.slow]

PAIR = "pair-sl1.42.0-sn1.42.0-debian12-cpu-edge-numpy"
POWEROFF = 8  # VM STATE (include/VirtualMachine.h)
# A round waits for its replies this long (the app's default is 600 s): a reply lost to a fault shows as a
# short round within the test's time, not as a ten-minute stall.
ROUND_TIMEOUT = 90
MAIN_PID = "systemctl show -p MainPID --value flower-supernode"
DISCOVERY_LINES = (
    "grep -h -e 'for the SuperLink' -e 'found the SuperLink' /var/log/one-appliance/*.log || true"
)


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, OneCloud]]:
    from testcloud.launcher import start

    with scratch_dir(tmp_path_factory, "cloud") as state, start(state, "auto") as handle:
        yield handle, OneCloud(load_settings(environ={}, cloud_dir=state), Progress())


@dataclass
class Pair:
    """One appliance pair as the factory deploys it (factory/harness/deployment.py: its SSH key, templates,
    service, logs and teardown), and the ways in the faults need: SSH as root, the Control API."""

    deployment: Deployment
    flower: FlowerEnv

    @property
    def cloud(self) -> OneCloud:
        return self.deployment.cloud  # type: ignore[return-value]  # a PairCloud: OneCloud here

    @property
    def workdir(self) -> Path:
        return self.deployment.workdir

    def superlink(self) -> VMInfo:
        return self.deployment.service.role_vms("superlink")[0]

    def supernodes(self) -> list[VMInfo]:
        return sorted(self.deployment.service.role_vms("supernode"), key=lambda vm: vm.id)

    def ssh(self, vm: VMInfo, timeout: float = 180) -> SSHSession:
        assert vm.ip, vm.describe()
        key, known_hosts = self.deployment.key.private, self.deployment.known_hosts
        return SSHSession(vm.ip, "root", key, known_hosts=known_hosts).connect(timeout=timeout)

    def sh(self, vm: VMInfo, command: str) -> str:
        with self.ssh(vm) as session:
            status, out, err = session.execute(command, timeout=60)
        assert status == 0, f"VM {vm.id}: `{command}` exited {status}: {out}{err}"
        return out.strip()

    @contextlib.contextmanager
    def control(self, name: str) -> Iterator[FlowerCLI]:
        """``flwr`` on the SuperLink's Control API through a new SSH tunnel, trusting the CA the SuperLink
        published through OneGate (the same CA is checked against the file in the VM)."""
        superlink = self.superlink()
        with self.deployment.control_api(superlink, ca_from_published(superlink.user_template)) as connection:
            yield FlowerCLI(self.flower, self.workdir / f"flwr-{name}", connection)

    def logs(self) -> str:
        collected = self.deployment.collect_logs()
        return "\n".join(f"== {name}\n{text[-3000:]}" for name, text in collected.items()) or "(no service)"


def launch(
    cloud: OneCloud,
    workdir: Path,
    flower: FlowerEnv,
    name: str,
    while_booting: Callable[[ServiceDeployment], None] | None = None,
) -> Pair:
    """The pair's images, VM templates and OneFlow service (TLS and SuperNode authentication), made by the
    factory's Deployment as factory/harness/pairtest.py makes them, waited for until RUNNING;
    ``while_booting(service)`` runs right after the instantiation. The caller cleans up (``deployment``)."""
    spec = find_pair_specs([PAIR])[0]
    sides = {"superlink": spec.superlink, "supernode": spec.supernode}
    deployment = Deployment(cloud, name, workdir, Progress())
    pair = Pair(deployment, flower)
    try:
        refs = deployment.import_images(
            {role: local_image(side.variant) for role, side in sides.items()},
            {role: f"flower-{side.variant}" for role, side in sides.items()},
        )
        templates = [deployment.vm_template(role, refs[role].id, side.arch) for role, side in sides.items()]
        service = deployment.service_template(*templates, spec.supernode.count, "tls-auth")
        deployment.launch(service, 900, on_launched=while_booting)
    except FactoryError as error:
        logs = pair.logs()
        deployment.clean()
        raise AssertionError(f"{error}\n{logs}") from None
    except BaseException:
        deployment.clean()
        raise
    return pair


def wait(check: Callable[[], Any], timeout: float, what: str, interval: float = 3.0) -> Any:
    """hostkit's wait_until, failing the test (AssertionError) at the deadline."""
    return wait_until(check, timeout, interval=interval, what=what, error=AssertionError)


def online_ids(cli: FlowerCLI) -> set[int]:
    try:
        return {int(node["node-id"]) for node in cli.supernodes() if supernode_is_online(node)}
    except FactoryError:
        return set()


def wait_online(cli: FlowerCLI, count: int = 2, timeout: float = 300) -> set[int]:
    def enough() -> set[int] | None:
        ids = online_ids(cli)
        return ids if len(ids) >= count else None

    return wait(enough, timeout, f"{count} SuperNodes online")


def submit(cli: FlowerCLI, rounds: int) -> int:
    config = {"task": "numpy", "num-server-rounds": rounds, "min-nodes": 2, "round-timeout": ROUND_TIMEOUT}
    return cli.submit(DEFAULT_APP, config)


@dataclass
class Progressed:
    status: str
    rounds: list[RoundRecord]
    log: str


def follow(cli: FlowerCLI, run_id: int, done: Callable[[Progressed], bool], timeout: float) -> Progressed:
    """Poll the run's status and log until ``done``; the last observation either way (the caller asserts)."""
    deadline = time.monotonic() + timeout
    seen = Progressed("", [], "")
    while time.monotonic() < deadline:
        try:
            status = str(cli.run_status(run_id).get("status", ""))
            log = cli.run_log(run_id)
        except FactoryError as error:  # a busy SuperLink: try again
            seen = Progressed(seen.status, seen.rounds, f"{seen.log}\n(poll failed: {error})")
            time.sleep(3)
            continue
        seen = Progressed(status, parse_report_lines(log)[1], log)
        if done(seen):
            return seen
        time.sleep(2)
    return seen


def journal_lines(journal: str) -> str:
    """The lines of a SuperNode's journal that tell what its restart did (not its message traffic)."""
    words = ("release", "Failed", "SuperNode ID", "Main process", "restart", "ERROR", "Started", "Stopped")
    return "\n".join(line for line in journal.splitlines() if any(word in line for word in words))[-3000:]


def round_summary(rounds: list[RoundRecord]) -> str:
    return ", ".join(
        f"r{r.round}: {r.train_replies}+{r.evaluate_replies} replies in {r.seconds:.0f} s"
        + (f" errors {r.errors}" if r.errors else "")
        for r in rounds
    )


def test_onegate_stopped_during_a_boot_delays_the_service_but_it_runs(
    cloud: tuple[Any, OneCloud], tmp_path: Path, flower_current: FlowerEnv
) -> None:
    handle, one_cloud = cloud
    outage = 45.0
    seen: dict[str, Any] = {}

    def stop_onegate_when_the_supernodes_are_created(service: ServiceDeployment) -> None:
        # the VMs are created (deployment none: all at once, before any has booted): stop OneGate at once
        wait(lambda: service.role_vms("supernode"), 900, "the SuperNode VMs", interval=1.0)
        handle.stop_server("onegate")
        seen["stopped"] = time.monotonic()
        try:
            time.sleep(outage)
            supernodes = sorted(service.role_vms("supernode"), key=lambda vm: vm.id)
            seen["during"] = {vm.id: vm.user_template.get("ONEAPP_FL_STATUS", "") for vm in supernodes}
            seen["published"] = [vm.id for vm in supernodes if vm.user_template.get("ONEAPP_FL_NODE_PUBKEY")]
        finally:
            handle.start_server("onegate")
        seen["down_for"] = time.monotonic() - seen["stopped"]

    pair = launch(
        one_cloud, tmp_path / "pair", flower_current, "onegate", stop_onegate_when_the_supernodes_are_created
    )
    with pair.deployment:
        running_after = time.monotonic() - seen["stopped"]
        found = {vm.id: pair.sh(vm, DISCOVERY_LINES) for vm in pair.supernodes()}
        record = (
            f"OneGate down {seen['down_for']:.0f} s from the SuperNodes' creation; their status then "
            f"{seen['during']}, keys published by {seen['published']}; service RUNNING {running_after:.0f} s "
            f"after the stop; {found}"
        )
        # the outage landed before the SuperNodes found the SuperLink (nothing reached OneGate)
        assert not seen["published"], record
        assert all("found the SuperLink" in lines for lines in found.values()), record
        with pair.control("onegate") as cli:
            runner = FederationRunner(pair.flower, pair.workdir / "runner", cli.connection)
            outcome = runner.run(rounds=2, timeout=600)
        assert outcome.passed, f"{record}\nrun {outcome.run_id}: {outcome.failures()}"


@pytest.fixture(scope="module")
def pair(
    cloud: tuple[Any, OneCloud], tmp_path_factory: pytest.TempPathFactory, flower_current: FlowerEnv
) -> Iterator[Pair]:
    """One pair for the SuperNode and SuperLink faults (each test starts by waiting for both online)."""
    deployed = launch(cloud[1], tmp_path_factory.mktemp("faults"), flower_current, "faults")
    with deployed.deployment:
        yield deployed


def test_a_supernode_killed_mid_run_restarts_and_the_run_completes(pair: Pair) -> None:
    rounds = 6
    victim = pair.supernodes()[0]
    restarts_before = int(pair.sh(victim, "systemctl show -p NRestarts --value flower-supernode"))
    with pair.control("kill") as cli:
        nodes = wait_online(cli)
        started = time.monotonic()
        run_id = submit(cli, rounds)
        first = follow(cli, run_id, lambda seen: bool(seen.rounds) or seen.status.startswith("finished"), 300)
        assert first.rounds and not first.status.startswith("finished"), (
            f"run {run_id} never reached a first round while running: {first.status}\n{first.log[-3000:]}"
        )
        kill_after = first.rounds[-1].round
        since = pair.sh(victim, "date +%s")
        killed_pid = pair.sh(victim, f'pid=$({MAIN_PID}); kill -9 "$pid"; echo "$pid"')
        killed_at, killed_wall = time.monotonic() - started, time.time()
        end = follow(cli, run_id, lambda seen: seen.status.startswith("finished"), 900)
        finished_at = time.monotonic() - started
        after = online_ids(cli)
    journal = pair.sh(victim, f"journalctl -u flower-supernode --no-pager -o cat --since @{since}")
    restarts = int(pair.sh(victim, "systemctl show -p NRestarts --value flower-supernode"))
    # the round the kill landed in: the first to finish after it (the guests share this host's clock)
    hit = next((r.round for r in end.rounds if r.finished > killed_wall), None)
    record = (
        f"run {run_id}: kill -9 of flower-supernode (pid {killed_pid}) in VM {victim.id} at "
        f"{killed_at:.0f} s, after round {kill_after} was seen, in round {hit}; run {end.status!r} at "
        f"{finished_at:.0f} s; rounds: "
        f"{round_summary(end.rounds)}; restarts {restarts_before} -> {restarts}; online before "
        f"{sorted(nodes)}, after {sorted(after)}\njournal after the kill:\n{journal_lines(journal)}"
    )
    # killed, systemd restarted it (observed: NRestarts 0 -> 2 for one kill), and it freed its stale
    # activation instead of being refused (code 2004)
    assert restarts >= restarts_before + 1, record
    assert "released the previous activation of node" in journal, record
    assert "Failed to activate" not in journal, record
    # the run went on: it finished with every requested round reported, both nodes online with their ids
    assert end.status == "finished:completed", record
    assert [r.round for r in end.rounds] == list(range(1, rounds + 1)), record
    assert after == nodes, record
    # the kill landed mid-run; only the round it landed in may lose the killed node's reply, and from the
    # next round on both nodes answer again
    assert hit is not None, record
    short = [r.round for r in end.rounds if min(r.train_replies, r.evaluate_replies) < 2 or r.errors]
    assert set(short) <= {hit}, record
    # the reply lost is named: once the restart released the killed node's activation, the SuperLink
    # answers its in-flight message with Flower's "Node Unavailable" error (observed in round 2 of 6)
    assert all("Node Unavailable" in error for r in end.rounds for error in r.errors), record
    assert all(min(r.train_replies, r.evaluate_replies) >= 1 for r in end.rounds), record


def test_a_superlink_powered_off_mid_run_and_resumed_loses_nothing(pair: Pair) -> None:
    cloud, superlink = pair.cloud, pair.superlink()
    fingerprint = superlink.user_template.get("ONEAPP_FL_CA_FINGERPRINT", "")
    ca_file = "sha256sum /etc/flower/tls/ca.pem"
    ca_before = pair.sh(superlink, ca_file)
    keys_before = {vm.id: vm.user_template.get("ONEAPP_FL_NODE_PUBKEY", "") for vm in pair.supernodes()}
    with pair.control("before-poweroff") as cli:
        nodes = wait_online(cli)
        started = time.monotonic()
        run_id = submit(cli, 6)
        first = follow(cli, run_id, lambda seen: bool(seen.rounds) or seen.status.startswith("finished"), 300)
        assert first.rounds and not first.status.startswith("finished"), (
            f"run {run_id} never reached a first round while running: {first.status}\n{first.log[-3000:]}"
        )
    cloud.one.vm.action("poweroff", superlink.id)  # the tunnel is closed: nothing waits on the dying VM
    poweroff_at = time.monotonic() - started
    wait(lambda: cloud.one.vm.info(superlink.id).STATE == POWEROFF, 300, "SuperLink POWEROFF")
    off = cloud.vm_info(superlink.id).user_template
    off_state = (off.get("READY"), off.get("ONEAPP_FL_STATUS"))
    cloud.one.vm.action("resume", superlink.id)
    resumed_at = time.monotonic() - started

    def ready_again() -> VMInfo | None:
        vm = cloud.vm_info(superlink.id)
        return vm if vm.ready and vm.user_template.get("ONEAPP_FL_STATUS") == "ready" else None

    back = wait(ready_again, 600, "SuperLink READY again after resume")
    ready_at = time.monotonic() - started
    with pair.control("after-resume") as cli:
        after = wait_online(cli)
        ended = follow(cli, run_id, lambda seen: seen.status.startswith("finished"), 600)
        settled_at = time.monotonic() - started
        record = (
            f"run {run_id}: SuperLink VM {superlink.id} powered off at {poweroff_at:.0f} s after round "
            f"{first.rounds[-1].round} (off: READY, status = {off_state}), resumed at {resumed_at:.0f} s, "
            f"READY at {ready_at:.0f} s; the interrupted run: {ended.status!r} at {settled_at:.0f} s, rounds "
            f"{[r.round for r in ended.rounds]}; nodes online before {sorted(nodes)}, after {sorted(after)}"
        )
        # while off the SuperLink had withdrawn its readiness (item 12)
        assert off_state == ("NO", "stopped"), record
        # a clear outcome for the interrupted run: reported, and not left "running" for ever. Its ServerApp
        # died with the VM; the persistent state still holds the run's task, whose heartbeat lapsed: Flower
        # finishes an expired running task as failed ("No heartbeat received from the task",
        # _cleanup_expired_task_tokens in flwr/supercore/corestate/sql_corestate.py, 1.42.0)
        assert ended.status == "finished:failed", record
        # nothing lost: the same CA (published and on disk), the same SuperNode keys and node ids
        assert back.user_template.get("ONEAPP_FL_CA_FINGERPRINT") == fingerprint, record
        assert pair.sh(back, ca_file) == ca_before, record
        assert {vm.id: vm.user_template.get("ONEAPP_FL_NODE_PUBKEY", "") for vm in pair.supernodes()} == (
            keys_before
        ), record
        assert after == nodes, record
        # and the pair works: a new run completes, every node in every round
        runner = FederationRunner(pair.flower, pair.workdir / "runner-after-resume", cli.connection)
        outcome = runner.run(rounds=2, timeout=600)
        assert outcome.passed, f"{record}\nnew run {outcome.run_id}: {outcome.failures()}"
