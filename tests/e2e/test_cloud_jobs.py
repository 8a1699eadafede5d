"""Train on deploy in the local test cloud, proved where an OpenNebula user looks: the SuperLink VM's
OneGate attributes (what ``onevm show`` shows). No tunnel and no ``flwr run`` from the host.

One pair (the edge numpy pair: its use case is ``anomaly``, numpy only, the cheapest) is deployed once as
a OneFlow service whose SuperLink context asks for a 5-round job. Then:

- resume: the SuperLink VM is powered off (``one.vm.action("poweroff")``, as tests/e2e/test_faults.py
  does) after round 2 was published and resumed; the job ends at round 5 in total,
  ``ONEAPP_FL_RESUMED_FROM`` says from where and the loss continues from the checkpoint;
- every further job is asked for the way a user would: ``one.vm.updateconf`` of the SuperLink's CONTEXT
  (what ``onevm updateconf`` does; the guest's one-context re-runs the appliance's configure, which
  restarts ``flower-job`` with the new job). Each sets every job parameter (no value left from the test
  before) and its own checkpoint directory, so that the jobs are independent of each other's
  checkpoints; the follower ignores the attributes until the earlier job's are gone
  (jobcheck.changed_since);
- bad input (an unknown strategy, rounds 0, ONEAPP_FL_MIN_NODES above the SuperNode role's cardinality):
  failed with the reason, no run id;
- a user's Flower app bundle (built here with Flower's own builder, base64 in the context): with a wrong
  sha256 refused with both digests in the reason and no run; with the right one it runs to the end;
- DP, server-side and client-side fixed clipping: the numpy use case is deterministic, so the published
  metrics of a job without DP are reproduced by nothing but the same computation; with DP's noise they
  differ (the client-side mods run on the SuperNodes from the run-config the SuperLink sends with the
  run, so both sides agree by construction: docs/train-on-deploy.md);
- every strategy of ``ONEAPP_FL_STRATEGY`` (images/params.yaml), 2 rounds each.

Needs root, systemd-nspawn, the test bridge and the debian12 1.42.0 images (``cloud``); minutes
(``slow``). Measured times: docs/train-on-deploy.md.
"""

from __future__ import annotations

import base64
import hashlib
import math
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from scratch import scratch_dir

from factory.harness.campaign import find_pair_specs, local_image
from factory.harness.deployment import Deployment
from factory.harness.flwrenv import FlowerEnv
from factory.harness.jobcheck import (
    JobFollower,
    JobObservation,
    JobPlan,
    changed_since,
    job_attributes,
    job_checks,
    ran_to_the_end,
    superlink_reader,
)
from factory.harness.jobfeatures import Feature, feature_state, run_feature_jobs
from factory.model.params import load_params
from factory.one import OneCloud, load_settings
from factory.one.cloud import VMInfo
from hostkit.paths import APPS_DIR
from hostkit.progress import Progress
from hostkit.waiting import wait_until

pytestmark = [pytest.mark.cloud, pytest.mark.slow]

PAIR = "pair-sl1.42.0-sn1.42.0-debian12-cpu-edge-numpy"
USE_CASE = "anomaly"  # jobcheck.use_case_for("numpy")
POWEROFF = 8  # VM STATE (include/VirtualMachine.h)
CHECKPOINTS = "/var/lib/flower/checkpoints"  # the default ONEAPP_FL_CHECKPOINT_DIR; one directory per test
JOB_TIMEOUT = 600
RESUME_ROUNDS = 5
# Every job parameter a test sets (the SuperLink's images/params.yaml defaults otherwise): a context
# change merges into the context, so each job names all of them.
JOB_DEFAULTS = {
    "ONEAPP_FL_APP": USE_CASE,
    "ONEAPP_FL_APP_SHA256": "",
    "ONEAPP_FL_ROUNDS": "2",
    "ONEAPP_FL_STRATEGY": "fedavg",
    "ONEAPP_FL_MIN_NODES": "2",
    "ONEAPP_FL_RUN_CONFIG": "",
    "ONEAPP_FL_DP": "off",
    "ONEAPP_FL_DP_NOISE": "1.0",
    "ONEAPP_FL_DP_CLIPPING_NORM": "10.0",
    "ONEAPP_FL_DP_SAMPLED_CLIENTS": "0",
}


def job_context(directory: str, **changes: str) -> dict[str, str]:
    return JOB_DEFAULTS | {"ONEAPP_FL_CHECKPOINT_DIR": f"{CHECKPOINTS}/{directory}"} | changes


