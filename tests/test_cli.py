"""The command line loads every subcommand module and answers --help."""

import subprocess
import sys

from hostkit.paths import REPO_ROOT


def test_help_lists_commands() -> None:
    result = subprocess.run(
        [sys.executable, "build.py", "--help"], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "COMMAND" in result.stdout
