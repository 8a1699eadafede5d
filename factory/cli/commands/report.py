"""``python build.py report``: the compatibility report of a test run (compat.json, .md, .html)."""

from __future__ import annotations

import argparse
from pathlib import Path

from factory.cli.commands import Command

COMMAND = Command(
    "report",
    help="write the compatibility report (results/compat.{json,md,html}) of a test run",
    description=(
        "Read the pair results of a run (default: the latest) and write compat.json, compat.md and "
        "a self-contained compat.html (SuperLink x SuperNode version grid per OS and accelerator, "
        "convergence and round time per pair) into results/ and into the run's directory."
    ),
)


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", help="results/<run> to report on (default: the latest run)")
    parser.add_argument("--out", type=Path, help="also write the report here")


def run(args: argparse.Namespace) -> int:
    from factory.release.report import write_report
    from factory.release.results import load_results, resolve_run, run_dir
    from hostkit.errors import FactoryError
    from hostkit.paths import RESULTS_DIR
    from hostkit.progress import DEFAULT as progress

    name = resolve_run(args.run)
    results = load_results(name)
    if not results:
        raise FactoryError(f"run {name} has no pair results under {run_dir(name)}")
    with progress.stage(f"compatibility report of run {name} ({len(results)} pair results)"):
        targets = [RESULTS_DIR, run_dir(name)] + ([args.out] if args.out else [])
        for directory in targets:
            paths = write_report(results, name, directory)
    for path in paths.values():
        print(path)
    print(f"open {RESULTS_DIR / 'compat.html'} in a browser")
    return 0
