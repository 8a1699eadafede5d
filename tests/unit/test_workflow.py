"""The nightly workflow (.github/workflows/nightly.yml) is safe and can run.

- zizmor (pinned in pyproject's test extra) audits it offline and must report nothing.
- The plan step's script runs for real here, as GitHub runs a ``run:`` step (``bash -e``, ``GITHUB_OUTPUT``
  a file); for every entry of the matrix it writes, the build job's steps run with that entry: the local
  base step against a stand-in of ``build.py images --base`` (no image build here), the build step as
  ``build.py build --dry-run``, so a job that would exit 2 on GitHub (a debian12 build without its local
  base) fails this test. No network: the PyPI check of Flower versions is off (tests/unit/conftest.py).

The ``${{ }}`` expressions of the workflow are evaluated by the small evaluator below, which knows only the
forms the workflow uses and fails on any other, so a new expression needs a look here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from hostkit.paths import REPO_ROOT

WORKFLOW = REPO_ROOT / ".github" / "workflows" / "nightly.yml"
DOC = yaml.safe_load(WORKFLOW.read_text())
JOBS: dict[str, Any] = DOC["jobs"]
for _job in JOBS.values():  # steps without an id are named by their position
    for _index, _step in enumerate(_job["steps"]):
        _step.setdefault("id", f"step{_index}")
# GitHub's default shell for run: steps on Linux when none is given
DEFAULT_SHELL = ["bash", "-e"]
# scripts/setup.sh installs Debian packages and the venv as root (./run.sh test has run it already)
SETUP = "./scripts/setup.sh"


# ---------------------------------------------------------------------------------------------- zizmor


def zizmor_binary() -> str:
    beside = Path(sys.executable).parent / "zizmor"
    found = str(beside) if beside.exists() else shutil.which("zizmor")
    assert found, "zizmor is not installed: it is pinned in pyproject.toml's test extra (scripts/setup.sh)"
    return found


def test_zizmor_finds_nothing() -> None:
    result = subprocess.run(
        [zizmor_binary(), "--offline", "--no-progress", "--format", "json", str(WORKFLOW)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NO_COLOR": "1"},
    )
    findings = json.loads(result.stdout or "[]")
    described = [f"{f['ident']}: {f['desc']}" for f in findings]
    assert findings == [], "\n".join(described)
    assert result.returncode == 0, result.stderr


def test_zizmor_catches_what_it_must(tmp_path: Path) -> None:
    """The audit is live: the old workflow's faults (an input pasted into a script, a tag instead of a
    commit) are found."""
    bad = WORKFLOW.read_text().replace(
        '--release "${RELEASE}"', "--release \"${{ github.event.inputs.release || '1' }}\""
    )
    bad = re.sub(r"actions/checkout@[0-9a-f]{40} # v[0-9.]+", "actions/checkout@v4", bad)
    path = tmp_path / ".github" / "workflows" / "nightly.yml"
    path.parent.mkdir(parents=True)
    path.write_text(bad)
    result = subprocess.run(
        [zizmor_binary(), "--offline", "--no-progress", "--format", "json", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    idents = {finding["ident"] for finding in json.loads(result.stdout)}
    assert {"template-injection", "unpinned-uses"} <= idents
    assert result.returncode != 0


# ---------------------------------------------------------------------------------------------- rules


def all_steps() -> list[tuple[str, dict[str, Any]]]:
    return [(name, step) for name, job in JOBS.items() for step in job["steps"]]


def test_no_expression_inside_a_script() -> None:
    for job, step in all_steps():
        assert "${{" not in step.get("run", ""), f"{job}: {step.get('id')}: pass it through env:"


def test_actions_pinned_to_commits_and_credentials_not_persisted() -> None:
    text = WORKFLOW.read_text()
    for job, step in all_steps():
        if "uses" not in step:
            continue
        assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", step["uses"]), f"{job}: {step['uses']}"
        assert re.search(re.escape(step["uses"]) + r" # v\d+\.\d+\.\d+\n", text), "cite the tag"
        if step["uses"].startswith("actions/checkout@"):
            assert step["with"]["persist-credentials"] is False


def test_least_privilege() -> None:
    assert DOC["permissions"] == {}
    for name, job in JOBS.items():
        assert job["permissions"] == {"contents": "read"}, name


def test_report_job_needs_a_plan() -> None:
    condition = JOBS["test-publish-report"]["if"]
    assert evaluate(condition, {"needs.plan.result": "failure"}) is False
    assert evaluate(condition, {"needs.plan.result": "success"}) is True


# ---------------------------------------------------------------------------------------------- running

_EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")


def _literal(text: str, context: dict[str, Any]) -> Any:
    text = text.strip()
    if text.startswith("'") and text.endswith("'"):
        return text[1:-1]
    if text in ("true", "false"):
        return text == "true"
    if text == "cancelled()":
        return False
    if re.fullmatch(r"[a-z_]+(\.[\w-]+)+", text):
        if text not in context:
            raise AssertionError(f"the test does not know the value of {text!r}")
        return context[text]
    raise AssertionError(f"expression the test cannot evaluate: {text!r}")


def evaluate(expression: str, context: dict[str, Any]) -> Any:
    """The forms the workflow uses: a || b, a && b, !a, a == 'b', names and literals."""
    match = _EXPRESSION.fullmatch(expression.strip())
    text = match.group(1) if match else expression.strip()
    if "||" in text:
        left, right = text.split("||", 1)
        return evaluate(left, context) or evaluate(right, context)
    if "&&" in text:
        left, right = text.split("&&", 1)
        return bool(evaluate(left, context)) and bool(evaluate(right, context))
    if text.startswith("!"):
        return not evaluate(text[1:], context)
    if "==" in text:
        left, right = text.split("==", 1)
        return _literal(left, context) == _literal(right, context)
    return _literal(text, context)


def substitute(value: Any, context: dict[str, Any]) -> str:
    """A string with its ${{ }} parts replaced, as GitHub does for env: values and labels."""
    if isinstance(value, bool):
        return "true" if value else "false"

    def replace(match: re.Match[str]) -> str:
        result = evaluate(match.group(0), context)
        if isinstance(result, bool):
            return "true" if result else "false"
        return "" if result is None else str(result)

    return _EXPRESSION.sub(replace, str(value))


def step_environment(context: dict[str, Any], *layers: dict[str, Any] | None) -> dict[str, str]:
    environment: dict[str, str] = {}
    for layer in layers:
        for name, value in (layer or {}).items():
            environment[name] = substitute(value, context)
    return environment


def run_step(
    step: dict[str, Any], workdir: Path, environment: dict[str, str], context: dict[str, Any]
) -> tuple[subprocess.CompletedProcess[str], dict[str, str]]:
    """Run a run: step as the runner does (expressions in the script replaced first, as GitHub does);
    returns the result and what it wrote to GITHUB_OUTPUT."""
    output = workdir / f"output-{step['id']}"
    output.write_text("")
    script = workdir / f"step-{step['id']}.sh"
    script.write_text(substitute(step["run"], context))
    result = subprocess.run(
        [*DEFAULT_SHELL, str(script)],
        cwd=workdir,
        env={**environment, "GITHUB_OUTPUT": str(output)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    outputs = {}
    for line in output.read_text().splitlines():
        name, _, value = line.partition("=")
        outputs[name] = value
    return result, outputs


STAND_IN = """#!/usr/bin/env bash
# The workflow's .venv/bin/python for this test: the real interpreter, except that image builds do not run.
set -euo pipefail
real={python}
if [ "${{1:-}}" = build.py ] && [ "${{2:-}}" = images ]; then
    # build.py images --base --format json, as factory/cli/commands/images.py prints it, on a stand-in base
    [ "$*" = "build.py images --base --format json" ] || {{ echo "unexpected: $*" >&2; exit 3; }}
    mkdir -p "$FAKE_BASE_DIR"
    printf 'qcow2' >"$FAKE_BASE_DIR/debian12-base.qcow2"
    sha=$(sha256sum "$FAKE_BASE_DIR/debian12-base.qcow2" | cut -d' ' -f1)
    printf '%s  debian12-base.qcow2\\n' "$sha" >"$FAKE_BASE_DIR/debian12-base.qcow2.sha256"
    qcow2="$FAKE_BASE_DIR/debian12-base.qcow2"
    printf '[{{"name": "debian12-base", "path": "%s", "kind": "rootfs"}},\\n' "$FAKE_BASE_DIR/rootfs"
    printf ' {{"name": "debian12-base", "path": "%s", "kind": "qcow2"}}]\\n' "$qcow2"
    exit 0