def strategies() -> list[str]:
    """ONEAPP_FL_STRATEGY's options: every strategy the appliance offers from context."""
    return list(next(p for p in load_params().params if p.name == "ONEAPP_FL_STRATEGY").options)


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OneCloud]:
    from testcloud.launcher import start

    with scratch_dir(tmp_path_factory, "cloud") as state, start(state, "auto"):
        yield OneCloud(load_settings(environ={}, cloud_dir=state), Progress())


@dataclass
class JobPair:
    """The deployed pair, the follower of the job its SuperLink was instantiated with, and a log of what
    every job took (for the failure messages and docs)."""

    deployment: Deployment
    first_job: JobFollower
    instantiated: float
    running_after: float

    @property
    def cloud(self) -> OneCloud:
        return self.deployment.cloud  # type: ignore[return-value]

    def superlink(self) -> VMInfo:
        return self.deployment.service.role_vms("superlink")[0]

    def logs(self) -> str:
        collected = self.deployment.collect_logs()
        return "\n".join(f"== {name}\n{text[-2500:]}" for name, text in collected.items())

    def run_job(self, context: dict[str, str], timeout: float = JOB_TIMEOUT) -> tuple[JobObservation, float]:
        """The SuperLink's CONTEXT changed to ``context`` (``onevm updateconf``, merged), the new job
        followed through OneGate until it is done; the observation and the seconds it took."""
        superlink = self.superlink()
        before = job_attributes(superlink.user_template)
        read = changed_since(superlink_reader(self.cloud, self.deployment.service), before)
        started = time.monotonic()
        entries = ", ".join(f'{key}="{value}"' for key, value in context.items())
        self.cloud.one.vm.updateconf(superlink.id, f"CONTEXT=[{entries}]", 1)
        observation = JobFollower(read, interval=0.5).start().wait(timeout)
        return observation, time.monotonic() - started


@pytest.fixture(scope="module")
def pair(cloud: OneCloud, tmp_path_factory: pytest.TempPathFactory) -> Iterator[JobPair]:
    """The edge numpy pair, its SuperLink instantiated with the 5-round job of the resume test, followed
    from the instantiation on."""
    spec = find_pair_specs([PAIR])[0]
    sides = {"superlink": spec.superlink, "supernode": spec.supernode}
    deployment = Deployment(cloud, "jobs", tmp_path_factory.mktemp("jobs"), Progress())
    followers: list[JobFollower] = []
    with deployment:
        refs = deployment.import_images(
            {role: local_image(side.variant) for role, side in sides.items()},
            {role: f"flower-{side.variant}" for role, side in sides.items()},
        )
        link, node = (deployment.vm_template(role, refs[role].id, sides[role].arch) for role in sides)
        # local-epochs: longer rounds, so that the power-off lands while rounds are left
        resume = job_context(
            "resume", ONEAPP_FL_ROUNDS=str(RESUME_ROUNDS), ONEAPP_FL_RUN_CONFIG="local-epochs=5"
        )
        template = deployment.service_template(
            link, node, spec.supernode.count, "tls-auth", extra_context={"superlink": resume}
        )
        instantiated = time.monotonic()

        def follow(service: Any) -> None:
            followers.append(JobFollower(superlink_reader(cloud, service), interval=1.0).start())

        try:
            deployment.launch(template, 900, on_launched=follow)
            yield JobPair(deployment, followers[0], instantiated, time.monotonic() - instantiated)
        finally:
            for follower in followers:
                follower.stop()


def published(text: str) -> str:
    """``text`` as it reads in OneGate: the appliance writes ',' as ';' (lib/onegate.sh fl_onegate_value:
    OneGate's escape_attr takes a comma for the end of a value)."""
    return text.replace(",", ";")


def wait(check: Callable[[], Any], timeout: float, what: str, interval: float = 2.0) -> Any:
    return wait_until(check, timeout, interval=interval, what=what, error=AssertionError)


def losses(observation: JobObservation) -> dict[int, float]:
    return {k: metrics.get("eval_loss", math.nan) for k, metrics in sorted(observation.rounds.items())}


