"""Starting and stopping a test cloud: in this process (tests) or as a background daemon (``cloud up``).

``start(state_dir, ports="auto", driver="auto")`` returns a ``CloudHandle`` (a context manager) whose
``endpoints`` are those of ``<state_dir>/endpoints.json``:
``{"xmlrpc", "oneflow", "onegate", "market", "auth"}``. A state directory holds everything: a restart on
it loses nothing. ``stop_server("onegate")`` and ``start_server("onegate")`` take one server of an
in-process cloud down and up again on the same address (a fault test: OneGate stopped during a boot).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from hostkit.fileio import write_atomic
from hostkit.host import PROCESS_GONE
from hostkit.waiting import wait_until
from testcloud.api import market as marketserver
from testcloud.api import oneflow as oneflowserver
from testcloud.api import onegate, xmlrpc
from testcloud.api.httpbase import Server
from testcloud.core.cloud import Cloud
from testcloud.core.config import BRIDGE_ADDRESS, DRIVERS, CloudConfig, Timings
from testcloud.drivers import network
from testcloud.flow.engine import FlowEngine

log = logging.getLogger("testcloud")

SERVICES = ("xmlrpc", "oneflow", "onegate", "market")
DEFAULT_PORTS = {"xmlrpc": 2633, "oneflow": 2474, "onegate": 5030, "market": 8099}


class LaunchError(RuntimeError):
    pass


def _bridge(state_dir: Path) -> None:
    """Real guests need the test bridge (and OneGate listens on it); this cloud is one of its users."""
    network.ensure_bridge(user=str(state_dir))


def _allow_guests(state_dir: Path, servers: Iterable[Server]) -> None:
    """Guests may reach the host only on this cloud's servers that listen on the bridge (OneGate; the
    others listen on 127.0.0.1), for as long as this process lives (see network.Bridge)."""
    ports = [server.port for server in servers if server.server_address[0] == BRIDGE_ADDRESS]
    network.allow_guest_ports(str(state_dir), ports)


def _remove_bridge_if_unused(state_dir: Path) -> None:
    """Drop this cloud's claim on the bridge; the bridge goes only when no other cloud or guest needs it."""
    try:
        network.remove_bridge_if_unused(user=str(state_dir))
    except OSError as error:
        log.warning("bridge cleanup: %s", error)


def _bind(make, preferred: int | None) -> Server:
    """Bind the preferred port, else any free one."""
    if preferred:
        try:
            return make(preferred)
        except OSError:
            log.info("port %s is taken, using another", preferred)
    return make(0)


