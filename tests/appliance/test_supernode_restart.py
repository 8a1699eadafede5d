"""A SuperNode killed mid-run comes back at once (issue 9, item 13), on this host with a real Flower 1.42
SuperLink (TLS, SuperNode authentication) and SuperNode on loopback.

Flower's SuperLink activates a node only while it is REGISTERED or OFFLINE; a killed SuperNode never
deactivates, so the SuperLink keeps it ONLINE for two 30 s heartbeat intervals and refuses the restarted
SuperNode with ``[code: 2004] Failed to activate SuperNode``. flower-node-release (ExecStartPre of
flower-supernode.service) deactivates the previous activation, signed with the node's key, first."""

from __future__ import annotations

import configparser
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from factory.harness.bareflower import free_port
from hostkit.paths import CONTEXT_DIR

APPLIANCE_DIR = CONTEXT_DIR / "appliance"

RELEASE = APPLIANCE_DIR / "bin" / "flower-node-release"


def make_ca_and_server(directory: Path) -> tuple[Path, Path, Path]:
    """An openssl CA and a server certificate for 127.0.0.1 (the SuperLink's) in ``directory``."""
    directory.mkdir(parents=True)
    ca_key, ca, key, csr, cert, extensions = (
        directory / name for name in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem", "ext.cnf")
    )
    curve = ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]
    extensions.write_text("subjectAltName=IP:127.0.0.1\n")
    for argv in (
        ["genpkey", *curve, "-out", str(ca_key)],
        ["req", "-x509", "-key", str(ca_key), "-subj", "/CN=test CA", "-days", "2", "-out", str(ca)],
        ["genpkey", *curve, "-out", str(key)],
        ["req", "-new", "-key", str(key), "-subj", "/CN=127.0.0.1", "-out", str(csr)],
        ["x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-set_serial", "7",
         "-days", "2", "-extfile", str(extensions), "-out", str(cert)],
    ):  # fmt: skip
        subprocess.run(["openssl", *argv], check=True, capture_output=True)
    return ca, cert, key


@dataclass
class Link:
    venv: Path
    root: Path
    port: int
    ca: Path
    key: Path
    env: dict[str, str]

    def supernode(self, name: str) -> subprocess.Popen[bytes]:
        argv = [
            str(self.venv / "bin" / "flower-supernode"),
            *("--superlink", f"127.0.0.1:{self.port}", "--root-certificates", str(self.ca)),
            *(
                "--auth-supernode-private-key",
                str(self.key),
                "--node-config",
                "partition-id=0 num-partitions=1",
            ),
            *("--isolation", "subprocess", "--host", "127.0.0.1", "--port", str(free_port())),
        ]
        log = open(self.root / f"{name}.log", "wb")  # noqa: SIM115  # closed with the process
        return subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )

    def output(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def wait_for(self, name: str, pattern: str, timeout: float = 60) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.output(name))
            if found:
                return found
            time.sleep(0.2)
        raise AssertionError(f"{name}: no {pattern!r} within {timeout} s:\n{self.output(name)[-2000:]}")

    def args_file(self) -> Path:
        """/etc/flower/supernode.args as the SuperNode's bootstrap writes it (one argument per line)."""
        path = self.root / "supernode.args"
        path.write_text(
            f"--superlink\n127.0.0.1:{self.port}\n--root-certificates\n{self.ca}\n"
            f"--auth-supernode-private-key\n{self.key}\n--node-config\npartition-id=0 num-partitions=1\n"
        )
        return path


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        os.killpg(process.pid, sig)
    process.wait(timeout=30)


