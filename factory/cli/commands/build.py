"""``python build.py build``: ``packer build`` the selected variants (``--dry-run`` prints the commands)."""

from __future__ import annotations

import argparse

from factory.cli.commands._selection import (
    add_offline_argument,
    add_packer_variable_arguments,
    add_selection_arguments,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "build",
        help="packer build the selected variants (--dry-run prints the commands)",
        description=(
            "Render and packer-build the selected variants one after another (-parallel-builds=1), Packer's "
            "output in build/logs/<variant>.packer.log, images in build/images/<variant>/. Vendor bases "
            "need their download; debian12 builds from the local base (--var base_image_url=file://... "
            "--var base_image_checksum=sha256:...)."
        ),
    )
    add_selection_arguments(parser)
    add_packer_variable_arguments(parser)
    parser.add_argument("--dry-run", action="store_true", help="print what would run and stop")
    parser.add_argument("--keep-going", action="store_true", help="build the rest after a failure")
    add_offline_argument(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from factory.cli.commands._selection import (
        check_flower_versions,
        load_selection,
        output_root,
        parse_vars,
        render,
        render_sources,
    )
    from factory.images.packer import build_variant, plan_build
    from hostkit.errors import FactoryError
    from hostkit.progress import DEFAULT as progress

    matrix, variants, _selection = load_selection(args)
    overrides = parse_vars(args.var, args.var_file, render_sources(args).templates)
    out_root = output_root(args)
    check_flower_versions(args, matrix, variants)
    render(args, matrix, variants, out_root)
    # Every variant's command is checked before the first build (a local base without its -var fails
    # once, here, not after hours of other builds).
    plans = [plan_build(variant, overrides, args.var_file, hcl_root=out_root) for variant in variants]
    if args.dry_run:
        for variant, plan in zip(variants, plans, strict=True):
            print(f"# {variant.name}: cd {plan.directory} && (log: {plan.log})")
            print(plan.shell())
        return 0
    failures: list[str] = []
    for index, variant in enumerate(variants, start=1):
        progress.line(f"[{index}/{len(variants)}] {variant.name}")
        try:
            result = build_variant(variant, overrides, args.var_file, hcl_root=out_root)
        except FactoryError as error:
            if not args.keep_going:
                raise
            print(f"error: {error}", file=sys.stderr)
            failures.append(variant.name)
            continue
        print(f"built {result.image} ({result.seconds:.0f} s), manifest {result.manifest}")
    if failures:
        print(f"build: {len(failures)} variant(s) failed: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0
