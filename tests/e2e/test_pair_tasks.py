"""Which tasks a pair runs and what makes it pass: the numpy canary plus the task of its SuperNode image's
framework, each held to apps/task-checks.toml; the pair's error names the framework task's failed check
first; the tasks run one after another or side by side (``TaskOverlap.ALL``) and are recorded in the
same order either way. The runner is played by a stub that returns what a federation would have reported."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest

from factory.harness.federation import FederationOutcome, evaluate_checks, parse_report_lines, task_criteria
from factory.harness.pair import FAILED, PASSED, PairResult, PairSpec, Side
from factory.harness.pairtest import (
    PairTestOptions,
    TaskOverlap,
    _finish,
    _record_outcome,
    _run_tasks,
    error_lines,
    failure_text,
    framework_task,
    pair_tasks,
)
from hostkit.errors import ConfigError, FactoryError
from hostkit.progress import Progress

ROUND = (
    'FF-ROUND {{"round": {n}, "seconds": 5.0, "finished": {n}.0, "train": {{"replies": 2, "errors": []}}, '
    '"evaluate": {{"replies": 2, "errors": []}}, "train_metrics": {{}}, '
    '"evaluate_metrics": {{"eval_loss": {loss}, "{metric}": {value}, "num-examples": 64.0}}}}\n'
)


def _spec(framework: str, profile: str = "standard") -> PairSpec:
    link = Side(
        variant=f"superlink-1.42.0-debian12-cpu-standard-{framework}-x86_64",
        flower="1.42.0",
        os="debian12",
        accel="cpu",
        profile="standard",
        framework=framework,
        arch="x86_64",
    )
    node = Side(
        variant=f"supernode-1.42.0-debian12-cpu-{profile}-{framework}-x86_64",
        flower="1.42.0",
        os="debian12",
        accel="cpu",
        profile=profile,
        framework=framework,
        arch="x86_64",
        count=2,
    )
    return PairSpec(f"pair-{framework}-{profile}", link, node)  # fmt: skip


@dataclass
class StubRunner:
    """Answers ``run(task=...)`` with rounds whose final metric is ``final[task]`` (and falling loss)."""

    final: dict[str, float]
    raises: dict[str, str] = field(default_factory=dict)
    ran: list[str] = field(default_factory=list)

    def run(self, rounds: int, task: str, expected_supernodes: int, **_: object) -> FederationOutcome:
        self.ran.append(task)
        if task in self.raises:
            raise FactoryError(self.raises[task])
        criteria = task_criteria(task)
        outcome = FederationOutcome(app="factory-app", task=task, strategy="fedavg", rounds_requested=rounds,
                                    expected_supernodes=expected_supernodes, metric=criteria.metric,
                                    floor=criteria.floor, status="finished:completed",
                                    submitted_at=100.0, finished_at=130.0)  # fmt: skip
        outcome.supernodes = [{"status": "online"}, {"status": "online"}]
        log = "".join(
            ROUND.format(
                n=n, loss=2.0 / n, metric=criteria.metric, value=self.final[task] - 0.1 * (rounds - n)
            )
            for n in range(1, rounds + 1)
        )
        _, outcome.rounds, _ = parse_report_lines(log)
        outcome.checks = evaluate_checks(outcome, criteria)
        return outcome


def _pair(spec: PairSpec, runner: StubRunner, options: PairTestOptions | None = None) -> PairResult:
    result = PairResult(pair=spec.name, run="t", target="bare", security="tls-auth",
                        superlink=spec.superlink, supernodes=spec.supernode)  # fmt: skip
    error = ""
    try:
        _run_tasks(runner, spec, options or PairTestOptions(), result)  # type: ignore[arg-type]
    except FactoryError as failure:
        error = str(failure)
    return _finish(result, spec, error)


@pytest.mark.parametrize("overlap", list(TaskOverlap))
def test_a_sklearn_pair_runs_the_canary_then_sklearn_and_records_both(overlap: TaskOverlap) -> None:
    runner = StubRunner({"numpy": 0.99, "sklearn": 0.93})
    result = _pair(_spec("sklearn"), runner, PairTestOptions(overlap=overlap))
    assert sorted(runner.ran) == ["numpy", "sklearn"]
    assert [federation["task"] for federation in result.federations] == ["numpy", "sklearn"]
    assert result.status == PASSED, result.error
    assert result.framework_task == "sklearn"
    framework = result.framework_federation()
    assert framework is not None and framework["metric"] == "eval_accuracy" and framework["floor"] == 0.85
    assert [record["round"] for record in framework["rounds"]] == [1, 2, 3]
    assert {check["task"] for check in result.checks} == {"numpy", "sklearn"}
    assert result.timings["task_seconds"] == {"numpy": 30.0, "sklearn": 30.0}


def test_an_edge_pair_runs_numpy_once_as_canary_and_framework_task() -> None:
    runner = StubRunner({"numpy": 0.99})
    result = _pair(_spec("numpy", profile="edge"), runner)
    assert runner.ran == ["numpy"]
    assert result.status == PASSED and result.framework_task == "numpy"
    assert result.framework_federation() is result.federations[0]


@pytest.mark.parametrize("framework", ["pytorch", "tensorflow"])
def test_pytorch_and_tensorflow_images_select_their_own_task(framework: str) -> None:
    spec = _spec(framework)
    assert framework_task(spec) == framework
    assert pair_tasks(spec, PairTestOptions()) == ["numpy", framework]
    assert task_criteria(framework).metric == "eval_accuracy"


def test_a_framework_metric_below_its_floor_fails_the_pair_and_is_named_first() -> None:
    # the canary also missed its floor: still, the framework task's check is what the error names first
    runner = StubRunner({"numpy": 0.99, "sklearn": 0.50})
    result = _pair(_spec("sklearn"), runner)
    assert result.status == FAILED
    assert result.error.startswith("sklearn/metric_floor: final eval_accuracy 0.5 below floor 0.85"), (
        result.error
    )


def test_one_after_another_a_failed_canary_stops_before_the_framework_task() -> None:
    runner = StubRunner({"numpy": 0.30, "sklearn": 0.93})
    result = _pair(_spec("sklearn"), runner, PairTestOptions(overlap=TaskOverlap.JOB))
    assert runner.ran == ["numpy"]
    assert result.status == FAILED and result.error.startswith("numpy/metric_floor:"), result.error


def test_side_by_side_a_failed_canary_fails_the_pair_and_both_tasks_are_recorded() -> None:
    runner = StubRunner({"numpy": 0.30, "sklearn": 0.93})
    result = _pair(_spec("sklearn"), runner, PairTestOptions(overlap=TaskOverlap.ALL))
    assert [federation["task"] for federation in result.federations] == ["numpy", "sklearn"]
    assert result.status == FAILED and result.error.startswith("numpy/metric_floor:"), result.error


@dataclass
class MeetingRunner(StubRunner):
    """Each run waits until every task's run has started: runs one after another never meet (the barrier
    times out). The canary then ends last, so its record is not first by finishing first."""

    barrier: threading.Barrier = field(default_factory=lambda: threading.Barrier(2, timeout=10))
    threads: set[str] = field(default_factory=set)

    def run(self, rounds: int, task: str, expected_supernodes: int, **_: object) -> FederationOutcome:
        self.threads.add(threading.current_thread().name)
        self.barrier.wait()
        if task == "numpy":
            time.sleep(0.2)
        return super().run(rounds, task, expected_supernodes)


def test_the_tasks_run_at_once_each_through_its_own_runner_recorded_in_task_order() -> None:
    runners: dict[str, MeetingRunner] = {}
    shared = MeetingRunner({"numpy": 0.99, "sklearn": 0.93})

    def runner_for(task: str) -> MeetingRunner:
        return runners.setdefault(task, shared)

    spec = _spec("sklearn")
    result = PairResult(pair=spec.name, run="t", target="bare", security="tls-auth",
                        superlink=spec.superlink, supernodes=spec.supernode)  # fmt: skip
    _run_tasks(runner_for, spec, PairTestOptions(overlap=TaskOverlap.ALL), result)
    assert len(shared.threads) == 2 and set(runners) == {"numpy", "sklearn"}
    assert [federation["task"] for federation in result.federations] == ["numpy", "sklearn"]
    assert [check["task"] for check in result.checks][:1] == ["numpy"]
    assert _finish(result, spec).status == PASSED


def test_one_after_another_the_tasks_never_meet() -> None:
    runner = MeetingRunner({"numpy": 0.99, "sklearn": 0.93}, barrier=threading.Barrier(2, timeout=0.5))
    with pytest.raises(FactoryError, match="numpy task"):
        _pair_raising(_spec("sklearn"), runner, PairTestOptions(overlap=TaskOverlap.JOB))


def _pair_raising(spec: PairSpec, runner: StubRunner, options: PairTestOptions) -> None:
    result = PairResult(pair=spec.name, run="t", target="bare", security="tls-auth",
                        superlink=spec.superlink, supernodes=spec.supernode)  # fmt: skip
    try:
        _run_tasks(runner, spec, options, result)
    except threading.BrokenBarrierError as error:  # the canary waited alone: nothing ran beside it
        raise FactoryError(f"numpy task: {error!r}") from None


def test_a_canary_that_breaks_beside_a_passing_framework_task_fails_the_pair_naming_it() -> None:
    runner = StubRunner({"sklearn": 0.93}, raises={"numpy": "`flwr run` failed (exit 1): tunnel closed"})
    result = _pair(_spec("sklearn"), runner, PairTestOptions(overlap=TaskOverlap.ALL))
    assert [federation["task"] for federation in result.federations] == ["sklearn"]
    assert result.status == FAILED and result.error.startswith("numpy task: `flwr run` failed"), result.error


def test_a_framework_task_that_breaks_names_the_task() -> None:
    runner = StubRunner({"numpy": 0.99}, raises={"sklearn": "`flwr run` failed (exit 1): no sklearn"})
    result = _pair(_spec("sklearn"), runner)
    assert result.status == FAILED and result.error.startswith("sklearn task: `flwr run` failed"), (
        result.error
    )


def test_the_canary_alone_is_not_a_pass() -> None:
    runner = StubRunner({"numpy": 0.99, "sklearn": 0.93})
    result = _pair(_spec("sklearn"), runner, PairTestOptions(framework_task=False))
    assert runner.ran == ["numpy"]
    assert result.status == FAILED
    assert result.error == "sklearn/framework_task: not run (the numpy canary only)"


def test_one_round_cannot_show_the_loss_going_down() -> None:
    with pytest.raises(ConfigError, match="--rounds: must be at least 2"):
        PairTestOptions(rounds=1).check()


def test_bare_pairs_get_the_framework_packages_of_their_images() -> None:
    from factory.harness.pairtest import framework_packages

    packages, index = framework_packages(_spec("sklearn").supernode)
    assert any(package.startswith("scikit-learn==") for package in packages) and index == ""
    with pytest.raises(ConfigError, match="no variant named"):
        framework_packages(Side(variant="supernode-0.0-nowhere", flower="0.0"))


def test_the_floors_are_documented_where_users_read_them() -> None:
    from factory.harness.federation import load_task_criteria
    from hostkit.paths import REPO_ROOT

    docs = (Path(REPO_ROOT) / "docs" / "e2e.md").read_text()
    for criteria in load_task_criteria().values():
        assert f"| `{criteria.task}` | `{criteria.metric}` | {criteria.floor:g} |" in docs, criteria.task


# -- issue 9 item 11: a failed pair's error names the failed check / the appliance's reason first ------------

SYSTEMD_NOISE = (
    "Dec 02 01:02:03 sl systemd[1]: flower-superlink.service: Failed to kill control group "
    "/system.slice/flower-superlink.service, ignoring: Invalid argument\n"
)


def test_a_canary_check_that_failed_comes_before_the_logs_systemd_noise_left_out() -> None:
    class ShortRound(StubRunner):
        def run(self, rounds: int, task: str, expected_supernodes: int, **_: object) -> FederationOutcome:
            outcome = super().run(rounds, task, expected_supernodes)
            outcome.rounds[-1].errors = ["node 7: [code 2004] Failed to activate"]
            outcome.checks = evaluate_checks(outcome, task_criteria(task))
            return outcome

    spec = _spec("sklearn")
    result = PairResult(pair=spec.name, run="t", target="testcloud", security="tls-auth",
                        superlink=spec.superlink, supernodes=spec.supernode)  # fmt: skip
    # one after another: the canary fails and stops there (all at once sklearn's same check comes first)
    options = PairTestOptions(overlap=TaskOverlap.JOB)
    _run_tasks(ShortRound({"numpy": 0.99, "sklearn": 0.93}), spec, options, result)  # type: ignore[arg-type]
    logs = {"superlink-3": SYSTEMD_NOISE + "ERROR :     [code 2004] Failed to activate\n"}
    finished = _finish(result, spec, failure_text("", logs))
    assert finished.status == FAILED
    assert finished.error.startswith(
        "numpy/every_node_every_round: rounds missing replies or with errors: [3]"
    )
    assert "superlink-3: ERROR :     [code 2004] Failed to activate" in finished.error
    assert "control group" not in finished.error


def test_noise_alone_is_not_quoted_as_the_reason() -> None:
    assert error_lines({"superlink-3": SYSTEMD_NOISE}) == []
    assert error_lines({"sn": "systemd[1]: Failed to start flower-supernode.service"}) == [
        "sn: systemd[1]: Failed to start flower-supernode.service"
    ]


def test_a_timed_out_run_names_the_run_completed_check_first() -> None:
    spec = _spec("numpy", profile="edge")
    criteria = task_criteria("numpy")
    outcome = FederationOutcome(app="factory-app", task="numpy", strategy="fedavg", rounds_requested=3,
                                expected_supernodes=2, metric=criteria.metric, floor=criteria.floor,
                                status="timeout after 900 s (running)")  # fmt: skip
    outcome.supernodes = [{"status": "online"}, {"status": "online"}]
    outcome.checks = evaluate_checks(outcome, criteria)
    result = PairResult(pair=spec.name, run="t", target="testcloud", security="tls-auth",
                        superlink=spec.superlink, supernodes=spec.supernode)  # fmt: skip
    _record_outcome(result, outcome)
    finished = _finish(result, spec, failure_text("", {"superlink-3": SYSTEMD_NOISE}))
    assert finished.error.startswith("numpy/run_completed: run status 'timeout after 900 s (running)'"), (
        finished.error
    )


def test_a_deploy_failure_names_the_appliances_reported_error_first() -> None:
    """wait_running's failure leads with ONEAPP_FL_ERROR of each VM that reported one, then the states; the
    pair's error keeps that first and quotes log lines after."""
    from factory.one.cloud import ServiceDeployment, VMInfo

    vms = [
        VMInfo(3, "superlink_0_(service_5)", "superlink", "ACTIVE", 3, "10.231.64.3",
               {"ONEAPP_FL_STATUS": "failed", "ONEAPP_FL_ERROR": "FLEET_PORT=22: port in use by sshd"}),
        VMInfo(4, "supernode_0_(service_5)", "supernode", "ACTIVE", 3, "10.231.64.4", {}),
    ]  # fmt: skip

    class Stuck(ServiceDeployment):
        def state(self) -> str:
            return "DEPLOYING"

        def vms(self) -> list[VMInfo]:
            return vms

    cloud = SimpleNamespace(progress=Progress(quiet=True))
    deployment = Stuck(cloud=cloud, id=5, name="flower-pair", started=0.0)  # type: ignore[arg-type]
    with pytest.raises(FactoryError) as failure:
        deployment.wait_running(timeout=1e9)
    message = str(failure.value)
    assert message.startswith("superlink VM 3: FLEET_PORT=22: port in use by sshd; service 5"), message
    spec = _spec("numpy", profile="edge")
    result = PairResult(pair=spec.name, run="t", target="testcloud", security="tls-auth",
                        superlink=spec.superlink, supernodes=spec.supernode)  # fmt: skip
    logs = {"superlink-3": SYSTEMD_NOISE + "ERROR: configure failed: port 22 in use\n"}
    finished = _finish(result, spec, failure_text(message, logs))
    assert finished.error.startswith("superlink VM 3: FLEET_PORT=22"), finished.error
    assert finished.error.endswith("superlink-3: ERROR: configure failed: port 22 in use")
    assert "control group" not in finished.error