@pytest.fixture
def link(flower_venv: Path, tmp_path: Path) -> Iterator[Link]:
    """A SuperLink with TLS and SuperNode authentication, and one registered SuperNode key."""
    ca, cert, key = make_ca_and_server(tmp_path / "tls")
    node_key = tmp_path / "node"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-f", str(node_key)], check=True
    )
    port = free_port()
    flwr_home = tmp_path / ".flwr"
    flwr_home.mkdir()
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "127.0.0.1:{port}"\n'
        f'root-certificates = "{ca}"\n'
    )
    env = {
        **os.environ,
        "PATH": f"{flower_venv / 'bin'}:{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "FLWR_HOME": str(flwr_home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
    }
    superlink = subprocess.Popen(
        [
            str(flower_venv / "bin" / "flower-superlink"),
            *("--ssl-ca-certfile", str(ca), "--ssl-certfile", str(cert), "--ssl-keyfile", str(key)),
            *("--host", "127.0.0.1", "--port", str(port), "--isolation", "subprocess"),
            *("--database", str(tmp_path / "state.db"), "--enable-supernode-auth"),
        ],
        stdout=open(tmp_path / "superlink.log", "wb"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    made = Link(flower_venv, tmp_path, port, ca, node_key, env)
    try:
        made.wait_for("superlink", r"Uvicorn running|Application startup complete")
        registered = subprocess.run(
            [
                str(flower_venv / "bin" / "flwr"),
                "supernode",
                "register",
                f"{node_key}.pub",
                "local",
                "--format",
                "json",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert '"success": true' in registered.stdout, registered.stdout + registered.stderr
        yield made
    finally:
        stop(superlink)


def release(link: Link, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(link.venv / "bin" / "python"), str(RELEASE), "--args", str(link.args_file()), *arguments],
        env=link.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_killed_supernode_is_refused_until_released_then_activates_at_once(link: Link) -> None:
    first = link.supernode("first")
    try:
        node_id = link.wait_for("first", r"SuperNode ID: (\d+)").group(1)
    finally:
        stop(first, signal.SIGKILL)  # killed mid-run: no DeactivateNode

    refused = link.supernode("refused")
    assert refused.wait(timeout=60) != 0
    assert "[code: 2004] Failed to activate SuperNode" in link.output("refused"), (
        "Flower's behaviour changed?"
    )

    # After an unclean end (no clean-stop marker), with the id kept from an earlier run.
    id_file = link.root / "supernode-node-id"
    id_file.write_text(f"{node_id}\n")
    released = release(
        link,
        "--id-file",
        str(id_file),
        "--clean-marker",
        str(link.root / "clean"),
        "--unit",
        "no-such.service",
    )
    assert released.returncode == 0, released.stderr
    assert f"released the previous activation of node {node_id}" in released.stderr

    started = time.monotonic()
    again = link.supernode("again")
    try:
        assert link.wait_for("again", r"SuperNode ID: (\d+)|Failed to activate").group(1) == node_id
        assert time.monotonic() - started < 30, (
            "activated within its start-up time, not after the 60 s expiry"
        )
    finally:
        stop(again)
    # A clean stop deactivated it: releasing again is a no-op that does not fail the start.
    noop = release(link, "--node-id", node_id)
    assert noop.returncode == 0 and "was not active" in noop.stderr, noop.stderr


def test_nothing_is_done_after_a_clean_end_or_without_authentication(tmp_path: Path) -> None:
    marker, id_file = tmp_path / "stopped-cleanly", tmp_path / "node-id"
    args = tmp_path / "supernode.args"

    def run() -> subprocess.CompletedProcess[str]:
        argv = ["python3", str(RELEASE), "--args", str(args), "--clean-marker", str(marker)]
        argv += ["--id-file", str(id_file), "--unit", "no-such.service", "--timeout", "2"]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)

    args.write_text("--superlink\n127.0.0.1:9\n--insecure\n")
    marker.touch()
    clean = run()
    assert (clean.returncode, clean.stderr) == (0, ""), "the previous run stopped cleanly: nothing to do"
    assert not marker.exists(), "the marker is used once"
    unauthenticated = run()
    assert unauthenticated.returncode == 0 and "no SuperNode authentication" in unauthenticated.stderr

    args.write_text(f"--superlink\n127.0.0.1:9\n--auth-supernode-private-key\n{tmp_path / 'key'}\n")
    unknown = run()
    assert unknown.returncode == 0 and "no previous node id" in unknown.stderr


def test_an_unreachable_superlink_does_not_fail_the_start(flower_venv: Path, tmp_path: Path) -> None:
    key = tmp_path / "node"
    subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-f", str(key)], check=True)
    args = tmp_path / "supernode.args"
    args.write_text(
        f"--superlink\n127.0.0.1:{free_port()}\n--insecure\n--auth-supernode-private-key\n{key}\n"
    )
    (tmp_path / "node-id").write_text("42\n")
    argv = [str(flower_venv / "bin" / "python"), str(RELEASE), "--args", str(args)]
    argv += ["--id-file", str(tmp_path / "node-id"), "--clean-marker", str(tmp_path / "clean")]
    argv += ["--unit", "no-such.service", "--timeout", "2"]
    started = time.monotonic()
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0 and "could not release node 42" in result.stderr, result.stderr
    assert time.monotonic() - started < 20


def test_the_unit_releases_after_an_unclean_end() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(APPLIANCE_DIR / "systemd" / "flower-supernode.service")
    service = unit["Service"]
    assert (
        service["ExecStartPre"] == "-+/opt/flower/venv/bin/python /etc/one-appliance/bin/flower-node-release"
    )
    assert '"$SERVICE_RESULT" = success' in service["ExecStopPost"]
    assert "/var/lib/flower/run/supernode-stopped-cleanly" in service["ExecStopPost"]
