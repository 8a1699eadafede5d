"""The pair test's train-on-deploy check (factory/harness/jobcheck.py) without a cloud: what it reads from
the SuperLink's OneGate attributes, what passes and what fails, and the follower's thread."""

from __future__ import annotations

import re
import threading
import time

from factory.harness.federation import task_criteria
from factory.harness.jobcheck import (
    JOB_TASK,
    JobFollower,
    JobObservation,
    JobPlan,
    changed_since,
    job_attributes,
    job_checks,
    job_from_context_state,
    parse_metrics,
    parse_round,
    use_case_for,
)

WAITING = {"ONEAPP_FL_RUN_STATUS": "waiting-for-nodes", "ONEAPP_FL_ROUND": "0/2"}


def readings(loss1: float, loss2: float, accuracy: float) -> list[dict[str, str]]:
    """What the SuperLink VM's USER_TEMPLATE holds, poll after poll, for a 2-round tabular job."""
    running = {"ONEAPP_FL_RUN_STATUS": "running", "ONEAPP_FL_RUN_ID": "42", "ONEAPP_FL_ROUND": "0/2"}
    first = {**running, "ONEAPP_FL_ROUND": "1/2", "ONEAPP_FL_METRICS": f"eval_loss={loss1} eval_accuracy=0.8"}
    second = {
        **first,
        "ONEAPP_FL_ROUND": "2/2",
        "ONEAPP_FL_METRICS": f"eval_loss={loss2} eval_accuracy={accuracy}",
    }
    done = {
        **second,
        "ONEAPP_FL_RUN_STATUS": "finished",
        "ONEAPP_FL_MODEL": "/var/lib/flower/checkpoints/j/final.npz",
    }
    return [{}, WAITING, WAITING, running, first, first, second, done]


def observe(sequence: list[dict[str, str]]) -> JobObservation:
    observation = JobObservation()
    for number, attributes in enumerate(sequence):
        observation.observe(attributes, now=1000.0 + number)
    return observation


def by_name(checks: list[dict]) -> dict[str, dict]:
    assert {check["task"] for check in checks} == {JOB_TASK}
    return {check["name"]: check for check in checks}


def test_parsing_the_attributes() -> None:
    assert parse_metrics("eval_loss=0.25 eval_accuracy=0.9 note=x bare") == {
        "eval_loss": 0.25,
        "eval_accuracy": 0.9,
    }
    assert parse_round("2/5") == (2, 5) and parse_round("") is None and parse_round("two/5") is None
    assert use_case_for("sklearn") == "tabular" and use_case_for("pytorch") == "image-cnn"
    assert use_case_for("numpy") == "anomaly" and use_case_for("tensorflow") == "tensorflow"
    assert JobPlan("tabular", 2, 3).context() == {
        "ONEAPP_FL_APP": "tabular",
        "ONEAPP_FL_ROUNDS": "2",
        "ONEAPP_FL_MIN_NODES": "3",
    }


def test_a_job_that_ran_to_the_end_passes() -> None:
    observation = observe(readings(0.5, 0.3, 0.95))
    assert observation.statuses == ["waiting-for-nodes", "running", "finished"]
    assert observation.rounds[2]["eval_accuracy"] == 0.95 and observation.round_seen_at[1] == 1004.0
    checks = by_name(job_checks(observation, JobPlan("tabular")))
    assert all(check["passed"] for check in checks.values()), checks
    assert set(checks) == {
        "job_progress",
        "job_rounds_reported",
        "loss_decreasing",
        "metric_floor",
        "job_model",
    }
    assert job_from_context_state(list(checks.values())) == "passed"


