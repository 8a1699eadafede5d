"""Test one appliance pair: deploy it, run real federation rounds, and turn what happened into a PairResult.

Two targets share the federation runner and the result format:

- ``cloud``: the pair's images in OpenNebula (the local test cloud, or a real one): import or reuse the
  images, VM templates and a OneFlow service (1 SuperLink + N SuperNodes), wait for RUNNING, reach the
  SuperLink's Control API through an SSH tunnel with the CA the SuperLink published through OneGate, run
  the rounds, optionally start a rogue SuperNode, collect every VM's logs on failure, tear down;
- ``bare``: the same Flower versions as plain processes on loopback (factory/harness/bareflower.py), each
  side's venv holding its image's framework packages: the baseline, and the quick way to try a pair
  without images.

Both run the same tasks: the numpy canary (fast: the wiring works) and the task of the SuperNode image's
framework (sklearn on sklearn images, pytorch, tensorflow; on edge images the canary is that task), each held
to its criteria in apps/task-checks.toml. A pair passes only if its framework task ran and passed. Flower
runs several runs on one federation at once: in a cloud the SuperLink's train-on-deploy job
(factory/harness/jobcheck.py) runs beside the tasks, and the tasks may run side by side (``TaskOverlap``).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import re
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from factory.harness import monitorcheck
from factory.harness.bareflower import BareFederation, SecurityMode
from factory.harness.deployment import Deployment, PairCloud
from factory.harness.federation import CANARY_TASK, FederationOutcome, FederationRunner
from factory.harness.flwrenv import ensure_flower
from factory.harness.jobcheck import JobFollower, follow_superlink, plan_for, record_job
from factory.harness.jobfeatures import pair_feature_checks
from factory.harness.pair import FAILED, PASSED, PASSED_WITH_WARNING, PairResult, PairSpec, Side
from hostkit.errors import ConfigError, FactoryError
from hostkit.progress import DEFAULT as PROGRESS
from hostkit.progress import Progress
from hostkit.waiting import wait_until

# What makes a log line worth quoting in a failure: Flower's and the appliance's error lines, exit codes.
ERROR_LINE = re.compile(
    r"\bERROR\b(?!=)|\bCRITICAL\b|Exit Code: \d+|\[code: \d+\]|Traceback|missing selected ALPN"
    r"|Failed to [a-z]"
)
# Lines that match ERROR_LINE and say nothing about the failure: uvicorn's ``uvicorn.error`` logger prints
# ordinary start-up lines; systemd's non-fatal complaints end in ", ignoring" (e.g. "Failed to kill control
# group ..., ignoring: Invalid argument" when a unit stops in a container).
NOISE_LINE = re.compile(r"uvicorn\.error|Failed to kill control group|, ignoring(?::|\.|$)")


class TaskOverlap(StrEnum):
    """What of a pair's training runs at once, each its own Flower run (Flower runs several runs on one
    federation side by side)."""

    NONE = "none"  # the job from context waited for, then the canary, then the framework task
    JOB = "job"  # the job beside the tunnel tasks; the canary, then the framework task
    ALL = "all"  # the job, the canary and the framework task all at once


DEFAULT_OVERLAP = TaskOverlap.JOB
# 10 s, not the runner's 5 s: half the CPU spent looking at runs, the end of a run seen ~2.5 s later on
# average (issue 13: the pair tests of a release on 2 cores are CPU-bound; docs/e2e.md).
DEFAULT_POLL_INTERVAL = 10.0


@dataclass
class PairTestOptions:
    rounds: int = 3
    strategy: str = "fedavg"
    security: SecurityMode = SecurityMode.TLS_AUTH
    allow_insecure: bool = False
    # False: the numpy canary only, for the benchmark's baseline; the pair then fails ("not run").
    framework_task: bool = True
    rogue_supernode: bool = False
    keep_on_failure: bool = False
    deploy_timeout: float = 900.0
    federation_timeout: float = 900.0
    extra_config: dict[str, Any] = field(default_factory=dict)
    # cloud only: the SuperLink also runs a train-on-deploy job from its context (factory/harness/jobcheck.py)
    job_from_context: bool = True
    job_timeout: float = 900.0
    # cloud only, opt-in (--job-features): after that job, SecAgg+, DP and resume jobs on the same pair for
    # the report's feature columns (factory/harness/jobfeatures.py run_feature_jobs; a few minutes more)
    job_features: bool = False
    # cloud only: read every VM's appliance logs and journal also when the pair passed (benchmarks: where
    # the time from the instantiation to the first round went)
    collect_logs: bool = False
    # cloud only: which pair of a campaign is deployed with the service's monitoring role on and checked
    # through its Prometheus (factory/harness/monitorcheck.py): "first", "none" or a pair's name (the
    # campaign sets monitoring_role on that pair's options; the command line's default is "first")
    monitoring_pair: str = "none"
    monitoring_role: bool = False
    # What trains at once (issue 13: a pair trained 2-3 times one after another): see TaskOverlap.
    overlap: TaskOverlap = field(default_factory=lambda: DEFAULT_OVERLAP)
    # Seconds between two looks at a run (`flwr list` and `flwr log`, each a start of the flwr CLI: 1.2 s
    # of CPU idle, 1.7-1.8 s under load; at 5 s one followed run keeps more than half a core busy).
    poll_interval: float = DEFAULT_POLL_INTERVAL

    def check(self) -> None:
        if self.security is SecurityMode.INSECURE and not self.allow_insecure:
            raise ConfigError(
                "command line",
                "--security",
                "insecure runs plain HTTP and no node authentication: add --allow-insecure",
            )
        if self.job_features and not self.job_from_context:
            raise ConfigError(
                "command line", "--job-features", "needs the job from context (it runs on the same pair)"
            )
        if self.poll_interval <= 0:
            raise ConfigError(
                "command line", "--poll-interval", f"must be more than 0 seconds, got {self.poll_interval:g}"
            )
        if self.rounds < 2:
            raise ConfigError(
                "command line",
                "--rounds",
                f"must be at least 2 (the loss must be seen to go down), got {self.rounds}",
            )


def major_minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def version_warnings(spec: PairSpec) -> list[str]:
    link, node = spec.superlink.flower, spec.supernode.flower
    if major_minor(link) != major_minor(node):
        return [
            f"Flower major.minor differs (SuperLink {link}, SuperNodes {node}): Flower's compatibility rule "
            "requires them to match, but this pair ran"
        ]
    return []


def failure_text(error: str, logs: dict[str, str]) -> str:
    """A failure's error: the exception's message (the failed step, an appliance's reported reason) first,
    then the log lines that say more; the log lines alone when nothing else named the failure."""
    return "; ".join([error, *error_lines(logs)] if error else error_lines(logs))


def error_lines(logs: dict[str, str], limit: int = 6) -> list[str]:
    """The first distinct error lines of the collected logs (one per line, without colours), for the
    failure message, without the NOISE_LINE ones."""
    from factory.harness.federation import strip_ansi

    found: list[str] = []
    for name, text in sorted(logs.items()):
        for line in strip_ansi(text).splitlines():
            if NOISE_LINE.search(line) or not ERROR_LINE.search(line):
                continue
            quoted = f"{name}: {line.strip()[:200]}"
            if quoted not in found:
                found.append(quoted)
            if len(found) >= limit:
                return found
    return found


def framework_task(spec: PairSpec) -> str:
    """The task of the SuperNode image's framework (the app's tasks are named like the framework axis)."""
    return spec.supernode.framework or CANARY_TASK


def pair_tasks(spec: PairSpec, options: PairTestOptions) -> list[str]:
    """The canary first, then the framework task (once, when it is the canary itself: edge images)."""
    tasks = [CANARY_TASK]
    framework = framework_task(spec)
    if options.framework_task and framework != CANARY_TASK:
        tasks.append(framework)
    return tasks


Runners = Any  # a FederationRunner (every task through it), or task -> the FederationRunner of that task


def _runner_for(runners: Runners) -> Callable[[str], Any]:
    """``runners`` as task -> runner: one runner object serves every task; a callable makes one per task
    (tasks side by side each need their own ``flwr`` home)."""
    if hasattr(runners, "run"):
        return lambda task: runners
    return runners  # type: ignore[no-any-return]


def _run_task(runner: Any, task: str, spec: PairSpec, options: PairTestOptions) -> FederationOutcome:
    """One task's federation; a failure names the task it broke."""
    try:
        return runner.run(
            rounds=options.rounds,
            strategy=options.strategy,
            task=task,
            expected_supernodes=spec.supernode.count,
            timeout=options.federation_timeout,
            extra_config=options.extra_config,
        )
    except FactoryError as error:
        raise FactoryError(f"{task} task: {error}") from None


