"""The shipped alert rules: valid for Prometheus (``promtool check rules``) and doing what they say on
synthetic series (``promtool test rules``), every alert with a case that fires it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from hostkit.paths import REPO_ROOT

RULES = REPO_ROOT / "monitoring" / "prometheus" / "alerts.yml"
RULE_TESTS = REPO_ROOT / "monitoring" / "prometheus" / "tests" / "alerts_test.yml"


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is missing: scripts/setup.sh installs Debian's prometheus package")
    return found


def _promtool(promtool: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_rules_pass_promtool_check(promtool: str) -> None:
    result = _promtool(promtool, "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_rules_pass_their_unit_tests(promtool: str) -> None:
    result = _promtool(promtool, "test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_case() -> None:
    alerts = {
        rule["alert"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]
    }
    assert {
        "FlowerTrainingStalled",
        "FlowerSuperNodeDroppedOut",
        "FlowerRogueSuperNode",
        "FlowerRoundTimeRegressed",
        "FlowerLossDiverging",
    } <= alerts
    fired = {
        case["alertname"]
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert alerts == fired, f"alerts without a firing test case: {sorted(alerts - fired)}"


def test_a_broken_expectation_fails(promtool: str, tmp_path: Path) -> None:
    """The unit tests can fail: the same file expecting the stalled-training alert 10 minutes early."""
    broken = RULE_TESTS.read_text().replace(
        "- eval_time: 17m\n        alertname: FlowerTrainingStalled",
        "- eval_time: 7m\n        alertname: FlowerTrainingStalled",
    )
    assert broken != RULE_TESTS.read_text()
    (tmp_path / "alerts.yml").write_text(RULES.read_text())
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "alerts_test.yml").write_text(broken)
    result = _promtool(promtool, "test", "rules", str(tmp_path / "tests" / "alerts_test.yml"))
    assert result.returncode != 0
    assert "FlowerTrainingStalled" in result.stdout + result.stderr


def test_a_bad_expression_is_refused(promtool: str, tmp_path: Path) -> None:
    rules = yaml.safe_load(RULES.read_text())
    rules["groups"][0]["rules"][0]["expr"] = "flower_superlink_run_active ==="
    bad = tmp_path / "alerts.yml"
    bad.write_text(yaml.safe_dump(rules))
    result = _promtool(promtool, "check", "rules", str(bad))
    assert result.returncode != 0
