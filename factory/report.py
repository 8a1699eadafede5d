"""The compatibility report: ``results/compat.json``, ``compat.md`` and a self-contained ``compat.html``.

From the pair results of one run it shows, per OS and accelerator, a SuperLink version x SuperNode version
grid (works / works with warning / fails, with the error), and per pair the convergence (evaluation loss per
round) and the time of each round. The HTML embeds its plots as PNG data URIs: one file a person can open
anywhere, nothing fetched.
"""

from __future__ import annotations

import base64
import html
import io
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from factory.results import FAILED, PASSED, PASSED_WITH_WARNING, PairResult, atomic_write, write_json

SYMBOL = {PASSED: "works", PASSED_WITH_WARNING: "works with warning", FAILED: "fails"}
MARK = {PASSED: "✅", PASSED_WITH_WARNING: "⚠️", FAILED: "❌"}
COLOUR = {PASSED: "#2e7d32", PASSED_WITH_WARNING: "#f9a825", FAILED: "#c62828"}
RANK = {PASSED: 0, PASSED_WITH_WARNING: 1, FAILED: 2}


def _version_key(version: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in version.split("."))


def _numpy_rounds(result: PairResult) -> list[dict[str, Any]]:
    for federation in result.federations:
        if federation.get("task") == "numpy":
            return list(federation.get("rounds", []))
    return list(result.federations[0].get("rounds", [])) if result.federations else []


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def pair_summary(result: PairResult) -> dict[str, Any]:
    rounds = _numpy_rounds(result)
    round_seconds = [_number(record.get("seconds")) for record in rounds]
    losses = [_number(record.get("evaluate_metrics", {}).get("eval_loss")) for record in rounds]
    finite_seconds = [value for value in round_seconds if value is not None]
    return {
        "pair": result.pair,
        "run": result.run,
        "target": result.target,
        "security": result.security,
        "superlink_flower": result.superlink.flower,
        "supernode_flower": result.supernodes.flower,
        "supernodes": result.supernodes.count,
        "os": result.superlink.os,
        "accel": result.superlink.accel,
        "profile": result.superlink.profile,
        "framework": result.supernodes.framework,
        "arch": result.superlink.arch,
        "status": result.status,
        "error": result.error,
        "warnings": result.warnings,
        "round_seconds": round_seconds,
        "mean_round_seconds": sum(finite_seconds) / len(finite_seconds) if finite_seconds else None,
        "eval_loss": losses,
        "instantiate_to_first_round_seconds": _number(
            result.timings.get("instantiate_to_first_round_seconds")
        ),
        "deploy_seconds": _number(result.timings.get("deploy_seconds")),
        "strategies": sorted({str(federation.get("strategy")) for federation in result.federations}),
        "tasks": [str(federation.get("task")) for federation in result.federations],
        "framework_eval_loss": _framework_losses(result),
    }


def _framework_losses(result: PairResult) -> dict[str, list[float | None]]:
    """Evaluation loss per round of the ML framework tasks (``--framework-app``), by task."""
    return {
        str(federation["task"]): [
            _number(record.get("evaluate_metrics", {}).get("eval_loss"))
            for record in federation.get("rounds", [])
        ]
        for federation in result.federations
        if federation.get("task") not in (None, "numpy")
    }


@dataclass(frozen=True)
class GridKey:
    os: str
    accel: str

    @property
    def label(self) -> str:
        return f"{self.os or 'any OS'} / {self.accel or 'any accelerator'}"


def build_grids(pairs: list[dict[str, Any]]) -> dict[GridKey, dict[str, Any]]:
    """Per (OS, accelerator): SuperLink versions (rows) x SuperNode versions (columns) -> worst outcome."""
    grids: dict[GridKey, dict[str, Any]] = {}
    grouped: dict[GridKey, list[dict[str, Any]]] = defaultdict(list)
    for pair in pairs:
        grouped[GridKey(pair["os"], pair["accel"])].append(pair)
    for key in sorted(grouped, key=lambda item: (item.os, item.accel)):
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
        "grids": [
            {"os": key.os, "accel": key.accel, **grid}
            for key, grid in sorted(grids.items(), key=lambda kv: kv[0].label)
        ],
    }