@dataclass
class CloudHandle:
    state_dir: Path
    endpoints: dict[str, str]
    cloud: Cloud | None = None
    servers: list[Server] = field(default_factory=list)
    pid: int | None = None
    _stopped: dict[str, Server] = field(default_factory=dict, repr=False)

    @property
    def auth(self) -> str:
        return self.endpoints["auth"]

    def stop(self, keep_guests: bool = False) -> None:
        """Stop the cloud; guests are stopped too unless ``keep_guests`` (a restart re-attaches them)."""
        if self.pid is not None:
            stop_daemon(self.state_dir, keep_guests=keep_guests)
            self.pid = None
            return
        stoppers = [threading.Thread(target=server.stop) for server in self.servers]
        for stopper in stoppers:
            stopper.start()
        for stopper in stoppers:
            stopper.join()
        self.servers = []
        if self.cloud is not None:
            driver = self.cloud.config.driver
            self.cloud.shutdown(keep_guests=keep_guests)
            self.cloud = None
            if not keep_guests and driver != "dummy":
                _remove_bridge_if_unused(self.state_dir)
            elif driver != "dummy":  # the guests stay on the bridge; the closed ports are no longer theirs
                _allow_guests(self.state_dir, [])
        with contextlib.suppress(FileNotFoundError):
            (self.state_dir / "endpoints.json").unlink()

    def _server(self, name: str) -> Server:
        """The running server of endpoint ``name`` (found by its port: the list holds no names)."""
        if self.pid is not None or self.cloud is None:
            raise LaunchError(f"{name}: only a test cloud running in this process can stop one server")
        if name not in SERVICES:
            raise LaunchError(f"unknown server '{name}' (known: {', '.join(SERVICES)})")
        port = urlsplit(self.endpoints[name]).port
        for server in self.servers:
            if server.port == port:
                return server
        raise LaunchError(f"the {name} server is not running (stopped with stop_server?)")

    def stop_server(self, name: str) -> None:
        """Stop one server, e.g. ``"onegate"``, as if its daemon were stopped: its port refuses connections
        until :meth:`start_server` opens it again on the same address. The cloud and its guests run on."""
        server = self._server(name)
        server.stop()
        self.servers.remove(server)
        self._stopped[name] = server

    def start_server(self, name: str) -> None:
        """Start a server stopped by :meth:`stop_server` again, on the same address and with the same
        application and limits (guests keep the endpoint their context gave them)."""
        old = self._stopped.pop(name, None)
        if old is None:
            raise LaunchError(f"the {name} server was not stopped with stop_server")
        server = Server(old.server_address, old.RequestHandlerClass, old.app)
        for limit in ("idle_timeout", "request_timeout", "max_connections", "max_per_client"):
            setattr(server, limit, getattr(old, limit))
        server.start(f"testcloud-{name}")
        self.servers.append(server)

    def __enter__(self) -> CloudHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _ports_wanted(state_dir: Path, ports: str | dict[str, int]) -> dict[str, int | None]:
    if isinstance(ports, dict):
        return {name: ports.get(name) for name in SERVICES}
    if ports == "default":
        return dict(DEFAULT_PORTS)
    previous = state_dir / "ports.json"
    if ports == "auto" and previous.exists():
        return {name: json.loads(previous.read_text()).get(name) for name in SERVICES}
    return dict.fromkeys(SERVICES)


def start(
    state_dir: Path,
    ports: str | dict[str, int] = "auto",
    driver: str = "auto",
    background: bool = False,
    timings: Timings | None = None,
    ssh_public_key: str = "",
    flow_cooldown: int = 5,
    datastore_limit_mb: int | None = None,
) -> CloudHandle:
    state_dir = Path(state_dir).resolve()
    if driver not in DRIVERS:
        raise LaunchError(f"unknown driver '{driver}' (known: {', '.join(DRIVERS)})")
    if background:
        return _start_daemon(state_dir, ports, driver, ssh_public_key)
    if driver != "dummy":
        _bridge(state_dir)
    onegate_host = "127.0.0.1" if driver == "dummy" else BRIDGE_ADDRESS
    config = CloudConfig(
        state_dir=state_dir,
        driver=driver,
        onegate_host=onegate_host,
        timings=timings or Timings(),
        flow_cooldown=flow_cooldown,
        ssh_public_key=ssh_public_key,
        datastore_limit_mb=datastore_limit_mb,
    )
    cloud = Cloud(config)
    flow = FlowEngine(cloud)
    servers, endpoints = _serve(cloud, flow, _ports_wanted(state_dir, ports), onegate_host)
    endpoints["auth"] = f"oneadmin:{cloud.password()}"
    if driver != "dummy":
        _allow_guests(state_dir, servers.values())
    cloud.start_engine(flow.tick)
    for name, server in servers.items():
        server.start(f"testcloud-{name}")
    write_atomic(
        state_dir / "ports.json", json.dumps({n: s.port for n, s in servers.items()}).encode(), 0o600
    )
    document = dict(endpoints, pid=str(os.getpid()), driver=driver)
    write_atomic(state_dir / "endpoints.json", json.dumps(document, indent=2).encode(), 0o600)
    return CloudHandle(
        state_dir, {k: endpoints[k] for k in (*SERVICES, "auth")}, cloud, list(servers.values())
    )