class _Background:
    """A call in a daemon thread (a Ctrl-C in the calling thread is not held up by it: the pair's teardown
    removes the service, and its polls then fail), whose outcome or exception ``result`` hands over."""

    def __init__(self, call: Callable[[], FederationOutcome], name: str) -> None:
        self._call = call
        self._outcome: FederationOutcome | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        try:
            self._outcome = self._call()
        except BaseException as error:  # handed to the calling thread by result()
            self._error = error

    def result(self) -> FederationOutcome:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._outcome is not None
        return self._outcome


def _run_tasks(
    runners: Runners, spec: PairSpec, options: PairTestOptions, result: PairResult
) -> list[FederationOutcome]:
    """Run each of the pair's tasks as a federation and record its outcome, checks and timings, the canary
    first. Side by side (``TaskOverlap.ALL``) the framework task is submitted with the canary, each through
    its own runner; one after another a failed canary stops there (the wiring is broken, the framework task
    would only repeat why). A task that broke is raised once every task ended, its outcome left out."""
    runner_for = _runner_for(runners)
    tasks = pair_tasks(spec, options)
    if options.overlap is not TaskOverlap.ALL or len(tasks) == 1:
        outcomes = []
        for task in tasks:
            outcome = _run_task(runner_for(task), task, spec, options)
            _record(result, outcome)
            outcomes.append(outcome)
            if not outcome.passed:
                break
        return outcomes
    later = [
        _Background(lambda task=task: _run_task(runner_for(task), task, spec, options), f"task-{task}")
        for task in tasks[1:]
    ]
    attempts: list[Callable[[], FederationOutcome]] = []
    try:
        first = _run_task(runner_for(tasks[0]), tasks[0], spec, options)
        attempts.append(lambda: first)
    except FactoryError as error:
        attempts.append(lambda error=error: _raise(error))
    attempts += [background.result for background in later]
    outcomes, errors = [], []
    for attempt in attempts:  # in the order of the tasks, whatever order they finished in
        try:
            outcome = attempt()
        except FactoryError as error:
            errors.append(error)
            continue
        _record(result, outcome)
        outcomes.append(outcome)
    if errors:
        raise errors[0]
    return outcomes


