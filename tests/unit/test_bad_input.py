"""Bad input at the command line (issue 9, items 14-16): each is exit 2 with one message naming what is
wrong, no traceback, nothing written, and no Packer run."""

from __future__ import annotations

import copy
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from factory.cli import main as cli
from factory.model import pypi, versions
from factory.model.matrix import DISTRO_SCRIPT, parse_matrix, supported_os
from hostkit.errors import ConfigError
from hostkit.paths import MATRIX_FILE, PARAMS_FILE, REPO_ROOT

RAW = yaml.safe_load(MATRIX_FILE.read_text())


def run_cli(
    *args: str, env: dict[str, str] | None = None, user: list[str] = ()
) -> subprocess.CompletedProcess:
    environment = {**os.environ, **(env or {})}
    return subprocess.run(
        [*user, sys.executable, str(REPO_ROOT / "build.py"), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
    )


def assert_usage_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "Exception" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


@pytest.fixture
def packer_spy(tmp_path: Path) -> Iterator[tuple[dict[str, str], Path]]:
    """A PACKER that records every call: a command that must stop before Packer leaves no record."""
    record = tmp_path / "packer-calls"
    spy = tmp_path / "packer"
    spy.write_text(f'#!/bin/sh\necho "$@" >> "{record}"\necho "Packer v1.6.6"\n')
    spy.chmod(0o755)
    yield {"PACKER": str(spy)}, record


# ---------------------------------------------------------------------------------------------- item 15


def test_non_utf8_matrix_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "matrix.yaml"
    path.write_bytes(MATRIX_FILE.read_bytes().replace(b"Debian 12", b"Debian \xe9 12"))
    for command in ("render", "validate", "build"):
        result = run_cli(command, "--matrix", str(path), "--out", str(tmp_path / "hcl"))
        assert_usage_error(result, f"{path}: line ", "not UTF-8 text (byte 0xe9")
        assert result.stdout == ""
    assert not (tmp_path / "hcl").exists()


def test_non_utf8_params_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_bytes(PARAMS_FILE.read_bytes() + b"\n# caf\xe9\n")
    result = run_cli("params", "--params", str(path), "--out", str(tmp_path / "out"))
    assert_usage_error(result, "not UTF-8 text")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "command", [["render"], ["validate"], ["build", "--dry-run", "--only", "os=ubuntu2404"], ["params"]]
)
def test_out_that_is_a_file(tmp_path: Path, command: list[str]) -> None:
    target = tmp_path / "taken"
    target.write_text("keep me\n")
    result = run_cli(*command, "--out", str(target))
    assert_usage_error(result, f"--out: {target} is a file, not a directory")
    assert target.read_text() == "keep me\n"
    below = run_cli(*command, "--out", str(target / "sub"))
    assert_usage_error(below, f"{target} is a file, not a directory")


@pytest.fixture
def read_only_dir() -> Iterator[tuple[Path, list[str]]]:
    """A directory the command cannot write in, and the prefix that runs it as a user for whom that holds
    (root writes anywhere: it runs as nobody)."""
    top = Path(tempfile.mkdtemp(prefix="fl-ro-"))
    top.chmod(0o755)
    locked = top / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        assert setpriv, "setpriv (util-linux) is needed to run as an unprivileged user"
        prefix = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
    yield locked, prefix
    locked.chmod(0o755)
    shutil.rmtree(top)


@pytest.mark.parametrize(
    "command", [["render"], ["validate"], ["build", "--dry-run", "--only", "os=ubuntu2404"], ["params"]]
)
def test_out_that_is_not_writable(read_only_dir: tuple[Path, list[str]], command: list[str]) -> None:
    locked, prefix = read_only_dir
    result = run_cli(*command, "--out", str(locked / "out"), user=prefix)
    assert_usage_error(result, f"{locked / 'out'} is not writable", "permission denied")
    assert list(locked.iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="only root gets past the permission check to mkdir in /sys")
def test_out_where_mkdir_fails() -> None:
    """Root passes os.access everywhere; the OSError of the first write is the message."""
    result = run_cli("render", "--out", "/sys/flower-factory-no-such-dir")
    assert_usage_error(result, "--out: cannot write /sys/flower-factory-no-such-dir")


@pytest.mark.parametrize("jobs", ["-3", "0", "many"])
def test_jobs_must_be_positive(jobs: str, packer_spy: tuple[dict[str, str], Path]) -> None:
    env, record = packer_spy
    result = run_cli("validate", "--jobs", jobs, env=env)
    assert_usage_error(result, "--jobs: expected a whole number >= 1")
    assert not record.exists()


def test_broken_pipe_exits_quietly() -> None:
    """``build.py matrix | head -1``: the reader goes away; no BrokenPipeError, status 141 as CLIs."""
    process = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "build.py"), "matrix", "--format", "json"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    first = process.stdout.readline()
    process.stdout.close()
    stderr = process.stderr.read().decode()
    status = process.wait(timeout=60)
    assert first.strip() == b"{"
    assert "BrokenPipeError" not in stderr and "Traceback" not in stderr, stderr
    assert status == 141, stderr


