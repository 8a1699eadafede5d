"""Pairs tested side by side (`--parallel N`), for real on bare Flower: the same records as one after
another, and one pair's failure leaves the other's run alone."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from factory.harness import campaign as campaign_module
from factory.harness.campaign import Campaign, find_pair_specs
from factory.harness.pair import FAILED, PASSED, PairResult
from factory.harness.pairtest import PairTestOptions
from hostkit.paths import REPO_ROOT
from hostkit.progress import Progress

from .conftest import run_build_py

CURRENT = "pair-sl1.42.0-sn1.42.0-debian12-cpu-edge-numpy"
PREVIOUS = "pair-sl1.41.0-sn1.41.0-debian12-cpu-edge-numpy"

# What differs between two runs of the same pair whatever runs beside it: clocks, durations, ids.
VOLATILE = {"run", "run_id", "node-id", "nodes", "timings", "started", "finished", "online-elapsed"}


def _steady(value: Any) -> Any:
    """A record without its timestamps, durations and ids: what a rerun must reproduce."""
    if isinstance(value, dict):
        return {
            key: _steady(item)
            for key, item in value.items()
            if key not in VOLATILE and not key.endswith(("_at", "-at", "seconds"))
        }
    if isinstance(value, list):
        return [_steady(item) for item in value]
    return value


def _test_command(results: Path, run: str, parallel: int) -> subprocess.CompletedProcess:
    args = ["test", "--target", "bare", "--only", f"name={CURRENT}", "--only", f"name={PREVIOUS}"]
    args += ["--no-cross", "--rounds", "2", "--parallel", str(parallel), "--run", run]
    return run_build_py(args, results)


def test_two_pairs_at_once_leave_the_records_of_one_after_another(tmp_path: Path) -> None:
    results = tmp_path / "results"
    runs = {parallel: _test_command(results, f"p{parallel}", parallel) for parallel in (1, 2)}
    for parallel, command in runs.items():
        assert command.returncode == 0, command.stderr[-4000:]
        assert "2/2 pair(s) passed" in command.stdout
        timings = json.loads((results / f"p{parallel}" / "timings.json").read_text())
        assert timings["parallel"] == parallel
        assert {pair["pair"] for pair in timings["pairs"]} == {CURRENT, PREVIOUS}
        assert all(pair["rounds"] > 0 and pair["total"] >= pair["rounds"] for pair in timings["pairs"])
    # every line of a pair's run is prefixed with its name (two pairs write at once)
    stderr = runs[2].stderr
    assert f"[{CURRENT}] " in stderr and f"[{PREVIOUS}] " in stderr
    assert any(line.startswith(f"[{PREVIOUS}] ") and "round 2/2" in line for line in stderr.splitlines())
    files = {
        parallel: sorted(path.name for path in (results / f"p{parallel}").iterdir()) for parallel in runs
    }
    assert (
        files[1] == files[2] == sorted([f"{CURRENT}.json", f"{PREVIOUS}.json", "junit.xml", "timings.json"])
    )
    for pair in (CURRENT, PREVIOUS):
        sequential, parallel = (json.loads((results / f"p{n}" / f"{pair}.json").read_text()) for n in (1, 2))
        assert sequential["status"] == PASSED and sequential["checks"]
        assert _steady(sequential) == _steady(parallel)


def test_a_failing_pair_leaves_the_pair_beside_it_alone(tmp_path: Path, monkeypatch: Any) -> None:
    """The previous-version pair gets a federation deadline nothing can meet; the current one, running at
    the same time, passes with all its checks; both are recorded, in the order of the pairs."""
    real = campaign_module.run_pair_bare

    def doomed(spec: Any, run: str, workdir: Path, options: PairTestOptions, progress: Progress) -> Any:
        if spec.name == PREVIOUS:
            options = dataclasses.replace(options, federation_timeout=2.0)
        return real(spec, run, workdir, options, progress)

    monkeypatch.setattr(campaign_module, "run_pair_bare", doomed)
    recorded: list[str] = []

    def record(result: PairResult) -> Path:
        recorded.append(result.pair)
        return tmp_path / f"{result.pair}.json"

    specs = find_pair_specs([CURRENT, PREVIOUS])
    campaign = Campaign(
        specs, "fail", PairTestOptions(rounds=2), record, keep_going=False, parallel=2,
        progress=Progress(quiet=True), scratch_root=tmp_path / "scratch",
    )  # fmt: skip
    outcome = campaign.test(None)
    by_pair = {result.pair: result for result in outcome.results}
    assert [result.pair for result in outcome.results] == [CURRENT, PREVIOUS]
    assert sorted(recorded) == sorted([CURRENT, PREVIOUS])
    assert by_pair[PREVIOUS].status == FAILED and by_pair[PREVIOUS].error
    assert by_pair[CURRENT].status == PASSED, by_pair[CURRENT].error
    assert all(check["passed"] for check in by_pair[CURRENT].checks)
    assert len(by_pair[CURRENT].timings["round_seconds"]) == 2  # type: ignore[arg-type]
    assert outcome.stopped_early  # without --keep-going: it stopped, yet the running pair finished


@pytest.mark.parametrize("value", ["0", "-1"])
def test_parallel_below_one_is_refused_before_anything_runs(tmp_path: Path, value: str) -> None:
    results = tmp_path / "results"
    environment = dict(os.environ, FLOWER_FACTORY_RESULTS=str(results))
    refused = subprocess.run(
        [sys.executable, "build.py", "test", "--target", "bare", "--only", f"name={CURRENT}",
         "--parallel", value],
        cwd=REPO_ROOT, capture_output=True, text=True, env=environment, timeout=120, check=False,
    )  # fmt: skip
    assert refused.returncode == 2, refused.stderr
    assert "--parallel" in refused.stderr and f"got {value}" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not results.exists() or not any(results.iterdir()), "nothing ran, nothing was recorded"
