"""Train on deploy in a pair test: a job configured by context alone, followed through OneGate.

The SuperLink appliance runs a federated job by itself when its context sets ``ONEAPP_FL_APP``
(docs/train-on-deploy.md): ``flower-job`` waits for the SuperNodes, submits the run through its own
Control API on loopback and publishes its progress into the VM's USER_TEMPLATE through OneGate
(``ONEAPP_FL_RUN_STATUS``, ``ONEAPP_FL_ROUND`` k/N, ``ONEAPP_FL_METRICS``, ``ONEAPP_FL_MODEL``,
``ONEAPP_FL_RUN_REASON``). No tunnel and no ``flwr run`` from the host: what the factory sees is what an
OpenNebula user sees with ``onevm show``.

Here: the job a pair gets (the use case that fits its SuperNodes' framework, 2 rounds), the context
that asks for it, a follower that records every value the attributes take from instantiation on, and the
checks (recorded under the task name :data:`JOB_TASK` in the PairResult's checks): the status went
waiting-for-nodes -> running -> finished, every round was reported, the loss fell round after round and
the final metric cleared the use case's floor (apps/task-checks.toml), the final model was named.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from factory.harness.federation import TaskCriteria, task_criteria
from factory.harness.pair import PairResult, PairSpec

JOB_TASK = "job"  # the task name of the job's checks in a PairResult
JOB_ROUNDS = 2  # cheap: it adds to every pair's time; 2 rounds show one decrease of the loss
# The use case of each framework axis value (matrix.yaml): the small one its SuperNodes can train.
# tensorflow has no use case of its own: the factory app's tensorflow task.
USE_CASE_BY_FRAMEWORK = {
    "sklearn": "tabular",
    "pytorch": "image-cnn",
    "numpy": "anomaly",
    "tensorflow": "tensorflow",
}
# What flower-job publishes (images/params.yaml, published:); a job begins by emptying them.
JOB_ATTRIBUTES = (
    "ONEAPP_FL_RUN_STATUS", "ONEAPP_FL_RUN_ID", "ONEAPP_FL_RUN_REASON", "ONEAPP_FL_ROUND",
    "ONEAPP_FL_METRICS", "ONEAPP_FL_RESUMED_FROM", "ONEAPP_FL_MODEL",
)  # fmt: skip
ROUND_VALUE = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


class JobStatus(StrEnum):
    """ONEAPP_FL_RUN_STATUS values (context/appliance/bin/flower-job)."""

    WAITING = "waiting-for-nodes"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"


DONE = {JobStatus.FINISHED.value, JobStatus.FAILED.value}


def use_case_for(framework: str) -> str:
    """The job's use case for a pair whose SuperNodes carry ``framework`` (the numpy one otherwise)."""
    return USE_CASE_BY_FRAMEWORK.get(framework, USE_CASE_BY_FRAMEWORK["numpy"])


@dataclass(frozen=True)
class JobPlan:
    """What a pair's train-on-deploy job is: the use case, its rounds and how many SuperNodes it waits for."""

    use_case: str
    rounds: int = JOB_ROUNDS
    min_nodes: int = 2

    def context(self) -> dict[str, str]:
        """The SuperLink's CONTEXT entries that ask for the job (the images/params.yaml parameters)."""
        return {
            "ONEAPP_FL_APP": self.use_case,
            "ONEAPP_FL_ROUNDS": str(self.rounds),
            "ONEAPP_FL_MIN_NODES": str(self.min_nodes),
        }


def ran_to_the_end(statuses: list[str]) -> bool:
    """A job asked for on a running pair (a context change) that ran to the end: waiting-for-nodes ->
    running -> finished, or running -> finished where its nodes were online already and the wait was
    shorter than a poll."""
    return statuses in (
        [JobStatus.WAITING.value, JobStatus.RUNNING.value, JobStatus.FINISHED.value],
        [JobStatus.RUNNING.value, JobStatus.FINISHED.value],
    )


def parse_metrics(text: str) -> dict[str, float]:
    """ONEAPP_FL_METRICS (``key=value`` separated by spaces) as numbers; values that are not are left out."""
    metrics = {}
    for pair in text.split():
        key, sep, value = pair.partition("=")
        if not sep:
            continue
        try:
            metrics[key] = float(value)
        except ValueError:
            continue
    return metrics


