"""The metrics wired into the appliances: ONEAPP_FL_METRICS_* -> /etc/flower/metrics.args (which the real
exporter accepts and serves, `promtool check metrics` clean), bad values fail configure naming the
parameter, both roles install the units, provisioning pins prometheus-client as pyproject.toml does, and
flower-nodecount publishes ONEAPP_FL_CONNECTED_NODES / ONEAPP_FL_MIN_NODES through the test cloud's
OneGate (SuperLink from its state database and the service, SuperNodes copying the SuperLink)."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
from dummy_service import start_dummy_service
from metrics_helpers import promtool_check, samples, start_exporter
from test_onegate_client import gate_environment

from hostkit.paths import CONTEXT_DIR, REPO_ROOT

APPLIANCE_DIR = CONTEXT_DIR / "appliance"
NODECOUNT = APPLIANCE_DIR / "bin" / "flower-nodecount"


@pytest.mark.parametrize(
    ("role", "name", "value", "problem"),
    [
        ("superlink", "ONEAPP_FL_METRICS_ALLOW", "10.0.0.0/33", "is not an IP address or CIDR"),
        ("superlink", "ONEAPP_FL_METRICS_ALLOW", "10.0.0.0/8,monitoring", "is not an IP address or CIDR"),
        ("supernode", "ONEAPP_FL_METRICS_ALLOW", "192.168.1.300", "is not an IP address or CIDR"),
        ("superlink", "ONEAPP_FL_METRICS_PORT", "22", "is the SSH port"),
        ("superlink", "ONEAPP_FL_METRICS_PORT", "9092", "must differ"),
        ("supernode", "ONEAPP_FL_METRICS_PORT", "9094", "must differ"),
        ("supernode", "ONEAPP_FL_METRICS_PORT", "80", "is below 1024"),
        ("supernode", "ONEAPP_FL_METRICS_PORT", "port", "is not a whole number"),
        ("superlink", "ONEAPP_FL_METRICS_ENABLED", "sometimes", "is not YES or NO"),
    ],
)
def test_bad_metrics_values_fail_configure_naming_them(
    make_sandbox, role: str, name: str, value: str, problem: str
) -> None:
    sandbox = make_sandbox(role)
    sandbox.refused(name, problem, ETH0_IP="10.231.64.50", **{name: value})
    assert not (sandbox.etc / "metrics.args").exists()


# Node authentication needs TLS on the SuperLink: off there, so that the refusal is the metrics check.
@pytest.mark.parametrize(("role", "extra"), [("superlink", {"ONEAPP_FL_NODE_AUTH": "NO"}), ("supernode", {})])
def test_metrics_tls_needs_flower_tls_on_either_role(make_sandbox, role: str, extra: dict[str, str]) -> None:
    sandbox = make_sandbox(role)
    sandbox.refused(
        "ONEAPP_FL_METRICS_TLS",
        "needs ONEAPP_FL_TLS=YES",
        ETH0_IP="10.231.64.50",
        ONEAPP_FL_TLS="NO",
        ONEAPP_FL_METRICS_TLS="YES",
        **extra,
    )
    assert not (sandbox.etc / "metrics-cert.env").exists()


def test_defaults_serve_on_loopback_only(make_sandbox) -> None:
    sandbox = make_sandbox("superlink")
    sandbox.configured(ETH0_IP="10.231.64.50")
    args = sandbox.args("metrics")
    assert args[0] == "superlink" and "--port=9101" in args
    assert not any(arg.startswith("--allow") for arg in args)
    assert f"--database={sandbox.state}/state.db" in args and "--no-gpus" in args
    assert (sandbox.etc / "nodecount.env").read_text() == (
        f"FL_NODECOUNT_DATABASE={sandbox.state}/state.db\nFL_NODECOUNT_JOB_MIN_NODES=\n"
    )


def test_allow_list_and_tls_reach_the_exporter_arguments(make_sandbox) -> None:
    sandbox = make_sandbox("superlink")
    sandbox.configured(
        ETH0_IP="10.231.64.50",
        ONEAPP_FL_METRICS_PORT="9200",
        ONEAPP_FL_METRICS_ALLOW="10.231.64.0/24, 2001:db8::/32",
        ONEAPP_FL_METRICS_TLS="YES",
        ONEAPP_FL_DATABASE="memory",
    )
    args = sandbox.args("metrics")
    assert "--port=9200" in args and "--allow=10.231.64.0/24,2001:db8::/32" in args
    assert (
        f"--tls-cert={sandbox.etc}/tls/server.pem" in args
        and f"--tls-key={sandbox.etc}/tls/server.key" in args
    )
    assert (
        sandbox.etc / "nodecount.env"
    ).read_text() == "FL_NODECOUNT_DATABASE=\nFL_NODECOUNT_JOB_MIN_NODES=\n"


def test_metrics_off_writes_no_arguments(make_sandbox) -> None:
    sandbox = make_sandbox("supernode")
    sandbox.configured(ONEAPP_FL_METRICS_ENABLED="NO", ONEAPP_FL_METRICS_ALLOW="not-checked")
    assert not (sandbox.etc / "metrics.args").exists()


@pytest.mark.parametrize("role", ["superlink", "supernode"])
def test_written_arguments_run_the_real_exporter(make_sandbox, tmp_path: Path, role: str) -> None:
    """metrics.args as configure writes it, read by the exporter the way the unit reads it (@file)."""
    sandbox = make_sandbox(role)
    sandbox.configured(ETH0_IP="10.231.64.50", ONEAPP_FL_METRICS_ALLOW="10.231.64.0/24")
    written = sandbox.args("metrics")
    assert written[0] == role
    # The unit's file, minus the port (a free one here) and with log files instead of the journal.
    kept = [arg for arg in written[1:] if not arg.startswith("--port=")]
    args_file = tmp_path / "metrics.args"
    args_file.write_text("\n".join(kept) + "\n")
    log = tmp_path / "flower.log"
    log.write_text("")
    extra = ["--log", str(log)] + (["--keysync-log", "none"] if role == "superlink" else [])
    exporter = start_exporter(role, f"@{args_file}", *extra)
    try:
        text = exporter.scrape()
    finally:
        exporter.stop()
    promtool_check(text)
    assert f'flower_exporter_source_up{{source="{role}_log"}}' in samples(text)


@pytest.mark.parametrize("role", ["superlink", "supernode"])
def test_both_roles_install_the_metrics_units(role: str) -> None:
    script = (APPLIANCE_DIR / "roles" / f"{role}.sh").read_text()
    assert 'fl_install_units "${FL_' in script and '"${FL_METRICS_UNITS[@]}"' in script
    units = (APPLIANCE_DIR / "lib" / "metrics.sh").read_text()
    wanted = ("flower-metrics.service", "flower-nodecount.service", "flower-metrics-cert.service")
    assert f"FL_METRICS_UNITS=({' '.join(wanted)})" in units
    for unit in wanted:
        assert (APPLIANCE_DIR / "systemd" / unit).is_file()


def test_provisioning_pins_prometheus_client_as_pyproject() -> None:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    pins = [dep for dep in pyproject["project"]["dependencies"] if dep.startswith("prometheus-client==")]
    provision = (REPO_ROOT / "images" / "provision" / "40-flower.sh").read_text()
    found = re.findall(r'^metrics_package="(prometheus-client==[^"]+)"$', provision, flags=re.MULTILINE)
    assert pins and found == pins, (pins, found)
    assert '"${metrics_package}"' in provision


# -- flower-nodecount against the test cloud's OneGate --------------------------------------------------


@pytest.fixture(scope="module")
def service(dummy_cloud: Any) -> dict[str, Any]:
    started = start_dummy_service(dummy_cloud, "counts", supernodes=3)
    return {"superlink": started.superlink, "supernodes": started.supernodes}


def state_db(path: Path, online: int, offline: int) -> Path:
    """A SuperLink state database with Flower 1.42's node columns the count reads."""
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE node (node_id INTEGER PRIMARY KEY, status TEXT, online_until REAL)")
        now = time.time()
        for index in range(online):
            db.execute("INSERT INTO node VALUES (?, 'online', ?)", (index + 1, now + 60))
        for index in range(offline):
            db.execute("INSERT INTO node VALUES (?, 'offline', ?)", (100 + index, now - 60))
        # online by status but past its heartbeat deadline: not connected
        db.execute("INSERT INTO node VALUES (999, 'online', ?)", (now - 5,))
    return path


