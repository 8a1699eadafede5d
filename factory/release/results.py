"""Pair test results: one JSON record per pair under ``results/<run>/``, plus JUnit XML for CI.

The record itself (PairResult) is defined in factory/harness/pair.py, next to the pair it describes. A
record (schema 1) holds the versions on both sides, the pair's axes (those of its SuperNodes: an edge or
GPU pair runs a standard CPU SuperLink), the target cloud, the security mode, the framework task that ran,
the outcome (``passed``, ``passed_with_warning`` or ``failed`` with the error), timings (deployment,
instantiate to first finished round, per round, per task), the metrics of every round of every task, and on
failure the logs of every VM. Files are
written atomically (temporary file + rename): a reader never sees half a record.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from factory.harness.pair import PairResult
from hostkit.errors import ConfigError, FactoryError
from hostkit.fileio import write_atomic
from hostkit.paths import RESULTS_DIR

RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def finite_number(value: Any) -> float | None:
    """``value`` as a float, or None when it is not a finite number (records write NaN as text)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def metric_values(federation: dict[str, Any]) -> list[float | None]:
    """Per round, the value of the federation's floored metric (``metric``: e.g. eval_accuracy), as the
    report plots it and the published description quotes its last one."""
    metric = federation.get("metric")
    if not metric:
        return []
    return [
        finite_number((record.get("evaluate_metrics") or {}).get(metric))
        for record in federation.get("rounds", [])
    ]


def final_metric(federation: dict[str, Any]) -> float | None:
    """The floored metric after the last round, if the run reported one."""
    values = metric_values(federation)
    return values[-1] if values else None


def new_run_name() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime())


def run_dir(run: str, root: Path = RESULTS_DIR) -> Path:
    if not RUN_NAME.match(run):
        raise ConfigError("command line", "--run", f"invalid run name {run!r}")
    return root / run


