"""docs/monitoring.md stays true: its metric table names exactly the exporter's metrics, and its
parameter snippet is a valid images/params.yaml declaration that adds only new names."""

from __future__ import annotations

import re

import yaml

from factory.model import params
from hostkit.paths import REPO_ROOT

DOC = REPO_ROOT / "docs" / "monitoring.md"
EXPORTER = REPO_ROOT / "context" / "appliance" / "bin" / "flower-metrics"


def test_the_metric_table_matches_the_exporter() -> None:
    table = [line for line in DOC.read_text().splitlines() if line.startswith("| `flower_")]
    documented = {
        name.removesuffix("_total") for line in table for name in re.findall(r"`(flower_[a-z_]+)`", line)
    }
    served = set(re.findall(r'"(flower_[a-z_]+)"', EXPORTER.read_text())) - {"flower_supernode"}
    served.add("flower_supernode_info")  # an info metric: prometheus-client appends _info
    assert documented == served


def test_the_parameter_snippet_is_a_valid_declaration() -> None:
    """Valid together with images/params.yaml; once a parameter is declared there, it must be the same."""
    snippet = re.search(r"```yaml\n(.*?)```", DOC.read_text(), re.S)
    assert snippet is not None
    entries = yaml.safe_load(snippet.group(1))
    assert {entry["name"] for entry in entries} == {
        "ONEAPP_FL_METRICS_ENABLED", "ONEAPP_FL_METRICS_PORT",
        "ONEAPP_FL_METRICS_ALLOW", "ONEAPP_FL_METRICS_TLS",
    }  # fmt: skip
    declared = yaml.safe_load((REPO_ROOT / "images" / "params.yaml").read_text())["params"]
    by_name = {entry["name"]: entry for entry in declared}
    new = [entry for entry in entries if entry["name"] not in by_name]
    for entry in entries:
        if entry["name"] in by_name:
            assert by_name[entry["name"]] == entry, f"{entry['name']} differs from images/params.yaml"
    merged = params.parse_params({"params": [*declared, *new]}, source="params.yaml + docs/monitoring.md")
    assert len(merged.params) == len(declared) + len(new)
