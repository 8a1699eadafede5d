"""SSH access to appliance VMs with paramiko: a local port forward (the way a user reaches the SuperLink's
Control API, which never listens on the network) and remote commands (log collection).

Host keys: a VM booted for a test is new by definition, so its key cannot be known beforehand. The caller
chooses: ``expected_host_key`` (an OpenSSH public key line, e.g. published by the VM) pins it; otherwise the
key seen first is accepted and recorded in ``known_hosts`` for the rest of the session.
"""

from __future__ import annotations

import select
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path

import paramiko

from hostkit.errors import FactoryError
from hostkit.waiting import wait_until


def _load_private_key(path: Path) -> paramiko.PKey:
    for key_class in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return key_class.from_private_key_file(str(path))
        except (paramiko.SSHException, ValueError):
            continue
    raise FactoryError(f"{path}: not an OpenSSH private key paramiko can read (ed25519, ecdsa, rsa)")


class HostKeyMismatch(paramiko.SSHException):
    """The server's host key is not the expected one: never retried."""


class _PinnedHostKey(paramiko.MissingHostKeyPolicy):
    def __init__(self, expected: str) -> None:
        parts = expected.split()
        if len(parts) < 2:
            raise FactoryError(f"expected host key {expected!r} is not an OpenSSH public key line")
        self.expected_type, self.expected_blob = parts[0], parts[1]

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        if key.get_name() != self.expected_type or key.get_base64() != self.expected_blob:
            raise HostKeyMismatch(f"host key of {hostname} does not match the expected key")
        client.get_host_keys().add(hostname, key.get_name(), key)


@dataclass
class SSHSession:
    """One SSH connection to a VM; open with :meth:`connect` (retries until the deadline)."""

    host: str
    user: str
    private_key: Path
    port: int = 22
    expected_host_key: str | None = None
    known_hosts: Path | None = None
    client: paramiko.SSHClient | None = field(default=None, init=False)

    def connect(self, timeout: float = 120.0) -> SSHSession:
        """Log in, retrying every 2 s until ``timeout`` while the guest is not up or has not installed the
        key yet; a host key other than the pinned or known one is refused at once."""
        key = _load_private_key(self.private_key)
        errors: list[Exception] = []

        def attempt() -> paramiko.SSHClient | None:
            client = self._client()
            try:
                client.connect(
                    self.host,
                    port=self.port,
                    username=self.user,
                    pkey=key,
                    timeout=10,
                    banner_timeout=10,
                    auth_timeout=10,
                    allow_agent=False,
                    look_for_keys=False,
                )
            except HostKeyMismatch as error:
                client.close()
                raise FactoryError(f"SSH to {self.user}@{self.host}:{self.port} refused: {error}") from None
            except (OSError, paramiko.SSHException) as error:
                # not up yet, or the guest has not installed our key yet: try again until the deadline
                errors.append(error)
                client.close()
                return None
            return client

        try:
            client = wait_until(attempt, timeout, interval=2.0, what="SSH login")
        except TimeoutError:
            last_error = errors[-1] if errors else None
            raise FactoryError(
                f"SSH to {self.user}@{self.host}:{self.port} failed for {timeout:.0f} s: {last_error}"
            ) from None
        if self.known_hosts is not None:
            self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
            client.save_host_keys(str(self.known_hosts))
        self.client = client
        return self

    def _client(self) -> paramiko.SSHClient:
        """A client that trusts the known hosts file and the pinned key (any new key when none is pinned)."""
        client = paramiko.SSHClient()
        if self.known_hosts is not None and self.known_hosts.exists():
            client.load_host_keys(str(self.known_hosts))
        if self.expected_host_key:
            client.set_missing_host_key_policy(_PinnedHostKey(self.expected_host_key))
        else:
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        return client

    def execute(self, command: str, timeout: float = 60.0) -> tuple[int, str, str]:
        if self.client is None:
            raise FactoryError("SSH session is not connected")
        _, stdout, stderr = self.client.exec_command(command, timeout=timeout)
        out = stdout.read().decode(errors="replace")
        err = stderr.read().decode(errors="replace")
        return stdout.channel.recv_exit_status(), out, err

    def forward(self, remote_host: str, remote_port: int) -> LocalForward:
        if self.client is None:
            raise FactoryError("SSH session is not connected")
        transport = self.client.get_transport()
        if transport is None or not transport.is_active():
            raise FactoryError(f"SSH connection to {self.host} is closed")
        return LocalForward(transport, remote_host, remote_port).start()

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    def __enter__(self) -> SSHSession:
        return self if self.client is not None else self.connect()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class LocalForward:
    """``ssh -L 127.0.0.1:<free port>:remote_host:remote_port`` over an open paramiko transport."""

    def __init__(self, transport: paramiko.Transport, remote_host: str, remote_port: int) -> None:
        self.transport = transport
        self.remote = (remote_host, remote_port)
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.local_port = int(self.listener.getsockname()[1])
        self._closing = threading.Event()
        self._thread = threading.Thread(
            target=self._accept_loop, name=f"forward-{self.local_port}", daemon=True
        )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.local_port}"

    def start(self) -> LocalForward:
        self._thread.start()
        return self

    def _accept_loop(self) -> None:
        self.listener.settimeout(0.5)
        while not self._closing.is_set():
            try:
                connection, origin = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._pump, args=(connection, origin), daemon=True).start()

    def _pump(self, connection: socket.socket, origin: tuple[str, int]) -> None:
        try:
            channel = self.transport.open_channel("direct-tcpip", self.remote, origin, timeout=15)
        except (paramiko.SSHException, OSError):
            connection.close()
            return
        try:
            while not self._closing.is_set():
                readable, _, _ = select.select([connection, channel], [], [], 0.5)
                if connection in readable:
                    data = connection.recv(65536)
                    if not data:
                        break
                    channel.sendall(data)
                if channel in readable:
                    data = channel.recv(65536)
                    if not data:
                        break
                    connection.sendall(data)
        except OSError:
            pass
        finally:
            channel.close()
            connection.close()

    def close(self) -> None:
        self._closing.set()
        self.listener.close()
        self._thread.join(timeout=2)

    def __enter__(self) -> LocalForward:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
