"""The compatibility report's train-on-deploy feature columns beyond "job from context": resume, DP and
SecAgg+ (docs/train-on-deploy.md, "The report's feature columns").

Each cell comes from the pair's recorded checks only (:func:`feature_state`): no check of a feature is
"not run". SecAgg+ is "unsupported" from a per-Flower-version fact (:data:`SECAGG_PLUS_UNSUPPORTED`) for
every cloud pair whose job from context ran; with ``--job-features`` (:func:`run_feature_jobs`) the pair
also runs, asked for by context as a user would (``onevm updateconf``) and followed through OneGate, a
SecAgg+ job (must be refused), a DP job (compared with the pair's job without DP) and a resume (the
SuperLink VM powered off after round 2).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from factory.harness.jobcheck import (
    JOB_TASK,
    JobFollower,
    JobObservation,
    JobPlan,
    JobStatus,
    changed_since,
    job_attributes,
    ran_to_the_end,
    superlink_reader,
)

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


def pair_feature_checks(
    cloud: Any, service: Any, plan: JobPlan, baseline: JobObservation, flower: str, run_jobs: bool,
    timeout: float,
) -> list[dict[str, Any]]:  # fmt: skip
    """What a cloud pair records for the feature columns after its job from context: the feature jobs
    (``run_jobs``: --job-features), else the SecAgg+ fact of its SuperLink's Flower version alone."""
    if run_jobs:
        return run_feature_jobs(cloud, service, plan, baseline, flower, timeout)
    fact = secagg_check(flower)
    return [fact] if fact is not None else []