def test_the_overlap_option_names_the_enum_values() -> None:
    from factory.cli.commands._pairargs import OVERLAPS

    assert tuple(mode.value for mode in TaskOverlap) == OVERLAPS


@pytest.mark.parametrize("seconds", [0.0, -5.0])
def test_a_poll_interval_of_no_time_is_refused(seconds: float) -> None:
    with pytest.raises(ConfigError, match="--poll-interval: must be more than 0 seconds"):
        PairTestOptions(poll_interval=seconds).check()


def test_tasks_side_by_side_poll_like_the_first_runner(tmp_path: Path) -> None:
    from factory.harness.federation import Connection, FederationRunner
    from factory.harness.pairtest import task_runners

    env = SimpleNamespace(executable=lambda name: Path("/bin/true"))
    first = FederationRunner(env, tmp_path / "runner", Connection("127.0.0.1:1", None), poll_interval=11.0)  # type: ignore[arg-type]
    runner_for = task_runners(first)
    other = runner_for("sklearn")
    assert runner_for("numpy") is first and other.poll_interval == 11.0
    assert other.cli.home == tmp_path / "runner-sklearn" / "flwr-home" and other.cli.home.is_dir()


def test_the_poll_interval_option_defaults_to_the_pair_tests_default() -> None:
    import argparse

    from factory.cli.commands._pairargs import add_pair_test_arguments, pair_test_options
    from factory.harness.pairtest import DEFAULT_POLL_INTERVAL

    parser = argparse.ArgumentParser()
    add_pair_test_arguments(parser)
    assert pair_test_options(parser.parse_args([])).poll_interval == DEFAULT_POLL_INTERVAL == 10.0
    assert pair_test_options(parser.parse_args(["--poll-interval", "4"])).poll_interval == 4.0
    assert pair_test_options(parser.parse_args(["--overlap", "none"])).overlap is TaskOverlap.NONE
