"""The compatibility report: ``results/compat.json``, ``compat.md`` and a self-contained ``compat.html``.

From the pair results of one run it shows, per OS and accelerator, a SuperLink version x SuperNode version
grid (works / works with warning / fails, with the error), per pair the framework task that ran (rounds,
final metric against its floor) and the time of each round, and per task the convergence of every pair
that ran it (evaluation loss and the floored metric per round). The HTML embeds its plots as PNG data
URIs: one file a person can open anywhere, nothing fetched.
"""

from __future__ import annotations

import base64
import html
import io
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from factory.harness.federation import CANARY_TASK
from factory.harness.jobcheck import JOB_TASK, job_from_context_state
from factory.harness.jobfeatures import Feature, feature_state
from factory.harness.monitorcheck import CHECK as MONITORING_ROLE_CHECK
from factory.harness.monitorcheck import TASK as MONITORING_ROLE_TASK
from factory.harness.pair import FAILED, PASSED, PASSED_WITH_WARNING, PairResult
from factory.harness.pairtest import METRICS_CHECK
from factory.release.results import finite_number, metric_values, write_json
from factory.release.templating import render
from hostkit.fileio import write_atomic

SYMBOL = {PASSED: "works", PASSED_WITH_WARNING: "works with warning", FAILED: "fails"}
MARK = {PASSED: "✅", PASSED_WITH_WARNING: "⚠️", FAILED: "❌"}
COLOUR = {PASSED: "#2e7d32", PASSED_WITH_WARNING: "#f9a825", FAILED: "#c62828"}
RANK = {PASSED: 0, PASSED_WITH_WARNING: 1, FAILED: 2}


def _version_key(version: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in version.split("."))


def _canary_rounds(result: PairResult) -> list[dict[str, Any]]:
    federation = result.federation(CANARY_TASK)
    return list(federation.get("rounds", [])) if federation else []


def task_summary(federation: dict[str, Any]) -> dict[str, Any]:
    """One task's run: rounds, loss and floored metric per round, the final value against the floor."""
    rounds = list(federation.get("rounds", []))
    metric = str(federation.get("metric") or "")
    values = metric_values(federation)
    checks = federation.get("checks", [])
    return {
        "task": str(federation.get("task")),
        "strategy": str(federation.get("strategy")),
        "run_status": str(federation.get("status", "")),
        "passed": bool(checks) and all(check.get("passed") for check in checks),
        "rounds_requested": federation.get("rounds_requested"),
        "rounds": len(rounds),
        "eval_loss": _eval_losses(rounds),
        "metric": metric,
        "metric_values": values,
        "final_metric": values[-1] if values else None,
        "floor": finite_number(federation.get("floor")),
        "evaluate_metrics": [dict(record.get("evaluate_metrics", {})) for record in rounds],
        "seconds": _seconds(federation),
        "failed_checks": [f"{check.get('name')}: {check.get('detail')}" for check in checks
                          if not check.get("passed")],
    }  # fmt: skip


def nodes_per_round(rounds: list[dict[str, Any]]) -> list[int | None]:
    """How many SuperNodes answered each round's training without an error (``train_replies`` of the
    harness's round records, from the factory app's FF-ROUND line), None where a record does not say."""
    return [count if isinstance(count := record.get("train_replies"), int) else None for record in rounds]


def _eval_losses(rounds: list[dict[str, Any]]) -> list[float | None]:
    return [finite_number(record.get("evaluate_metrics", {}).get("eval_loss")) for record in rounds]


def _seconds(federation: dict[str, Any]) -> float | None:
    started, finished = (
        finite_number(federation.get("submitted_at")),
        finite_number(federation.get("finished_at")),
    )
    return finished - started if started and finished else None