def _raise(error: FactoryError) -> FederationOutcome:
    raise error


def _record(result: PairResult, outcome: FederationOutcome) -> None:
    _record_outcome(result, outcome)
    _timings(result, outcome)


def _record_outcome(result: PairResult, outcome: FederationOutcome) -> None:
    result.federations.append(outcome.to_dict())
    result.checks += [{"task": outcome.task, **check.__dict__} for check in outcome.checks]


def _finish(result: PairResult, spec: PairSpec, error: str = "") -> PairResult:
    """The pair's status. The error names the failed checks first, the framework task's before the others
    (so a metric below its floor is what one reads first), then the exception or log lines, then a
    framework task that never ran."""
    result.finished_at = time.time()
    result.framework_task = framework_task(spec)
    failed_checks = [check for check in result.checks if not check["passed"]]
    failed_checks.sort(key=lambda check: check["task"] != result.framework_task)
    ran = {federation.get("task") for federation in result.federations}
    if error or failed_checks or result.framework_task not in ran:
        result.status = FAILED
        reasons = [f"{check['task']}/{check['name']}: {check['detail']}" for check in failed_checks]
        reasons += [error] if error else []
        if not reasons:  # nothing else failed: the framework task was left out (canary only)
            reasons.append(f"{result.framework_task}/framework_task: not run (the numpy canary only)")
        result.error = "; ".join(reasons)
        return result
    result.warnings = version_warnings(spec) + result.warnings
    result.status = PASSED_WITH_WARNING if result.warnings else PASSED
    return result


