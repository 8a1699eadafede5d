"""Pair result records, JUnit XML and the compatibility report, from result records built here."""

from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from factory.harness.pair import FAILED, PASSED, PASSED_WITH_WARNING, PairResult, Side
from factory.release.report import compat_data, write_report
from factory.release.results import (
    junit_xml,
    load_results,
    resolve_run,
    write_junit,
    write_result,
)
from hostkit.errors import ConfigError, FactoryError

RUN = "20261128-120000"


def _rounds(losses: list[float], seconds: float = 13.0, metric: str = "eval_r2") -> list[dict]:
    return [
        {
            "round": index + 1,
            "seconds": seconds + index,
            "finished": 1000.0 + 20 * index,
            "evaluate_metrics": {"eval_loss": loss, metric: 0.8 + 0.05 * index, "num-examples": 128.0},
            "train_metrics": {"train_loss": loss * 1.1},
        }
        for index, loss in enumerate(losses)
    ]


def _federation(task: str, losses: list[float], metric: str, floor: float, passed: bool = True) -> dict:
    return {
        "task": task, "strategy": "fedavg", "rounds": _rounds(losses, metric=metric), "metric": metric,
        "floor": floor, "rounds_requested": len(losses), "status": "finished:completed",
        "submitted_at": 500.0, "finished_at": 540.0,
        "checks": [{"name": "metric_floor", "passed": passed, "detail": "final ..."}],
    }  # fmt: skip


def _result(
    link: str, node: str, status: str, os: str = "debian12", error: str = "", losses=(1.5, 0.2)
) -> PairResult:
    result = PairResult(
        pair=f"pair-sl{link}-sn{node}-{os}-cpu-standard-sklearn",
        run=RUN,
        target="testcloud",
        security="tls-auth",
        superlink=Side(
            variant=f"superlink-{link}-{os}", flower=link, os=os, accel="cpu", framework="sklearn"
        ),
        supernodes=Side(
            variant=f"supernode-{node}-{os}", flower=node, os=os, accel="cpu", framework="sklearn", count=2
        ),
        status=status,
        error=error,
        warnings=["major.minor differs"] if status == PASSED_WITH_WARNING else [],
        federations=[_federation("numpy", list(losses), "eval_r2", 0.95)],
        checks=[{"task": "numpy", "name": "run_completed", "passed": status != FAILED, "detail": "x"}],
        started_at=100.0,
        finished_at=160.0,
    )
    result.timings["instantiate_to_first_round_seconds"] = 95.5
    return result


@pytest.fixture
def results(tmp_path: Path) -> Path:
    root = tmp_path / "results"
    release = _result("1.42.0", "1.42.0", PASSED)
    release.federations.append(_federation("sklearn", [2.1, 0.9, 0.5], "eval_accuracy", 0.85))
    release.framework_task = "sklearn"
    write_result(release, root)
    write_result(_result("1.42.0", "1.41.0", PASSED_WITH_WARNING), root)
    write_result(_result("1.41.0", "1.42.0", FAILED, error="[code: 2004] Failed to activate SuperNode"), root)
    write_result(_result("1.41.0", "1.41.0", PASSED, os="ubuntu2404", losses=(2.0, math.nan)), root)
    return root


def test_results_round_trip_and_latest(results: Path) -> None:
    assert resolve_run(None, results) == RUN
    loaded = {result.pair: result for result in load_results(RUN, results)}
    assert len(loaded) == 4
    cross = loaded["pair-sl1.42.0-sn1.41.0-debian12-cpu-standard-sklearn"]
    assert cross.cross_version and cross.status == PASSED_WITH_WARNING
    # NaN is written as a string (the file stays standard JSON) and comes back as NaN-like text
    text = (results / RUN / "pair-sl1.41.0-sn1.41.0-ubuntu2404-cpu-standard-sklearn.json").read_text()
    json.loads(text)  # strict JSON: no bare NaN
    assert '"nan"' in text


def test_bad_records_and_runs_are_refused(results: Path, tmp_path: Path) -> None:
    (results / RUN / "broken.json").write_text(json.dumps({"pair": "x", "schema": 1, "status": "great"}))
    with pytest.raises(ConfigError, match=r"broken\.json"):
        load_results(RUN, results)
    with pytest.raises(ConfigError, match="--run"):
        resolve_run("../etc", results)
    with pytest.raises(FactoryError, match=r"build\.py test"):
        resolve_run(None, tmp_path / "empty")