def pair_summary(result: PairResult) -> dict[str, Any]:
    rounds = _canary_rounds(result)
    round_seconds = [finite_number(record.get("seconds")) for record in rounds]
    losses = _eval_losses(rounds)
    finite_seconds = [value for value in round_seconds if value is not None]
    framework = result.framework_federation()
    axes = result.axes  # the SuperNodes' (an edge pair's SuperLink is a standard one)
    return {
        "pair": result.pair,
        "run": result.run,
        "target": result.target,
        "security": result.security,
        "superlink_flower": result.superlink.flower,
        "supernode_flower": result.supernodes.flower,
        "supernodes": result.supernodes.count,
        **axes,
        "status": result.status,
        "error": result.error,
        "warnings": result.warnings,
        "round_seconds": round_seconds,
        "mean_round_seconds": sum(finite_seconds) / len(finite_seconds) if finite_seconds else None,
        "eval_loss": losses,
        "nodes_per_round": nodes_per_round(rounds),
        "instantiate_to_first_round_seconds": finite_number(
            result.timings.get("instantiate_to_first_round_seconds")
        ),
        "deploy_seconds": finite_number(result.timings.get("deploy_seconds")),
        "pair_seconds": finite_number(result.finished_at - result.started_at) if result.finished_at else None,
        "strategies": sorted({str(federation.get("strategy")) for federation in result.federations}),
        "tasks": [str(federation.get("task")) for federation in result.federations],
        "framework_task": task_summary(framework) if framework else None,
        "expected_framework_task": result.framework_task or result.supernodes.framework,
        "framework_eval_loss": _framework_losses(framework),
        "job_from_context": job_summary(result),
        "features": feature_summary(result),
        "monitoring": monitoring_summary(result),
        "monitoring_role": monitoring_role_summary(result),
    }


def job_summary(result: PairResult) -> dict[str, str]:
    """The train-on-deploy job of a cloud pair test (factory/harness/jobcheck.py): passed, failed or not
    run, with the failed checks or else the final metric against its floor."""
    checks = [check for check in result.checks if check.get("task") == JOB_TASK]
    failed = [f"{check.get('name')}: {check.get('detail')}" for check in checks if not check.get("passed")]
    floor = [str(check.get("detail")) for check in checks if check.get("name") == "metric_floor"]
    return {"state": job_from_context_state(result.checks), "detail": "; ".join(failed or floor)}


# The report's train-on-deploy feature columns after "job from context" (factory/harness/jobcheck.py).
FEATURE_COLUMNS = (Feature.RESUME, Feature.DP, Feature.SECAGG)


def feature_summary(result: PairResult) -> dict[str, dict[str, str]]:
    """Per feature column: its state (passed, failed, not run, unsupported) and detail, from the pair's
    recorded checks only (nothing assumed: a pair without a feature's checks says "not run")."""
    summary = {}
    for feature in FEATURE_COLUMNS:
        state, detail = feature_state(result.checks, feature)
        summary[feature.value] = {"state": state, "detail": detail}
    return summary


def describe_features(pair: dict[str, Any], limit: int) -> list[str]:
    """The feature columns' cells of a pair (a record written before the columns existed: not run)."""
    features = pair.get("features") or {}
    cells = []
    for feature in FEATURE_COLUMNS:
        cell = features.get(feature.value) or {"state": "not run", "detail": ""}
        cells.append((cell["state"] + (f": {cell['detail']}" if cell.get("detail") else ""))[:limit])
    return cells


def describe_job(pair: dict[str, Any]) -> str:
    job = pair.get("job_from_context") or {"state": "not run", "detail": ""}
    return job["state"] + (f": {job['detail']}" if job.get("detail") else "")


def monitoring_summary(result: PairResult) -> dict[str, Any] | None:
    """The pair's metrics check (every VM's endpoint answers, promtool check metrics clean), or None
    where none ran (bare pairs, a pair that failed before its rounds)."""
    for check in result.checks:
        if check.get("name") == METRICS_CHECK:
            return {"passed": bool(check.get("passed")), "detail": str(check.get("detail", ""))}
    return None


def describe_monitoring(pair: dict[str, Any]) -> str:
    """The monitoring column: the check's verdict and what it found (a failure names the VMs)."""
    check = pair.get("monitoring")
    if not check:
        return "not checked"
    return f"{'passed' if check['passed'] else 'failed'}: {check['detail']}"


def monitoring_role_summary(result: PairResult) -> dict[str, Any] | None:
    """The pair's monitoring-role check (factory/harness/monitorcheck.py: the monitoring VM's Prometheus
    scraped every VM and its dashboard queries return the recorded rounds and losses), or None for the
    pairs deployed without the role."""
    for check in result.checks:
        if check.get("name") == MONITORING_ROLE_CHECK:
            return {"passed": bool(check.get("passed")), "detail": str(check.get("detail", ""))}
    return None