# -- bare Flower ---------------------------------------------------------------------------------------------


def run_pair_bare(
    spec: PairSpec, run: str, workdir: Path, options: PairTestOptions, progress: Progress = PROGRESS
) -> PairResult:
    """The pair's Flower versions as plain processes on loopback: same app, checks and record as the cloud."""
    options.check()
    result = _new_result(spec, run, "bare", options)
    started = time.monotonic()
    error = ""
    link_env = node_env = None
    try:
        link_env = ensure_flower(spec.superlink.flower, *framework_packages(spec.superlink))
        node_env = ensure_flower(spec.supernode.flower, *framework_packages(spec.supernode))
    except FactoryError as failure:
        return _finish(result, spec, str(failure))
    federation = BareFederation(
        workdir / "federation",
        link_env,
        supernode_env=node_env,
        num_supernodes=spec.supernode.count,
        security=options.security,
    )
    try:
        with federation:
            result.timings["deploy_seconds"] = time.monotonic() - started
            rogue = federation.start_rogue_supernode() if options.rogue_supernode else None
            runner = FederationRunner(
                link_env, workdir / "runner", federation.connection(), progress=progress,
                poll_interval=options.poll_interval,
            )  # fmt: skip
            _run_tasks(task_runners(runner), spec, options, result)
            if rogue is not None:
                result.checks.append(_rogue_check_bare(rogue, runner, spec.supernode.count))
    except FactoryError as failure:
        error = str(failure)
    if error or not all(check["passed"] for check in result.checks):
        result.logs = federation.logs()
        error = failure_text(error, result.logs)
    return _finish(result, spec, error)


def framework_packages(side: Side) -> tuple[tuple[str, ...], str]:
    """The pinned framework packages (and extra index) the side's image carries, from the matrix: a bare
    pair's venvs hold what the images hold, so the framework task runs there too."""
    from factory.model.matrix import load_matrix

    pins = load_matrix().variant(side.variant).pins
    return tuple(pins.framework_packages), pins.framework_index_url


def _timings(result: PairResult, outcome: FederationOutcome) -> None:
    """Per task: seconds from submission to the end of the run; for the canary also its rounds and the
    time to the first round (the numbers the benchmarks and the report compare across pairs)."""
    task_seconds = result.timings.setdefault("task_seconds", {})  # type: ignore[arg-type]
    task_seconds[outcome.task] = outcome.finished_at - outcome.submitted_at if outcome.submitted_at else 0.0
    if outcome.task != CANARY_TASK:
        return
    rounds = [record.seconds for record in outcome.rounds]
    result.timings["round_seconds"] = rounds  # type: ignore[assignment]
    if outcome.rounds:
        # wall time from the start of the deployment to the end of the first round
        deploy_start_wall = result.started_at
        result.timings["instantiate_to_first_round_seconds"] = outcome.rounds[0].finished - deploy_start_wall
        result.timings["submit_to_first_round_seconds"] = outcome.rounds[0].finished - outcome.submitted_at
    result.timings["federation_seconds"] = outcome.finished_at - outcome.submitted_at


def _rogue_check_bare(rogue: Any, runner: FederationRunner, expected: int) -> dict[str, Any]:
    """The rogue process must have been refused (exited, with an error) while the run finished."""
    with contextlib.suppress(TimeoutError):
        wait_until(lambda: not rogue.running(), 30, what="rogue SuperNode exited")
    refused = not rogue.running() and rogue.process.returncode != 0
    log_tail = rogue.log_text()[-300:].strip().replace("\n", " | ")
    return rogue_check(runner, expected, refused, f"exit {rogue.process.returncode}; {log_tail}")


# -- the cloud -----------------------------------------------------------------------------------------------