def test_junit_has_one_case_per_pair_and_failures_with_the_error(results: Path) -> None:
    path = write_junit(RUN, results)
    suite = ET.parse(path).getroot()
    assert suite.tag == "testsuite"
    assert suite.get("tests") == "4" and suite.get("failures") == "1"
    failures = suite.findall("testcase/failure")
    assert len(failures) == 1
    assert "2004" in failures[0].get("message")
    assert "run_completed" in failures[0].text
    warned = [case for case in suite.findall("testcase") if case.find("system-out") is not None]
    assert len(warned) == 1 and "major.minor" in warned[0].find("system-out").text


def test_junit_of_nothing_is_valid() -> None:
    suite = ET.fromstring(junit_xml([], "empty").split("\n", 1)[1])
    assert suite.get("tests") == "0"


def test_compat_grid_takes_the_worst_outcome_per_cell(results: Path) -> None:
    data = compat_data(load_results(RUN, results), RUN)
    assert data["totals"] == {PASSED: 2, PASSED_WITH_WARNING: 1, FAILED: 1}
    grids = {(grid["os"], grid["accel"]): grid for grid in data["grids"]}
    debian = grids[("debian12", "cpu")]
    assert debian["superlink_versions"] == ["1.41.0", "1.42.0"]
    assert debian["cells"]["1.42.0|1.41.0"]["status"] == PASSED_WITH_WARNING
    assert debian["cells"]["1.41.0|1.42.0"]["status"] == FAILED
    assert "2004" in debian["cells"]["1.41.0|1.42.0"]["errors"][0]
    assert "1.41.0|1.41.0" not in debian["cells"]  # that pair ran on another OS
    release = next(pair for pair in data["pairs"] if pair["pair"].startswith("pair-sl1.42.0-sn1.42.0"))
    assert release["framework_eval_loss"] == {"sklearn": [2.1, 0.9, 0.5]}
    assert release["eval_loss"] == [1.5, 0.2]  # the numpy canary's own curve
    framework = release["framework_task"]
    assert (framework["task"], framework["rounds"], framework["rounds_requested"]) == ("sklearn", 3, 3)
    assert (framework["metric"], framework["floor"], framework["passed"]) == ("eval_accuracy", 0.85, True)
    assert framework["metric_values"] == pytest.approx([0.8, 0.85, 0.9])
    assert framework["final_metric"] == pytest.approx(0.9)
    assert framework["evaluate_metrics"][2]["eval_loss"] == 0.5
    # a sklearn pair whose sklearn task never ran shows that, not the canary in its place
    cross = next(pair for pair in data["pairs"] if pair["pair"].startswith("pair-sl1.42.0-sn1.41.0"))
    assert cross["framework_task"] is None and cross["framework_eval_loss"] == {}
    assert cross["expected_framework_task"] == "sklearn"
    # per-task convergence: the canary of every pair, sklearn of the one pair that ran it
    assert list(data["frameworks"]) == ["numpy", "sklearn"]
    assert (
        len(data["frameworks"]["numpy"]["pairs"]) == 4 and data["frameworks"]["numpy"]["framework_of"] == []
    )
    sklearn = data["frameworks"]["sklearn"]
    assert (sklearn["metric"], sklearn["floor"], sklearn["framework_of"]) == (
        "eval_accuracy",
        0.85,
        [release["pair"]],
    )
    ubuntu_pair = next(pair for pair in data["pairs"] if pair["os"] == "ubuntu2404")
    assert ubuntu_pair["eval_loss"] == [2.0, None]  # non-finite values are not plotted


def test_an_edge_pair_is_filed_under_its_supernodes_axes(tmp_path: Path) -> None:
    """An edge pair runs a standard CPU x86_64 SuperLink: the pair is edge (aarch64 here), not standard."""
    edge = _result("1.42.0", "1.42.0", PASSED)
    edge.pair = "pair-sl1.42.0-sn1.42.0-ubuntu2404-cpu-edge-numpy"
    edge.superlink = Side(
        variant="superlink-1.42.0-ubuntu2404-cpu-standard-numpy-x86_64",
        flower="1.42.0",
        os="ubuntu2404",
        accel="cpu",
        profile="standard",
        framework="numpy",
        arch="x86_64",
    )
    edge.supernodes = Side(variant="supernode-1.42.0-ubuntu2404-cpu-edge-numpy-aarch64", flower="1.42.0",
                           os="ubuntu2404", accel="cpu", profile="edge", framework="numpy", arch="aarch64",
                           count=2)  # fmt: skip
    gpu = _result("1.42.0", "1.42.0", PASSED, os="ubuntu2404")
    gpu.pair = "pair-sl1.42.0-sn1.42.0-ubuntu2404-gpu-standard-sklearn"
    gpu.supernodes.accel = "gpu"
    pairs = {pair["pair"]: pair for pair in compat_data([edge, gpu], RUN)["pairs"]}
    summary = pairs[edge.pair]
    assert (summary["profile"], summary["arch"], summary["accel"]) == ("edge", "aarch64", "cpu")
    record = edge.to_dict()
    assert record["axes"] == {"os": "ubuntu2404", "accel": "cpu", "profile": "edge", "framework": "numpy",
                              "arch": "aarch64"}  # fmt: skip
    assert summary["framework_task"]["task"] == "numpy"  # on edge images the canary is the framework task
    assert summary["framework_eval_loss"] == {"numpy": [1.5, 0.2]}
    assert pairs[gpu.pair]["accel"] == "gpu"
    grids = {(grid["os"], grid["accel"]) for grid in compat_data([edge, gpu], RUN)["grids"]}
    assert grids == {("ubuntu2404", "cpu"), ("ubuntu2404", "gpu")}


