"""The commands end to end on bare Flower: `build.py test --target bare` runs a matrix pair for real and
records it, `report` renders it, `publish` refuses to publish what was not tested as images in a cloud."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from .conftest import run_build_py

PAIR = "pair-sl1.42.0-sn1.42.0-debian12-cpu-edge-numpy"


_build = run_build_py


def test_test_report_publish_on_bare_flower(tmp_path: Path) -> None:
    results = tmp_path / "results"
    run = _build(
        ["test", "--target", "bare", "--only", f"name={PAIR}", "--rounds", "2", "--run", "cli"], results
    )
    assert run.returncode == 0, run.stderr[-4000:]
    assert "round 2/2" in run.stderr and "1/1 pair(s) passed" in run.stdout
    record = json.loads((results / "cli" / f"{PAIR}.json").read_text())
    assert record["status"] == "passed" and record["target"] == "bare" and record["security"] == "tls-auth"
    assert record["superlink"]["flower"] == record["supernodes"]["flower"] == "1.42.0"
    assert len(record["timings"]["round_seconds"]) == 2
    suite = ET.parse(results / "cli" / "junit.xml").getroot()
    assert (suite.get("tests"), suite.get("failures")) == ("1", "0")

    report = _build(["report"], results)  # the latest run
    assert report.returncode == 0, report.stderr
    compat = json.loads((results / "compat.json").read_text())
    assert compat["run"] == "cli" and compat["pairs"][0]["status"] == "passed"
    assert (results / "compat.html").read_text().startswith("<!DOCTYPE html>")

    published = _build(["publish", "--no-market"], results)
    assert published.returncode == 1
    assert "tested on bare Flower" in published.stderr
    assert not (results / "cli" / "publish").exists()


def test_insecure_needs_the_opt_in_on_the_command_line(tmp_path: Path) -> None:
    refused = _build(
        ["test", "--target", "bare", "--only", f"name={PAIR}", "--security", "insecure"], tmp_path
    )
    assert refused.returncode == 2 and "--allow-insecure" in refused.stderr
    assert not (tmp_path / "latest").exists(), "nothing ran, nothing was recorded"
