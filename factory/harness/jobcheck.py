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
    mine = [check for check in checks if check.get("task") == JOB_TASK]
    if not mine:
        return "not run"
    return "passed" if all(check.get("passed") for check in mine) else "failed"


# -- in a cloud pair test (factory/harness/pairtest.py) --------------------------------------------------


def plan_for(spec: PairSpec) -> JobPlan:
    """The pair's job: the use case of its SuperNodes' framework, waiting for all of its SuperNodes."""
    return JobPlan(use_case_for(spec.supernode.framework), min_nodes=spec.supernode.count)


def superlink_reader(cloud: Any, service: Any) -> Callable[[], dict[str, str] | None]:
    """A reader of the SuperLink VM's USER_TEMPLATE (None while there is none). A factory.one.OneCloud
    service is read over a connection of its own (``reconnect``: same settings), not the one the deploying
    thread uses; ``cloud`` may be a view of one (a release pair: campaign.PairCloudView)."""
    own = service
    reconnect = getattr(cloud, "reconnect", None)
    if callable(reconnect) and dataclasses.is_dataclass(service) and not isinstance(service, type):
        own = dataclasses.replace(service, cloud=reconnect(), history=[])  # type: ignore[call-arg]

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
    """The job's checks and timings (wall seconds from the instantiation) into the PairResult."""
    result.checks += job_checks(observation, plan)
    seen = observation.round_seen_at
    if 1 in seen:
        result.timings["job_instantiate_to_first_round_seconds"] = seen[1] - instantiated_wall
    if seen:
        result.timings["job_instantiate_to_last_round_seconds"] = max(seen.values()) - instantiated_wall