def test_report_files_are_complete_and_self_contained(results: Path) -> None:
    paths = write_report(load_results(RUN, results), RUN, results)
    data = json.loads(paths["json"].read_text())
    assert data["run"] == RUN and len(data["pairs"]) == 4
    markdown = paths["md"].read_text()
    assert "| SuperLink \\ SuperNode | 1.41.0 | 1.42.0 |" in markdown
    assert "works with warning" in markdown and "fails" in markdown
    page = paths["html"].read_text()
    assert page.startswith("<!DOCTYPE html>")
    images = re.findall(r'<img[^>]* src="([^"]+)"', page)
    # convergence of the numpy and sklearn tasks, round time, SuperNodes per round, one grid per (OS, accel)
    assert len(images) == 6
    assert 'alt="sklearn: evaluation loss and eval_accuracy per round' in page
    assert "sklearn: 3/3 rounds, eval_accuracy 0.9 &gt;= floor 0.85 (passed)" in page
    assert "## Convergence: sklearn task (the framework task of 1 pair(s))" in markdown
    assert "sklearn: not run" in markdown  # the pairs that never ran their framework task
    assert all(source.startswith("data:image/png;base64,") for source in images)
    assert not re.search(r'(src|href)="(https?:)?//', page), "the report must not fetch anything"
    assert "[code: 2004] Failed to activate SuperNode" in page


def test_the_job_from_context_column(tmp_path: Path) -> None:
    """Per pair: the train-on-deploy job's outcome (factory/harness/jobcheck.py checks, task "job")."""
    root = tmp_path / "results"
    ran = _result("1.42.0", "1.42.0", PASSED)
    ran.checks += [
        {"task": "job", "name": "job_progress", "passed": True, "detail": "waiting -> running -> finished"},
        {
            "task": "job",
            "name": "metric_floor",
            "passed": True,
            "detail": "tabular: final eval_accuracy 0.96",
        },
    ]
    broken = _result("1.42.0", "1.41.0", FAILED)
    broken.checks.append(
        {"task": "job", "name": "job_model", "passed": False, "detail": "ONEAPP_FL_MODEL unset"}
    )
    for result in (ran, broken, _result("1.41.0", "1.41.0", PASSED)):
        write_result(result, root)
    paths = write_report(load_results(RUN, root), RUN, root)
    jobs = {
        pair["pair"]: pair["job_from_context"]["state"]
        for pair in json.loads(paths["json"].read_text())["pairs"]
    }
    assert sorted(jobs.values()) == ["failed", "not run", "passed"]
    markdown = paths["md"].read_text()
    assert "| framework task | job from context |" in markdown
    assert "| passed: tabular: final eval_accuracy 0.96 |" in markdown
    assert "failed: job_model: ONEAPP_FL_MODEL unset" in markdown
    assert "<th>job from context</th>" in paths["html"].read_text()


def test_supernodes_per_round(tmp_path: Path) -> None:
    """Per pair: how many SuperNodes trained in each canary round (the round records' ``train_replies``), in
    the JSON, the Markdown and HTML tables, and a plot; rounds that do not say are marked, not invented."""
    root = tmp_path / "results"
    scaled = _result("1.42.0", "1.42.0", PASSED, losses=(1.5, 0.9, 0.4))
    for record, replies in zip(scaled.federations[0]["rounds"], (2, 1, 3), strict=True):
        record["train_replies"] = replies
    unknown = _result("1.41.0", "1.41.0", PASSED)  # records written before the count was kept
    for result in (scaled, unknown):
        write_result(result, root)
    paths = write_report(load_results(RUN, root), RUN, root)
    counts = {
        pair["pair"]: pair["nodes_per_round"] for pair in json.loads(paths["json"].read_text())["pairs"]
    }
    assert counts == {scaled.pair: [2, 1, 3], unknown.pair: [None, None]}
    markdown = paths["md"].read_text()
    assert "| canary mean round (s) | SuperNodes per round | canary eval loss |" in markdown
    assert "| 2, 1, 3 |" in markdown and "| ?, ? |" in markdown
    page = paths["html"].read_text()
    assert "<th>SuperNodes per round</th>" in page and "<td>2, 1, 3</td>" in page
    assert re.search(
        r'<img alt="SuperNodes that trained in each canary round[^"]*" src="data:image/png', page
    )


