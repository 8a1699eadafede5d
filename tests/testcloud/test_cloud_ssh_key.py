"""The user's SSH key reaches the guests: ``build.py release --ssh-key`` (default ``~/.ssh/id_*.pub``, else a
generated pair) and ``build.py cloud up --ssh-key`` set the cloud user's SSH_PUBLIC_KEY as ``oneuser update``
does; a bad key path is refused before anything starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyone
import pytest
from cloudtest_helpers import wait_for

from factory.cli.commands import cloud as cloud_command
from factory.cli.commands import release
from hostkit.errors import ConfigError
from hostkit.paths import REPO_ROOT

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGzT0Jk3d2q3k6f0k8t1g8y6Qx2n3m4b5v6c7x8z9a0b user@laptop"


def build(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "build.py", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )


def test_release_refuses_a_bad_key_before_starting_anything(tmp_path: Path) -> None:
    env = {"FLOWER_FACTORY_CLOUD_DIR": str(tmp_path / "cloud"), "FLOWER_FACTORY_RESULTS": str(tmp_path / "r")}
    env.pop("ONE_XMLRPC", None)
    not_a_key = tmp_path / "notes.txt"
    not_a_key.write_text("hello\n")
    for path, problem in (
        (tmp_path / "missing.pub", "cannot read"),
        (not_a_key, "is not an OpenSSH public key"),
    ):
        done = build("release", "--ssh-key", str(path), env=env)
        assert done.returncode == 2, done.stdout + done.stderr
        assert f"--ssh-key: {path} " in done.stderr or f"--ssh-key: {problem}" in done.stderr, done.stderr
        assert problem in done.stderr
        assert "Traceback" not in done.stderr
        assert not (tmp_path / "cloud").exists()
        assert not (tmp_path / "r").exists()


def test_default_key_is_the_users_else_a_generated_pair(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home, state = tmp_path / "home", tmp_path / "state"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_rsa.pub").write_text("ssh-rsa AAAAB3Nza rsa@host\n")
    (home / ".ssh" / "id_ed25519.pub").write_text(KEY + "\n")
    assert cloud_command.default_public_key(state, home) == (home / ".ssh" / "id_ed25519.pub", False)
    for name in ("id_rsa.pub", "id_ed25519.pub"):
        (home / ".ssh" / name).unlink()
    public, generated = cloud_command.default_public_key(state, home)
    assert generated and public == state / "ssh" / "id_ed25519.pub"
    assert (state / "ssh" / "id_ed25519").stat().st_mode & 0o077 == 0
    assert cloud_command.read_public_key(public).startswith("ssh-ed25519 ")
    assert cloud_command.default_public_key(state, home) == (public, True)  # made once, reused
    # what release picks without --ssh-key, on the local cloud: and it says where the generated key is
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("ONE_XMLRPC", raising=False)
    monkeypatch.setattr("hostkit.paths.CLOUD_DIR", state)
    assert release._ssh_key(None) == (public, public.read_text().strip())
    with pytest.raises(ConfigError, match="--ssh-key"):
        release._ssh_key(tmp_path / "nope.pub")
    monkeypatch.setenv("ONE_XMLRPC", "http://one.example:2633/RPC2")
    assert release._ssh_key(None) == (None, "")


def test_cloud_up_sets_the_key_on_an_existing_cloud_too(tmp_path: Path) -> None:
    state = tmp_path / "cloud"
    keyfile = tmp_path / "key.pub"
    keyfile.write_text(KEY + "\n")
    env: dict[str, str] = {}
    up = build("cloud", "up", "--state-dir", str(state), "--driver", "dummy", env=env)
    assert up.returncode == 0, up.stderr
    try:
        again = build(
            "cloud", "up", "--state-dir", str(state), "--driver", "dummy", "--ssh-key", str(keyfile), env=env
        )
        assert again.returncode == 0, again.stderr
        endpoints = json.loads((state / "endpoints.json").read_text())
        one = pyone.OneServer(endpoints["xmlrpc"], session=endpoints["auth"])
        template = one.user.info(0).TEMPLATE
        assert template["SSH_PUBLIC_KEY"] == KEY
        assert template.get("TOKEN_PASSWORD"), "the key is merged, the rest of the user's template stays"
        vm_id = one.vm.allocate(
            'NAME="g"\nCPU="1"\nMEMORY="64"\nCONTEXT=[SSH_PUBLIC_KEY="$USER[SSH_PUBLIC_KEY]"]'
        )
        wait_for(lambda: one.vm.info(vm_id).TEMPLATE["CONTEXT"]["SSH_PUBLIC_KEY"] == KEY)
    finally:
        down = build("cloud", "down", "--state-dir", str(state), env=env)
    assert down.returncode == 0, down.stderr