def test_what_makes_a_job_fail() -> None:
    floor = task_criteria("tabular").floor
    checks = by_name(job_checks(observe(readings(0.3, 0.5, floor - 0.05)), JobPlan("tabular")))
    assert not checks["loss_decreasing"]["passed"] and "[0.3, 0.5]" in checks["loss_decreasing"]["detail"]
    assert not checks["metric_floor"]["passed"] and "below floor" in checks["metric_floor"]["detail"]
    assert checks["job_progress"]["passed"]
    # a round never seen (published and overwritten between two polls) is not made up
    sequence = [reading for reading in readings(0.5, 0.3, 0.95) if reading.get("ONEAPP_FL_ROUND") != "1/2"]
    missed = by_name(job_checks(observe(sequence), JobPlan("tabular")))
    assert (
        not missed["job_rounds_reported"]["passed"]
        and "rounds [2] of 2" in missed["job_rounds_reported"]["detail"]
    )
    # a job that failed: the reason is in the detail, no model
    failed = observe(
        [{}, {"ONEAPP_FL_RUN_STATUS": "failed", "ONEAPP_FL_RUN_REASON": "ONEAPP_FL_APP: 'jax' ..."}]
    )
    result = job_checks(failed, JobPlan("tabular"))
    named = by_name(result)
    assert not named["job_progress"]["passed"] and "'jax'" in named["job_progress"]["detail"]
    assert not named["job_model"]["passed"]
    assert job_from_context_state(result) == "failed" and job_from_context_state([]) == "not run"


def test_the_follower_reads_until_the_job_is_done() -> None:
    sequence = [None, *readings(0.5, 0.3, 0.95), {"ONEAPP_FL_RUN_STATUS": "should not be read"}]
    calls = []

    def read() -> dict[str, str] | None:
        calls.append(threading.current_thread().name)
        if len(calls) == 3:
            raise OSError("oned did not answer")
        return sequence[min(len(calls) - 1, len(sequence) - 1)]

    observation = JobFollower(read, interval=0.01).start().wait(timeout=10)
    assert observation.status == "finished" and observation.errors == ["oned did not answer"]
    assert set(calls) == {"job-follower"}
    assert len(calls) == len(sequence) - 1  # stopped at "finished"


def test_the_follower_gives_up_at_its_timeout() -> None:
    follower = JobFollower(lambda: WAITING, interval=0.01).start()
    started = time.monotonic()
    observation = follower.wait(timeout=0.3)
    assert time.monotonic() - started < 5
    assert observation.statuses == ["waiting-for-nodes"] and not observation.done


def test_a_follower_of_a_new_job_never_records_the_earlier_one() -> None:
    """After a context change the USER_TEMPLATE still holds the finished job's attributes until the new
    job's runner empties them: those readings are not the new job's (no stale round 2/2, no stale model)."""
    earlier = readings(0.5, 0.3, 0.95)[-1]
    emptied = {**earlier, **dict.fromkeys(job_attributes(earlier), "")}
    new_job = [{**emptied, **reading} for reading in readings(0.6, 0.4, 0.93)[1:]]
    sequence = [earlier, earlier, emptied, *new_job]
    before = job_attributes(earlier)
    assert before["ONEAPP_FL_ROUND"] == "2/2" and set(before) == set(job_attributes({}))
    read = changed_since(iter(sequence).__next__, before)
    observation = JobObservation()
    for _ in sequence:
        attributes = read()
        if attributes is not None:
            observation.observe(attributes)
    assert observation.polls == len(sequence) - 2  # the two readings of the earlier job were skipped
    assert observation.statuses == ["waiting-for-nodes", "running", "finished"]
    assert observation.rounds[1]["eval_loss"] == 0.6 and observation.rounds[2]["eval_loss"] == 0.4
    # once changed, the same values again are the new job's (a refused job may repeat a reason)
    read = changed_since(iter([emptied, earlier]).__next__, before)
    assert read() == emptied and read() == earlier


def test_the_secagg_fact_and_what_a_tried_pair_shows() -> None:
    from factory.harness.jobfeatures import Feature, feature_state, secagg_check

    assert secagg_check("1.43.0") is None  # no fact for that version: the cell says "not run"
    assert feature_state([], Feature.SECAGG) == ("not run", "")
    fact = secagg_check("1.41.0")
    assert fact is not None and fact["passed"] and "LegacyContext" in fact["detail"]
    assert feature_state([fact], Feature.SECAGG)[0] == "unsupported"
    # a SuperLink that accepted secaggplus contradicts the fact: failed, not unsupported
    accepted = JobObservation(statuses=["waiting-for-nodes", "running", "finished"])
    check = secagg_check("1.42.0", accepted)
    assert check is not None and not check["passed"] and "unsupported" not in check
    state, detail = feature_state([check], Feature.SECAGG)
    assert state == "failed" and "waiting-for-nodes -> running -> finished" in detail
    # a refusal for another reason (the appliance failed otherwise) is not taken as the fact either
    other = secagg_check("1.42.0", JobObservation(statuses=["failed"], reason="ONEAPP_FL_ROUNDS: ..."))
    assert other is not None and feature_state([other], Feature.SECAGG)[0] == "failed"


