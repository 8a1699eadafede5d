"""Error types shared by every stage. The CLI maps them to exit statuses."""

from __future__ import annotations


class FactoryError(Exception):
    """A failure of a stage (build, boot, federation, publish). Exit status 1."""

    exit_status = 1


class ConfigError(FactoryError):
    """Bad user input (matrix.yaml, parameter files, command-line values). Exit status 2.

    The message always names the file, the field and the problem, e.g.
    ``matrix.yaml: axes.os[2]: unknown OS 'fedora40' (known: debian12, opensuse156, ubuntu2404)``.
    """

    exit_status = 2

    def __init__(self, source: str, field: str, problem: str) -> None:
        self.source = source
        self.field = field
        self.problem = problem
        where = f"{source}: {field}" if field else source
        super().__init__(f"{where}: {problem}")
