"""The command line: ``python build.py <command>``.

Each command lives in ``factory/cli/commands/<name>.py`` and exposes ``register(subparsers)``, which adds its
parser and sets ``handler=<callable(args) -> int>``. Command modules keep module-level imports light: the
heavy work is imported inside the handler so that ``--help`` and ``matrix`` stay fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import signal
import sys

from factory.cli import commands
from hostkit.errors import ConfigError, FactoryError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="build.py",
        description="Build, test and publish paired Flower appliances for OpenNebula.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda info: info.name):
        if module_info.name.startswith("_"):
            continue
        module = importlib.import_module(f"factory.cli.commands.{module_info.name}")
        module.register(subparsers)
    return parser


def _quiet_broken_pipe() -> int:
    """The reader of our output went away (``build.py matrix | head -1``): stop quietly as CLIs do
    (status 141, 128 + SIGPIPE), without Python's "Exception ignored ... BrokenPipeError" at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + signal.SIGPIPE


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status = int(args.handler(args) or 0)
        sys.stdout.flush()
        return status
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return ConfigError.exit_status
    except FactoryError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_status
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
