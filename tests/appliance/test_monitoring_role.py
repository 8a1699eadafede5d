"""The monitoring role on the SuperLink image (context/appliance/roles/monitoring.sh), run on this host in
a sandbox: ONEAPP_FL_APPLIANCE_ROLE picks it at configure, its bad values fail configure in one line, and
with a VM's OneGate identity in a OneFlow service of the test cloud (dummy driver) configure writes what
the role's units read: the OneGate token (0600), their settings, and a Prometheus configuration rendered
by the shipped monitoring.config that ``promtool check config`` accepts, over HTTPS with the CA the
SuperLink published when ONEAPP_FL_METRICS_TLS=YES. No SuperLink configuration is written in that role.
Booted, the role runs in tests/e2e/test_cloud_monitoring_role.py."""

from __future__ import annotations

import base64
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from dummy_service import DummyService, start_dummy_service

from factory.harness.tlsmaterial import make_tls
from hostkit.paths import REPO_ROOT


def _identity(cloud: Any, vm_id: int) -> dict[str, str]:
    """What one-context gives a VM: OneGate's endpoint, its token (TOKENTXT) and its id."""
    token = (cloud.state_dir / "vms" / str(vm_id) / "context" / "token.txt").read_text().strip()
    return {"ONEGATE_ENDPOINT": cloud.endpoints["onegate"], "TOKENTXT": token, "VMID": str(vm_id)}


@pytest.fixture(scope="module")
def service(dummy_cloud: Any) -> DummyService:
    return start_dummy_service(dummy_cloud, "fl-monitoring", 2, nic=True)


def _monitoring(make_sandbox: Any, tmp_path: Path, **settings: str) -> Any:
    """A SuperLink image's sandbox whose monitoring files are the repository's (the image has them under
    /opt/flower/monitoring) and whose Python is this one (the image's: the distribution's, with Jinja2);
    ``settings``: further environment of the role (FL_GRAFANA...)."""
    return make_sandbox(
        "superlink",
        extra_env={
            "FL_MONITORING_HOME": str(REPO_ROOT),
            "FL_MONITORING_PYTHON": sys.executable,
            "FL_MONITORING_ETC": str(tmp_path / "superlink" / "etc" / "monitoring"),
            "FL_MONITORING_STATE": str(tmp_path / "superlink" / "monitoring"),
            "FL_START_DEADLINE": "6",
            **settings,
        },
    )


def test_a_bad_role_fails_configure_naming_the_parameter(make_sandbox: Any) -> None:
    make_sandbox("superlink").refused(
        "ONEAPP_FL_APPLIANCE_ROLE", "prometheus", ONEAPP_FL_APPLIANCE_ROLE="prometheus"
    )


def test_the_monitoring_role_needs_onegate(make_sandbox: Any, tmp_path: Path) -> None:
    sandbox = _monitoring(make_sandbox, tmp_path)
    sandbox.refused(
        "ONEAPP_FL_APPLIANCE_ROLE=monitoring needs OneGate", ONEAPP_FL_APPLIANCE_ROLE="monitoring"
    )
    assert not (sandbox.etc / "tls").exists()  # no SuperLink CA was made