def _serve(
    cloud: Cloud, flow: FlowEngine, wanted: dict[str, int], onegate_host: str
) -> tuple[dict[str, Server], dict[str, str]]:
    """Bind the four servers (not yet serving) and tell the cloud where they are; on failure close what
    was bound and stop the cloud."""
    servers: dict[str, Server] = {}
    try:
        servers["xmlrpc"] = _bind(lambda p: xmlrpc.make_server(cloud, "127.0.0.1", p), wanted["xmlrpc"])
        servers["market"] = _bind(lambda p: marketserver.make_server(cloud, "127.0.0.1", p), wanted["market"])
        servers["onegate"] = _bind(
            lambda p: onegate.make_server(cloud, flow, onegate_host, p), wanted["onegate"]
        )
        endpoints = {
            "xmlrpc": f"http://127.0.0.1:{servers['xmlrpc'].port}/RPC2",
            "market": f"http://127.0.0.1:{servers['market'].port}/",
            "onegate": f"http://{onegate_host}:{servers['onegate'].port}",
        }
        cloud.endpoints.update(endpoints)
        cloud.market.set_market_url(endpoints["market"])
        servers["oneflow"] = _bind(
            lambda p: oneflowserver.make_server(cloud, flow, "127.0.0.1", p), wanted["oneflow"]
        )
    except BaseException:
        for server in servers.values():
            server.server_close()
        cloud.shutdown(keep_guests=True)
        raise
    endpoints["oneflow"] = f"http://127.0.0.1:{servers['oneflow'].port}"
    return servers, endpoints


# ---------------------------------------------------------------------------------------------- daemon
def read_endpoints(state_dir: Path) -> dict[str, Any] | None:
    path = Path(state_dir) / "endpoints.json"
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def daemon_pid(state_dir: Path) -> int | None:
    """The pid of the daemon serving ``state_dir``, if it runs."""
    pid_file = Path(state_dir) / "daemon.pid"
    try:
        pid = int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except PROCESS_GONE:
        return None
    if b"testcloud.daemon" not in b" ".join(cmdline) or not _alive(pid):
        return None
    return pid


def _start_daemon(
    state_dir: Path, ports: str | dict[str, int], driver: str, ssh_public_key: str
) -> CloudHandle:
    if daemon_pid(state_dir) is not None:
        raise LaunchError(f"a test cloud already runs on {state_dir}")
    state_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        (state_dir / "endpoints.json").unlink()
    argv = [
        sys.executable,
        "-m",
        "testcloud.daemon",
        "--state-dir",
        str(state_dir),
        "--driver",
        driver,
        "--ports",
        ports if isinstance(ports, str) else json.dumps(ports),
    ]
    if ssh_public_key:
        argv += ["--ssh-public-key", ssh_public_key]
    log_path = state_dir / "testcloud.log"
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=str(Path(__file__).resolve().parent.parent),
        )

    def started() -> CloudHandle | None:
        document = read_endpoints(state_dir)
        if document and document.get("pid") == str(process.pid):
            endpoints = {k: document[k] for k in (*SERVICES, "auth")}
            return CloudHandle(state_dir, endpoints, pid=process.pid)
        if process.poll() is not None:
            raise LaunchError(f"the test cloud daemon exited with {process.returncode}; see {log_path}")
        return None

    try:
        return wait_until(started, 60, interval=0.1)
    except TimeoutError:
        process.terminate()
        raise LaunchError(f"the test cloud daemon did not start within 60 s; see {log_path}") from None


def stop_daemon(state_dir: Path, keep_guests: bool = False, timeout: float = 60.0) -> bool:
    """Stop the daemon of ``state_dir``: SIGTERM stops guests too, SIGUSR1 leaves them running."""
    pid = daemon_pid(state_dir)
    if pid is None:
        return False
    os.kill(pid, signal.SIGUSR1 if keep_guests else signal.SIGTERM)

    def gone() -> bool:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        return not _alive(pid)

    try:
        wait_until(gone, timeout, interval=0.1)
    except TimeoutError:
        os.kill(pid, signal.SIGKILL)
    return True


def _alive(pid: int) -> bool:
    """Running and not a zombie (PID 1 here may not reap orphans)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except PROCESS_GONE:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"
