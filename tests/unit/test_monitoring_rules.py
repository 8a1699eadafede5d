"""The shipped alert rules: valid for Prometheus (``promtool check rules``) and doing what they say on
synthetic series (``promtool test rules``), every alert with a case that fires it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hostkit.paths import REPO_ROOT
from monitoring import alerts

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


# -- the thresholds, rendered from one place (monitoring/alerts.py) ---------------------------------------

SHORT = alerts.Thresholds(stalled_after="45s", stalled_for="0s", dropped_for="10s", disconnected_for="10s")
# promtool test rules for the short rendering: the same stalled run (no progress since 0) fires after
# 45 s, not 15 minutes; a run with a round every 20 s stays quiet.
SHORT_TEST = """\
rule_files: [alerts.yml]
evaluation_interval: 5s
tests:
  - interval: 5s
    input_series:
      - series: 'flower_superlink_run_active{instance="sl:9101",run_id="7"}'
        values: '1x40'
      - series: 'flower_superlink_run_last_progress_timestamp_seconds{instance="sl:9101",run_id="7"}'
        values: '0x40'
      - series: 'flower_superlink_run_active{instance="sl:9101",run_id="8"}'
        values: '1x40'
      - series: 'flower_superlink_run_last_progress_timestamp_seconds{instance="sl:9101",run_id="8"}'
        values: '0 0 0 0 20 20 20 20 40 40 40 40 60 60 60 60 80 80 80 80 100 100 100 100 120'
    alert_rule_test:
      - eval_time: 40s
        alertname: FlowerTrainingStalled
        exp_alerts: []
      - eval_time: 50s
        alertname: FlowerTrainingStalled
        exp_alerts:
          - exp_labels: {severity: warning, instance: "sl:9101", run_id: "7"}
            exp_annotations:
              summary: "Flower run 7 made no progress for 45s"
              description: "Run 7 on sl:9101 is active but no round finished for 50s."
"""


def test_the_shipped_rules_are_the_defaults_rendered() -> None:
    assert RULES.read_text() == alerts.render()
    assert alerts.main(["--check"]) == 0


def test_a_stale_shipped_file_is_reported(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys) -> None:
    stale = tmp_path / "alerts.yml"
    stale.write_text(RULES.read_text().replace("> 900)", "> 600)"))
    monkeypatch.setattr(alerts, "SHIPPED", stale)
    assert alerts.main(["--check"]) == 2
    assert "is stale" in capsys.readouterr().err


def test_shorter_thresholds_render_valid_rules_that_fire_sooner(promtool: str, tmp_path: Path) -> None:
    text = alerts.render(SHORT)
    assert "> 45)" in text and "> 900)" not in text
    rules = {rule["alert"]: rule for group in yaml.safe_load(text)["groups"] for rule in group["rules"]}
    shipped = {
        rule["alert"]: rule
        for group in yaml.safe_load(RULES.read_text())["groups"]
        for rule in group["rules"]
    }
    assert rules.keys() == shipped.keys()
    assert (
        rules["FlowerSuperNodeDroppedOut"]["for"] == "10s"
        and shipped["FlowerSuperNodeDroppedOut"]["for"] == "2m"
    )
    (tmp_path / "alerts.yml").write_text(text)
    checked = _promtool(promtool, "check", "rules", str(tmp_path / "alerts.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    (tmp_path / "short_test.yml").write_text(SHORT_TEST)
    tested = _promtool(promtool, "test", "rules", str(tmp_path / "short_test.yml"))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    # the shipped thresholds on the same series: no alert at 50 s (the test can fail)
    (tmp_path / "alerts.yml").write_text(RULES.read_text())
    shipped_run = _promtool(promtool, "test", "rules", str(tmp_path / "short_test.yml"))
    assert shipped_run.returncode != 0 and "FlowerTrainingStalled" in shipped_run.stdout + shipped_run.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--stalled-after", "15 minutes"], "--stalled-after: '15 minutes' is not a Prometheus duration"),
        (["--stalled-after", "0s"], "--stalled-after: must be longer than 0s"),
        (["--loss-factor", "1"], "--loss-factor: must be above 1"),
        (["--min-rounds", "0"], "--min-rounds: must be within"),
        (["--check", "--dropped-for", "1m"], "give no thresholds"),
    ],
)
def test_bad_thresholds_are_one_line(args: list[str], message: str, capsys) -> None:
    assert alerts.main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and message in captured.err and len(captured.err.splitlines()) == 1


def test_the_command_line_renders_what_render_does() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "monitoring.alerts", "--stalled-after", "45s", "--stalled-for", "0s",
         "--dropped-for", "10s", "--disconnected-for", "10s"],
        capture_output=True, text=True, timeout=60, cwd=REPO_ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == alerts.render(SHORT)
