"""``flower-factory render``: write the Packer HCL build directories of the selected variants."""

from __future__ import annotations

import argparse

from factory.cli.commands import Command
from factory.cli.commands._selection import add_render_arguments

COMMAND = Command(
    "render",
    help="render the Packer HCL of the selected variants into build/hcl/<variant>/",
    description=(
        "Render the selected variants' Packer build directories in one step: all are written into a "
        "staging directory and moved into place only when every one rendered, so an error leaves the "
        "output as it was. Directories of variants that matrix.yaml no longer has are removed. "
        "`validate` and `build` render the same way before they run Packer."
    ),
)


def arguments(parser: argparse.ArgumentParser) -> None:
    add_render_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from factory.cli.commands._selection import load_selection, output_root, render

    matrix, variants, _selection = load_selection(args)
    out_root = output_root(args)
    for directory in render(args, matrix, variants, out_root):
        print(directory)
    return 0
