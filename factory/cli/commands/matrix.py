"""``flower-factory matrix``: list the expanded matrix (variants and pairs). It writes nothing: ``render``,
``validate`` and ``build`` render the Packer HCL."""

from __future__ import annotations

import argparse

from factory.cli.commands import Command
from factory.cli.commands._selection import add_selection_arguments

COMMAND = Command(
    "matrix",
    help="expand matrix.yaml: list the variants and pairs (writes nothing)",
    description=(
        "Expand matrix.yaml into image variants and pairs and print them. It writes no file: "
        "`render` writes the Packer HCL of the selected variants into build/hcl/<variant>/."
    ),
)


def arguments(parser: argparse.ArgumentParser) -> None:
    add_selection_arguments(parser)
    parser.add_argument(
        "--format",
        choices=("table", "json", "github"),
        default="table",
        help="table (people), json (tools) or github (a GitHub Actions strategy.matrix)",
    )


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import json

    from factory.cli.commands._selection import load_selection
    from factory.model.matrix import github_matrix

    matrix, variants, selection = load_selection(args)
    pairs = matrix.select_pairs(selection, cross=False)
    cross_pairs = tuple(pair for pair in matrix.select_pairs(selection) if pair.cross_version)
    if args.format == "github":
        output = json.dumps(github_matrix(variants), separators=(",", ":"))
    elif args.format == "json":
        document = {
            "source": matrix.source,
            "variants": [variant.as_dict() for variant in variants],
            "pairs": [pair.as_dict() for pair in pairs],
            "cross_pairs": [pair.as_dict() for pair in cross_pairs],
        }
        output = json.dumps(document, indent=2)
    else:
        variant_rows = [
            [
                v.name,
                v.role,
                v.flower,
                v.os,
                v.accel,
                v.profile,
                v.framework,
                v.arch,
                "local" if v.pins.base_image.local else "vendor",
            ]
            for v in variants
        ]
        headers = ["VARIANT", "ROLE", "FLOWER", "OS", "ACCEL", "PROFILE", "FRAMEWORK", "ARCH", "BASE"]
        parts = [f"Variants ({len(variants)} of {len(matrix.variants)})", _table(headers, variant_rows)]
        for title, selected in (("Pairs", pairs), ("Cross-version pairs", cross_pairs)):
            rows = [[p.name, p.superlink.name, " ".join(n.name for n in p.supernodes)] for p in selected]
            parts += ["", f"{title} ({len(selected)})"]
            if rows:
                parts.append(_table(["PAIR", "SUPERLINK", "SUPERNODES"], rows))
        output = "\n".join(parts)
    print(output)
    return 0