def test_the_resume_checks_need_a_continued_loss() -> None:
    from factory.harness.jobfeatures import resume_checks

    def observed(losses: list[float], resumed_from: str) -> JobObservation:
        observation = JobObservation(statuses=["waiting-for-nodes", "running", "finished"])
        observation.rounds = {k: {"eval_loss": loss} for k, loss in enumerate(losses, start=1)}
        observation.resumed_from = resumed_from
        return observation

    continued = resume_checks(observed([0.9, 0.5, 0.4, 0.35], "2"), 4, seen_before=2)
    assert all(check["passed"] for check in continued), continued
    from_scratch = resume_checks(observed([0.9, 0.5, 0.9, 0.5], "2"), 4, seen_before=2)
    assert [check["passed"] for check in from_scratch] == [True, False]
    not_said = resume_checks(observed([0.9, 0.5, 0.4, 0.35], ""), 4, seen_before=2)
    assert not not_said[1]["passed"]
    too_late = resume_checks(observed([0.9, 0.5, 0.4, 0.35], "2"), 4, seen_before=4)  # no rounds were left
    assert not too_late[0]["passed"]


def test_a_job_on_a_running_pair_may_skip_waiting_but_nothing_else() -> None:
    from factory.harness.jobcheck import ran_to_the_end

    assert ran_to_the_end(["waiting-for-nodes", "running", "finished"])
    assert ran_to_the_end(["running", "finished"])  # the nodes were online: the wait was shorter than a poll
    for statuses in ([], ["finished"], ["running"], ["running", "failed"], ["waiting-for-nodes", "finished"]):
        assert not ran_to_the_end(statuses), statuses


class _FakeVM:
    def __init__(self, vm_id: int, template: dict[str, str]) -> None:
        self.id, self.user_template = vm_id, template


class _FakeCloud:
    """A SuperLink whose USER_TEMPLATE plays, after each context change, the job that change asks for
    (the way flower-job publishes it), one step per read; a power-off and resume continue the resume job."""

    POWERED_OFF = 8

    def __init__(self, accept_secagg: bool = False, fail_dp: bool = False) -> None:
        self.accept_secagg, self.fail_dp = accept_secagg, fail_dp
        self.template: dict[str, str] = {"ONEAPP_FL_RUN_STATUS": "finished", "ONEAPP_FL_ROUND": "2/2"}
        self.script: list[dict[str, str]] = []
        self.actions: list[str] = []
        self.contexts: list[str] = []
        self.one = self  # cloud.one.vm.updateconf / action / info
        self.vm = self
        self.lock = threading.Lock()

    # pyone's vm.* as run_feature_jobs calls them
    def updateconf(self, vm_id: int, text: str, kind: int) -> None:
        assert vm_id == 7 and kind == 1 and text.startswith("CONTEXT=[")
        self.contexts.append(text)
        emptied = dict.fromkeys(job_attributes({}), "")
        running = {"ONEAPP_FL_RUN_STATUS": "running", "ONEAPP_FL_RUN_ID": "9"}

        def rounds(losses: list[float], total: int, start: int = 1) -> list[dict[str, str]]:
            return [
                {"ONEAPP_FL_ROUND": f"{k}/{total}", "ONEAPP_FL_METRICS": f"eval_loss={loss}"}
                for k, loss in enumerate(losses, start=start)
            ]

        if 'ONEAPP_FL_SECAGG="secaggplus"' in text and not self.accept_secagg:
            reason = "ONEAPP_FL_SECAGG: secaggplus is not supported by Flower's Message API strategies"
            steps = [emptied, {"ONEAPP_FL_RUN_STATUS": "failed", "ONEAPP_FL_RUN_REASON": reason}]
        elif 'ONEAPP_FL_ROUNDS="4"' in text:
            steps = [emptied, {"ONEAPP_FL_RUN_STATUS": "waiting-for-nodes"}, running, *rounds([0.9, 0.5], 4)]
            steps += [{"HOLD": ""}, emptied, {"ONEAPP_FL_RUN_STATUS": "waiting-for-nodes"}, running]
            steps += [{"ONEAPP_FL_RESUMED_FROM": "2", "ONEAPP_FL_ROUND": "2/4"}, *rounds([0.4, 0.3], 4, 3)]
            steps += [{"ONEAPP_FL_RUN_STATUS": "finished", "ONEAPP_FL_MODEL": "/m.npz"}]
        else:
            losses = [0.5, 0.3] if self.fail_dp else [0.7, 0.6]  # the baseline's are 0.5, 0.3
            steps = [emptied, {"ONEAPP_FL_RUN_STATUS": "waiting-for-nodes"}, running, *rounds(losses, 2)]
            steps += [{"ONEAPP_FL_RUN_STATUS": "finished", "ONEAPP_FL_MODEL": "/m.npz"}]
        with self.lock:
            self.script = steps

    def action(self, name: str, vm_id: int) -> None:
        self.actions.append(name)

    def info(self, vm_id: int) -> object:
        return type("VM", (), {"STATE": self.POWERED_OFF if self.actions[-1:] == ["poweroff"] else 3})()

    # the service
    def role_vms(self, role: str) -> list[_FakeVM]:
        with self.lock:
            if self.script and ("HOLD" not in self.script[0] or self.actions[-1:] == ["resume"]):
                step = self.script.pop(0)
                self.template = {**self.template, **{k: v for k, v in step.items() if k != "HOLD"}}
                self.template = {k: v for k, v in self.template.items() if v}
            return [_FakeVM(7, dict(self.template))]


