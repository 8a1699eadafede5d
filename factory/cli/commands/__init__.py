"""One module per subcommand. Each declares itself to factory/cli/main.py with three names:

- ``COMMAND = Command(name, help=..., description=...)``: what ``--help`` shows;
- ``arguments(parser)``: adds its options;
- ``run(args) -> int``: the handler, which imports the heavy stages itself so that ``--help`` and
  ``matrix`` stay fast.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    description: str