fi
if [ "${{1:-}}" = build.py ] && [ "${{2:-}}" = build ]; then
    shift 2
    exec "$real" {build_py} build --dry-run --out "$HCL_OUT" "$@"
fi
exec "$real" "$@"
"""


def make_workdir(root: Path) -> Path:
    """A checkout stand-in: build.py of this repository and a .venv/bin/python stand-in."""
    root.mkdir(parents=True)
    (root / "build.py").symlink_to(REPO_ROOT / "build.py")
    python = root / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    build_py = str(REPO_ROOT / "build.py")
    python.write_text(STAND_IN.format(python=sys.executable, build_py=build_py))
    python.chmod(0o755)
    return root


def base_context(tmp_path: Path, only: str = "") -> dict[str, Any]:
    return {
        "vars.FLOWER_FACTORY_BUILD": str(tmp_path / "build"),
        "github.event.inputs.only": only,
        "github.event.inputs.release": "",
    }


def base_environment(tmp_path: Path) -> dict[str, str]:
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "FLOWER_FACTORY_OFFLINE", "PYTHONPATH")
    environment = {name: os.environ[name] for name in keep if name in os.environ}
    environment.update(GITHUB_RUN_ID="4242", FLOWER_FACTORY_OFFLINE="1")
    return environment


def run_plan(tmp_path: Path, only: str = "") -> tuple[subprocess.CompletedProcess[str], dict[str, str]]:
    job = JOBS["plan"]
    workdir = make_workdir(tmp_path / "plan")
    context = base_context(tmp_path, only)
    result = outputs = None
    for step in job["steps"]:
        if "run" not in step or step["run"].strip() == SETUP:
            continue
        environment = base_environment(tmp_path)
        environment.update(step_environment(context, DOC.get("env"), job.get("env"), step.get("env")))
        environment["FLOWER_FACTORY_CACHE"] = str(tmp_path / "cache")
        result, outputs = run_step(step, workdir, environment, context)
        if result.returncode != 0:
            break
        context.update({f"steps.{step['id']}.outputs.{k}": v for k, v in outputs.items()})
    assert result is not None and outputs is not None
    if result.returncode != 0:
        return result, outputs
    return result, {name: substitute(value, context) for name, value in job["outputs"].items()}


def run_build_job(tmp_path: Path, entry: dict[str, Any]) -> dict[str, Any]:
    """Every step of the build job for one matrix entry; what ran and how it ended."""
    job = JOBS["build"]
    workdir = make_workdir(tmp_path / entry["variant"])
    context: dict[str, Any] = {**base_context(tmp_path), **{f"matrix.{k}": v for k, v in entry.items()}}
    report: dict[str, Any] = {"entry": entry, "ran": [], "skipped": []}
    for step in job["steps"]:
        if "run" not in step:
            continue
        context.setdefault(f"steps.{step['id']}.outputs.url", "")
        context.setdefault(f"steps.{step['id']}.outputs.checksum", "")
    for step in job["steps"]:
        if "run" not in step or step["run"].strip() == SETUP:
            continue
        if "if" in step and not evaluate(step["if"], context):
            report["skipped"].append(step["id"])
            continue
        if step["id"] == "qemu-aarch64":  # apt-get: checked, not run (tests run on the factory's host)
            report["ran"].append(step["id"])
            report["qemu"] = step["run"]
            continue
        environment = base_environment(tmp_path)
        environment.update(step_environment(context, DOC.get("env"), job.get("env"), step.get("env")))
        environment.update(
            FLOWER_FACTORY_CACHE=str(tmp_path / "cache"),
            FAKE_BASE_DIR=str(workdir / "base"),
            HCL_OUT=str(workdir / "hcl"),
        )
        result, outputs = run_step(step, workdir, environment, context)
        report["ran"].append(step["id"])
        report[step["id"]] = result
        if result.returncode != 0:
            report["failed"] = step["id"]
            return report
        context.update({f"steps.{step['id']}.outputs.{k}": v for k, v in outputs.items()})
    report["runs-on"] = [substitute(label, context) for label in job["runs-on"]]
    return report


def build_step() -> dict[str, Any]:
    """The step of the build job that runs ``build.py build``."""
    return next(step for step in JOBS["build"]["steps"] if "build.py build " in step.get("run", ""))


def test_plan_step_fails_the_job_when_the_matrix_command_fails(tmp_path: Path) -> None:
    result, outputs = run_plan(tmp_path, only="colour=red")
    assert result.returncode != 0
    assert "unknown axis 'colour'" in result.stderr
    assert "matrix" not in outputs


def test_plan_and_every_build_job_run(tmp_path: Path) -> None:
    result, outputs = run_plan(tmp_path)
    assert result.returncode == 0, result.stderr
    assert outputs["run"] == f"nightly-{outputs['run'].split('-')[1]}-4242"
    strategy = JOBS["build"]["strategy"]["matrix"]
    assert strategy == "${{ fromJSON(needs.plan.outputs.matrix) }}"
    include = json.loads(outputs["matrix"])["include"]
    assert len(include) == 50

    with ThreadPoolExecutor(max_workers=4) as pool:
        reports = list(pool.map(lambda entry: run_build_job(tmp_path / "jobs", entry), include))

    problems = []
    for report in reports:
        entry = report["entry"]
        if "failed" in report:
            failed = report[report["failed"]]
            problems.append(f"{entry['variant']}: step {report['failed']}: {failed.stderr.strip()[-400:]}")
            continue
        dry_run = report[build_step()["id"]].stdout
        if f"# {entry['variant']}:" not in dry_run or " build -parallel-builds=1 " not in dry_run:
            problems.append(f"{entry['variant']}: no packer build command in {dry_run!r}")
        if entry["local_base"]:
            if "base" not in report["ran"] or "-var=base_image_url=file://" not in dry_run:
                problems.append(f"{entry['variant']}: local base not built and passed")
        elif "base" in report["ran"]:
            problems.append(f"{entry['variant']}: builds a local base it does not use")
        arm = entry["arch"] == "aarch64"
        if arm != ("qemu-aarch64" in report["ran"]):
            problems.append(f"{entry['variant']}: qemu-aarch64 step ran={not arm}")
        if arm and not {"qemu-system-arm", "qemu-efi-aarch64"} <= set(report.get("qemu", "").split()):
            problems.append(f"{entry['variant']}: the aarch64 packages are not installed")
        labels = report["runs-on"]
        if entry["runner"] not in labels or ("ARM64" in labels) != arm or ("X64" in labels) == arm:
            problems.append(f"{entry['variant']}: runs on {labels}")
    assert not problems, "\n".join(problems)
    assert any(report["entry"]["local_base"] for report in reports)
    assert any(report["entry"]["arch"] == "aarch64" for report in reports)


def test_a_debian12_build_without_its_base_step_would_fail(tmp_path: Path) -> None:
    """The dry run is strict enough to catch the old workflow's fault: no base step, exit 2."""
    job = JOBS["build"]
    step = build_step()
    workdir = make_workdir(tmp_path / "w")
    variant = "supernode-1.42.0-debian12-cpu-standard-sklearn-x86_64"
    context = {
        **base_context(tmp_path),
        "matrix.variant": variant,
        "steps.base.outputs.url": "",
        "steps.base.outputs.checksum": "",
    }
    environment = base_environment(tmp_path)
    environment.update(step_environment(context, DOC.get("env"), job.get("env"), step.get("env")))
    environment.update(HCL_OUT=str(workdir / "hcl"), FLOWER_FACTORY_CACHE=str(tmp_path / "cache"))
    result, _ = run_step(step, workdir, environment, context)
    assert result.returncode == 2
    assert "builds from a local base: pass base_image_url and base_image_checksum" in result.stderr