def describe_monitoring_role(pair: dict[str, Any]) -> str:
    """The "monitoring role" column: the check's name and verdict and what it found, or "not run"."""
    check = pair.get("monitoring_role")
    if not check:
        return "not run"
    verdict = "passed" if check["passed"] else "failed"
    return f"{verdict} ({MONITORING_ROLE_TASK}/{MONITORING_ROLE_CHECK}): {check['detail']}"


def _framework_losses(framework: dict[str, Any] | None) -> dict[str, list[float | None]]:
    """Evaluation loss per round of the pair's framework task, by task (empty when it did not run)."""
    if framework is None:
        return {}
    return {str(framework["task"]): _eval_losses(framework.get("rounds", []))}


def framework_convergence(results: list[PairResult]) -> dict[str, dict[str, Any]]:
    """Per task: every pair's run of it (the canary of every pair, each framework task of its pairs),
    with the metric and floor it was held to."""
    tasks: dict[str, dict[str, Any]] = {}
    for result in sorted(results, key=lambda item: item.pair):
        framework = result.framework_task or result.supernodes.framework
        for federation in result.federations:
            task = str(federation.get("task"))
            if task not in (CANARY_TASK, framework):
                continue
            summary = task_summary(federation)
            entry = tasks.setdefault(
                task,
                {"metric": summary["metric"], "floor": summary["floor"], "framework_of": [], "pairs": []},
            )
            if task == framework:
                entry["framework_of"].append(result.pair)
            entry["pairs"].append({**summary, "pair": result.pair, "status": result.status})
    return {task: tasks[task] for task in sorted(tasks, key=lambda name: (name != CANARY_TASK, name))}


GridKey = tuple[str, str]  # (OS, accelerator) of one grid; "" where the pairs do not say


def _grid_label(key: GridKey) -> str:
    os_name, accel = key
    return f"{os_name or 'any OS'} / {accel or 'any accelerator'}"


def build_grids(pairs: list[dict[str, Any]]) -> dict[GridKey, dict[str, Any]]:
    """Per (OS, accelerator): SuperLink versions (rows) x SuperNode versions (columns) -> worst outcome."""
    grids: dict[GridKey, dict[str, Any]] = {}
    grouped: dict[GridKey, list[dict[str, Any]]] = defaultdict(list)
    for pair in pairs:
        grouped[(pair["os"], pair["accel"])].append(pair)
    for key in sorted(grouped):
        members = grouped[key]
        links = sorted({pair["superlink_flower"] for pair in members}, key=_version_key)
        nodes = sorted({pair["supernode_flower"] for pair in members}, key=_version_key)
        cells: dict[str, dict[str, Any]] = {}
        for pair in members:
            cell_key = f"{pair['superlink_flower']}|{pair['supernode_flower']}"
            cell = cells.setdefault(cell_key, {"status": PASSED, "pairs": [], "errors": [], "warnings": []})
            if RANK[pair["status"]] > RANK[cell["status"]]:
                cell["status"] = pair["status"]
            cell["pairs"].append(pair["pair"])
            if pair["error"]:
                cell["errors"].append(f"{pair['pair']}: {pair['error']}")
            cell["warnings"] += pair["warnings"]
        grids[key] = {"superlink_versions": links, "supernode_versions": nodes, "cells": cells}
    return grids


def compat_data(results: list[PairResult], run: str) -> dict[str, Any]:
    pairs = [pair_summary(result) for result in sorted(results, key=lambda item: item.pair)]
    grids = build_grids(pairs)
    return {
        "schema": 1,
        "run": run,
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "totals": {status: sum(1 for pair in pairs if pair["status"] == status) for status in SYMBOL},
        "pairs": pairs,
        "frameworks": framework_convergence(results),
        "grids": [
            {"os": key[0], "accel": key[1], **grid}
            for key, grid in sorted(grids.items(), key=lambda kv: _grid_label(kv[0]))
        ],
    }


# -- Markdown ------------------------------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _mark(status: str) -> str:
    return f"{MARK[status]} {SYMBOL[status]}"


def _counts(counts: list[int | None]) -> str:
    return ", ".join("?" if count is None else str(count) for count in counts) or "-"


