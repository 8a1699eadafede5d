"""Pair result records, JUnit XML and the compatibility report, from result records built here."""

from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from factory.errors import ConfigError, FactoryError
from factory.report import compat_data, write_report
from factory.results import (
    FAILED,
    PASSED,
    PASSED_WITH_WARNING,
    PairResult,
    Side,
    junit_xml,
    load_results,
    resolve_run,
    write_junit,
    write_result,
)

RUN = "20261128-120000"


def _rounds(losses: list[float], seconds: float = 13.0) -> list[dict]:
    return [
        {
            "round": index + 1,
            "seconds": seconds + index,
            "finished": 1000.0 + 20 * index,
            "evaluate_metrics": {"eval_loss": loss, "num-examples": 128.0},
            "train_metrics": {"train_loss": loss * 1.1},
        }
        for index, loss in enumerate(losses)
    ]


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
        federations=[{"task": "numpy", "strategy": "fedavg", "rounds": _rounds(list(losses))}],
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
    release.federations.append({"task": "sklearn", "strategy": "fedavg", "rounds": _rounds([2.1, 0.9, 0.5])})
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
    assert release["eval_loss"] == [1.5, 0.2]  # the numpy task's own curve
    ubuntu_pair = next(pair for pair in data["pairs"] if pair["os"] == "ubuntu2404")
    assert ubuntu_pair["eval_loss"] == [2.0, None]  # non-finite values are not plotted


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
    assert len(images) == 4  # convergence, round time, one grid per (OS, accel)
    assert all(source.startswith("data:image/png;base64,") for source in images)
    assert not re.search(r'(src|href)="(https?:)?//', page), "the report must not fetch anything"
    assert "[code: 2004] Failed to activate SuperNode" in page
