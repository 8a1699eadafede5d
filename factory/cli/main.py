"""The command line: ``flower-factory <command>`` (installed console script) or ``python build.py <command>``.

Each command lives in ``factory/cli/commands/<name>.py`` and declares ``COMMAND``, ``arguments(parser)`` and
``run(args) -> int`` (see factory/cli/commands/__init__.py); this module adds them to one parser, sets the
global options (``--version``, ``--quiet``) and turns the factory's errors into one ``error:`` line and an
exit status.
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
from hostkit.progress import DEFAULT as progress

DISTRIBUTION = "flower-appliance-factory"


def version() -> str:
    """The installed distribution's version, else (a checkout run as ``python build.py``) pyproject's."""
    from importlib import metadata

    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        import tomllib

        from hostkit.paths import REPO_ROOT

        with open(REPO_ROOT / "pyproject.toml", "rb") as stream:
            return str(tomllib.load(stream)["project"]["version"])


def _program_name() -> str:
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return name if name in ("build.py", "flower-factory") else "flower-factory"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=_program_name(),
        description="Build, test and publish paired Flower appliances for OpenNebula.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="no progress lines on stderr (errors still show)"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda info: info.name):
        if module_info.name.startswith("_"):
            continue
        module = importlib.import_module(f"factory.cli.commands.{module_info.name}")
        declared: commands.Command = module.COMMAND
        command = subparsers.add_parser(declared.name, help=declared.help, description=declared.description)
        module.arguments(command)
        command.set_defaults(handler=module.run)
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
    progress.quiet = args.quiet
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


def console_script() -> None:
    """The ``flower-factory`` entry point of pyproject's ``[project.scripts]``."""
    sys.exit(main())