def nodecount(sandbox, environment: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(NODECOUNT)],
        env=sandbox.env(
            FL_ONEGATE_DEADLINE="10", FL_NODECOUNT_STATE=str(sandbox.root / "nodecount-last"), **environment
        ),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def published(make_sandbox, cloud: Any, vm_id: int) -> dict[str, Any]:
    result = make_sandbox("supernode").bash("fl_onegate_get /vm 5\n", **gate_environment(cloud, vm_id))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["VM"]["USER_TEMPLATE"]


def test_counts_are_published_by_the_superlink_and_copied_by_supernodes(
    make_sandbox, dummy_cloud, service, tmp_path: Path
) -> None:
    link = make_sandbox("superlink")
    (link.etc).mkdir(parents=True, exist_ok=True)
    database = state_db(tmp_path / "state.db", online=2, offline=1)
    (link.etc / "nodecount.env").write_text(f"FL_NODECOUNT_DATABASE={database}\n")
    # The SuperNodes find the SuperLink by its ONEAPP_FL_ENDPOINT, as discovery does.
    gate = gate_environment(dummy_cloud, service["superlink"])
    result = link.bash('fl_onegate_publish "ONEAPP_FL_ENDPOINT=10.231.64.9:9092"\n', **gate)
    assert result.returncode == 0, result.stderr

    result = nodecount(link, gate)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == ["ONEAPP_FL_CONNECTED_NODES=2", "ONEAPP_FL_MIN_NODES=3"]
    values = published(make_sandbox, dummy_cloud, service["superlink"])
    assert (values["ONEAPP_FL_CONNECTED_NODES"], values["ONEAPP_FL_MIN_NODES"]) == ("2", "3")

    node = make_sandbox("supernode")
    result = nodecount(node, gate_environment(dummy_cloud, service["supernodes"][0]))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == ["ONEAPP_FL_CONNECTED_NODES=2", "ONEAPP_FL_MIN_NODES=3"]
    values = published(make_sandbox, dummy_cloud, service["supernodes"][0])
    assert (values["ONEAPP_FL_CONNECTED_NODES"], values["ONEAPP_FL_MIN_NODES"]) == ("2", "3")