def test_the_feature_columns_say_what_each_pair_recorded(tmp_path: Path) -> None:
    """resume, DP and SecAgg+ per pair, each from the pair's own checks (factory/harness/jobcheck.py
    run_feature_jobs and the per-version SecAgg+ fact): passed, failed with the failed check, unsupported
    with the reason, or not run where the pair has no such checks; never a state it did not record."""
    from factory.harness.jobcheck import JobObservation, JobPlan
    from factory.harness.jobfeatures import dp_checks, resume_checks, secagg_check

    root = tmp_path / "results"
    plan = JobPlan("anomaly")
    baseline = JobObservation(statuses=["waiting-for-nodes", "running", "finished"])
    baseline.rounds = {1: {"eval_loss": 0.5}, 2: {"eval_loss": 0.3}}
    noised = JobObservation(
        statuses=list(baseline.statuses), rounds={1: {"eval_loss": 0.7}, 2: {"eval_loss": 0.6}}
    )
    resumed = JobObservation(
        statuses=["waiting-for-nodes", "running", "waiting-for-nodes", "running", "finished"]
    )
    resumed.rounds = {k: {"eval_loss": 1.0 / k} for k in range(1, 5)}
    resumed.resumed_from = "2"
    featured = _result("1.42.0", "1.42.0", PASSED)
    featured.checks += [
        *dp_checks(noised, baseline, plan),
        *resume_checks(resumed, 4, seen_before=2),
        secagg_check(
            "1.42.0",
            JobObservation(
                statuses=["failed"], reason="ONEAPP_FL_SECAGG: secaggplus is not supported by ..."
            ),
        ),
    ]
    # DP without noise (the same losses as the baseline) and a resume that started from scratch: failed
    broken = _result("1.42.0", "1.41.0", PASSED_WITH_WARNING)
    scratch = JobObservation(statuses=list(resumed.statuses), resumed_from="2")
    scratch.rounds = {
        1: {"eval_loss": 0.5},
        2: {"eval_loss": 0.3},
        3: {"eval_loss": 0.5},
        4: {"eval_loss": 0.3},
    }
    broken.checks += [*dp_checks(baseline, baseline, plan), *resume_checks(scratch, 4, seen_before=2)]
    broken.checks.append(secagg_check("1.42.0"))  # the fact only: unsupported, not tried
    plain = _result("1.41.0", "1.41.0", PASSED)  # e.g. a bare pair: no job checks at all
    for result in (featured, broken, plain):
        write_result(result, root)
    paths = write_report(load_results(RUN, root), RUN, root)
    pairs = {pair["pair"]: pair["features"] for pair in json.loads(paths["json"].read_text())["pairs"]}
    states = {
        name: {feature: cell["state"] for feature, cell in cells.items()} for name, cells in pairs.items()
    }
    assert states[featured.pair] == {"resume": "passed", "DP": "passed", "SecAgg+": "unsupported"}
    assert states[broken.pair] == {"resume": "failed", "DP": "failed", "SecAgg+": "unsupported"}
    assert states[plain.pair] == {"resume": "not run", "DP": "not run", "SecAgg+": "not run"}
    assert "dp_noise_in_metrics" in pairs[broken.pair]["DP"]["detail"]
    assert "resume_from_checkpoint" in pairs[broken.pair]["resume"]["detail"]
    assert (
        "refused: ONEAPP_FL_SECAGG: secaggplus is not supported" in pairs[featured.pair]["SecAgg+"]["detail"]
    )
    assert "per-version fact, not tried" in pairs[broken.pair]["SecAgg+"]["detail"]
    markdown = paths["md"].read_text()
    assert "| job from context | resume | DP | SecAgg+ | metrics endpoints |" in markdown
    row = next(line for line in markdown.splitlines() if line.startswith(f"| {plain.pair} |"))
    header = next(line for line in markdown.splitlines() if line.startswith("| pair | SuperLink |"))
    assert row.count(" | ") == header.count(" | ") and "| not run | not run | not run |" in row
    page = paths["html"].read_text()
    assert "<th>resume</th><th>DP</th><th>SecAgg+</th>" in page
    assert page.count("<td>unsupported: Flower 1.42.0") == 2