def ca_from_published(user_template: dict[str, str]) -> bytes:
    """The SuperLink's CA (ONEAPP_FL_CA_CERT, base64 PEM), checked against ONEAPP_FL_CA_FINGERPRINT."""
    encoded = user_template.get("ONEAPP_FL_CA_CERT", "")
    if not encoded:
        raise FactoryError("the SuperLink VM published no ONEAPP_FL_CA_CERT through OneGate")
    try:
        pem = base64.b64decode(encoded, validate=True)
    except ValueError as error:
        raise FactoryError(f"ONEAPP_FL_CA_CERT is not base64: {error}") from None
    if b"BEGIN CERTIFICATE" not in pem:
        raise FactoryError("ONEAPP_FL_CA_CERT does not hold a PEM certificate")
    published = user_template.get("ONEAPP_FL_CA_FINGERPRINT", "").replace(":", "").lower()
    if published:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes

        certificate = x509.load_pem_x509_certificate(pem)
        actual = certificate.fingerprint(hashes.SHA256()).hex()
        if actual != published and hashlib.sha256(pem).hexdigest() != published:
            raise FactoryError(f"CA fingerprint mismatch: published {published}, certificate has {actual}")
    return pem


@dataclass(frozen=True)
class ImageFile:
    """A built image and its manifest (factory/model/manifest.py format)."""

    path: Path
    manifest: dict[str, Any]

    def record(self) -> dict[str, Any]:
        manifest = self.manifest
        return {
            "path": str(self.path),
            "format": manifest.get("format", "raw"),
            "sha256": manifest.get("sha256", ""),
            "md5": manifest.get("md5", ""),
            "size": manifest.get("size", 0),
            "virtual_size": manifest.get("virtual_size", 0),
            "os_release": manifest.get("os_release", {}),
            "components": manifest.get("components", {}),
        }


def _new_result(
    spec: PairSpec,
    run: str,
    target: str,
    options: PairTestOptions,
    images: dict[str, ImageFile] | None = None,
) -> PairResult:
    """The record a pair test fills in; in a cloud each side carries its image's record."""
    result = PairResult.begin(spec, run, target, options.security.value)
    if images:
        result.superlink = dataclasses.replace(spec.superlink, image=images["superlink"].record())
        result.supernodes = dataclasses.replace(spec.supernode, image=images["supernode"].record())
    return result


def _failed(result: PairResult, error: str) -> bool:
    return bool(error) or not all(check["passed"] for check in result.checks) or not result.federations


def rogue_check(runner: FederationRunner, expected: int, refused: bool, rogue: str) -> dict[str, Any]:
    """The rogue SuperNode was refused (``refused``, as the target can tell) and exactly the ``expected``
    registered SuperNodes are online."""
    online = [node for node in runner.cli.supernodes() if str(node.get("status")) == "online"]
    return {
        "task": "security",
        "name": "rogue_supernode_rejected",
        "passed": refused and len(online) == expected,
        "detail": f"{len(online)} SuperNodes online, expected {expected}; rogue: {rogue}",
    }


def run_pair_in_cloud(
    spec: PairSpec,
    run: str,
    workdir: Path,
    options: PairTestOptions,
    cloud: PairCloud,
    images: dict[str, ImageFile],
    target: str = "testcloud",
    progress: Progress = PROGRESS,
) -> PairResult:
    """Deploy the pair as a OneFlow service in ``cloud`` (a factory.one.OneCloud) and run the federation."""
    options.check()
    result = _new_result(spec, run, target, options, images)
    error = ""
    with Deployment(cloud, f"{spec.name}-{run}", workdir, progress) as deployment:
        try:
            _deploy_and_run(deployment, spec, options, images, result)
        except FactoryError as failure:
            error = str(failure)
        failed = _failed(result, error)
        if failed or options.collect_logs:
            result.logs = deployment.collect_logs()
        if failed:
            error = failure_text(error, result.logs) if deployment.service is not None else error
            if options.keep_on_failure:
                kept = deployment.keep()
                result.warnings.append(f"kept for inspection (--keep-on-failure): {kept}")
                progress.line(
                    f"{spec.name}: failed; kept {kept} for inspection (SSH key {deployment.key.private})"
                )
    return _finish(result, spec, error)