def _md_pair_row(pair: dict[str, Any]) -> list[str]:
    mean = pair["mean_round_seconds"]
    notes = pair["error"] or "; ".join(pair["warnings"])
    return [
        pair["pair"],
        pair["superlink_flower"],
        f"{pair['supernode_flower']} x{pair['supernodes']}",
        f"{pair['profile']} / {pair['arch']}",
        pair["target"],
        pair["security"],
        _mark(pair["status"]),
        _md_cell(describe_task(pair)),
        _md_cell(describe_job(pair)[:200]),
        *(_md_cell(cell) for cell in describe_features(pair, 200)),
        _md_cell(describe_monitoring(pair)[:300]),
        _md_cell(describe_monitoring_role(pair)[:300]),
        f"{mean:.1f}" if mean is not None else "-",
        _counts(pair["nodes_per_round"]),
        _losses(pair["eval_loss"]),
        _md_cell(notes[:300]),
    ]


def render_markdown(data: dict[str, Any]) -> str:
    """compat.md (templates/report.md.j2): the grids, the pairs, the convergence of each task."""
    grids = []
    for grid in data["grids"]:
        rows = []
        for link in grid["superlink_versions"]:
            cells = [grid["cells"].get(f"{link}|{node}") for node in grid["supernode_versions"]]
            rows.append([link, *(_mark(cell["status"]) if cell else "not tested" for cell in cells)])
        grids.append({**grid, "rows": rows})
    tasks = [
        {
            "name": task,
            "role": _task_role(task, entry),
            "metric": entry["metric"] or "metric",
            "rows": [
                [
                    run["pair"],
                    MARK[run["status"]],
                    _losses(run["eval_loss"]),
                    _losses(run["metric_values"]),
                    _md_cell(_final(run)),
                ]
                for run in entry["pairs"]
            ],
        }
        for task, entry in data["frameworks"].items()
    ]
    return render(
        "report.md.j2",
        run=data["run"],
        generated_at=data["generated_at"],
        totals=data["totals"],
        grids=grids,
        pairs=[_md_pair_row(pair) for pair in data["pairs"]],
        tasks=tasks,
    )


def _losses(values: list[float | None]) -> str:
    return " -> ".join(f"{value:.4g}" for value in values if value is not None) or "-"


def _final(run: dict[str, Any]) -> str:
    """``eval_accuracy 0.95 >= floor 0.85``, or why there is none."""
    final, floor = run.get("final_metric"), run.get("floor")
    if final is None:
        return f"no {run.get('metric') or 'metric'}"
    relation = ">=" if floor is None or final >= floor else "<"
    return f"{run['metric']} {final:.4g} {relation} floor {floor:g}" if floor is not None else f"{final:.4g}"


def describe_task(pair: dict[str, Any]) -> str:
    """The framework task of a pair in one phrase: task, rounds, final metric against the floor."""
    run = pair.get("framework_task")
    if not run:
        return f"{pair.get('expected_framework_task') or '?'}: not run"
    verdict = "passed" if run["passed"] else "failed"
    return f"{run['task']}: {run['rounds']}/{run['rounds_requested']} rounds, {_final(run)} ({verdict})"


def _task_role(task: str, entry: dict[str, Any]) -> str:
    framework_of = len(entry["framework_of"])
    if task == CANARY_TASK:
        return f"the canary of every pair; the framework task of {framework_of} edge pair(s)"
    return f"the framework task of {framework_of} pair(s)"


# -- HTML with embedded plots --------------------------------------------------------------------------------


def _png(figure: Any) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _plots(data: dict[str, Any]) -> dict[str, str]:
    """The report's figures as PNG data URLs: convergence per task, round time per pair, a grid per
    (OS, accelerator)."""
    import matplotlib

    matplotlib.use("Agg")
    width = max(6.0, min(14.0, 4.0 + 0.6 * len(data["pairs"])))
    plots = {
        f"convergence:{task}": _convergence_plot(task, entry, width)
        for task, entry in data["frameworks"].items()
    }
    plots["round_time"] = _round_time_plot(data["pairs"], width)
    plots["nodes_per_round"] = _nodes_plot(data["pairs"], width)
    for grid in data["grids"]:
        plots[f"grid:{grid['os']}/{grid['accel']}"] = _grid_plot(grid)
    return plots