def test_unknown_counts_are_left_out(make_sandbox, dummy_cloud, service) -> None:
    # A SuperLink in memory mode has no database: the connected count is unknown, not 0.
    link = make_sandbox("superlink")
    link.etc.mkdir(parents=True, exist_ok=True)
    (link.etc / "nodecount.env").write_text("FL_NODECOUNT_DATABASE=\n")
    result = nodecount(link, gate_environment(dummy_cloud, service["superlink"]))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == ["ONEAPP_FL_MIN_NODES=3"]
    # No OneGate at all: nothing known, nothing published, said once.
    node = make_sandbox("supernode")
    result = nodecount(node, {})
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr
    assert "no OneGate" in result.stderr


# -- the release pair check and its report column ------------------------------------------------------

GOOD_EXPOSITION = (
    "# HELP flower_supernode_connected 1 when connected\n# TYPE flower_supernode_connected gauge\n"
    "flower_supernode_connected 1.0\n"
)
# A counter without _total: promtool check metrics complains (its lint).
BAD_EXPOSITION = "# HELP flower_refusals refusals\n# TYPE flower_refusals counter\nflower_refusals 3.0\n"


def test_metrics_check_passes_clean_endpoints_and_names_the_failing_vms() -> None:
    from factory.harness.pairtest import METRICS_CHECK, Scrape, metrics_check

    good = metrics_check(
        [Scrape("VM 3 (superlink)", GOOD_EXPOSITION), Scrape("VM 4 (supernode)", GOOD_EXPOSITION)]
    )
    assert good["passed"] and good["name"] == METRICS_CHECK and good["task"] == "monitoring"
    assert "2 endpoints" in good["detail"]
    bad = metrics_check(
        [
            Scrape("VM 3 (superlink)", GOOD_EXPOSITION),
            Scrape("VM 4 (supernode)", BAD_EXPOSITION),
            Scrape("VM 5 (supernode)", error="curl exit 7: Failed to connect to 127.0.0.1 port 9101"),
        ]
    )
    assert not bad["passed"]
    assert "VM 3" not in bad["detail"]
    assert "VM 4 (supernode): promtool check metrics:" in bad["detail"] and "_total" in bad["detail"]
    assert "VM 5 (supernode): curl exit 7" in bad["detail"]
    assert not metrics_check([])["passed"]