def _deploy_and_run(
    deployment: Deployment, spec: PairSpec, options: PairTestOptions, images: dict[str, ImageFile],
    result: PairResult,
) -> None:  # fmt: skip
    """Images, templates, the service RUNNING, then the tasks through the SuperLink's Control API; with a
    job from context, the job followed through OneGate from the instantiation on, beside the tasks."""
    started = time.monotonic()
    names = {role: f"flower-{getattr(spec, role).variant}" for role in images}
    refs = deployment.import_images(images, names)
    result.timings["images_seconds"] = time.monotonic() - started
    link, node = (
        deployment.vm_template(role, refs[role].id, getattr(spec, role).arch)
        for role in ("superlink", "supernode")
    )
    plan = plan_for(spec) if options.job_from_context else None
    # the monitoring pair's metrics over HTTPS where Flower has TLS (docs/monitoring.md "The monitoring role")
    metrics_tls = options.monitoring_role and options.security.tls
    extra_context = monitorcheck.metrics_context(metrics_tls)
    if plan:
        extra_context["superlink"].update(plan.context())
    service_template = deployment.service_template(
        link, node, spec.supernode.count, options.security.value,
        extra_context=extra_context,
        monitoring=options.monitoring_role,
        metrics_allow=monitorcheck.network_cidrs(deployment.cloud) if options.monitoring_role else "",
    )  # fmt: skip
    job = _JobWatch(deployment, plan, options, result)
    try:
        service = job.launch(service_template)
        if options.overlap is TaskOverlap.NONE:
            job.record(service)  # waited for before anything else uses the SuperNodes
        try:
            _tunnel_tasks(deployment, spec, options, result, service, job.instantiated_wall, node)
        except FactoryError:
            with contextlib.suppress(FactoryError):  # the job's cells, whatever broke beside it
                job.record(service)
            raise
        job.record(service)
    finally:
        job.stop()
    # After the rounds, so the SuperLink's exporter has runs, rounds and losses to serve.
    result.checks.append(metrics_check(scrape_service_metrics(deployment, service, tls=metrics_tls)))
    if options.monitoring_role:  # the monitoring VM's Prometheus saw the VMs, the rounds and the losses
        result.checks.append(
            monitorcheck.monitoring_check(deployment, service, result.federations, tls=metrics_tls)
        )


def _tunnel_tasks(
    deployment: Deployment, spec: PairSpec, options: PairTestOptions, result: PairResult, service: Any,
    instantiated_wall: float, supernode_template: int,
) -> None:  # fmt: skip
    """The pair's tasks with the ``flwr`` CLI through an SSH tunnel to the SuperLink's Control API, as a
    user runs them; with ``--rogue`` an unregistered SuperNode VM beside them."""
    superlink = service.role_vms("superlink")[0]
    result.warnings += [
        f"SuperNode VM {vm.id} reports a Flower version mismatch (ONEAPP_FL_COMPAT)"
        for vm in service.role_vms("supernode")
        if vm.user_template.get("ONEAPP_FL_COMPAT") == "mismatched"
    ]
    ca_pem = ca_from_published(superlink.user_template) if options.security.tls else None
    if superlink.ip is None:
        raise FactoryError(f"SuperLink VM {superlink.id} has no IP address")
    rogue = (
        deployment.start_rogue_supernode(supernode_template, superlink) if options.rogue_supernode else None
    )
    with deployment.control_api(superlink, ca_pem) as connection:
        runner = FederationRunner(
            ensure_flower(spec.superlink.flower), deployment.workdir / "runner", connection,
            progress=deployment.progress, poll_interval=options.poll_interval,
        )  # fmt: skip
        if rogue is not None:
            _wait_rogue_settled(deployment.cloud, rogue, deployment.progress)
        for outcome in _run_tasks(task_runners(runner), spec, options, result):
            if outcome.task == CANARY_TASK and outcome.rounds:  # from the instantiation, not the start
                result.timings["instantiate_to_first_round_seconds"] = (
                    outcome.rounds[0].finished - instantiated_wall
                )
        if rogue is not None:
            described = deployment.cloud.vm_info(rogue).describe()
            result.checks.append(rogue_check(runner, spec.supernode.count, True, described))


def task_runners(first: FederationRunner) -> Callable[[str], FederationRunner]:
    """The canary's runner for the canary, and for each other task a runner of its own on the same
    connection (its own ``flwr`` home next to the first's), so that tasks can run side by side."""

    def runner_for(task: str) -> FederationRunner:
        if task == CANARY_TASK:
            return first
        return dataclasses.replace(first, workdir=first.workdir.with_name(f"{first.workdir.name}-{task}"))

    return runner_for