def _convergence_plot(task: str, entry: dict[str, Any], width: float) -> str:
    """Loss per round, and the floored metric per round with its floor, of every pair that ran ``task``."""
    import matplotlib.pyplot as plt

    line_style = {PASSED: "-", PASSED_WITH_WARNING: "--", FAILED: ":"}
    figure, axes = plt.subplots(1, 2, figsize=(min(14.0, width * 1.6), 4), squeeze=False)
    loss_axis, metric_axis = axes[0]
    for run in entry["pairs"]:
        for axis, values in ((loss_axis, run["eval_loss"]), (metric_axis, run["metric_values"])):
            points = [(index + 1, value) for index, value in enumerate(values) if value is not None]
            if points:
                rounds, ys = zip(*points, strict=True)
                axis.plot(rounds, ys, marker="o", linestyle=line_style[run["status"]], label=run["pair"])
    if entry["floor"] is not None:
        metric_axis.axhline(
            entry["floor"],
            color=COLOUR[FAILED],
            linestyle="--",
            linewidth=1,
            label=f"floor {entry['floor']:g}",
        )
    loss_axis.set(xlabel="round", ylabel="evaluation loss", title=f"{task}: evaluation loss")
    metric = entry["metric"] or "metric"
    metric_axis.set(xlabel="round", ylabel=metric, title=f"{task}: {metric} (final must reach the floor)")
    for axis in (loss_axis, metric_axis):
        axis.xaxis.get_major_locator().set_params(integer=True)
        axis.grid(alpha=0.3)
    if loss_axis.get_lines():
        loss_axis.legend(
            fontsize=7,
            loc="upper right",
            title="solid: works, dashed: warning, dotted: fails",
            title_fontsize=7,
        )
    if metric_axis.get_lines():
        metric_axis.legend(fontsize=7, loc="lower right")
    figure.suptitle(f"{task} task: {_task_role(task, entry)}", fontsize=9)
    return _png(figure)


def _round_time_plot(pairs: list[dict[str, Any]], width: float) -> str:
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(width, 4))
    for index, pair in enumerate(pairs):
        seconds = [value for value in pair["round_seconds"] if value is not None]
        if seconds:
            axis.bar(index, sum(seconds) / len(seconds), color=COLOUR[pair["status"]], alpha=0.6)
            axis.scatter([index] * len(seconds), seconds, color="black", s=10, zorder=3)
    axis.set_xticks(range(len(pairs)), [pair["pair"] for pair in pairs], rotation=30, ha="right", fontsize=7)
    axis.set(ylabel="seconds per round", title="Round time per pair (bar: mean, dots: rounds)")
    axis.grid(axis="y", alpha=0.3)
    return _png(figure)


def _nodes_plot(pairs: list[dict[str, Any]], width: float) -> str:
    """SuperNodes that answered each canary round, a step line per pair: where a node dropped out or
    OneFlow scaled the role, the line moves."""
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(width, 3.5))
    for pair in pairs:
        points = [
            (index + 1, count) for index, count in enumerate(pair["nodes_per_round"]) if count is not None
        ]
        if points:
            rounds, counts = zip(*points, strict=True)
            axis.step(rounds, counts, where="mid", marker="o", color=COLOUR[pair["status"]], alpha=0.7)
            axis.annotate(pair["pair"], (rounds[-1], counts[-1]), fontsize=6, xytext=(4, 0),
                          textcoords="offset points")  # fmt: skip
    axis.set(xlabel="round", ylabel="SuperNodes", title="SuperNodes that trained in each canary round")
    axis.xaxis.get_major_locator().set_params(integer=True)
    axis.yaxis.get_major_locator().set_params(integer=True)
    axis.set_ylim(bottom=0)
    axis.grid(alpha=0.3)
    return _png(figure)