def parse_round(text: str) -> tuple[int, int] | None:
    """ONEAPP_FL_ROUND ``k/N`` as (k, N); None when it is not that."""
    match = ROUND_VALUE.match(text or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


@dataclass
class JobObservation:
    """Every value the job's OneGate attributes took, in the order they were seen."""

    statuses: list[str] = field(default_factory=list)
    rounds: dict[int, dict[str, float]] = field(default_factory=dict)  # round -> its metrics
    round_seen_at: dict[int, float] = field(default_factory=dict)  # round -> wall time first seen
    total_rounds: int = 0
    run_id: str = ""
    model: str = ""
    reason: str = ""
    resumed_from: str = ""
    polls: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        return self.statuses[-1] if self.statuses else ""

    @property
    def done(self) -> bool:
        return self.status in DONE

    def observe(self, attributes: dict[str, str], now: float | None = None) -> None:
        """Take one reading of the SuperLink VM's USER_TEMPLATE."""
        now = time.time() if now is None else now
        self.polls += 1
        status = attributes.get("ONEAPP_FL_RUN_STATUS", "")
        if status and status != self.status:
            self.statuses.append(status)
        parsed = parse_round(attributes.get("ONEAPP_FL_ROUND", ""))
        if parsed:
            done_rounds, self.total_rounds = parsed
            if done_rounds > 0 and done_rounds not in self.rounds:
                self.rounds[done_rounds] = parse_metrics(attributes.get("ONEAPP_FL_METRICS", ""))
                self.round_seen_at[done_rounds] = now
        self.run_id = attributes.get("ONEAPP_FL_RUN_ID", "") or self.run_id
        self.model = attributes.get("ONEAPP_FL_MODEL", "") or self.model
        self.reason = attributes.get("ONEAPP_FL_RUN_REASON", "") or self.reason
        self.resumed_from = attributes.get("ONEAPP_FL_RESUMED_FROM", "") or self.resumed_from

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": JOB_TASK,
            "statuses": list(self.statuses),
            "rounds": {str(number): metrics for number, metrics in sorted(self.rounds.items())},
            "total_rounds": self.total_rounds,
            "run_id": self.run_id,
            "model": self.model,
            "reason": self.reason,
            "resumed_from": self.resumed_from,
            "polls": self.polls,
        }


class JobFollower:
    """Reads the SuperLink's attributes every ``interval`` seconds in a thread, from the moment the service
    is instantiated (so that waiting-for-nodes is seen before the SuperNodes come), until the job is done or
    :meth:`stop`. ``read`` returns the USER_TEMPLATE, or None while there is no SuperLink VM yet; it must
    not share a connection with the thread that deploys (an XML-RPC transport is not thread-safe)."""

    def __init__(self, read: Callable[[], dict[str, str] | None], interval: float = 2.0) -> None:
        self.read = read
        self.interval = interval
        self.observation = JobObservation()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="job-follower", daemon=True)

    def start(self) -> JobFollower:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                attributes = self.read()
            except Exception as error:  # a failed poll is recorded; the next one may work
                with self._lock:
                    self.observation.errors.append(str(error)[:200])
                attributes = None
            if attributes is not None:
                with self._lock:
                    self.observation.observe(attributes)
                    if self.observation.done:
                        return
            self._stop.wait(self.interval)

    def progress(self) -> tuple[int, bool]:
        """The newest round seen so far and whether the job is done (safe while the thread runs)."""
        with self._lock:
            return max(self.observation.rounds, default=0), self.observation.done

    def wait(self, timeout: float) -> JobObservation:
        """Until the job is done or ``timeout`` seconds passed; the observation either way."""
        self._thread.join(timeout)
        self.stop()
        return self.observation

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(self.interval + 30)


def _check(name: str, passed: bool, detail: str) -> dict[str, Any]:
    return {"task": JOB_TASK, "name": name, "passed": passed, "detail": detail}


