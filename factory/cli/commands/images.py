"""``python build.py images``: build the Debian 12 base and the debian12 appliance images on this machine."""

from __future__ import annotations

import argparse

from factory.cli.commands import Command
from factory.cli.commands._selection import add_selection_arguments

COMMAND = Command(
    "images",
    help="build the Debian 12 base and the debian12 appliance images locally (cached by content)",
    description=(
        "Build the Debian 12 base (mmdebstrap) and, from it, the selected debian12 appliance images with "
        "the provisioning scripts run in systemd-nspawn: a raw ext4 image and its manifest per variant, "
        "for the test cloud's container driver. Everything is cached by content under "
        "$FLOWER_FACTORY_CACHE/images: an unchanged build is reused at once. --qcow2 also runs the real "
        "`packer build` of each variant from the base qcow2 (slow without KVM). Only debian12 variants "
        "can be built here: the others need their vendor cloud image."
    ),
)


def arguments(parser: argparse.ArgumentParser) -> None:
    add_selection_arguments(parser)
    parser.add_argument("--base", action="store_true", help="build only the base (root filesystem and qcow2)")
    parser.add_argument(
        "--qcow2", action="store_true", help="also packer-build each variant's qcow2 from the base qcow2"
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if a cached build exists")
    parser.add_argument("--format", choices=("text", "json"), default="text")


def _variants(args: argparse.Namespace):  # -> tuple[Variant, ...]
    """The selected variants, all of which must be buildable here (a clause naming no OS means debian12)."""
    from factory.images.localbuild import LOCAL_OS
    from factory.model.matrix import Selection, load_matrix
    from hostkit.errors import ConfigError

    matrix = load_matrix(args.matrix)
    only = [clause if "os=" in clause else f"{clause},os={LOCAL_OS}" for clause in args.only]
    variants = matrix.select(Selection.parse(only or [f"os={LOCAL_OS}"], args.exclude, axes=matrix.axes))
    if args.base:
        return ()
    if not variants:
        raise ConfigError("command line", "--only", "selects no variant")
    elsewhere = sorted({variant.os for variant in variants if variant.os != LOCAL_OS})
    if elsewhere:
        problem = (
            f"only {LOCAL_OS} variants are built on this machine; the selection includes "
            f"{', '.join(elsewhere)} variants, which need their vendor cloud image and `build.py build`"
        )
        raise ConfigError("command line", "--only", problem)
    return variants


def _row(built) -> dict[str, object]:  # built: factory.model.image.Image
    return {
        "name": built.name,
        "path": str(built.image),
        "kind": "ext4" if built.format == "raw" else str(built.format),
        "manifest": str(built.manifest_path),
        "reused": built.reused,
        "sha256": built.manifest.get("sha256"),
        "seconds": round(built.seconds),
    }


def run(args: argparse.Namespace) -> int:
    import json
    import sys

    from factory.images import localbuild, timings
    from factory.images.packer import IMAGES_DIR
    from hostkit.progress import DEFAULT as progress

    variants = _variants(args)  # checked before anything is built
    base = localbuild.build_base(progress, force=args.force, timings=timings.SESSION)
    rows: list[dict[str, object]] = [
        {"name": f"{localbuild.LOCAL_OS}-base", "path": str(base.rootfs), "kind": "rootfs"}
    ]
    if args.base or args.qcow2:
        qcow2 = localbuild.build_base_qcow2(progress, force=args.force)
        rows.append({"name": f"{localbuild.LOCAL_OS}-base", "path": str(qcow2), "kind": "qcow2"})
    for variant in progress.iterate(variants, "images"):
        rows.append(_row(localbuild.build_appliance(variant, progress=progress, force=args.force)))
        if args.qcow2:
            rows.append(_row(localbuild.build_qcow2(variant, progress=progress)))
    if args.format == "json":
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            note = " (reused)" if row.get("reused") else ""
            print(f"{row['kind']:7} {row['name']}: {row['path']}{note}")
    timings.write_section(IMAGES_DIR / "timings.json", timings.SESSION)
    print(timings.SESSION.breakdown(), file=sys.stderr if args.format == "json" else sys.stdout)
    print(f"timings: {IMAGES_DIR / 'timings.json'}", file=sys.stderr if args.format == "json" else sys.stdout)
    return 0