def _baseline() -> JobObservation:
    baseline = JobObservation(statuses=["waiting-for-nodes", "running", "finished"])
    baseline.rounds = {1: {"eval_loss": 0.5}, 2: {"eval_loss": 0.3}}
    return baseline


def test_the_feature_jobs_ask_by_context_and_power_the_superlink_off_once() -> None:
    from factory.harness.jobfeatures import Feature, feature_state, run_feature_jobs

    cloud = _FakeCloud()
    checks = run_feature_jobs(cloud, cloud, JobPlan("anomaly"), _baseline(), "1.42.0", timeout=30)
    cells = {
        feature: feature_state(checks, feature)[0] for feature in (Feature.RESUME, Feature.DP, Feature.SECAGG)
    }
    assert cells == {Feature.RESUME: "passed", Feature.DP: "passed", Feature.SECAGG: "unsupported"}, checks
    assert cloud.actions == ["poweroff", "resume"]
    # three jobs, each naming every job parameter and a checkpoint directory of its own
    assert len(cloud.contexts) == 3 and all('ONEAPP_FL_STRATEGY="fedavg"' in text for text in cloud.contexts)
    directories = [re.search(r'ONEAPP_FL_CHECKPOINT_DIR="([^"]+)"', text).group(1) for text in cloud.contexts]
    assert len(set(directories)) == 3


def test_the_feature_jobs_fail_truthfully() -> None:
    from factory.harness.jobfeatures import Feature, feature_state, run_feature_jobs

    cloud = _FakeCloud(accept_secagg=True, fail_dp=True)  # SecAgg+ accepted; DP without any noise
    checks = run_feature_jobs(cloud, cloud, JobPlan("anomaly"), _baseline(), "1.42.0", timeout=30)
    assert feature_state(checks, Feature.SECAGG)[0] == "failed"
    assert feature_state(checks, Feature.DP)[0] == "failed"

    class Broken(_FakeCloud):
        def updateconf(self, vm_id: int, text: str, kind: int) -> None:
            raise OSError("oned did not answer")

    checks = run_feature_jobs(Broken(), Broken(), JobPlan("anomaly"), _baseline(), "1.42.0", timeout=5)
    states = {feature_state(checks, f) for f in (Feature.RESUME, Feature.DP, Feature.SECAGG)}
    assert states == {("failed", "feature_job: OSError: oned did not answer")}


def test_a_pair_without_job_features_records_only_the_secagg_fact() -> None:
    from factory.harness.jobfeatures import pair_feature_checks

    plan, baseline = JobPlan("anomaly"), _baseline()
    checks = pair_feature_checks(None, None, plan, baseline, "1.42.0", run_jobs=False, timeout=1)
    assert [check["task"] for check in checks] == ["job-secagg"] and checks[0]["unsupported"]
    assert pair_feature_checks(None, None, plan, baseline, "1.43.0", run_jobs=False, timeout=1) == []


