"""The Grafana dashboard: generated from monitoring/dashboard.py, committed as JSON, and consistent."""

from __future__ import annotations

import json
import re
from pathlib import Path

from monitoring import dashboard

EXPORTER = (
    Path(dashboard.__file__).resolve().parent.parent / "context" / "appliance" / "bin" / "flower-metrics"
)


def test_the_committed_json_is_what_the_code_generates() -> None:
    assert dashboard.OUTPUT.read_text() == dashboard.render()
    assert dashboard.main(["--check"]) == 0


def test_check_notices_a_stale_json(tmp_path: Path) -> None:
    stale = json.loads(dashboard.render())
    stale["panels"][1]["targets"][0]["expr"] = "sum(flower_superlink_runs)"
    path = tmp_path / "dashboard.json"
    path.write_text(json.dumps(stale, indent=2, sort_keys=True) + "\n")
    assert dashboard.main(["--check", "--out", str(path)]) == 1
    assert dashboard.main(["--out", str(path)]) == 0
    assert dashboard.main(["--check", "--out", str(path)]) == 0


def test_every_panel_query_comes_from_the_panel_list() -> None:
    document = json.loads(dashboard.OUTPUT.read_text())
    panels = [panel for panel in document["panels"] if panel["type"] != "row"]
    assert len(panels) == len(dashboard.PANELS)
    assert len({panel["id"] for panel in document["panels"]}) == len(document["panels"])
    for panel, spec in zip(panels, dashboard.PANELS, strict=True):
        assert panel["title"] == spec.title
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert [target["expr"] for target in panel["targets"]] == [query.expr for query in spec.queries]
    assert {variable["name"] for variable in document["templating"]["list"]} == {"datasource", "run_id"}


def test_every_metric_a_panel_reads_is_one_the_exporter_serves() -> None:
    source = EXPORTER.read_text()
    for spec in dashboard.PANELS:
        for query in spec.queries:
            # metric names (label names such as flower_role are followed by = or ~)
            names = set(re.findall(r"\b(flower_[a-z_]+)\b(?!\s*=~?)", query.expr))
            for name in names:
                base = name.removesuffix("_total")
                assert f'"{base}"' in source, f"{spec.title}: {name} is not a metric of flower-metrics"


def test_grafana_variables_are_replaced_as_grafana_would() -> None:
    query = dashboard.as_prometheus_query('rate(x{run_id=~"$run_id"}[$__rate_interval])')
    assert query == 'rate(x{run_id=~".*"}[1m])'
