"""``python build.py params``: generate the files that come from images/params.yaml."""

from __future__ import annotations

import argparse
from pathlib import Path

from factory.cli.commands import Command

COMMAND = Command(
    "params",
    help="generate in-guest defaults, OpenNebula user inputs and README tables from images/params.yaml",
    description="Generate params-<role>.sh, opennebula-<role>.json and params.md from the declaration.",
)


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--params", type=Path, default=None, help="declaration file (default images/params.yaml)"
    )
    parser.add_argument("--out", type=Path, default=None, help="output directory (default build/params)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--readme", action="store_true", help="also rewrite README.md between the params markers"
    )
    mode.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if README.md is not up to date"
    )


def run(args: argparse.Namespace) -> int:
    import sys

    from factory.model import params
    from hostkit.fileio import check_output_directory, output_error, write_atomic
    from hostkit.paths import BUILD_DIR, REPO_ROOT

    decl = params.load_params(args.params)
    readme_path = REPO_ROOT / "README.md"
    readme_text = readme_path.read_text(encoding="utf-8")
    updated = params.update_readme(readme_text, decl)
    if args.check:
        if updated != readme_text:
            print("README.md parameter tables are out of date: run build.py params --readme", file=sys.stderr)
            return 1
        print("README.md parameter tables agree with the declaration")
        return 0
    files = params.generated_files(decl)
    out = args.out if args.out is not None else BUILD_DIR / "params"
    check_output_directory(out, "--out")
    try:
        for name, content in files.items():
            write_atomic(out / name, content)
            print(out / name)
        if args.readme and updated != readme_text:
            write_atomic(readme_path, updated)
            print(readme_path)
    except OSError as error:
        raise output_error(error, "--out") from None
    return 0