def _grid_plot(grid: dict[str, Any]) -> str:
    """The SuperLink x SuperNode version grid of one (OS, accelerator), coloured by outcome."""
    import matplotlib.pyplot as plt

    links, nodes = grid["superlink_versions"], grid["supernode_versions"]
    figure, axis = plt.subplots(figsize=(1.6 + 1.3 * len(nodes), 1.2 + 0.7 * len(links)))
    for row, link in enumerate(links):
        for column, node in enumerate(nodes):
            cell = grid["cells"].get(f"{link}|{node}")
            colour = COLOUR[cell["status"]] if cell else "#bdbdbd"
            axis.add_patch(plt.Rectangle((column, row), 1, 1, color=colour, ec="white", lw=2))
            label = SYMBOL[cell["status"]] if cell else "not tested"
            text = label.replace(" with ", "\nwith ")
            axis.text(column + 0.5, row + 0.5, text, ha="center", va="center", fontsize=8, color="white")
    axis.set_xlim(0, len(nodes))
    axis.set_ylim(0, len(links))
    axis.set_xticks([index + 0.5 for index in range(len(nodes))], nodes)
    axis.set_yticks([index + 0.5 for index in range(len(links))], links)
    axis.set(xlabel="SuperNode Flower version", ylabel="SuperLink Flower version")
    axis.set_title(f"{grid['os'] or 'any OS'} / {grid['accel'] or 'any accelerator'}")
    axis.invert_yaxis()
    return _png(figure)


def _one_decimal(value: float | None) -> str:
    return f"{value:.1f}" if value is not None else "-"


def _html_pair(pair: dict[str, Any]) -> dict[str, Any]:
    """One row of the pairs table, its texts made (escaped where the template does not)."""
    notes = pair["error"] or "; ".join(pair["warnings"])
    return {
        **pair,
        "axes": " / ".join(html.escape(pair[axis]) for axis in ("os", "accel", "profile", "arch")),
        "symbol": SYMBOL[pair["status"]],
        "task": describe_task(pair),
        "job": describe_job(pair)[:300],
        "features": describe_features(pair, 300),
        "monitoring": describe_monitoring(pair)[:500],
        "monitoring_role": describe_monitoring_role(pair)[:500],
        "seconds": ", ".join(f"{value:.1f}" for value in pair["round_seconds"] if value is not None),
        "losses": " &rarr; ".join(f"{value:.4g}" for value in pair["eval_loss"] if value is not None),
        "nodes": _counts(pair["nodes_per_round"]),
        "first": _one_decimal(pair["instantiate_to_first_round_seconds"]),
        "total": _one_decimal(pair["pair_seconds"]),
        "notes": notes[:500],
    }


def _html_grid(grid: dict[str, Any], image: str) -> dict[str, Any]:
    rows = []
    for link in grid["superlink_versions"]:
        cells = []
        for node in grid["supernode_versions"]:
            cell = grid["cells"].get(f"{link}|{node}")
            if cell is not None:
                detail = "<br>".join(html.escape(text[:300]) for text in cell["errors"] + cell["warnings"])
                cell = {"status": cell["status"], "symbol": SYMBOL[cell["status"]], "detail": detail}
            cells.append(cell)
        rows.append({"link": link, "cells": cells})
    title = f"{grid['os'] or 'any OS'} / {grid['accel'] or 'any accelerator'}"
    return {"title": title, "image": image, "supernode_versions": grid["supernode_versions"], "rows": rows}


def render_html(data: dict[str, Any]) -> str:
    """The page (templates/report.html.j2) with its plots embedded as PNG data URLs."""
    plots = _plots(data)
    return render(
        "report.html.j2",
        run=data["run"],
        generated_at=data["generated_at"],
        totals=data["totals"],
        grids=[_html_grid(grid, plots[f"grid:{grid['os']}/{grid['accel']}"]) for grid in data["grids"]],
        tasks=[
            {
                "name": task,
                "role": _task_role(task, entry),
                "metric": entry["metric"],
                "image": plots[f"convergence:{task}"],
            }
            for task, entry in data["frameworks"].items()
        ],
        round_time=plots["round_time"],
        nodes_per_round=plots["nodes_per_round"],
        pairs=[_html_pair(pair) for pair in data["pairs"]],
    )


def write_report(results: list[PairResult], run: str, directory: Path) -> dict[str, Path]:
    """compat.json, compat.md, compat.html in ``directory``; returns their paths."""
    data = compat_data(results, run)
    paths = {name: directory / f"compat.{name}" for name in ("json", "md", "html")}
    write_json(paths["json"], data)
    write_atomic(paths["md"], render_markdown(data))
    write_atomic(paths["html"], render_html(data))
    return paths