def job_checks(
    observation: JobObservation, plan: JobPlan, criteria: TaskCriteria | None = None
) -> list[dict[str, Any]]:
    """The job's checks, as PairResult.checks entries (task :data:`JOB_TASK`)."""
    criteria = criteria or task_criteria(plan.use_case)
    statuses = observation.statuses
    expected = [JobStatus.WAITING.value, JobStatus.RUNNING.value, JobStatus.FINISHED.value]
    progressed = statuses == expected
    checks = [
        _check(
            "job_progress",
            progressed,
            f"ONEAPP_FL_RUN_STATUS went {' -> '.join(statuses) or '(never published)'}"
            + ("" if progressed else f", expected {' -> '.join(expected)}")
            + (f"; reason: {observation.reason}" if observation.reason else ""),
        )
    ]
    seen = sorted(observation.rounds)
    wanted = list(range(1, plan.rounds + 1))
    checks.append(
        _check(
            "job_rounds_reported",
            seen == wanted and observation.total_rounds == plan.rounds,
            f"ONEAPP_FL_ROUND reported rounds {seen} of {observation.total_rounds or '?'}, "
            f"expected {wanted} of {plan.rounds}",
        )
    )
    losses = [observation.rounds[number].get("eval_loss", math.nan) for number in seen]
    if criteria.loss_must_decrease:
        falling = len(losses) >= 2 and all(later < earlier for earlier, later in itertools.pairwise(losses))
        checks.append(
            _check("loss_decreasing", falling, f"eval_loss per round {[round(x, 6) for x in losses]}")
        )
    final = observation.rounds[seen[-1]].get(criteria.metric, math.nan) if seen else math.nan
    reached = math.isfinite(final) and final >= criteria.floor
    checks.append(
        _check(
            "metric_floor",
            reached,
            f"{plan.use_case}: final {criteria.metric} {final:.4g} "
            + (">=" if reached else "below")
            + f" floor {criteria.floor:g}",
        )
    )
    checks.append(
        _check(
            "job_model",
            bool(observation.model),
            f"ONEAPP_FL_MODEL={observation.model or '(not published)'}",
        )
    )
    return checks


def job_from_context_state(checks: list[dict[str, Any]]) -> str:
    """The report's "job from context" cell: passed, failed or not run (no job checks)."""
    return feature_state(checks, Feature.JOB)[0]


# -- the report's feature columns ---------------------------------------------------------------------------


class Feature(StrEnum):
    """The train-on-deploy features the compatibility report has a column for (its header text)."""

    JOB = "job from context"
    RESUME = "resume"
    DP = "DP"
    SECAGG = "SecAgg+"