def test_the_monitoring_role_configures_prometheus_from_onegate(
    make_sandbox: Any, tmp_path: Path, dummy_cloud: Any, service: DummyService
) -> None:
    if shutil.which("promtool") is None:
        pytest.fail("promtool is missing: scripts/setup.sh installs Debian's prometheus package")
    monitor = service.supernodes[0]  # any VM of the service: the role reads the service through OneGate
    sandbox = _monitoring(make_sandbox, tmp_path)
    identity = _identity(dummy_cloud, monitor)
    sandbox.configured(ONEAPP_FL_APPLIANCE_ROLE="monitoring", ONEAPP_FL_METRICS_PORT="9111", **identity)
    etc = tmp_path / "superlink" / "etc" / "monitoring"
    token = etc / "onegate.token"
    assert token.read_text().strip() == identity["TOKENTXT"] and token.stat().st_mode & 0o777 == 0o600
    settings = dict(line.split("=", 1) for line in (etc / "monitoring.env").read_text().splitlines())
    assert settings["ONEGATE_ENDPOINT"] == identity["ONEGATE_ENDPOINT"] and settings["VMID"] == str(monitor)
    assert settings["FL_TARGETS_SCHEME"] == "http" and settings["FL_TARGETS_PORT"] == "9111"
    assert settings["FL_PROMETHEUS_LISTEN"] == "127.0.0.1:9090"  # loopback only
    config = yaml.safe_load((etc / "prometheus.yml").read_text())
    assert config["global"]["external_labels"]["flower_service"] == f"flower-{service.service}"
    assert config["rule_files"] == [str(REPO_ROOT / "monitoring" / "prometheus" / "alerts.yml")]
    job = config["scrape_configs"][0]
    assert job["file_sd_configs"][0]["files"] == [settings["FL_TARGETS_FILE"]] and "tls_config" not in job
    checked = subprocess.run(
        ["promtool", "check", "config", str(etc / "prometheus.yml")], capture_output=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert not (sandbox.etc / "tls").exists() and not (sandbox.etc / "metrics.args").exists()  # no SuperLink


def test_where_the_image_has_grafana_configure_provisions_it(
    make_sandbox: Any, tmp_path: Path, dummy_cloud: Any, service: DummyService
) -> None:
    """Images that carry Grafana (FL_GRAFANA=yes: Ubuntu, openSUSE; not buildable here) get its data
    source (this VM's Prometheus, rendered by the shipped monitoring.config), the dashboard provider and
    the dashboard, and Grafana on loopback. Its configure once called a monitoring.config subcommand that
    does not exist."""
    grafana = tmp_path / "grafana"
    sandbox = _monitoring(
        make_sandbox,
        tmp_path,
        FL_GRAFANA="yes",
        FL_GRAFANA_PROVISIONING=str(grafana / "provisioning"),
        FL_GRAFANA_DASHBOARDS=str(grafana / "dashboards"),
        FL_GRAFANA_DROPIN=str(grafana / "50-flower.conf"),
    )
    identity = _identity(dummy_cloud, service.supernodes[0])
    sandbox.configured(ONEAPP_FL_APPLIANCE_ROLE="monitoring", **identity)
    datasource = yaml.safe_load((grafana / "provisioning" / "datasources" / "flower.yml").read_text())
    assert [source["url"] for source in datasource["datasources"]] == ["http://127.0.0.1:9090"]
    shipped = REPO_ROOT / "monitoring" / "grafana"
    assert (grafana / "dashboards" / "flower-dashboard.json").read_bytes() == (
        shipped / "flower-dashboard.json"
    ).read_bytes()
    assert (grafana / "provisioning" / "dashboards" / "flower.yml").read_bytes() == (
        shipped / "provisioning" / "dashboards.yml"
    ).read_bytes()
    assert "GF_SERVER_HTTP_ADDR=127.0.0.1" in (grafana / "50-flower.conf").read_text()


def test_metrics_tls_scrapes_with_the_ca_the_superlink_published(
    make_sandbox: Any, tmp_path: Path, dummy_cloud: Any, service: DummyService
) -> None:
    sandbox = _monitoring(make_sandbox, tmp_path)
    identity = _identity(dummy_cloud, service.supernodes[1])
    # Before the SuperLink published its CA: a clear failure after the (short) deadline.
    tls = {"ONEAPP_FL_APPLIANCE_ROLE": "monitoring", "ONEAPP_FL_METRICS_TLS": "YES"}
    sandbox.refused("published no appliance CA", **tls, **identity)
    ca = make_tls(tmp_path / "tls", ["127.0.0.1"]).ca_cert.read_bytes()
    service.one.vm.update(
        service.superlink, f'ONEAPP_FL_CA_CERT="{base64.b64encode(ca).decode()}"', 1
    )  # what the SuperLink appliance publishes through OneGate (merged into its USER_TEMPLATE)
    sandbox.configured(ONEAPP_FL_APPLIANCE_ROLE="monitoring", ONEAPP_FL_METRICS_TLS="YES", **identity)
    etc = tmp_path / "superlink" / "etc" / "monitoring"
    assert (etc / "ca.pem").read_bytes().strip() == ca.strip()
    job = yaml.safe_load((etc / "prometheus.yml").read_text())["scrape_configs"][0]
    assert job["scheme"] == "https" and job["tls_config"]["ca_file"] == str(etc / "ca.pem")
    assert "FL_TARGETS_SCHEME=https" in (etc / "monitoring.env").read_text()
