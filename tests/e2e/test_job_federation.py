"""Train-on-deploy jobs of the factory app on real Flower processes on loopback (TLS + node auth):
checkpoints and resume, differential privacy, the new use cases, the structured events, bad run-config.

The runs are submitted with the ``flwr`` CLI of the Flower venv (factory.harness.federation.FlowerCLI), as the
in-guest job runner does; the events are the app's ``FF-<EVENT> {json}`` lines read back with ``flwr log``.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from factory.harness.bareflower import BareFederation
from factory.harness.federation import DEFAULT_APP, FlowerCLI, strip_ansi
from factory.harness.flwrenv import FlowerEnv

EVENT = re.compile(r"FF-([A-Z]+) (\{.*\})")


def events(log_text: str) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for match in EVENT.finditer(strip_ansi(log_text)):
        try:
            found.append((match.group(1), json.loads(match.group(2))))
        except json.JSONDecodeError:
            continue
    return found


def rounds_of(found: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    return [payload for kind, payload in found if kind == "ROUND"]


def one(found: list[tuple[str, dict[str, Any]]], kind: str) -> dict[str, Any]:
    matching = [payload for name, payload in found if name == kind]
    assert len(matching) == 1, (kind, found)
    return matching[0]


def submit(cli: FlowerCLI, config: dict[str, Any]) -> int:
    base = {"task": "numpy", "strategy": "fedavg", "min-nodes": 2, "round-timeout": 120}
    return cli.submit(DEFAULT_APP, {**base, **config})


def wait_finished(cli: FlowerCLI, run_id: int, timeout: float = 150.0) -> tuple[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        status = str(cli.run_status(run_id).get("status", ""))
        if status.startswith("finished"):
            time.sleep(1.0)  # the log may trail the status
            return status, cli.run_log(run_id)
        assert time.monotonic() < deadline, f"run {run_id} still {status!r}:\n{cli.run_log(run_id)[-3000:]}"
        time.sleep(1.0)


@pytest.fixture
def federation(flower_current: FlowerEnv, workdir: Path):  # type: ignore[no-untyped-def]
    with BareFederation(workdir / "fed", flower_current, num_supernodes=2) as running:
        yield running


@pytest.fixture
def cli(federation: BareFederation, flower_current: FlowerEnv, workdir: Path) -> FlowerCLI:
    return FlowerCLI(flower_current, workdir / "cli", federation.connection())


@pytest.mark.slow
def test_checkpoints_and_resume_after_a_kill(cli: FlowerCLI, workdir: Path) -> None:
    """A 5-round job is stopped after its round-2 checkpoint; the same job submitted again resumes from
    the newest checkpoint, runs only the remaining rounds, ends at round 5, and its loss continues from
    the checkpoint's (below a fresh run's first round), not from scratch."""
    checkpoints = workdir / "checkpoints"
    config = {"num-server-rounds": 5, "checkpoint-dir": str(checkpoints), "checkpoint-keep": 2}
    config["job-id"] = "resume-test"
    first = submit(cli, config)
    job = checkpoints / "resume-test"
    deadline = time.monotonic() + 120
    while not (job / "round-00002.json").exists():
        assert time.monotonic() < deadline, cli.run_log(first)[-3000:]
        time.sleep(0.05)
    cli.stop_run(first)
    status, log_first = wait_finished(cli, first)
    assert status != "finished:completed", status  # it really was stopped mid-job
    done_before = [payload["round"] for payload in rounds_of(events(log_first))]
    assert done_before[:2] == [1, 2] and max(done_before) < 5, done_before
    saved = sorted(int(p.stem.split("-")[1]) for p in job.glob("round-*.json"))
    assert saved[-1] >= 2 and len(saved) <= 2, saved  # retention: checkpoint-keep = 2

    second = submit(cli, config)
    status, log_second = wait_finished(cli, second)
    assert status == "finished:completed", log_second[-3000:]
    found = events(log_second)
    resume = one(found, "RESUME")
    assert resume["from_round"] == saved[-1] and resume["remaining"] == 5 - saved[-1]
    resumed_rounds = rounds_of(found)
    assert [payload["round"] for payload in resumed_rounds] == list(range(saved[-1] + 1, 6))
    assert all(payload["num_rounds"] == 5 for payload in resumed_rounds)
    first_losses = {payload["round"]: payload["loss"] for payload in rounds_of(events(log_first))}
    # continues from the checkpoint: below the loss at the checkpoint's round, far below round 1's
    assert resumed_rounds[0]["loss"] < first_losses[saved[-1]] < first_losses[1]
    end = one(found, "END")
    assert end["finished_rounds"] == 5 and end["resumed_from"] == saved[-1]
    assert Path(end["model"]).is_file() and Path(end["model"]).parent == job
    assert one(found, "START")["resumed_from"] == saved[-1]

    # the job is complete: a third submission trains nothing and reports the same final model
    third = submit(cli, config)
    status, log_third = wait_finished(cli, third)
    assert status == "finished:completed", log_third[-3000:]
    found = events(log_third)
    assert one(found, "RESUME")["remaining"] == 0 and not rounds_of(found)
    assert one(found, "END")["finished_rounds"] == 5


@pytest.mark.slow
def test_dp_noise_shows_in_the_metrics(cli: FlowerCLI, federation: BareFederation) -> None:
    """The numpy task is deterministic (seeded data, full-batch steps): without DP the global update and
    the loss are the same in every run. With each DP mode (server-/client-side, fixed/adaptive clipping;
    the client-side ones through the ClientApp's clipping mods) the update is clipped and noised: its norm
    and the loss differ, every round reports the DP settings, and adaptive clipping moves the norm."""
    plain = submit(cli, {"num-server-rounds": 2})
    fixed = {"dp-noise-multiplier": 0.5, "dp-clipping-norm": 1.0}
    # adaptive clipping needs the noise multiplier below sampled clients / 10 (jobconfig.parse_dp)
    adaptive = {"dp-noise-multiplier": 0.1, "dp-clipping-norm": 1.0}
    modes = {
        "server-fixed": fixed,
        "client-fixed": fixed,
        "server-adaptive": adaptive,
        "client-adaptive": adaptive,
    }
    runs = {
        mode: submit(cli, {"num-server-rounds": 2, "dp": mode, **values}) for mode, values in modes.items()
    }
    plain_rounds = rounds_of(events(wait_finished(cli, plain)[1]))
    assert plain_rounds[0]["update_norm"] > 1.0  # more than the clipping norm lets through
    for mode, run_id in runs.items():
        status, log_text = wait_finished(cli, run_id)
        assert status == "finished:completed", log_text[-3000:]
        noisy = rounds_of(events(log_text))
        assert [r["round"] for r in noisy] == [1, 2]
        wanted = modes[mode]["dp-noise-multiplier"]
        assert all(r["dp"]["mode"] == mode and r["dp"]["noise_multiplier"] == wanted for r in noisy)
        assert noisy[0]["loss"] != plain_rounds[0]["loss"]
        assert noisy[0]["update_norm"] != plain_rounds[0]["update_norm"]
        if mode.endswith("adaptive"):  # the clipping norm follows the updates, round by round
            assert noisy[0]["dp"]["clipping_norm"] != 1.0 != noisy[1]["dp"]["clipping_norm"]
    node_logs = "".join(process.log_text() for process in federation.supernodes)
    assert "fixedclipping_mod: parameters are clipped" in node_logs, node_logs[-3000:]


# Every range is unit-tested in tests/e2e/test_job_units.py (and in the runner's own checks,
# tests/appliance/test_job_runner.py); here two go through a real SuperLink.
BAD_CONFIGS = [
    ({"num-server-rounds": -1}, "num-server-rounds: must be within 1..100000, got -1"),
    ({"num-server-rounds": 2, "secagg": "secaggplus"}, "LegacyContext"),
]


def test_bad_run_config_fails_with_the_reason(cli: FlowerCLI, workdir: Path) -> None:
    """Each bad value: the run fails at once with an FF-FAIL naming the key, and writes no checkpoint."""
    checkpoints = workdir / "ck"
    runs = [submit(cli, {**config, "checkpoint-dir": str(checkpoints)}) for config, _ in BAD_CONFIGS]
    for run_id, (_, reason) in zip(runs, BAD_CONFIGS, strict=True):
        status, log_text = wait_finished(cli, run_id)
        assert status == "finished:failed", (reason, status)
        fail = one(events(log_text), "FAIL")
        assert reason in fail["reason"] and fail["stage"] == "config", fail
        assert not rounds_of(events(log_text))
    assert not checkpoints.exists()  # nothing trained, nothing written
