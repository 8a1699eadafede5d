"""Prometheus and Grafana provisioning rendered from monitoring/'s templates: accepted by
``promtool check config`` (file_sd and http_sd, http and https with the appliance CA), bad values refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from factory.harness.tlsmaterial import make_tls
from hostkit.paths import REPO_ROOT
from monitoring import config, targets

RULES = REPO_ROOT / "monitoring" / "prometheus" / "alerts.yml"


def _check(text: str, tmp_path: Path) -> None:
    path = tmp_path / "prometheus.yml"
    path.write_text(text)
    result = subprocess.run(
        ["promtool", "check", "config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_file_sd_over_https_with_the_appliance_ca_and_node_exporter(tmp_path: Path) -> None:
    tls = make_tls(tmp_path / "tls", ["127.0.0.1"])
    sd_file = tmp_path / "targets.json"
    group = {"targets": ["10.231.64.7:9101"], "labels": {"flower_role": "supernode"}}
    targets.write_if_changed(sd_file, [group])
    text = config.render_prometheus(
        config.PrometheusSettings(rules_file=str(RULES), sd_file=str(sd_file), scheme="https",
                                  ca_file=str(tls.ca_cert), node_exporter_port=9100)
    )  # fmt: skip
    _check(text, tmp_path)
    document = yaml.safe_load(text)
    flower, node = document["scrape_configs"]
    assert flower["scheme"] == "https" and flower["tls_config"]["ca_file"] == str(tls.ca_cert)
    assert flower["file_sd_configs"][0]["files"] == [str(sd_file)]
    assert node["relabel_configs"][0]["replacement"] == "${1}:9100"
    assert document["rule_files"] == [str(RULES)]


def test_http_sd(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "monitoring.config", "prometheus", "--rules", str(RULES),
         "--sd-url", "http://127.0.0.1:9199/targets", "--scrape-interval", "5s"],
        capture_output=True, text=True, timeout=60, cwd=REPO_ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    _check(result.stdout, tmp_path)
    document = yaml.safe_load(result.stdout)
    assert document["scrape_configs"][0]["http_sd_configs"][0]["url"] == "http://127.0.0.1:9199/targets"
    assert document["global"]["scrape_interval"] == "5s"


def test_grafana_datasource_and_dashboard_provider() -> None:
    datasource = yaml.safe_load(config.render_grafana_datasource("http://127.0.0.1:9090"))
    assert datasource["datasources"][0]["type"] == "prometheus"
    assert datasource["datasources"][0]["url"] == "http://127.0.0.1:9090"
    provider = yaml.safe_load(
        (REPO_ROOT / "monitoring" / "grafana" / "provisioning" / "dashboards.yml").read_text()
    )
    assert provider["providers"][0]["type"] == "file"
    json.loads((REPO_ROOT / "monitoring" / "grafana" / "flower-dashboard.json").read_text())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give exactly one of --sd-file (file_sd) and --sd-url (http_sd)"),
        (["--sd-file", "a.json", "--sd-url", "http://x/t"], "give exactly one of"),
        (["--sd-url", "gopher://x"], "--sd-url: 'gopher://x' is not an http(s) URL"),
        (["--sd-file", "a.json", "--scheme", "https"], "--scheme https needs --ca-file"),
        (["--sd-file", "a.json", "--scrape-interval", "soon"], "--scrape-interval: 'soon' is not a duration"),
        (
            ["--sd-file", "a.json", "--node-exporter-port", "99999"],
            "--node-exporter-port: 99999 is not a TCP port",
        ),
        (["--sd-file", "a.json", "--service", "a b"], "--service: 'a b' has characters"),
    ],
)
def test_bad_values_are_one_clear_line(args: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "monitoring.config", "prometheus", "--rules", "r.yml", *args],
        capture_output=True, text=True, timeout=60, cwd=REPO_ROOT,
    )  # fmt: skip
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""