def _json_safe(value: Any) -> Any:
    """NaN/inf are not JSON: write them as strings so the file stays standard JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(_json_safe(data), indent=2, sort_keys=True) + "\n")


def write_result(result: PairResult, root: Path = RESULTS_DIR) -> Path:
    directory = run_dir(result.run, root)
    path = directory / f"{result.pair}.json"
    write_json(path, result.to_dict())
    mark_latest(result.run, root)
    return path


def mark_latest(run: str, root: Path = RESULTS_DIR) -> None:
    """``results/latest`` names the newest run (a symlink, replaced atomically)."""
    link = root / "latest"
    temporary = root / f".latest.{os.getpid()}"
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(run)
    os.replace(temporary, link)


def resolve_run(run: str | None, root: Path = RESULTS_DIR) -> str:
    if run:
        if not run_dir(run, root).is_dir():
            raise ConfigError("command line", "--run", f"no results for run {run!r} under {root}")
        return run
    link = root / "latest"
    if not link.exists():
        raise FactoryError(f"no test results under {root}: run `python build.py test` first")
    return os.readlink(link) if link.is_symlink() else link.read_text().strip()


def load_results(run: str, root: Path = RESULTS_DIR) -> list[PairResult]:
    directory = run_dir(run, root)
    results = []
    for path in sorted(directory.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ConfigError(str(path), "", f"not valid JSON: {error}") from None
        if isinstance(data, dict) and "pair" in data and "schema" in data:
            results.append(PairResult.from_dict(data, str(path)))
    return results


def junit_xml(results: list[PairResult], suite: str) -> str:
    """JUnit XML: one testcase per pair; failures carry the error and the failed checks."""
    failures = sum(1 for result in results if not result.passed)
    total_time = sum(max(result.finished_at - result.started_at, 0.0) for result in results)
    root = ET.Element(
        "testsuite",
        name=suite,
        tests=str(len(results)),
        failures=str(failures),
        errors="0",
        skipped="0",
        time=f"{total_time:.3f}",
    )
    for result in results:
        case = ET.SubElement(
            root,
            "testcase",
            classname=f"{suite}.{result.target}.{result.security}",
            name=result.pair,
            time=f"{max(result.finished_at - result.started_at, 0.0):.3f}",
        )
        if not result.passed:
            failed = [check for check in result.checks if not check.get("passed")]
            failure = ET.SubElement(case, "failure", message=(result.error or "failed")[:500])
            failure.text = "\n".join(
                [result.error, *[f"{check['name']}: {check.get('detail', '')}" for check in failed]]
            )
        if result.warnings:
            ET.SubElement(case, "system-out").text = "\n".join(
                f"warning: {warning}" for warning in result.warnings
            )
        if result.logs:
            ET.SubElement(case, "system-err").text = "\n\n".join(
                f"--- {name}\n{text[-4000:]}" for name, text in sorted(result.logs.items())
            )
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_junit(run: str, root: Path = RESULTS_DIR) -> Path:
    results = load_results(run, root)
    path = run_dir(run, root) / "junit.xml"
    write_atomic(path, junit_xml(results, suite=f"flower-factory.{run}"))
    return path


# -- timings -------------------------------------------------------------------------------------------------


@dataclass
class RunTimings:
    """Where a run's wall time went, stage by stage, written to ``results/<run>/timings.json``.

    ``add(stage, seconds)`` is the hook every stage reports through (a sub-stage is named
    ``<stage>/<part>``, e.g. ``images/<layer>``): code below the release layer takes a
    ``Callable[[str, float], None]`` and release passes ``timings.add``."""

    run: str
    stages: list[tuple[str, float]] = field(default_factory=list)
    pairs: list[dict[str, Any]] = field(default_factory=list)
    parallel: int = 1
    started: float = field(default_factory=time.monotonic)

    def add(self, stage: str, seconds: float) -> None:
        self.stages.append((stage, float(seconds)))

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block as ``name`` (recorded also when it fails: the time was spent)."""
        started, index = time.monotonic(), len(self.stages)
        self.add(name, 0.0)  # its place: before the sub-stages reported while it runs
        try:
            yield
        finally:
            self.stages[index] = (name, time.monotonic() - started)

    def add_pairs(self, pairs: list[Any], parallel: int) -> None:
        """Each pair's ``PairTiming`` (factory/harness/campaign.py): total, deploy, rounds, teardown."""
        self.parallel = parallel
        self.pairs = [{"pair": timing.pair, **timing.to_dict()} for timing in pairs]

    def to_dict(self) -> dict[str, Any]:
        top = [seconds for name, seconds in self.stages if "/" not in name]
        return {
            "schema": 1,
            "run": self.run,
            "wall_seconds": time.monotonic() - self.started,
            "stages_seconds": sum(top),
            "stages": [{"stage": name, "seconds": seconds} for name, seconds in self.stages],
            "parallel": self.parallel,
            "pairs": self.pairs,
        }

    def table(self) -> str:
        """The breakdown as printed at the end of a run: stages, then one line per pair."""
        data = self.to_dict()
        lines = [f"time per stage (run {self.run}, wall {_clock(data['wall_seconds'])}):"]
        for name, seconds in self.stages:
            depth = name.count("/")
            label = ("  " * depth) + name.rsplit("/", 1)[-1]
            lines.append(f"  {label:<58} {_clock(seconds):>8}")
        if self.pairs:
            heading = f"pairs ({self.parallel} at once):"
            lines.append(f"  {heading:<54}{'deploy':>9}{'rounds':>9}{'teardown':>9}{'total':>9}")
            for pair in self.pairs:
                lines.append(
                    f"    {pair['pair'][:52]:<52}{_clock(pair['deploy']):>9}{_clock(pair['rounds']):>9}"
                    f"{_clock(pair['teardown']):>9}{_clock(pair['total']):>9}"
                )
        return "\n".join(lines)

    def write(self, root: Path = RESULTS_DIR) -> Path:
        path = run_dir(self.run, root) / "timings.json"
        write_json(path, self.to_dict())
        return path


def _clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds, 1), 60)
    return f"{int(minutes)}m{secs:04.1f}s" if minutes else f"{secs:.1f}s"