# -- Markdown ------------------------------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(data: dict[str, Any]) -> str:
    totals = data["totals"]
    lines = [
        f"# Flower appliance compatibility (run {data['run']})",
        "",
        f"Generated {data['generated_at']}. Pairs: {totals[PASSED]} work, "
        f"{totals[PASSED_WITH_WARNING]} work with a warning, {totals[FAILED]} fail. "
        f"{MARK[PASSED]} works, {MARK[PASSED_WITH_WARNING]} works with warning, {MARK[FAILED]} fails.",
        "",
    ]
    for grid in data["grids"]:
        lines += [
            f"## SuperLink x SuperNode versions: {grid['os'] or 'any OS'} / {grid['accel'] or 'any'}",
            "",
        ]
        lines.append("| SuperLink \\ SuperNode | " + " | ".join(grid["supernode_versions"]) + " |")
        lines.append("|---|" + "---|" * len(grid["supernode_versions"]))
        for link in grid["superlink_versions"]:
            row = [link]
            for node in grid["supernode_versions"]:
                cell = grid["cells"].get(f"{link}|{node}")
                row.append(f"{MARK[cell['status']]} {SYMBOL[cell['status']]}" if cell else "not tested")
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    lines += [
        "## Pairs",
        "",
        "| pair | SuperLink | SuperNodes | target | security | result | mean round (s) | eval loss | notes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for pair in data["pairs"]:
        losses = [f"{value:.4g}" for value in pair["eval_loss"] if value is not None]
        mean = pair["mean_round_seconds"]
        notes = pair["error"] or "; ".join(pair["warnings"])
        lines.append(
            "| "
            + " | ".join(
                [
                    pair["pair"],
                    pair["superlink_flower"],
                    f"{pair['supernode_flower']} x{pair['supernodes']}",
                    pair["target"],
                    pair["security"],
                    f"{MARK[pair['status']]} {SYMBOL[pair['status']]}",
                    f"{mean:.1f}" if mean is not None else "-",
                    " -> ".join(losses) or "-",
                    _md_cell(notes[:300]),
                ]
            )
            + " |"
        )
    lines.append("")
    return "\n".join(lines)


# -- HTML with embedded plots --------------------------------------------------------------------------------


def _png(figure: Any) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _plots(data: dict[str, Any]) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots: dict[str, str] = {}
    pairs = data["pairs"]
    width = max(6.0, min(14.0, 4.0 + 0.6 * len(pairs)))

    framework_runs = [
        (pair, task, losses) for pair in pairs for task, losses in pair["framework_eval_loss"].items()
    ]
    panels = 2 if framework_runs else 1
    figure, axes = plt.subplots(1, panels, figsize=(width * (1 + 0.6 * (panels - 1)), 4), squeeze=False)
    line_style = {PASSED: "-", PASSED_WITH_WARNING: "--", FAILED: ":"}
    curves = [[(pair, "numpy", pair["eval_loss"]) for pair in pairs], framework_runs]
    titles = ["numpy task (every pair)", "ML framework task (--framework-app)"]
    for axis, runs, title in zip(axes[0], curves, titles, strict=False):
        for pair, task, losses in runs:
            points = [(index + 1, value) for index, value in enumerate(losses) if value is not None]
            if points:
                rounds, values = zip(*points, strict=True)
                label = pair["pair"] if task == "numpy" else f"{pair['pair']} ({task})"
                axis.plot(rounds, values, marker="o", linestyle=line_style[pair["status"]], label=label)
        axis.set(xlabel="round", ylabel="evaluation loss", title=f"Convergence per pair: {title}")
        axis.xaxis.get_major_locator().set_params(integer=True)
        axis.grid(alpha=0.3)
        if axis.get_lines():
            axis.legend(fontsize=7, loc="upper right", title="solid: works, dashed: warning, dotted: fails",
                        title_fontsize=7)  # fmt: skip
    plots["convergence"] = _png(figure)

    figure, axis = plt.subplots(figsize=(width, 4))
    for index, pair in enumerate(pairs):
        seconds = [value for value in pair["round_seconds"] if value is not None]
        if seconds:
            axis.bar(index, sum(seconds) / len(seconds), color=COLOUR[pair["status"]], alpha=0.6)
            axis.scatter([index] * len(seconds), seconds, color="black", s=10, zorder=3)
    axis.set_xticks(range(len(pairs)), [pair["pair"] for pair in pairs], rotation=30, ha="right", fontsize=7)
    axis.set(ylabel="seconds per round", title="Round time per pair (bar: mean, dots: rounds)")
    axis.grid(axis="y", alpha=0.3)
    plots["round_time"] = _png(figure)

    for grid in data["grids"]:
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
        plots[f"grid:{grid['os']}/{grid['accel']}"] = _png(figure)
    return plots


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #212121; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f5f5f5; }
.passed { background: #e8f5e9; }
.passed_with_warning { background: #fff8e1; }
.failed { background: #ffebee; }
img { max-width: 100%; border: 1px solid #eee; }
details pre { white-space: pre-wrap; font-size: 0.8em; }
"""


def render_html(data: dict[str, Any]) -> str:
    escape = html.escape
    plots = _plots(data)
    totals = data["totals"]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Flower appliance compatibility: run {escape(data['run'])}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>Flower appliance compatibility: run {escape(data['run'])}</h1>",
        f"<p>Generated {escape(data['generated_at'])}. {totals[PASSED]} pairs work, "
        f"{totals[PASSED_WITH_WARNING]} work with a warning, {totals[FAILED]} fail.</p>",
        "<h2>SuperLink version x SuperNode version</h2>",
    ]
    for grid in data["grids"]:
        title = f"{grid['os'] or 'any OS'} / {grid['accel'] or 'any accelerator'}"
        parts.append(f"<h3>{escape(title)}</h3>")
        image = plots[f"grid:{grid['os']}/{grid['accel']}"]
        parts.append(f'<img alt="compatibility grid {escape(title)}" src="{image}">')
        parts.append("<table><tr><th>SuperLink \\ SuperNode</th>")
        parts += [f"<th>{escape(node)}</th>" for node in grid["supernode_versions"]]
        parts.append("</tr>")
        for link in grid["superlink_versions"]:
            parts.append(f"<tr><th>{escape(link)}</th>")
            for node in grid["supernode_versions"]:
                cell = grid["cells"].get(f"{link}|{node}")
                if cell is None:
                    parts.append("<td>not tested</td>")
                    continue
                detail = "<br>".join(escape(text[:300]) for text in cell["errors"] + cell["warnings"])
                parts.append(
                    f'<td class="{cell["status"]}">{SYMBOL[cell["status"]]}<br><small>{detail}</small></td>'
                )
            parts.append("</tr>")
        parts.append("</table>")
    parts += [
        "<h2>Convergence</h2>",
        f'<img alt="evaluation loss per round, per pair" src="{plots["convergence"]}">',
        "<h2>Round time</h2>",
        f'<img alt="seconds per round, per pair" src="{plots["round_time"]}">',
        "<h2>Pairs</h2><table><tr><th>pair</th><th>SuperLink</th><th>SuperNodes</th><th>OS / accel</th>"
        "<th>target</th><th>security</th><th>result</th><th>rounds (s)</th><th>eval loss</th>"
        "<th>instantiate to first round (s)</th><th>notes</th></tr>",
    ]
    for pair in data["pairs"]:
        seconds = ", ".join(f"{value:.1f}" for value in pair["round_seconds"] if value is not None)
        losses = " &rarr; ".join(f"{value:.4g}" for value in pair["eval_loss"] if value is not None)
        first = pair["instantiate_to_first_round_seconds"]
        notes = pair["error"] or "; ".join(pair["warnings"])
        parts.append(
            f'<tr class="{pair["status"]}"><td>{escape(pair["pair"])}</td>'
            f"<td>{escape(pair['superlink_flower'])}</td>"
            f"<td>{escape(pair['supernode_flower'])} &times;{pair['supernodes']}</td>"
            f"<td>{escape(pair['os'])} / {escape(pair['accel'])}</td><td>{escape(pair['target'])}</td>"
            f"<td>{escape(pair['security'])}</td><td>{SYMBOL[pair['status']]}</td><td>{seconds or '-'}</td>"
            f"<td>{losses or '-'}</td><td>{f'{first:.1f}' if first is not None else '-'}</td>"
            f"<td>{escape(notes[:500])}</td></tr>"
        )
    parts += ["</table>", "</body></html>", ""]
    return "\n".join(parts)


def write_report(results: list[PairResult], run: str, directory: Path) -> dict[str, Path]:
    """compat.json, compat.md, compat.html in ``directory``; returns their paths."""
    data = compat_data(results, run)
    paths = {name: directory / f"compat.{name}" for name in ("json", "md", "html")}
    write_json(paths["json"], data)
    atomic_write(paths["md"], render_markdown(data))
    atomic_write(paths["html"], render_html(data))
    return paths
