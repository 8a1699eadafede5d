"""Command-line options shared by matrix, render, validate and build: the matrix file, filters, Packer
variables, the output directory, and the checks that run before anything is rendered or built."""

from __future__ import annotations

import argparse
import difflib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hostkit.errors import ConfigError


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (argparse reports a bad one as a usage error, exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


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


def add_render_arguments(parser: argparse.ArgumentParser) -> None:
    """The selection, and where (``--out``) and from what (``--templates``) the HCL is rendered."""
    add_selection_arguments(parser)
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
        help="a Packer variable, applied last (wins over every layer and --var-file); the name must be "
        "declared in packer/variables.pkr.hcl",
    )


def add_offline_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--offline",
        action="store_true",
        help="do not check the Flower versions against PyPI (also: FLOWER_FACTORY_OFFLINE=1)",
    )


def parse_vars(values: list[str], var_files: list[Path], templates: Path | None = None) -> dict[str, str]:
    """``--var NAME=VALUE`` overrides, each name checked once against the variables the templates
    declare (Packer would reject a misspelt one only when it runs, once per variant)."""
    from factory.images.hcl import RenderSources, declared_variables

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
    if overrides:
        templates = templates if templates is not None else RenderSources().templates
        declared = declared_variables(templates)
        for name in overrides:
            if name not in declared:
                close = difflib.get_close_matches(name, sorted(declared), n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                problem = (
                    f"{name!r} is not a Packer variable ({hint}declared in "
                    f"{templates / 'variables.pkr.hcl'}: {', '.join(sorted(declared))})"
                )
                raise ConfigError("command line", "--var", problem)
    return overrides


def render_sources(args: argparse.Namespace):  # -> RenderSources
    from factory.images.hcl import RenderSources

    if args.templates is None:
        return RenderSources()
    if not (args.templates / "variables.pkr.hcl").is_file():
        raise ConfigError(
            str(args.templates), "--templates", "not a template directory (no variables.pkr.hcl)"
        )
    return RenderSources(templates=args.templates)


def load_selection(args: argparse.Namespace):  # -> tuple[Matrix, tuple[Variant, ...], Selection]
    from factory.model.matrix import Selection, load_matrix

    matrix = load_matrix(args.matrix)
    selection = Selection.parse(args.only, args.exclude, matrix.axes)
    variants = matrix.select(selection)
    if not variants:
        raise ConfigError("command line", "--only/--except", "the filters select no variant")
    return matrix, variants, selection


def check_flower_versions(args: argparse.Namespace, matrix, variants) -> None:
    """The selected variants' Flower versions exist on PyPI, unless offline (which is said)."""
    from factory.model import pypi

    if pypi.offline_requested(getattr(args, "offline", False)):
        print(
            "note: Flower versions not checked against PyPI (--offline / FLOWER_FACTORY_OFFLINE)",
            file=sys.stderr,
        )
        return
    versions = sorted({variant.flower for variant in variants}, key=matrix.axes["flower"].index)
    pypi.check_versions(versions, matrix.axes["flower"], matrix.source)


def output_root(args: argparse.Namespace) -> Path:
    """The rendered-HCL root (``--out`` or build/hcl), checked to be a writable directory."""
    from factory.images.hcl import HCL_DIR
    from hostkit.fileio import check_output_directory

    out_root = args.out if args.out is not None else HCL_DIR
    check_output_directory(out_root, "--out")
    return out_root


def render(args: argparse.Namespace, matrix, variants, out_root: Path) -> list[Path]:
    """Render the selected variants under ``out_root`` in one step and prune the directories of variants
    the matrix no longer has; an OSError there is a ConfigError naming ``--out``."""
    from factory.images.hcl import prune_stale, render_variants
    from hostkit.fileio import output_error
    from hostkit.progress import DEFAULT as progress

    try:
        directories = render_variants(matrix, variants, out_root, render_sources(args))
        for stale in prune_stale(out_root, matrix):
            progress.line(f"removed {stale}: its variant is no longer in {matrix.source}")
    except OSError as error:
        raise output_error(error, "--out") from None
    return directories


@dataclass(frozen=True)
class Rendered:
    """What validate and build start from: the selection, the checked ``--var`` overrides and the rendered
    directories (one per variant, in order)."""

    matrix: Any  # Matrix
    variants: tuple[Any, ...]  # Variant
    overrides: dict[str, str]
    out_root: Path
    directories: list[Path]


def check_and_render(args: argparse.Namespace) -> Rendered:
    """Everything is checked (filters, ``--var``, ``--out``, Flower versions) before one file is written;
    then the selection is rendered."""
    matrix, variants, _selection = load_selection(args)
    overrides = parse_vars(args.var, args.var_file, render_sources(args).templates)
    out_root = output_root(args)
    check_flower_versions(args, matrix, variants)
    directories = render(args, matrix, variants, out_root)
    return Rendered(matrix, variants, overrides, out_root, directories)