def test_report_shows_the_metrics_column(tmp_path: Path) -> None:
    from factory.harness.pair import PASSED, PairResult, Side
    from factory.release.report import compat_data, write_report

    def result(pair: str, check: dict[str, Any] | None) -> PairResult:
        side = {"flower": "1.42.0", "os": "debian12", "accel": "cpu", "framework": "numpy"}
        record = PairResult(
            pair=pair, run="r1", target="testcloud", security="tls-auth",
            superlink=Side(variant="superlink-1.42.0", **side),
            supernodes=Side(variant="supernode-1.42.0", count=2, **side),
            status=PASSED, federations=[], checks=[check] if check else [],
            started_at=1.0, finished_at=2.0,
        )  # fmt: skip
        return record

    checked = {
        "task": "monitoring",
        "name": "metrics_endpoints",
        "passed": False,
        "detail": "VM 7 (supernode): empty answer",
    }
    data = compat_data([result("pair-a", checked), result("pair-b", None)], "r1")
    by_pair = {pair["pair"]: pair for pair in data["pairs"]}
    assert by_pair["pair-a"]["monitoring"] == {"passed": False, "detail": "VM 7 (supernode): empty answer"}
    assert by_pair["pair-b"]["monitoring"] is None
    paths = write_report([result("pair-a", checked), result("pair-b", None)], "r1", tmp_path)
    markdown = paths["md"].read_text()
    assert "| metrics endpoints |" in markdown
    assert "failed: VM 7 (supernode): empty answer" in markdown and "not checked" in markdown
    page = paths["html"].read_text()
    assert "<th>metrics endpoints</th>" in page and "failed: VM 7 (supernode): empty answer" in page


def test_supernode_metrics_tls_uses_the_certificate_the_superlink_issues(make_sandbox) -> None:
    """ONEAPP_FL_METRICS_TLS=YES on a SuperNode: the exporter serves the key and certificate that
    flower-metrics-cert requests (lib/metrics_tls.sh); its unit gets the request arguments."""
    sandbox = make_sandbox("supernode")
    sandbox.configured(ETH0_IP="10.231.64.50", ONEAPP_FL_TLS="YES", ONEAPP_FL_METRICS_TLS="YES")
    args = sandbox.args("metrics")
    assert f"--tls-cert={sandbox.etc}/metrics-tls/node.pem" in args
    assert f"--tls-key={sandbox.etc}/metrics-tls/node.key" in args
    assert (sandbox.etc / "metrics-cert.env").read_text() == (
        f"FL_METRICS_CERT_ARGS=request --dir {sandbox.etc}/metrics-tls "
        f"--ca {sandbox.state}/tls/superlink-ca.pem --interval 15\n"
    )


def test_superlink_metrics_tls_signs_for_its_supernodes(make_sandbox) -> None:
    sandbox = make_sandbox("superlink")
    sandbox.configured(ETH0_IP="10.231.64.50", ONEAPP_FL_METRICS_TLS="YES")
    assert (sandbox.etc / "metrics-cert.env").read_text() == (
        f"FL_METRICS_CERT_ARGS=sign --ca-dir {sandbox.etc}/tls --interval 30\n"
    )
    plain = make_sandbox("superlink")
    plain.configured(ETH0_IP="10.231.64.50")
    assert not (plain.etc / "metrics-cert.env").exists()


def test_the_certificate_unit_is_installed_and_passes_its_arguments() -> None:
    unit = (APPLIANCE_DIR / "systemd" / "flower-metrics-cert.service").read_text()
    assert "EnvironmentFile=/etc/flower/metrics-cert.env" in unit
    assert "/etc/one-appliance/bin/flower-metrics-cert $FL_METRICS_CERT_ARGS" in unit