class FeatureState(StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    NOT_RUN = "not run"
    UNSUPPORTED = "unsupported"


# The task name of each feature's checks in a PairResult.
FEATURE_TASKS = {
    Feature.JOB: JOB_TASK,
    Feature.RESUME: "job-resume",
    Feature.DP: "job-dp",
    Feature.SECAGG: "job-secagg",
}
# SecAgg+ for the Message API, per Flower major.minor, read from the wheels (docs/train-on-deploy.md,
# "Privacy"): flwr/server/workflow/secure_aggregation/secaggplus_workflow.py, whose __call__ raises
# TypeError unless the context is a LegacyContext; flwr/serverapp/strategy has no SecAgg path. A version
# not listed has no fact: its SecAgg+ cell says "not run".
SECAGG_PLUS_UNSUPPORTED = {
    version: "SecAggPlusWorkflow needs the legacy ServerApp (a LegacyContext); the Message API "
    "strategies have no SecAgg+, so the appliance refuses ONEAPP_FL_SECAGG=secaggplus"
    for version in ("1.41", "1.42")
}


def feature_state(checks: list[dict[str, Any]], feature: Feature) -> tuple[str, str]:
    """A feature's report cell from a pair's recorded checks: (state, detail). No check of the feature:
    not run; a check marked ``unsupported``: unsupported with its reason; else passed only when every
    check passed, with the failed ones as the detail."""
    mine = [check for check in checks if check.get("task") == FEATURE_TASKS[feature]]
    if not mine:
        return FeatureState.NOT_RUN.value, ""
    unsupported = [str(check.get("detail", "")) for check in mine if check.get("unsupported")]
    if unsupported:
        return FeatureState.UNSUPPORTED.value, "; ".join(unsupported)
    failed = [f"{check.get('name')}: {check.get('detail')}" for check in mine if not check.get("passed")]
    if failed:
        return FeatureState.FAILED.value, "; ".join(failed)
    return FeatureState.PASSED.value, "; ".join(str(check.get("detail", "")) for check in mine)


def secagg_check(flower: str, tried: JobObservation | None = None) -> dict[str, Any] | None:
    """The SecAgg+ cell's record for a SuperLink of Flower ``flower``, where the version has a fact
    (None otherwise: not run). ``tried``: a job asked for with ONEAPP_FL_SECAGG=secaggplus on the pair.
    Untried, the fact stands (unsupported, said so); tried, the SuperLink must have refused it with the
    reason (unsupported, its published reason), else the check fails (the fact would be stale). An
    unsupported record passes: it is what the version is, not a failure of the pair."""
    version = ".".join(flower.split(".")[:2])
    reason = SECAGG_PLUS_UNSUPPORTED.get(version)
    if reason is None:
        return None
    check = {"task": FEATURE_TASKS[Feature.SECAGG], "name": "secagg_plus_refused", "unsupported": True}
    if tried is None:
        return check | {"passed": True, "detail": f"Flower {flower}: {reason} (per-version fact, not tried)"}
    refused = tried.statuses == [JobStatus.FAILED.value] and "secaggplus is not supported" in tried.reason
    if refused:
        return check | {"passed": True, "detail": f"Flower {flower}: refused: {tried.reason}"}
    return {
        "task": FEATURE_TASKS[Feature.SECAGG],
        "name": "secagg_plus_refused",
        "passed": False,
        "detail": f"Flower {flower}: expected the SuperLink to refuse secaggplus ({reason}); "
        f"ONEAPP_FL_RUN_STATUS went {' -> '.join(tried.statuses) or '(never published)'}"
        + (f", reason: {tried.reason}" if tried.reason else ""),
    }


def _feature_check(feature: Feature, name: str, passed: bool, detail: str) -> dict[str, Any]:
    return {"task": FEATURE_TASKS[feature], "name": name, "passed": passed, "detail": detail}


def dp_checks(observation: JobObservation, baseline: JobObservation, plan: JobPlan) -> list[dict[str, Any]]:
    """A DP job of the pair's use case against the pair's job without DP (same data, rounds, strategy):
    it ran to the end, every round reported, and its published loss differs from the baseline's in every
    round (the use cases are seeded: without noise the same computation gives the same loss)."""
    progressed = ran_to_the_end(observation.statuses)
    seen = sorted(observation.rounds)
    wanted = list(range(1, plan.rounds + 1))
    plain = {k: baseline.rounds.get(k, {}).get("eval_loss", math.nan) for k in wanted}
    noised = {k: observation.rounds.get(k, {}).get("eval_loss", math.nan) for k in wanted}
    moved = all(
        math.isfinite(plain[k])
        and math.isfinite(noised[k])
        and abs(noised[k] - plain[k]) > 1e-6 * abs(plain[k])
        for k in wanted
    )
    return [
        _feature_check(
            Feature.DP,
            "dp_job_finished",
            progressed and seen == wanted,
            f"ONEAPP_FL_RUN_STATUS went {' -> '.join(observation.statuses) or '(never published)'}, "
            f"rounds {seen} of {plan.rounds}"
            + (f"; reason: {observation.reason}" if observation.reason else ""),
        ),
        _feature_check(
            Feature.DP,
            "dp_noise_in_metrics",
            moved,
            f"eval_loss per round without DP {[round(v, 6) for v in plain.values()]}, "
            f"with DP {[round(v, 6) for v in noised.values()]}",
        ),
    ]


def resume_checks(observation: JobObservation, rounds: int, seen_before: int) -> list[dict[str, Any]]:
    """A job of ``rounds`` rounds whose SuperLink was powered off after round ``seen_before`` was
    published, and resumed: it finished with every round reported, ONEAPP_FL_RESUMED_FROM names a
    checkpoint at least as late, and the loss continued from it (the first resumed round's loss below
    round 2's, which is below round 1's: from scratch it would repeat round 1's)."""
    seen = sorted(observation.rounds)
    resumed = int(observation.resumed_from) if observation.resumed_from.isdigit() else 0
    loss = {k: metrics.get("eval_loss", math.nan) for k, metrics in observation.rounds.items()}
    after = loss.get(resumed + 1, math.nan)
    continued = 2 <= resumed < rounds and after < loss.get(2, math.nan) < loss.get(1, math.nan)
    return [
        _feature_check(
            Feature.RESUME,
            "resume_finished",
            observation.status == JobStatus.FINISHED.value
            and seen == list(range(1, rounds + 1))
            and 2 <= seen_before < rounds,
            f"powered off after round {seen_before} of {rounds}; ONEAPP_FL_RUN_STATUS went "
            f"{' -> '.join(observation.statuses)}; rounds {seen}"
            + (f"; reason: {observation.reason}" if observation.reason else ""),
        ),
        _feature_check(
            Feature.RESUME,
            "resume_from_checkpoint",
            continued and resumed >= seen_before,
            f"ONEAPP_FL_RESUMED_FROM={observation.resumed_from or '(not published)'}; eval_loss per round "
            + str({k: round(v, 6) for k, v in sorted(loss.items())}),
        ),
    ]


# -- in a cloud pair test (factory/harness/pairtest.py) --------------------------------------------------


def plan_for(spec: PairSpec) -> JobPlan:
    """The pair's job: the use case of its SuperNodes' framework, waiting for all of its SuperNodes."""
    return JobPlan(use_case_for(spec.supernode.framework), min_nodes=spec.supernode.count)


def superlink_reader(cloud: Any, service: Any) -> Callable[[], dict[str, str] | None]:
    """A reader of the SuperLink VM's USER_TEMPLATE (None while there is none). A factory.one.OneCloud
    service is read over a connection of its own (same settings), not the one the deploying thread uses."""
    own = service
    settings = getattr(cloud, "settings", None)
    if settings is not None and dataclasses.is_dataclass(service) and not isinstance(service, type):
        private = type(cloud)(settings, cloud.progress)
        own = dataclasses.replace(service, cloud=private, history=[])  # type: ignore[call-arg]

    def read() -> dict[str, str] | None:
        vms = own.role_vms("superlink")
        return dict(vms[0].user_template) if vms else None

    return read


def follow_superlink(cloud: Any, service: Any, interval: float = 2.0) -> JobFollower:
    """Follow the SuperLink's job attributes from the instantiation on (see :func:`superlink_reader`)."""
    return JobFollower(superlink_reader(cloud, service), interval).start()


def job_attributes(attributes: dict[str, str]) -> dict[str, str]:
    """The job's published attributes (:data:`JOB_ATTRIBUTES`) of a USER_TEMPLATE, "" when absent."""
    return {name: attributes.get(name, "") for name in JOB_ATTRIBUTES}


def changed_since(
    read: Callable[[], dict[str, str] | None], before: dict[str, str]
) -> Callable[[], dict[str, str] | None]:
    """``read``, answering None until the job's attributes differ from ``before`` (what an earlier job left,
    read before a context change asks for another): a follower of the new job never records the old one."""
    changed = False

    def fresh() -> dict[str, str] | None:
        nonlocal changed
        attributes = read()
        if attributes is None or (not changed and job_attributes(attributes) == before):
            return None
        changed = True
        return attributes

    return fresh


def record_job(
    result: PairResult, plan: JobPlan, observation: JobObservation, instantiated_wall: float
) -> None:
    """The job's checks and timings (wall seconds from the instantiation) into the PairResult, and the
    SecAgg+ fact of the SuperLink's Flower version (:func:`secagg_check`)."""
    result.checks += job_checks(observation, plan)
    secagg = secagg_check(result.superlink.flower)
    if secagg is not None:
        result.checks.append(secagg)
    seen = observation.round_seen_at
    if 1 in seen:
        result.timings["job_instantiate_to_first_round_seconds"] = seen[1] - instantiated_wall
    if seen:
        result.timings["job_instantiate_to_last_round_seconds"] = max(seen.values()) - instantiated_wall


# -- the feature jobs (PairTestOptions.job_features): more jobs on the pair, asked for by context ---------

FEATURE_CHECKPOINTS = "/var/lib/flower/checkpoints/features"  # one directory per feature job
RESUME_ROUNDS = 4
POWEROFF = 8  # VM STATE (include/VirtualMachine.h)


def feature_context(plan: JobPlan, directory: str, **changes: str) -> dict[str, str]:
    """Every job parameter (a context change merges: nothing may be left from the job before), the
    pair's use case and nodes, a checkpoint directory of its own (so no job resumes another's)."""
    return (
        plan.context()
        | {
            "ONEAPP_FL_APP_SHA256": "",
            "ONEAPP_FL_STRATEGY": "fedavg",
            "ONEAPP_FL_RUN_CONFIG": "",
            "ONEAPP_FL_DP": "off",
            "ONEAPP_FL_DP_NOISE": "1.0",
            "ONEAPP_FL_DP_CLIPPING_NORM": "10.0",
            "ONEAPP_FL_DP_SAMPLED_CLIENTS": "0",
            "ONEAPP_FL_SECAGG": "off",
            "ONEAPP_FL_CHECKPOINT_DIR": f"{FEATURE_CHECKPOINTS}/{directory}",
        }
        | changes
    )


def context_job(cloud: Any, service: Any, context: dict[str, str], interval: float = 2.0) -> JobFollower:
    """Ask the running SuperLink for another job as a user would (``onevm updateconf``: its CONTEXT
    merged with ``context``; the guest's one-context re-runs the appliance's configure, which restarts
    flower-job), and follow it; the earlier job's attributes are never recorded (:func:`changed_since`)."""
    superlink = service.role_vms("superlink")[0]
    read = changed_since(superlink_reader(cloud, service), job_attributes(superlink.user_template))
    entries = ", ".join(f'{key}="{value}"' for key, value in context.items())
    cloud.one.vm.updateconf(superlink.id, f"CONTEXT=[{entries}]", 1)
    return JobFollower(read, interval).start()


def run_feature_jobs(
    cloud: Any, service: Any, plan: JobPlan, baseline: JobObservation, flower: str, timeout: float
) -> list[dict[str, Any]]:
    """SecAgg+ asked for (refused where the version's fact says so), a DP job (server-side fixed clipping)
    against the pair's job without DP, and a resume: a job of :data:`RESUME_ROUNDS` rounds whose SuperLink
    VM is powered off after round 2 and resumed. The checks of the report's resume, DP and SecAgg+
    columns (an error on the way is the feature's failed check, the next feature still runs); about 4
    more minutes per pair here (docs/train-on-deploy.md)."""
    features: list[tuple[Feature, Callable[[], list[dict[str, Any]]]]] = [
        (Feature.SECAGG, lambda: _secagg_job(cloud, service, plan, flower, timeout)),
        (Feature.DP, lambda: _dp_job(cloud, service, plan, baseline, timeout)),
        (Feature.RESUME, lambda: _resume_job(cloud, service, plan, timeout)),
    ]
    checks: list[dict[str, Any]] = []
    for feature, run in features:
        try:
            checks += run()
        except Exception as error:  # pyone, OneFlow or a lost VM: recorded, never a crashed pair test
            checks.append(_feature_check(feature, "feature_job", False, f"{type(error).__name__}: {error}"))
    return checks


def _secagg_job(cloud: Any, service: Any, plan: JobPlan, flower: str, timeout: float) -> list[dict[str, Any]]:
    tried = context_job(cloud, service, feature_context(plan, "secagg", ONEAPP_FL_SECAGG="secaggplus"))
    secagg = secagg_check(flower, tried.wait(timeout))
    return [secagg] if secagg is not None else []


def _dp_job(
    cloud: Any, service: Any, plan: JobPlan, baseline: JobObservation, timeout: float
) -> list[dict[str, Any]]:
    context = feature_context(
        plan, "dp", ONEAPP_FL_DP="server-fixed", ONEAPP_FL_DP_NOISE="0.5", ONEAPP_FL_DP_CLIPPING_NORM="1.0"
    )
    return dp_checks(context_job(cloud, service, context, interval=0.5).wait(timeout), baseline, plan)


def _resume_job(cloud: Any, service: Any, plan: JobPlan, timeout: float) -> list[dict[str, Any]]:
    resume = context_job(
        cloud, service, feature_context(plan, "resume", ONEAPP_FL_ROUNDS=str(RESUME_ROUNDS)), interval=0.5
    )
    try:
        deadline = time.monotonic() + timeout
        seen_before, done = resume.progress()
        while time.monotonic() < deadline and seen_before < 2 and not done:
            time.sleep(0.5)
            seen_before, done = resume.progress()
        if 2 <= seen_before < RESUME_ROUNDS and not done:
            vm_id = service.role_vms("superlink")[0].id
            cloud.one.vm.action("poweroff", vm_id)
            while time.monotonic() < deadline and int(cloud.one.vm.info(vm_id).STATE) != POWEROFF:
                time.sleep(2)
            cloud.one.vm.action("resume", vm_id)
        observation = resume.wait(max(deadline - time.monotonic(), 1.0))
    finally:
        resume.stop()
    return resume_checks(observation, RESUME_ROUNDS, seen_before)
