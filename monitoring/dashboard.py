"""The Grafana dashboard of a Flower service, generated from code (grafana-foundation-sdk).

    python -m monitoring.dashboard            write monitoring/grafana/flower-dashboard.json
    python -m monitoring.dashboard --check    exit 1 when the committed JSON differs from the code

Every panel's query is in :data:`PANELS`, so the tests can run each one against a live Prometheus that
scrapes flower-metrics (tests/appliance/test_metrics_live.py). Grafana variables in the queries:
``$datasource`` (a Prometheus data source), ``$run_id`` (multi-value, "All" = ``.*``) and Grafana's
``$__rate_interval``; :func:`as_prometheus_query` replaces them as Grafana would.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from grafana_foundation_sdk.builders import common, dashboard, prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableRefresh
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

OUTPUT = Path(__file__).resolve().parent / "grafana" / "flower-dashboard.json"
UID = "flower-federation"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
RUN = 'run_id=~"$run_id"'


class Kind(Enum):
    STAT = "stat"
    TIMESERIES = "timeseries"
    TABLE = "table"


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    row: str
    title: str
    kind: Kind
    queries: tuple[Query, ...]
    unit: str = ""
    description: str = ""
    width: int = 8


PANELS: tuple[Panel, ...] = (
    # -- training progress and convergence
    Panel("Training", "Active runs", Kind.STAT,
          (Query('sum(flower_superlink_runs{status=~"pending|starting|running"})'),), width=4),
    Panel("Training", "Current round", Kind.STAT,
          (Query(f"flower_superlink_run_current_round{{{RUN}}}", "run {{run_id}}"),), width=4),
    Panel("Training", "Rounds planned", Kind.STAT,
          (Query(f"flower_superlink_run_rounds_planned{{{RUN}}}", "run {{run_id}}"),), width=4),
    Panel("Training", "Connected SuperNodes", Kind.STAT,
          (Query("sum(flower_superlink_supernodes_connected)"),), width=4),
    Panel("Training", "Since last progress", Kind.STAT,
          (Query(f"time() - flower_superlink_run_last_progress_timestamp_seconds{{{RUN}}}",
                 "run {{run_id}}"),),
          unit="s", width=8, description="Seconds since the run's last round finished (or it started)."),
    Panel("Training", "Evaluation loss (convergence)", Kind.TIMESERIES,
          (Query(f"flower_superlink_run_last_round_loss{{{RUN}}}", "run {{run_id}}"),), width=12),
    Panel("Training", "Loss per round", Kind.TABLE,
          (Query(f"flower_superlink_round_loss{{{RUN}}}", "run {{run_id}} round {{round}}"),
           Query(f"flower_superlink_round_train_loss{{{RUN}}}", "train run {{run_id}} round {{round}}")),
          width=12),
    Panel("Training", "Accuracy per round", Kind.TABLE,
          (Query(f"flower_superlink_round_accuracy_ratio{{{RUN}}}", "run {{run_id}} round {{round}}"),),
          unit="percentunit", width=12, description="Only for apps that report eval_accuracy."),
    Panel("Training", "Round duration", Kind.TIMESERIES,
          (Query(f"flower_superlink_run_last_round_duration_seconds{{{RUN}}}", "run {{run_id}}"),),
          unit="s", width=12),
    Panel("Training", "Replies per round", Kind.TABLE,
          (Query(f"flower_superlink_round_replies{{{RUN}}}", "{{stage}} run {{run_id}} round {{round}}"),),
          width=12),
    Panel("Training", "Runs by status", Kind.TIMESERIES,
          (Query("sum by (status) (flower_superlink_runs)", "{{status}}"),), width=12),
    # -- client health
    Panel("SuperNodes", "SuperNodes by status", Kind.TIMESERIES,
          (Query("sum by (status) (flower_superlink_supernodes)", "{{status}}"),
           Query("sum(flower_superlink_supernodes_connected)", "connected")), width=12),
    Panel("SuperNodes", "SuperNode connection", Kind.TIMESERIES,
          (Query("flower_supernode_connected", "{{instance}}"),), width=12),
    Panel("SuperNodes", "Train/evaluate duration", Kind.TIMESERIES,
          (Query("flower_supernode_last_task_duration_seconds", "{{instance}} {{task}}"),),
          unit="s", width=12),
    Panel("SuperNodes", "Tasks per minute", Kind.TIMESERIES,
          (Query("sum by (instance, task) (rate(flower_supernode_tasks_total[$__rate_interval])) * 60",
                 "{{instance}} {{task}}"),), width=12),
    Panel("SuperNodes", "Samples per task", Kind.TIMESERIES,
          (Query("flower_supernode_last_task_examples", "{{instance}} {{task}}"),), width=8,
          description="Only for apps that print FF-CLIENT lines."),
    Panel("SuperNodes", "Reconnects and failed connection attempts", Kind.TIMESERIES,
          (Query("increase(flower_supernode_reconnects_total[$__rate_interval])", "reconnects {{instance}}"),
           Query("increase(flower_supernode_connection_failures_total[$__rate_interval])",
                 "failed {{instance}}")), width=8),
    Panel("SuperNodes", "Scrape targets up", Kind.TIMESERIES,
          (Query('up{flower_role=~"superlink|supernode"}', "{{flower_role}} {{instance}}"),), width=8),
    # -- keys and security
    Panel("Keys", "Refused SuperNode activations", Kind.TIMESERIES,
          (Query("sum by (reason) (increase(flower_superlink_supernode_refusals_total[$__rate_interval]))",
                 "{{reason}}"),), width=12),
    Panel("Keys", "Key sync events", Kind.TIMESERIES,
          (Query("sum by (event) (increase(flower_keysync_key_events_total[$__rate_interval]))",
                 "{{event}}"),),
          width=12, description="Registered, unregistered, pinned and refused (changed) SuperNode keys."),
    # -- resources and state
    Panel("Resources", "GPU utilisation", Kind.TIMESERIES,
          (Query("flower_gpu_utilization_ratio", "{{instance}} GPU {{gpu}}"),), unit="percentunit",
          description="GPU images only (nvidia-smi); absent elsewhere."),
    Panel("Resources", "GPU memory used", Kind.TIMESERIES,
          (Query("flower_gpu_memory_used_bytes", "{{instance}} GPU {{gpu}}"),
           Query("flower_gpu_memory_total_bytes", "total {{instance}} GPU {{gpu}}")), unit="bytes"),
    Panel("Resources", "Checkpoint age", Kind.TIMESERIES,
          (Query("flower_superlink_checkpoint_age_seconds", "{{path}}"),), unit="s"),
    Panel("Resources", "Exporter sources", Kind.TIMESERIES,
          (Query("flower_exporter_source_up", "{{instance}} {{source}}"),), width=24),
)  # fmt: skip


def as_prometheus_query(expr: str, rate_interval: str = "1m") -> str:
    """The query Prometheus receives from Grafana with every run selected ("All")."""
    return expr.replace("$__rate_interval", rate_interval).replace('"$run_id"', '".*"')


def _panel(spec: Panel) -> object:
    builder = {Kind.STAT: stat.Panel, Kind.TIMESERIES: timeseries.Panel, Kind.TABLE: table.Panel}[spec.kind]()
    builder = (
        builder.title(spec.title).datasource(DATASOURCE).span(spec.width).height(8 if spec.width > 4 else 5)
    )
    if spec.unit:
        builder = builder.unit(spec.unit)
    if spec.kind is Kind.STAT:
        builder = builder.reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]))
    if spec.description:
        builder = builder.description(spec.description)
    for index, query in enumerate(spec.queries):
        target = prometheus.Dataquery().expr(query.expr).ref_id(chr(ord("A") + index)).datasource(DATASOURCE)
        if query.legend:
            target = target.legend_format(query.legend)
        if spec.kind is Kind.TABLE:
            target = target.instant().format(PromQueryFormat.TABLE)
        elif spec.kind is Kind.STAT:
            target = target.instant()
        builder = builder.with_target(target)
    return builder


def build() -> dict:
    board = (
        dashboard.Dashboard("Flower federation")
        .uid(UID)
        .description("Training progress, convergence, SuperNode health, keys and GPUs of a Flower service")
        .tags(["flower", "federated-learning", "opennebula"])
        .refresh("30s")
        .time("now-6h", "now")
        .timezone("browser")
        .with_variable(dashboard.DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
        .with_variable(
            dashboard.QueryVariable("run_id")
            .label("Run")
            .datasource(DATASOURCE)
            .query("label_values(flower_superlink_run_active, run_id)")
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .multi(True)
            .include_all(True)
            .all_value(".*")
        )
    )
    row = ""
    for spec in PANELS:
        if spec.row != row:
            board = board.with_row(dashboard.Row(spec.row))
            row = spec.row
        board = board.with_panel(_panel(spec))
    document = json.loads(JSONEncoder(sort_keys=True).encode(board.build()))
    for number, panel in enumerate(document["panels"], start=1):
        panel["id"] = number  # unique ids: Grafana links and edits panels by id
        if panel.get("type") != "row" and panel.get("options") is None:
            panel["options"] = {}  # Grafana fills in each panel type's default options
    return document


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m monitoring.dashboard", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--check", action="store_true", help="compare with the committed JSON, write nothing")
    parser.add_argument("--out", type=Path, default=OUTPUT)
    options = parser.parse_args(argv)
    text = render()
    if options.check:
        current = options.out.read_text() if options.out.exists() else ""
        if current != text:
            sys.stderr.write(f"{options.out} is not what monitoring/dashboard.py generates: regenerate it\n")
            return 1
        return 0
    options.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