class _JobWatch:
    """A cloud pair's train-on-deploy job (none without a plan): followed through OneGate from the
    instantiation on, in a thread of its own, while the pair's other work goes on; its checks are recorded
    where they stood when the job was waited for before the tasks (first, then the SecAgg+ cell)."""

    def __init__(
        self, deployment: Deployment, plan: Any, options: PairTestOptions, result: PairResult
    ) -> None:
        self.deployment = deployment
        self.plan = plan
        self.options = options
        self.result = result
        self.followers: list[JobFollower] = []
        self.instantiated_wall = 0.0
        self.deadline = 0.0
        self.checks_at = 0
        self.recorded = False

    def launch(self, service_template: int) -> Any:
        """The service RUNNING (its deploy time recorded); the job's follower started at the instantiation."""

        def follow(launched: Any) -> None:
            self.followers.append(follow_superlink(self.deployment.cloud, launched))

        self.instantiated_wall = time.time()
        instantiated = time.monotonic()
        service = self.deployment.launch(
            service_template, self.options.deploy_timeout, follow if self.plan else None
        )
        self.result.timings["deploy_seconds"] = time.monotonic() - instantiated
        self.deadline = time.monotonic() + self.options.job_timeout
        self.checks_at = len(self.result.checks)
        return service

    def record(self, service: Any) -> None:
        """Wait for the job (until ``job_timeout`` after RUNNING), then record its checks and timings and
        the feature cells (with ``--job-features`` the feature jobs run now: the resume job powers the
        SuperLink off, so never beside the tunnel tasks)."""
        if not self.plan or not self.followers or self.recorded:
            return
        self.recorded = True
        observation = self.followers[0].wait(max(self.deadline - time.monotonic(), 0.0))
        later = self.result.checks[self.checks_at :]  # the tasks' checks, recorded while the job ran
        del self.result.checks[self.checks_at :]
        try:
            record_job(self.result, self.plan, observation, self.instantiated_wall)
            self.result.checks += pair_feature_checks(
                self.deployment.cloud, service, self.plan, observation, self.result.superlink.flower,
                self.options.job_features, self.options.job_timeout,
            )  # fmt: skip
        finally:
            self.result.checks += later
        self.deployment.progress.line(
            f"job from context ({self.plan.use_case}, {self.plan.rounds} rounds): "
            f"{' -> '.join(observation.statuses) or 'no status'}; "
            f"rounds seen {sorted(observation.rounds)}"
        )

    def stop(self) -> None:
        for follower in self.followers:
            follower.stop()


# -- the metrics endpoints (issue 12) ----------------------------------------------------------------------

METRICS_CHECK = "metrics_endpoints"
METRICS_TASK = "monitoring"


def metrics_port() -> int:
    """The exporter's port on every VM: the ONEAPP_FL_METRICS_PORT default (images/params.yaml)."""
    from factory.model import params

    defaults = {param.name: param.default for param in params.load_params().for_role("supernode")}
    return int(defaults.get("ONEAPP_FL_METRICS_PORT") or 9101)


# The appliance CA on each role's VM, as curl verifies the exporter's certificate with it there: the
# SuperLink's own CA (lib/tls.sh, FL_ETC/tls) and the copy a SuperNode pinned (FL_STATE/tls, the one
# flower-metrics-cert checks its certificate against: docs/monitoring.md "TLS for every VM's metrics").
METRICS_CA = {"superlink": "/etc/flower/tls/ca.pem", "supernode": "/var/lib/flower/tls/superlink-ca.pem"}


@dataclass(frozen=True)
class Scrape:
    """One VM's /metrics as read on the VM itself, or why not."""

    vm: str  # "VM 12 (supernode)"
    text: str = ""
    error: str = ""