def test_a_job_resumes_from_its_checkpoint_after_a_superlink_poweroff(pair: JobPair) -> None:
    cloud, superlink, job = pair.cloud, pair.superlink(), pair.first_job
    wait(lambda: job.progress()[0] >= 2 or job.progress()[1], 900, "round 2", 0.5)
    seen_before = job.progress()[0]
    run_before = job.observation.run_id
    cloud.one.vm.action("poweroff", superlink.id)
    powered_off = time.monotonic() - pair.instantiated
    wait(lambda: cloud.one.vm.info(superlink.id).STATE == POWEROFF, 300, "SuperLink POWEROFF")
    cloud.one.vm.action("resume", superlink.id)
    observation = job.wait(JOB_TIMEOUT)
    ended = time.monotonic() - pair.instantiated
    record = (
        f"{observation.to_dict()}; powered off at {powered_off:.0f} s after round {seen_before} "
        f"(run {run_before}) was published; done at {ended:.0f} s"
    )
    assert observation.done, f"{record}\n{pair.logs()}"
    # the power-off landed mid-job: rounds were left
    assert 2 <= seen_before < RESUME_ROUNDS, record
    # the job ended at round 5 in total, every round reported once, after a new run
    assert observation.status == "finished", f"{record}\n{pair.logs()}"
    assert sorted(observation.rounds) == list(range(1, RESUME_ROUNDS + 1)), record
    assert observation.total_rounds == RESUME_ROUNDS, record
    assert observation.run_id and observation.run_id != run_before, record
    assert observation.statuses.count("waiting-for-nodes") == 2, record  # the job started again at boot
    # it says from where: a checkpoint of a round at least as late as the last one published
    resumed = int(observation.resumed_from)
    assert seen_before <= resumed < RESUME_ROUNDS, record
    # and the loss continues from the checkpoint: the first resumed round trains on from the checkpoint's
    # model, below round 2's loss; from scratch it would repeat round 1's (deterministic numpy task)
    loss = losses(observation)
    assert loss[resumed + 1] < loss[2] < loss[1], record
    assert observation.model.startswith(f"{CHECKPOINTS}/resume/"), record


BAD = [
    ({"ONEAPP_FL_STRATEGY": "fedfoo"}, "ONEAPP_FL_STRATEGY: unknown strategy 'fedfoo'"),
    ({"ONEAPP_FL_ROUNDS": "0"}, "ONEAPP_FL_ROUNDS: must be an integer within 1..100000, got '0'"),
    # the SuperNode role's cardinality is 2 (OneGate /service, read by the configure stage)
    ({"ONEAPP_FL_MIN_NODES": "3"}, "ONEAPP_FL_MIN_NODES: 3 is above the 2 SuperNodes of the service"),
]


@pytest.mark.parametrize(("changes", "reason"), BAD, ids=["strategy", "rounds-0", "min-nodes"])
def test_bad_job_input_fails_with_the_reason_and_starts_nothing(
    pair: JobPair, changes: dict[str, str], reason: str
) -> None:
    observation, seconds = pair.run_job(job_context("bad", **changes), timeout=300)
    record = f"{observation.to_dict()} after {seconds:.0f} s"
    assert observation.statuses == ["failed"], record
    assert published(reason) in observation.reason, record
    assert not observation.run_id and not observation.rounds and not observation.model, record


def build_user_fab(flower: FlowerEnv, directory: Path) -> bytes:
    """A user's app bundle: a copy of the factory app under another name, built by Flower's builder."""
    app = directory / "user-app"
    subprocess.run(["cp", "-r", str(APPS_DIR / "factory-app"), str(app)], check=True)
    project = app / "pyproject.toml"
    project.write_text(project.read_text().replace('name = "factory-app"', 'name = "user-app"', 1))
    fab = directory / "user.fab"
    subprocess.run(
        [
            str(flower.python),
            "-c",
            "import sys; from pathlib import Path; from flwr.cli.build import build_fab_from_disk; "
            "Path(sys.argv[2]).write_bytes(build_fab_from_disk(Path(sys.argv[1])))",
            str(app),
            str(fab),
        ],
        check=True,
        timeout=120,
    )
    return fab.read_bytes()


def test_a_user_app_bundle_runs_only_with_its_sha256(
    pair: JobPair, flower_current: FlowerEnv, tmp_path: Path
) -> None:
    data = build_user_fab(flower_current, tmp_path)
    encoded, digest = base64.b64encode(data).decode(), hashlib.sha256(data).hexdigest()
    wrong = hashlib.sha256(b"not the bundle").hexdigest()

    refused, seconds = pair.run_job(
        job_context("bundle", ONEAPP_FL_APP=encoded, ONEAPP_FL_APP_SHA256=wrong), timeout=300
    )
    record = f"wrong sha256: {refused.to_dict()} after {seconds:.0f} s"
    assert refused.statuses == ["failed"], record
    mismatch = f"sha256 mismatch: the bundle has {digest}, ONEAPP_FL_APP_SHA256 says {wrong}"
    assert published(mismatch) in refused.reason, record
    assert not refused.run_id and not refused.rounds, record

    ran, seconds = pair.run_job(job_context("bundle", ONEAPP_FL_APP=encoded, ONEAPP_FL_APP_SHA256=digest))
    record = f"right sha256: {ran.to_dict()} after {seconds:.0f} s"
    assert ran_to_the_end(ran.statuses), f"{record}\n{pair.logs()}"
    assert sorted(ran.rounds) == [1, 2] and ran.total_rounds == 2, record
    assert ran.run_id.isdigit() and ran.model.startswith(f"{CHECKPOINTS}/bundle/"), record


