"""Helpers for the appliance tests: run the in-guest code on this host in a sandbox directory.

The appliance scripts take every path from the environment (FL_ETC, FL_STATE, ...), so the same code that
runs in the guest runs here against a temporary directory, with the real openssl, ssh-keygen, jq and curl,
and a real flwr installation (the shared host venv) for the version checks. Without systemd on the host,
the stages write their configuration but start no unit; booted appliances are tested in containers.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from scratch import remove_scratch

from hostkit.paths import CONTEXT_DIR, REPO_ROOT

APPLIANCE_DIR = CONTEXT_DIR / "appliance"
FLOWER_VERSION = "1.42.0"


@pytest.fixture(scope="session")
def params_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The in-guest parameter declarations, generated from images/params.yaml (factory/model/params.py)."""
    from factory.model import params

    directory = tmp_path_factory.mktemp("params")
    files = {}
    for role in ("superlink", "supernode"):
        files[role] = directory / f"params-{role}.sh"
        files[role].write_text(params.guest_defaults(role))
    return files


@pytest.fixture(scope="session")
def flower_venv() -> Path:
    from factory.harness.flwrenv import ensure_flower

    return ensure_flower(FLOWER_VERSION).bin_dir.parent  # the venv: bin/ lies in it


@dataclass
class Sandbox:
    """One appliance's files under ``root``; ``service()`` runs /etc/one-appliance/service against them."""

    root: Path
    role: str
    venv: Path
    params: Path
    accel: str = "cpu"
    profile: str = "standard"
    extra_env: dict[str, str] = field(default_factory=dict)
    etc: Path = field(init=False)  # FL_ETC: /etc/flower in the guest
    state: Path = field(init=False)  # FL_STATE: /var/lib/flower in the guest

    def __post_init__(self) -> None:
        self.etc = self.root / "etc"
        self.state = self.root / "state"
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "build.env").write_text(
            f"FL_ROLE={self.role}\nFL_VARIANT={self.role}-{FLOWER_VERSION}-debian12-{self.accel}-{self.profile}"
            f"-sklearn-x86_64\nFL_FLOWER_VERSION={FLOWER_VERSION}\nFL_ACCEL={self.accel}\n"
            f"FL_PROFILE={self.profile}\n"
        )

    def env(self, **parameters: str) -> dict[str, str]:
        environment = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("ONEAPP_", "ETH", "FL_", "ONEGATE", "TOKENTXT", "VMID"))
        }
        environment.update(
            FL_APPLIANCE_DIR=str(APPLIANCE_DIR),
            FL_BUILD_ENV=str(self.root / "build.env"),
            FL_PARAMS_FILE=str(self.params),
            FL_STATUS_FILE=str(self.root / "status"),
            FL_LOG_DIR=str(self.root / "log"),
            FL_ETC=str(self.etc),
            FL_STATE=str(self.state),
            FL_VENV=str(self.venv),
            FL_MOTD=str(self.root / "motd"),
            FL_RUN=str(self.root / "run"),
            FL_SERVICE_USER="fl-no-such-user",
            FL_ADMIN_FLWR_HOME=str(self.root / "admin-flwr"),
            ENV_FILE=str(self.root / "one_env"),
            FL_ONEGATE_DEADLINE="5",
        )
        environment.update(self.extra_env)
        environment.update(parameters)
        return environment

    def service(self, *stages: str, **parameters: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(APPLIANCE_DIR / "service"), *stages],
            env=self.env(**parameters),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def configured(self, **parameters: str) -> Sandbox:
        """``service configure`` with ``parameters``; it must succeed (its output is the failure message)."""
        result = self.service("configure", **parameters)
        assert result.returncode == 0, result.stdout + result.stderr
        return self

    def refused(self, *expected: str, **parameters: str) -> subprocess.CompletedProcess[str]:
        """``service configure`` with ``parameters``, which must fail with a reason that holds every
        ``expected`` text (the parameter's name, the problem), shown in the status, the MOTD and the log."""
        result = self.service("configure", **parameters)
        assert result.returncode != 0, result.stdout + result.stderr
        assert self.status == "configure_failure"
        assert all(text in self.reason for text in expected), (expected, self.reason)
        assert self.reason in self.motd
        assert self.reason in self.log("configure")
        return result

    def bash(self, script: str, **parameters: str) -> subprocess.CompletedProcess[str]:
        """Run ``script`` with the appliance libraries and the role's declaration loaded."""
        prologue = (
            "set -euo pipefail\n"
            f'. "{self.params}"\n'
            "for lib in lib/common lib/onegate lib/params lib/tls lib/flower lib/checks lib/metrics \\\n"
            "           roles/superlink roles/supernode; do\n"
            '    . "$FL_APPLIANCE_DIR/$lib.sh"\n'
            "done\n"
            "fl_load_build_env\n"
        )
        return subprocess.run(
            ["bash", "-c", prologue + script],
            env=self.env(**parameters),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    @property
    def status(self) -> str:
        path = self.root / "status"
        return path.read_text().strip() if path.exists() else ""

    @property
    def reason(self) -> str:
        path = self.root / "run" / "failure-reason"
        return path.read_text().strip() if path.exists() else ""

    @property
    def motd(self) -> str:
        return (self.root / "motd").read_text()

    def log(self, stage: str) -> str:
        path = self.root / "log" / f"{stage}.log"
        return path.read_text() if path.exists() else ""

    def args(self, name: str) -> list[str]:
        return (self.etc / f"{name}.args").read_text().splitlines()


@pytest.fixture
def make_sandbox(tmp_path: Path, flower_venv: Path, params_files: dict[str, Path]):
    def make(role: str, **options: object) -> Sandbox:
        return Sandbox(tmp_path / role, role, flower_venv, params_files[role], **options)  # type: ignore[arg-type]

    return make


def repo_path(*parts: str) -> Path:
    return REPO_ROOT.joinpath(*parts)


# --- the test cloud ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def appliance_images() -> dict[str, object]:
    """The SuperLink and SuperNode debian12 images (built once, then reused from the content cache). They
    carry one-context built from the upstream source: without it (ONE_UPSTREAM_DIR) no image, and
    onecontext raises UpstreamMissing, the one message saying how to get it."""
    from appliance_cloud import SUPERLINK_VARIANT, SUPERNODE_VARIANT

    from factory.images.localbuild import build_appliance
    from factory.model.matrix import load_matrix

    matrix = load_matrix()
    return {
        "superlink": build_appliance(matrix.variant(SUPERLINK_VARIANT)),
        "supernode": build_appliance(matrix.variant(SUPERNODE_VARIANT)),
    }


@pytest.fixture(scope="session")
def appliance_cloud(tmp_path_factory: pytest.TempPathFactory, appliance_images: dict[str, object]):
    """A test cloud (container driver) with both appliance images imported; stopped at the end."""
    import pyone
    from appliance_cloud import ApplianceCloud, wait_for

    from testcloud import launcher

    state = tmp_path_factory.mktemp("cloud")
    key = state / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    ssh_config = state / "ssh_config"
    ssh_config.write_text(
        f"Host *\n  User root\n  IdentityFile {key}\n"
        "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n"
    )
    cloud = ApplianceCloud(launcher.start(state / "cloud", driver="container"), None, key, ssh_config, {})
    try:
        one = cloud.one = pyone.OneServer(cloud.handle.endpoints["xmlrpc"], session=cloud.handle.auth)
        for built in appliance_images.values():
            name = built.name  # type: ignore[attr-defined]
            path = built.image  # type: ignore[attr-defined]
            image_id = one.image.allocate(f'NAME="{name}"\nPATH="{path}"\nTYPE="OS"', 1)
            wait_for(lambda image_id=image_id: one.image.info(image_id).STATE == 1, 600, what=f"image {name}")
            cloud.images[name] = image_id
        yield cloud
    finally:
        cloud.handle.stop()  # a test may have restarted the cloud: stop the current handle
        remove_scratch(state)  # its datastores hold a copy of each appliance image (tests/scratch.py)


@pytest.fixture(scope="module")
def dummy_cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A test cloud with the dummy driver (no guests), for the appliance scripts' host tests."""
    from testcloud import launcher

    handle = launcher.start(tmp_path_factory.mktemp("cloud") / "state", driver="dummy")
    yield handle
    handle.stop()
