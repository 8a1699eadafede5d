"""``python build.py validate``: render the selected variants and check each with python-hcl2,
``packer fmt -check`` and ``packer validate`` of the installed Packer."""

from __future__ import annotations

import argparse

from factory.cli.commands import Command
from factory.cli.commands._selection import (
    add_offline_argument,
    add_packer_variable_arguments,
    add_render_arguments,
    positive_int,
)

COMMAND = Command(
    "validate",
    help="render and validate the selected variants with python-hcl2, packer fmt and packer validate",
    description=(
        "Render every selected variant, parse its HCL with python-hcl2, check packer fmt -check and run "
        "packer validate. A failure names the variant and gives Packer's message; exit status 1."
    ),
)


def arguments(parser: argparse.ArgumentParser) -> None:
    add_render_arguments(parser)
    add_packer_variable_arguments(parser)
    parser.add_argument(
        "--jobs", type=positive_int, default=None, help="parallel packer runs, >= 1 (default: CPUs)"
    )
    add_offline_argument(parser)


def run(args: argparse.Namespace) -> int:
    import sys
    import time

    from factory.cli.commands._selection import check_and_render
    from factory.images.packer import check_directories, packer_version

    started = time.perf_counter()
    rendered = check_and_render(args)
    local = [variant.pins.base_image.local for variant in rendered.variants]
    entries = list(zip(rendered.directories, local, strict=True))
    results = check_directories(entries, rendered.overrides, args.var_file, jobs=args.jobs)
    failed = [result for result in results if not result.ok]
    for result in results:
        if result.ok:
            print(f"ok      {result.name}")
        else:
            print(f"FAILED  {result.name}")
            for problem in result.problems:
                print("        " + problem.replace("\n", "\n        "))
    version = ".".join(str(part) for part in packer_version())
    elapsed = time.perf_counter() - started
    valid = len(results) - len(failed)
    print(f"{valid} of {len(results)} variants valid (Packer {version}, {elapsed:.1f} s)")
    if failed:
        names = ", ".join(result.name for result in failed)
        print(f"validate: {len(failed)} variant(s) failed: {names}", file=sys.stderr)
        return 1
    return 0
