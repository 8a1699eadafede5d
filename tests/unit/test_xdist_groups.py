"""``./run.sh test`` runs ``-n N --dist loadgroup``: every test that boots guests must land on one worker.

pytest 9.2 keeps a node's id where pytest-xdist 3.8 no longer writes its group suffix, so the grouping of
tests/conftest.py silently stopped (guest tests ran two at a time, on both cores, and filled the disk twice
as fast); pytest 9.1.1 and the hook's ``tryfirst`` keep it. This runs a small session the same way.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from hostkit.paths import REPO_ROOT

SESSION = """
import pytest

@pytest.mark.cloud
@pytest.mark.parametrize("n", range(5))
def test_guest(n):
    pass

@pytest.mark.parametrize("n", range(5))
def test_plain(n):
    pass
"""


def test_tests_that_boot_guests_share_one_worker(tmp_path: Path) -> None:
    (tmp_path / "test_session.py").write_text(SESSION)
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n  cloud: boots guests\n")
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "tests"), str(REPO_ROOT)])}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider", "-n", "2",
         "--dist", "loadgroup", "-v", "test_session.py"],
        cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    ran = re.findall(r"\[(gw\d)\] .*PASSED test_session\.py::(test_\w+)\[\d\](@\w+)?", done.stdout)
    assert len(ran) == 10, done.stdout
    guests = {(worker, group) for worker, name, group in ran if name == "test_guest"}
    assert len(guests) == 1 and next(iter(guests))[1] == "@guests", ran
