"""``python build.py cloud up|status|restart|down`` runs the test cloud as a background daemon."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyone

from hostkit.paths import REPO_ROOT
from testcloud import launcher


def cloud(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "build.py", "cloud", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_up_status_restart_down(tmp_path: Path) -> None:
    state = tmp_path / "cloud"
    up = cloud("up", "--state-dir", str(state), "--driver", "dummy")
    assert up.returncode == 0, up.stderr
    endpoints = json.loads((state / "endpoints.json").read_text())
    assert endpoints["xmlrpc"] in up.stdout and endpoints["auth"] in up.stdout
    assert (state / "endpoints.json").stat().st_mode & 0o077 == 0
    pid = launcher.daemon_pid(state)
    assert pid is not None and pid != os.getpid()
    try:
        one = pyone.OneServer(endpoints["xmlrpc"], session=endpoints["auth"])
        vm_id = one.vm.allocate('NAME="survivor"\nCPU="1"\nMEMORY="64"')
        again = cloud("up", "--state-dir", str(state), "--driver", "dummy")  # already up: same answer
        assert again.returncode == 0 and endpoints["xmlrpc"] in again.stdout
        assert launcher.daemon_pid(state) == pid
        status = cloud("status", "--state-dir", str(state), "--format", "json")
        assert status.returncode == 0
        report = json.loads(status.stdout)
        assert report["running"] is True and "auth" not in report and report["xmlrpc"] == endpoints["xmlrpc"]
        restart = cloud("restart", "--state-dir", str(state), "--driver", "dummy")
        assert restart.returncode == 0, restart.stderr
        assert launcher.daemon_pid(state) not in (None, pid)
        restarted = json.loads((state / "endpoints.json").read_text())
        assert restarted["xmlrpc"] == endpoints["xmlrpc"]  # the ports are kept
        assert (
            pyone.OneServer(restarted["xmlrpc"], session=restarted["auth"]).vm.info(vm_id).NAME == "survivor"
        )
    finally:
        down = cloud("down", "--state-dir", str(state))
    assert down.returncode == 0, down.stderr
    assert launcher.daemon_pid(state) is None
    assert not (state / "endpoints.json").exists()
    status = cloud("status", "--state-dir", str(state))
    assert status.returncode == 1 and "no test cloud runs" in status.stdout
    purge = cloud("down", "--state-dir", str(state), "--purge")
    assert purge.returncode == 0 and not state.exists()


def test_bad_arguments_are_config_errors(tmp_path: Path) -> None:
    result = cloud("up", "--state-dir", str(tmp_path / "c"), "--driver", "vmware")
    assert result.returncode == 2
    assert "--driver: unknown driver 'vmware'" in result.stderr
    result = cloud("up", "--state-dir", str(tmp_path / "c"), "--ports", "xmlrpc=99999")
    assert result.returncode == 2 and "--ports" in result.stderr
    assert not (tmp_path / "c").exists()


def test_purge_refuses_a_directory_that_is_not_a_cloud(tmp_path: Path) -> None:
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "data").write_text("keep me")
    result = cloud("down", "--state-dir", str(tmp_path / "precious"), "--purge")
    assert result.returncode == 1
    assert (tmp_path / "precious" / "data").read_text() == "keep me"
