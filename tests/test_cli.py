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


def test_version_and_the_console_script_entry_point() -> None:
    import importlib
    import tomllib

    result = subprocess.run(
        [sys.executable, "build.py", "--version"], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert result.returncode == 0 and result.stdout.strip() == f"build.py {project['version']}"
    module_name, _, function = project["scripts"]["flower-factory"].partition(":")
    assert callable(getattr(importlib.import_module(module_name), function))


def test_quiet_silences_progress_but_not_output(tmp_path) -> None:
    argv = [
        sys.executable,
        "build.py",
        "render",
        "--only",
        "os=debian12,role=superlink",
        "--out",
        str(tmp_path),
    ]
    loud = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    quiet = subprocess.run([*argv[:2], "--quiet", *argv[2:]], cwd=REPO_ROOT, capture_output=True, text=True)
    assert loud.returncode == quiet.returncode == 0, loud.stderr + quiet.stderr
    assert "render [" in loud.stderr and quiet.stderr == ""
    assert quiet.stdout == loud.stdout != ""
