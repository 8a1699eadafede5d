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


def run(args: argparse.Namespace) -> int:
    import json

    from factory.images import localbuild
    from factory.model.matrix import Selection, load_matrix
    from hostkit.errors import ConfigError
    from hostkit.progress import DEFAULT as progress

    matrix = load_matrix(args.matrix)
    # Only debian12 is built here: a clause that does not name an OS means debian12.
    only = [clause if "os=" in clause else f"{clause},os={localbuild.LOCAL_OS}" for clause in args.only]
    only = only or [f"os={localbuild.LOCAL_OS}"]
    variants = matrix.select(Selection.parse(only, args.exclude, axes=matrix.axes))
    if not args.base:
        if not variants:
            raise ConfigError("command line", "--only", "selects no variant")
        elsewhere = sorted({variant.os for variant in variants if variant.os != localbuild.LOCAL_OS})
        if elsewhere:
            problem = (
                f"only {localbuild.LOCAL_OS} variants are built on this machine; the selection includes "
                f"{', '.join(elsewhere)} variants, which need their vendor cloud image and "
                "`python build.py build`"
            )
            raise ConfigError("command line", "--only", problem)

    rows: list[dict[str, object]] = []
    base = localbuild.build_base(progress, force=args.force)
    rows.append({"name": f"{localbuild.LOCAL_OS}-base", "path": str(base.rootfs), "kind": "rootfs"})
    if args.base or args.qcow2:
        qcow2 = localbuild.build_base_qcow2(progress, force=args.force)
        rows.append({"name": f"{localbuild.LOCAL_OS}-base", "path": str(qcow2), "kind": "qcow2"})
    if not args.base:
        for index, variant in enumerate(variants, start=1):
            progress.line(f"[{index}/{len(variants)}] {variant.name}")
            built = localbuild.build_appliance(variant, progress=progress, force=args.force)
            rows.append(
                {
                    "name": variant.name,
                    "path": str(built.image),
                    "kind": "ext4",
                    "manifest": str(built.manifest_path),
                    "reused": built.reused,
                    "sha256": built.manifest.get("sha256"),
                }
            )
            if args.qcow2:
                result = localbuild.build_qcow2(variant, progress=progress)
                rows.append(
                    {
                        "name": variant.name,
                        "path": str(result.image),
                        "kind": "qcow2",
                        "manifest": str(result.manifest),
                        "seconds": round(result.seconds),
                    }
                )
    if args.format == "json":
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            note = " (reused)" if row.get("reused") else ""
            print(f"{row['kind']:7} {row['name']}: {row['path']}{note}")
    return 0
