"""Test one appliance pair: deploy it, run real federation rounds, and turn what happened into a PairResult.

Two targets share the federation runner and the result format:

- ``cloud``: the pair's images in OpenNebula (the local test cloud, or a real one): import or reuse the
  images, VM templates and a OneFlow service (1 SuperLink + N SuperNodes), wait for RUNNING, reach the
  SuperLink's Control API through an SSH tunnel with the CA the SuperLink published through OneGate, run
  the rounds, optionally start a rogue SuperNode, collect every VM's logs on failure, tear down;
- ``bare``: the same Flower versions as plain processes on loopback (factory/bareflower.py): the baseline,
  and the quick way to try a cross-version pair without images.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from factory.bareflower import BareFederation, SecurityMode
from factory.errors import ConfigError, FactoryError
from factory.federation import FederationOutcome, FederationRunner
from factory.flwrenv import ensure_flower
from factory.progress import DEFAULT as PROGRESS
from factory.progress import Progress
from factory.results import FAILED, PASSED, PASSED_WITH_WARNING, PairResult, Side

ERROR_LINE = re.compile(r"(ERROR|Error|error|Exit Code|code: \d+|missing selected ALPN)[^\n]*")


@dataclass(frozen=True)
class PairSpec:
    """A pair to test: the SuperLink side, the SuperNode side (same or another Flower version)."""

    name: str
    superlink: Side
    supernode: Side


@dataclass
class TestOptions:
    rounds: int = 3
    strategy: str = "fedavg"
    security: SecurityMode = SecurityMode.TLS_AUTH
    allow_insecure: bool = False
    framework_task: bool = False  # also run the pair's ML framework task (torch/tensorflow: slow)
    rogue_supernode: bool = False
    keep_on_failure: bool = False
    deploy_timeout: float = 900.0
    federation_timeout: float = 900.0
    extra_config: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        if self.security is SecurityMode.INSECURE and not self.allow_insecure:
            raise ConfigError(
                "command line",
                "--security",
                "insecure runs plain HTTP and no node authentication: add --allow-insecure",
            )
        if self.rounds < 1:
            raise ConfigError("command line", "--rounds", f"must be at least 1, got {self.rounds}")


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


def error_lines(logs: dict[str, str], limit: int = 6) -> list[str]:
    """The first distinct error-looking lines of the SuperNode/SuperLink logs, for the failure message."""
    found: list[str] = []
    for name, text in sorted(logs.items()):
        for match in ERROR_LINE.finditer(text):
            line = f"{name}: {match.group(0).strip()[:200]}"
            if line not in found:
                found.append(line)
            if len(found) >= limit:
                return found
    return found


def _tasks(spec: PairSpec, options: TestOptions) -> list[str]:
    tasks = ["numpy"]
    framework = spec.supernode.framework
    if options.framework_task and framework and framework != "numpy":
        tasks.append(framework)
    return tasks


def _record_outcome(result: PairResult, outcome: FederationOutcome) -> None:
    result.federations.append(outcome.to_dict())
    result.checks += [{"task": outcome.task, **check.__dict__} for check in outcome.checks]


def _finish(result: PairResult, spec: PairSpec, error: str = "") -> PairResult:
    result.finished_at = time.time()
    failed_checks = [check for check in result.checks if not check["passed"]]
    if error or failed_checks or not result.federations:
        result.status = FAILED
        reasons = [error] if error else []
        reasons += [f"{check['task']}/{check['name']}: {check['detail']}" for check in failed_checks]
        result.error = "; ".join(reasons) or "no federation ran"
        return result
    result.warnings = version_warnings(spec) + result.warnings
    result.status = PASSED_WITH_WARNING if result.warnings else PASSED
    return result


# -- bare Flower ---------------------------------------------------------------------------------------------


def run_pair_bare(
    spec: PairSpec, run: str, workdir: Path, options: TestOptions, progress: Progress = PROGRESS
) -> PairResult:
    options.check()
    result = PairResult(
        pair=spec.name, run=run, target="bare", security=options.security.value,
        superlink=spec.superlink, supernodes=spec.supernode,
    )  # fmt: skip
    started = time.monotonic()
    try:
        link_env = ensure_flower(spec.superlink.flower)
        node_env = ensure_flower(spec.supernode.flower)
        with BareFederation(
            workdir / "federation",
            link_env,
            supernode_env=node_env,
            num_supernodes=spec.supernode.count,
            security=options.security,
        ) as federation:
            result.timings["deploy_seconds"] = time.monotonic() - started
            rogue = federation.start_rogue_supernode() if options.rogue_supernode else None
            runner = FederationRunner(
                link_env, workdir / "runner", federation.connection(), progress=progress
            )
            for task in _tasks(spec, options):
                outcome = runner.run(
                    rounds=options.rounds,
                    strategy=options.strategy,
                    task=task,
                    expected_supernodes=spec.supernode.count,
                    timeout=options.federation_timeout,
                    extra_config=options.extra_config,
                )
                _record_outcome(result, outcome)
                _timings(result, outcome, started)
            if rogue is not None:
                result.checks.append(_rogue_check_bare(rogue, runner, spec.supernode.count))
            logs = federation.logs()
        if not all(check["passed"] for check in result.checks):
            result.logs = logs
            result.error = "; ".join(error_lines(logs))
            return _finish(result, spec, result.error)
        return _finish(result, spec)
    except FactoryError as failure:
        return _finish(result, spec, str(failure))


def _timings(result: PairResult, outcome: FederationOutcome, started_monotonic: float) -> None:
    if outcome.task != "numpy":
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
    """The rogue node must have been refused (exited, never online) while the run finished."""
    deadline = time.monotonic() + 30
    while rogue.running() and time.monotonic() < deadline:
        time.sleep(1)
    online = [node for node in runner.cli.supernodes() if str(node.get("status")) == "online"]
    refused = not rogue.running() and rogue.process.returncode != 0
    log_tail = rogue.log_text()[-300:].strip().replace("\n", " | ")
    return {
        "task": "security",
        "name": "rogue_supernode_rejected",
        "passed": refused and len(online) == expected,
        "detail": f"rogue exit {rogue.process.returncode}, {len(online)}/{expected} nodes online; {log_tail}",
    }


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
