"""Command-line options shared by matrix, validate and build: the matrix file, filters, Packer variables."""

from __future__ import annotations

import argparse
from pathlib import Path

from factory.errors import ConfigError


def add_selection_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--matrix", type=Path, default=None, help="matrix file (default matrix.yaml)")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="AXIS=VALUE[,...]",
        help="select variants matching all conditions (values may be globs; repeat for alternatives)",
    )
    parser.add_argument(
        "--except",
        dest="exclude",
        action="append",
        default=[],
        metavar="AXIS=VALUE[,...]",
        help="leave out variants matching all conditions (repeatable)",
    )
    parser.add_argument("--out", type=Path, default=None, help="rendered HCL root (default build/hcl)")
    parser.add_argument(
        "--templates",
        type=Path,
        default=None,
        help="HCL template directory (default packer/; for template work)",
    )


def add_packer_variable_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--var-file",
        type=Path,
        action="append",
        default=[],
        help="a Packer variable file (*.pkrvars.hcl) applied over the generated layers",
    )
    parser.add_argument(
        "--var",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a Packer variable, applied last (wins over every layer and --var-file)",
    )


def parse_vars(values: list[str], var_files: list[Path]) -> dict[str, str]:
    overrides: dict[str, str] = {}
    for text in values:
        name, sep, value = text.partition("=")
        if not sep or not name.strip():
            raise ConfigError("command line", "--var", f"expected NAME=VALUE, got {text!r}")
        overrides[name.strip()] = value
    for path in var_files:
        if not path.is_file():
            raise ConfigError(str(path), "", "--var-file: file not found")
        if not path.name.endswith((".pkrvars.hcl", ".hcl", ".json")):
            problem = "--var-file: Packer needs a name ending in .pkrvars.hcl or .json"
            raise ConfigError(str(path), "", problem)
    return overrides


def render_sources(args: argparse.Namespace):  # -> RenderSources
    from factory.hcl import RenderSources

    if args.templates is None:
        return RenderSources()
    if not (args.templates / "variables.pkr.hcl").is_file():
        raise ConfigError(
            str(args.templates), "--templates", "not a template directory (no variables.pkr.hcl)"
        )
    return RenderSources(templates=args.templates)


def load_selection(args: argparse.Namespace):  # -> tuple[Matrix, tuple[Variant, ...], Selection]
    from factory.matrix import Selection, load_matrix

    matrix = load_matrix(args.matrix)
    selection = Selection.parse(args.only, args.exclude, matrix.axes)
    variants = matrix.select(selection)
    if not variants:
        raise ConfigError("command line", "--only/--except", "the filters select no variant")
    return matrix, variants, selection