def test_the_report_feature_jobs_pass_on_a_working_pair(pair: JobPair) -> None:
    """What ``build.py test|release --job-features`` runs on every pair (jobfeatures.run_feature_jobs: SecAgg+
    asked for, a DP job against the job without, a resume after a power-off of 4 rounds), here on this
    pair: the report's cells say resume passed, DP passed, SecAgg+ unsupported with the SuperLink's own
    refusal."""
    plan = JobPlan(USE_CASE, rounds=2, min_nodes=2)
    baseline, _ = pair.run_job(job_context("features-baseline"))
    started = time.monotonic()
    checks = run_feature_jobs(pair.cloud, pair.deployment.service, plan, baseline, "1.42.0", JOB_TIMEOUT)
    seconds = time.monotonic() - started
    cells = {
        feature.value: feature_state(checks, feature)
        for feature in (Feature.RESUME, Feature.DP, Feature.SECAGG)
    }
    record = f"{cells} in {seconds:.0f} s; baseline {baseline.to_dict()}"
    assert {name: state for name, (state, _) in cells.items()} == {
        "resume": "passed",
        "DP": "passed",
        "SecAgg+": "unsupported",
    }, f"{record}\n{pair.logs()}"
    assert "refused: ONEAPP_FL_SECAGG: secaggplus is not supported" in cells["SecAgg+"][1], record


def test_dp_noise_shows_in_the_published_metrics(pair: JobPair) -> None:
    """No DP, then server-side and client-side fixed clipping (noise multiplier 0.5, clipping norm 1.0), the
    same use case and data: each DP job finishes, and its published metrics differ from the job without."""
    runs: dict[str, JobObservation] = {}
    times: dict[str, float] = {}
    for mode in ("off", "server-fixed", "client-fixed"):
        context = job_context(
            f"dp-{mode}", ONEAPP_FL_DP=mode, ONEAPP_FL_DP_NOISE="0.5", ONEAPP_FL_DP_CLIPPING_NORM="1.0"
        )
        runs[mode], times[mode] = pair.run_job(context)
    record = "; ".join(f"{mode} ({times[mode]:.0f} s): {run.to_dict()}" for mode, run in runs.items())
    for mode, run in runs.items():
        assert ran_to_the_end(run.statuses), f"{mode}: {record}"
        assert sorted(run.rounds) == [1, 2], f"{mode}: {record}"
    plain = losses(runs["off"])
    for mode in ("server-fixed", "client-fixed"):
        noised = losses(runs[mode])
        assert all(math.isfinite(value) for value in noised.values()), record
        # the noise (standard deviation 0.5 x 1.0 / 2 nodes on every parameter) moves the model far more
        # than float summation order could
        assert all(abs(noised[k] - plain[k]) > 1e-6 * abs(plain[k]) for k in (1, 2)), f"{mode}: {record}"


@pytest.mark.parametrize("strategy", strategies())
def test_every_strategy_runs_from_context(pair: JobPair, strategy: str) -> None:
    observation, seconds = pair.run_job(job_context(f"strategy-{strategy}", ONEAPP_FL_STRATEGY=strategy))
    checks = job_checks(observation, JobPlan(USE_CASE, rounds=2, min_nodes=2))
    record = f"{strategy} ({seconds:.0f} s): {observation.to_dict()}; {checks}"
    # the nodes are online already: waiting-for-nodes may be shorter than a poll (jobcheck.ran_to_the_end)
    assert ran_to_the_end(observation.statuses), record
    wanted = {"job_rounds_reported", "job_model"}
    assert all(check["passed"] for check in checks if check["name"] in wanted), record
    assert all(math.isfinite(value) for value in losses(observation).values()), record
    assert observation.model.startswith(f"{CHECKPOINTS}/strategy-{strategy}/"), record