def test_broken_pipe_through_a_shell_pipeline() -> None:
    result = subprocess.run(
        ["bash", "-c", f'"{sys.executable}" build.py matrix | head -1'],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0
    assert result.stdout.startswith("Variants (")
    assert result.stderr == ""


# ---------------------------------------------------------------------------------------------- item 16


def test_duplicate_key_in_matrix_names_key_and_line(tmp_path: Path) -> None:
    text = MATRIX_FILE.read_text()
    assert "  cross_version: true\n" in text
    path = tmp_path / "matrix.yaml"
    path.write_text(
        text.replace("  cross_version: true\n", "  cross_version: false\n  cross_version: true\n")
    )
    line = text[: text.index("  cross_version: true\n")].count("\n") + 1
    result = run_cli("render", "--matrix", str(path), "--out", str(tmp_path / "hcl"))
    assert_usage_error(
        result, f"line {line + 1}, column 3: duplicate key 'cross_version' (first on line {line};"
    )
    assert not (tmp_path / "hcl").exists()


def test_duplicate_key_in_params_names_key_and_line(tmp_path: Path) -> None:
    text = PARAMS_FILE.read_text()
    marker = "    type: number\n"
    path = tmp_path / "params.yaml"
    path.write_text(text.replace(marker, marker + "    type: text\n", 1))
    line = text[: text.index(marker)].count("\n") + 1
    result = run_cli("params", "--params", str(path), "--out", str(tmp_path / "out"))
    assert_usage_error(result, f"line {line + 1}, column 5: duplicate key 'type' (first on line {line};")
    assert not (tmp_path / "out").exists()


def test_readme_and_check_are_exclusive() -> None:
    readme = (REPO_ROOT / "README.md").read_bytes()
    result = run_cli("params", "--readme", "--check")
    assert_usage_error(result, "not allowed with argument")
    assert (REPO_ROOT / "README.md").read_bytes() == readme


@pytest.mark.parametrize("command", [["validate"], ["build", "--only", "os=ubuntu2404"]])
def test_misspelt_var_is_refused_once_before_packer(
    tmp_path: Path, packer_spy: tuple[dict[str, str], Path], command: list[str]
) -> None:
    env, record = packer_spy
    result = run_cli(*command, "--var", "cpu=4", "--out", str(tmp_path / "hcl"), env=env)
    assert_usage_error(result, "--var: 'cpu' is not a Packer variable (did you mean 'cpus'?")
    assert result.stderr.count("error:") == 1
    assert not record.exists()
    assert not (tmp_path / "hcl").exists()


def test_declared_var_is_accepted(tmp_path: Path) -> None:
    result = run_cli(
        "build", "--dry-run", "--only", "name=supernode-1.42.0-ubuntu2404-cpu-standard-sklearn-x86_64",
        "--var", "cpus=4", "--out", str(tmp_path / "hcl"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "-var=cpus=4" in result.stdout


def test_local_base_without_its_vars_fails_once_before_any_build(
    tmp_path: Path, packer_spy: tuple[dict[str, str], Path]
) -> None:
    env, record = packer_spy
    result = run_cli("build", "--only", "os=debian12", "--out", str(tmp_path / "hcl"), env=env)
    assert_usage_error(result, "builds from a local base: pass base_image_url and base_image_checksum")
    assert result.stderr.count("error:") == 1
    assert not record.exists() or "build" not in record.read_text()


# ---------------------------------------------------------------------------------------------- item 14


def _matrix_file(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "matrix.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_os_without_provisioning_support_is_refused() -> None:
    data = copy.deepcopy(RAW)
    data["axes"]["os"].append("fedora40")
    data["os"]["fedora40"] = copy.deepcopy(data["os"]["opensuse156"])
    with pytest.raises(ConfigError) as caught:
        parse_matrix(data)
    assert caught.value.field == "os.fedora40"
    assert "no provisioning script supports OS 'fedora40'" in caught.value.problem
    assert "images/provision/lib/distro.sh knows debian12, opensuse156, ubuntu2404" in caught.value.problem


def test_os_refused_through_the_cli(tmp_path: Path) -> None:
    data = copy.deepcopy(RAW)
    data["axes"]["os"].append("fedora40")
    data["os"]["fedora40"] = copy.deepcopy(data["os"]["opensuse156"])
    result = run_cli("validate", "--matrix", str(_matrix_file(tmp_path, data)), "--out", str(tmp_path / "h"))
    assert_usage_error(result, "os.fedora40: no provisioning script supports OS 'fedora40'")
    assert not (tmp_path / "h").exists()


def test_supported_os_come_from_distro_sh(tmp_path: Path) -> None:
    assert set(supported_os()) == set(RAW["axes"]["os"])
    # the refusal message of distro.sh's catch-all names the same values
    assert f"(known: {', '.join(supported_os())})" in DISTRO_SCRIPT.read_text().replace(
        "debian12, ubuntu2404, opensuse156", "debian12, opensuse156, ubuntu2404"
    )
    other = tmp_path / "distro.sh"
    other.write_text(
        DISTRO_SCRIPT.read_text().replace(
            "opensuse156) DISTRO_FAMILY=suse", "opensuse156 | sles16) DISTRO_FAMILY=suse"
        )
    )
    assert supported_os(other) == ("debian12", "opensuse156", "sles16", "ubuntu2404")


RELEASES = frozenset({"1.41.0", "1.42.0", "1.40.0"})


def in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """cli.main in this process: progress goes to the stderr this test captures (the default progress
    keeps the stream of the process at import time)."""
    from hostkit import progress

    monkeypatch.setattr(progress.DEFAULT, "stream", sys.stderr)


def test_flower_version_not_on_pypi_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = copy.deepcopy(RAW)
    data["axes"]["flower"] = ["1.42.0", "9.9.9"]
    path = _matrix_file(tmp_path, data)
    asked: list[int] = []

    def releases() -> frozenset[str]:
        asked.append(1)
        return RELEASES

    in_process(monkeypatch)
    monkeypatch.delenv("FLOWER_FACTORY_OFFLINE")
    monkeypatch.setattr(pypi, "fetch_releases", releases)
    monkeypatch.setenv("PACKER", "/bin/false")
    status = cli.main(["validate", "--matrix", str(path), "--out", str(tmp_path / "hcl")])
    err = capsys.readouterr().err
    assert status == 2, err
    assert "axes.flower[1]: Flower 9.9.9 does not exist on PyPI" in err
    assert "latest release: 1.42.0" in err
    assert asked == [1]
    assert not (tmp_path / "hcl").exists()
    # a known version passes the same check
    assert pypi.check_versions(["1.42.0"], ["1.42.0"], "m", releases=releases) is None


def test_offline_skips_the_check_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = copy.deepcopy(RAW)
    data["axes"]["flower"] = ["9.9.9"]
    path = _matrix_file(tmp_path, data)

    def no_network() -> frozenset[str]:
        raise AssertionError("PyPI asked although offline")

    in_process(monkeypatch)
    monkeypatch.setattr(pypi, "fetch_releases", no_network)
    monkeypatch.delenv("FLOWER_FACTORY_OFFLINE")
    only = "name=supernode-9.9.9-ubuntu2404-cpu-standard-sklearn-x86_64"
    argv = ["build", "--dry-run", "--offline", "--matrix", str(path), "--only", only, "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    assert "not checked against PyPI" in capsys.readouterr().err
    monkeypatch.setenv("FLOWER_FACTORY_OFFLINE", "1")
    assert cli.main(argv[:2] + argv[3:]) == 0
    assert "not checked against PyPI" in capsys.readouterr().err


def test_pypi_document_yanked_and_empty_releases_do_not_count() -> None:
    document = {
        "releases": {
            "1.42.0": [{"yanked": False}],
            "1.41.0": [{"yanked": True}],
            "1.40.0": [],
            "1.43.0rc1": [{"yanked": False}],
        }
    }
    releases = pypi.releases_from_document(document)
    assert releases == {"1.42.0", "1.43.0rc1"}
    assert versions.latest(releases) == "1.42.0"
    # PEP 440 order, not text order; pre-releases and non-X.Y.Z forms never count as the latest release
    assert versions.latest(["1.9.0", "1.10.0", "1.10.1rc1", "2.0", "v3.0.0"]) == "1.10.0"
    with pytest.raises(Exception, match="without a 'releases' mapping"):
        pypi.releases_from_document({"info": {}})


@pytest.mark.network
def test_real_pypi_knows_the_matrix_versions_and_not_9_9_9() -> None:
    """Opt-in (``-m network``): the real PyPI JSON API for flwr."""
    releases = pypi.fetch_releases()
    assert set(RAW["axes"]["flower"]) <= releases
    assert "9.9.9" not in releases


@pytest.mark.parametrize(
    ("text", "release", "pinned"),
    [
        ("1.42.0", True, False),
        ("1.42", False, False),
        ("1.42.0rc1", False, False),
        ("01.42.0", False, False),
        ("torch==2.5.1", False, True),
        ("torch>=2.5", False, False),
        ("torch==2.*", False, False),
        ("tensorflow[and-cuda]==2.21.0", False, True),
        ("torch==2.5.1; python_version<'3.12'", False, False),
        ("torch", False, False),
    ],
)
def test_versions_and_pins_follow_pep_440_and_508(text: str, release: bool, pinned: bool) -> None:
    assert versions.is_release_version(text) is release
    assert versions.is_pinned(text) is pinned
