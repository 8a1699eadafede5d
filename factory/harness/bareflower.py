"""Bare Flower on loopback: a SuperLink and N SuperNodes as plain processes from a host Flower venv.

The baseline of every benchmark, and a real federation (real TLS, real SuperNode authentication) to test
the federation runner without a cloud. Everything binds 127.0.0.1 on free ports; each process gets its own
FLWR_HOME and log file under ``workdir``. Use as a context manager: every process is stopped on exit.

Security modes (see :class:`SecurityMode`): ``tls-auth`` (TLS + registered ECDSA P-384 SuperNode keys, the
default), ``tls``, and ``insecure`` (plain HTTP; only when asked for).
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from factory.harness.federation import Connection, FlowerCLI
from factory.harness.flwrenv import FlowerEnv, flower_environment
from factory.harness.tlsmaterial import KeyPair, TLSFiles, make_keypair, make_tls
from hostkit.errors import FactoryError
from hostkit.waiting import wait_until


class SecurityMode(Enum):
    TLS_AUTH = "tls-auth"
    TLS = "tls"
    INSECURE = "insecure"

    @property
    def tls(self) -> bool:
        return self is not SecurityMode.INSECURE

    @property
    def node_auth(self) -> bool:
        return self is SecurityMode.TLS_AUTH


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class FlowerProcess:
    name: str
    process: subprocess.Popen
    log_path: Path

    def running(self) -> bool:
        return self.process.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.running():
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=timeout)
        return self.process.returncode


@dataclass
class BareFederation:
    """``superlink_env`` runs the SuperLink (and the ``flwr`` CLI); ``supernode_env`` the SuperNodes."""

    workdir: Path
    superlink_env: FlowerEnv
    supernode_env: FlowerEnv | None = None
    num_supernodes: int = 2
    security: SecurityMode = SecurityMode.TLS_AUTH
    isolation: str = "subprocess"
    persistent_state: bool = True  # SuperLink state in SQLite (as the appliances default), else in memory
    start_timeout: float = 90.0
    superlink: FlowerProcess | None = field(default=None, init=False)
    supernodes: list[FlowerProcess] = field(default_factory=list, init=False)
    extra: list[FlowerProcess] = field(default_factory=list, init=False)
    tls: TLSFiles | None = field(default=None, init=False)
    port: int = field(default=0, init=False)
    node_keys: list[KeyPair] = field(default_factory=list, init=False)
    timings: dict[str, float] = field(default_factory=dict, init=False)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def nodes_env(self) -> FlowerEnv:
        return self.supernode_env or self.superlink_env

    def connection(self) -> Connection:
        """How the ``flwr`` CLI reaches this SuperLink's Control API."""
        return Connection(address=self.address, ca_cert=self.tls.ca_cert if self.tls else None)

    def __enter__(self) -> BareFederation:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- processes -----------------------------------------------------------------------------------------

    def _spawn(self, name: str, env: FlowerEnv, argv: list[str]) -> FlowerProcess:
        home = self.workdir / name / "flwr-home"
        home.mkdir(parents=True, exist_ok=True)
        log_path = self.workdir / name / "output.log"
        environment = flower_environment(flwr_home=home)
        # The SuperLink and SuperNode spawn flower-superexec / flwr-clientapp by name: their venv comes first.
        environment["PATH"] = f"{env.bin_dir}{os.pathsep}{environment.get('PATH', '')}"
        environment.pop("VIRTUAL_ENV", None)
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [str(env.executable(argv[0])), *argv[1:]],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir / name,
                env=environment,
                start_new_session=True,
            )
        return FlowerProcess(name=name, process=process, log_path=log_path)

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        self.port = free_port()
        argv = [
            "flower-superlink",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--isolation",
            self.isolation,
        ]
        argv += [
            "--database",
            str(self.workdir / "superlink-state.db"),
            "--disable-runtime-dependency-installation",
        ]
        if self.security.tls:
            self.tls = make_tls(self.workdir / "tls", ["127.0.0.1"])
            argv += ["--ssl-ca-certfile", str(self.tls.ca_cert), "--ssl-certfile", str(self.tls.server_cert)]
            argv += ["--ssl-keyfile", str(self.tls.server_key)]
        else:
            argv.append("--insecure")
        if self.security.node_auth:
            argv.append("--enable-supernode-auth")
        self.superlink = self._spawn("superlink", self.superlink_env, argv)
        self._wait_healthy()
        self.timings["superlink_ready"] = time.monotonic() - started
        if self.security.node_auth:
            cli = FlowerCLI(self.superlink_env, self.workdir / "cli", self.connection())
            for index in range(self.num_supernodes):
                key = make_keypair(self.workdir / "keys" / f"supernode-{index}")
                cli.register_supernode(key.public, name=f"supernode-{index}")
                self.node_keys.append(key)
        for index in range(self.num_supernodes):
            self.supernodes.append(self.start_supernode(index, self.num_supernodes))
        self.timings["supernodes_started"] = time.monotonic() - started

    def supernode_argv(self, index: int, num_partitions: int, key: Path | None) -> list[str]:
        argv = ["flower-supernode", "--superlink", self.address, "--port", str(free_port())]
        argv += [
            "--isolation",
            self.isolation,
            "--node-config",
            f"partition-id={index} num-partitions={num_partitions}",
        ]
        if self.tls:
            argv += ["--root-certificates", str(self.tls.ca_cert)]
        else:
            argv.append("--insecure")
        if key is not None:
            argv += ["--auth-supernode-private-key", str(key)]
        return argv

    def start_supernode(self, index: int, num_partitions: int) -> FlowerProcess:
        key = self.node_keys[index].private if self.security.node_auth else None
        return self._spawn(
            f"supernode-{index}", self.nodes_env, self.supernode_argv(index, num_partitions, key)
        )

    def start_rogue_supernode(self) -> FlowerProcess:
        """A SuperNode with a fresh key the SuperLink never registered (or, without auth, no key at all)."""
        name = f"rogue-{len(self.extra)}"
        key = make_keypair(self.workdir / "keys" / name) if self.security.node_auth else None
        argv = self.supernode_argv(0, self.num_supernodes, key.private if key else None)
        process = self._spawn(name, self.nodes_env, argv)
        self.extra.append(process)
        return process

    def _wait_healthy(self) -> None:
        assert self.superlink is not None
        scheme = "https" if self.tls else "http"
        context = ssl.create_default_context(cafile=str(self.tls.ca_cert)) if self.tls else None

        def healthy() -> bool:
            if not self.superlink.running():
                raise FactoryError(
                    f"flower-superlink exited with {self.superlink.process.returncode} during start-up:\n"
                    f"{self.superlink.log_text()[-3000:]}"
                )
            try:
                with urllib.request.urlopen(
                    f"{scheme}://{self.address}/health", timeout=2, context=context
                ) as reply:
                    return reply.status == 200
            except (urllib.error.URLError, OSError):
                return False

        wait_until(
            healthy, self.start_timeout, interval=0.3, what=f"flower-superlink on {self.address} healthy",
            error=FactoryError,
        )  # fmt: skip

    def processes(self) -> list[FlowerProcess]:
        return [process for process in [self.superlink, *self.supernodes, *self.extra] if process is not None]

    def logs(self) -> dict[str, str]:
        return {process.name: process.log_text() for process in self.processes()}

    def stop(self) -> None:
        for process in reversed(self.processes()):
            process.stop()
