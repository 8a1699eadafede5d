"""``python build.py build``: ``packer build`` the selected variants (``--dry-run`` prints the commands)."""

from __future__ import annotations

import argparse

from factory.cli.commands import Command
from factory.cli.commands._selection import (
    add_offline_argument,
    add_packer_variable_arguments,
    add_render_arguments,
)

COMMAND = Command(
    "build",
    help="packer build the selected variants (--dry-run prints the commands)",
    description=(
        "Render and packer-build the selected variants one after another (-parallel-builds=1), Packer's "
        "output in build/logs/<variant>.packer.log, images in build/images/<variant>/. Vendor bases "
        "need their download; debian12 builds from the local base (--var base_image_url=file://... "
        "--var base_image_checksum=sha256:...)."
    ),
)


def arguments(parser: argparse.ArgumentParser) -> None:
    add_render_arguments(parser)
    add_packer_variable_arguments(parser)
    parser.add_argument("--dry-run", action="store_true", help="print what would run and stop")
    parser.add_argument("--keep-going", action="store_true", help="build the rest after a failure")
    add_offline_argument(parser)


def run(args: argparse.Namespace) -> int:
    import sys

    from factory.cli.commands._selection import check_and_render
    from factory.images.packer import build_variant, plan_build
    from hostkit.errors import FactoryError
    from hostkit.progress import DEFAULT as progress

    rendered = check_and_render(args)
    variants, overrides = rendered.variants, rendered.overrides
    # Every variant's command is checked before the first build (a local base without its -var fails
    # once, here, not after hours of other builds).
    plans = [plan_build(variant, overrides, args.var_file, hcl_root=rendered.out_root)
             for variant in variants]  # fmt: skip
    if args.dry_run:
        for plan in plans:
            print(f"# {plan.variant.name}: Packer's output goes to {plan.log} when build.py runs it")
            print(plan.shell())
        return 0
    failures: list[str] = []
    for plan in progress.iterate(plans, "packer build"):
        try:
            result = build_variant(plan)
        except FactoryError as error:
            if not args.keep_going:
                raise
            print(f"error: {error}", file=sys.stderr)
            failures.append(plan.variant.name)
            continue
        print(f"built {result.image} ({result.seconds:.0f} s), manifest {result.manifest_path}")
    if failures:
        print(f"build: {len(failures)} variant(s) failed: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0