# -- in a pair test: the job followed beside the tunnel tasks (factory/harness/pairtest.py _JobWatch) ------


def test_a_pair_follows_its_job_beside_the_tasks_and_records_the_job_first(
    monkeypatch: object, tmp_path: object
) -> None:
    """The tunnel tasks start while the job still runs (its finish is held back until they recorded a
    check); the job's checks and SecAgg+ cell still come first in the record, as when it was waited for
    before the tasks."""
    from types import SimpleNamespace

    from factory.harness import jobcheck, pairtest
    from factory.harness.pair import PairResult, PairSpec, Side

    tasks_started = threading.Event()
    sequence = readings(0.9, 0.5, 0.95)
    reads = iter(sequence[:-1])

    def read() -> dict[str, str]:
        value = next(reads, None)
        if value is not None:
            return value
        tasks_started.wait(10)
        return sequence[-1]

    def follow(cloud: object, service: object, interval: float = 2.0) -> JobFollower:
        return JobFollower(read, interval=0.01).start()

    monkeypatch.setattr(pairtest, "follow_superlink", follow)  # type: ignore[attr-defined]
    service = SimpleNamespace(id=7)

    class FakeDeployment:
        cloud = None
        progress = SimpleNamespace(line=lambda text: None)

        def launch(self, template: int, timeout: float, on_launched: object) -> object:
            on_launched(service)  # type: ignore[operator]
            return service

    side = Side(variant="v", flower="1.42.0", framework="sklearn", count=2)
    spec = PairSpec("pair-x", side, side)
    result = PairResult(pair="pair-x", run="t", target="testcloud", security="tls-auth",
                        superlink=side, supernodes=side)  # fmt: skip
    plan = jobcheck.plan_for(spec)
    watch = pairtest._JobWatch(FakeDeployment(), plan, pairtest.PairTestOptions(), result)  # type: ignore[arg-type]
    try:
        assert watch.launch(1) is service
        _, done = watch.followers[0].progress()
        assert not done  # the job runs on while the tasks start
        result.checks.append({"task": "numpy", "name": "run_completed", "passed": True, "detail": ""})
        tasks_started.set()
        watch.record(service)
    finally:
        watch.stop()
    tasks = [check["task"] for check in result.checks]
    assert tasks == [JOB_TASK] * 5 + ["job-secagg", "numpy"], tasks
    assert all(check["passed"] for check in result.checks), result.checks
    assert "job_instantiate_to_last_round_seconds" in result.timings


def test_a_feature_job_that_breaks_keeps_the_tasks_checks(monkeypatch: object) -> None:
    """The job's cells go in before the tasks' checks; a feature job that raises loses none of those."""
    from types import SimpleNamespace

    import pytest

    from factory.harness import jobcheck, pairtest
    from factory.harness.pair import PairResult, PairSpec, Side
    from hostkit.errors import FactoryError

    sequence = readings(0.9, 0.5, 0.95)
    monkeypatch.setattr(  # type: ignore[attr-defined]
        pairtest,
        "follow_superlink",
        lambda cloud, service: JobFollower(iter(sequence).__next__, 0.01).start(),
    )

    def broken(*_: object) -> list[dict]:
        raise FactoryError("resume job: SuperLink VM did not power off")

    monkeypatch.setattr(pairtest, "pair_feature_checks", broken)  # type: ignore[attr-defined]
    service = SimpleNamespace(id=7)
    deployment = SimpleNamespace(
        cloud=None,
        progress=SimpleNamespace(line=lambda text: None),
        launch=lambda template, timeout, on_launched: (on_launched(service), service)[1],
    )
    side = Side(variant="v", flower="1.42.0", framework="sklearn", count=2)
    result = PairResult(pair="pair-x", run="t", target="testcloud", security="tls-auth",
                        superlink=side, supernodes=side)  # fmt: skip
    watch = pairtest._JobWatch(deployment, jobcheck.plan_for(PairSpec("pair-x", side, side)),  # type: ignore[arg-type]
                               pairtest.PairTestOptions(job_features=True), result)  # fmt: skip
    watch.launch(1)
    result.checks.append({"task": "numpy", "name": "run_completed", "passed": True, "detail": ""})
    with pytest.raises(FactoryError, match="resume job"):
        watch.record(service)
    watch.stop()
    assert [check["task"] for check in result.checks] == [JOB_TASK] * 5 + ["numpy"]