def scrape_command(role: str, ip: str, port: int, tls: bool) -> str:
    """curl for one VM's metrics, run on the VM. Plain: ``http://127.0.0.1`` (ONEAPP_FL_METRICS_ALLOW
    empty: loopback only). TLS: ``https://`` to the VM's own address, the only name its certificate
    carries, verified with the appliance CA on the VM and nothing else (``--cacert`` replaces the
    system's CAs)."""
    options = "--silent --show-error --fail --max-time 15"
    if not tls:
        return f"curl {options} http://127.0.0.1:{port}/metrics"
    host = f"[{ip}]" if ":" in ip else ip
    url = f"https://{host}:{port}/metrics"
    return f"curl {options} --cacert {shlex.quote(METRICS_CA[role])} {shlex.quote(url)}"


def scrape_service_metrics(deployment: Deployment, service: Any, tls: bool = False) -> list[Scrape]:
    """Every VM's metrics, fetched with curl on the VM through the deployment's SSH key; over HTTPS with
    ``tls`` (ONEAPP_FL_METRICS_TLS=YES on both roles)."""
    port = metrics_port()
    scrapes = []
    for role in ("superlink", "supernode"):
        for vm in service.role_vms(role):
            name = f"VM {vm.id} ({role})"
            if vm.ip is None:
                scrapes.append(Scrape(name, error="no IP address"))
                continue
            session = deployment.ssh_session(vm.ip)
            try:
                with session.connect(timeout=60) as ssh:
                    status, out, err = ssh.execute(scrape_command(role, vm.ip, port, tls), timeout=60)
            except (FactoryError, OSError) as error:
                scrapes.append(Scrape(name, error=f"SSH: {error}"))
                continue
            if status != 0:
                scrapes.append(Scrape(name, error=f"curl exit {status}: {err.strip()[:300]}"))
            elif not out.strip():
                scrapes.append(Scrape(name, error="empty answer"))
            else:
                scrapes.append(Scrape(name, text=out))
    return scrapes


def promtool_problems(text: str) -> str:
    """What ``promtool check metrics`` says about an exposition ("" when it is clean)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        raise ConfigError("promtool not found: install Debian's prometheus package (scripts/setup.sh)")
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60, check=False
    )
    said = " ".join((result.stdout + result.stderr).split())
    if result.returncode != 0:
        return said or f"promtool exit status {result.returncode}"
    return said  # lint findings come with status 0 on older promtool: still a failure


def metrics_check(scrapes: list[Scrape]) -> dict[str, Any]:
    """The pair's monitoring check: every VM's endpoint answered and passes ``promtool check metrics``.
    A failure names each VM and what went wrong (the promtool output)."""
    problems = []
    for scrape in scrapes:
        if scrape.error:
            problems.append(f"{scrape.vm}: {scrape.error}")
            continue
        said = promtool_problems(scrape.text)
        if said:
            problems.append(f"{scrape.vm}: promtool check metrics: {said[:500]}")
    passed = bool(scrapes) and not problems
    if not scrapes:
        problems.append("no VM to scrape")
    detail = (
        f"{len(scrapes)} endpoints answer and pass promtool check metrics" if passed else "; ".join(problems)
    )
    return {"task": METRICS_TASK, "name": METRICS_CHECK, "passed": passed, "detail": detail}


def _wait_rogue_settled(cloud: PairCloud, vm_id: int, progress: Progress, timeout: float = 300.0) -> None:
    """Until the rogue VM runs and its appliance has reported (ready or failed), so the test sees it try."""

    def settled() -> Any:
        vm = cloud.vm_info(vm_id)
        return (
            vm
            if vm.failed or vm.user_template.get("ONEAPP_FL_STATUS") in {"failed", "ready"} or vm.ready
            else None
        )

    try:
        vm = wait_until(settled, timeout, interval=3.0, what="rogue SuperNode settled")
    except TimeoutError:
        progress.line(
            f"rogue SuperNode still settling after {timeout:.0f} s: {cloud.vm_info(vm_id).describe()}"
        )
    else:
        progress.line(f"rogue SuperNode: {vm.describe()}")


def failed_result(spec: PairSpec, run: str, target: str, options: PairTestOptions, error: str) -> PairResult:
    """The record of a pair that could not even start (e.g. its images are missing)."""
    return _finish(_new_result(spec, run, target, options), spec, error)
