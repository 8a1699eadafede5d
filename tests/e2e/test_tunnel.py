"""The paramiko SSH session and local port forward against a real sshd on loopback (started here)."""

from __future__ import annotations

import http.server
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from factory.harness.bareflower import free_port
from factory.harness.tlsmaterial import make_keypair
from factory.harness.tunnel import SSHSession
from hostkit.errors import FactoryError

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[tuple[int, Path, Path]]:
    """An sshd on 127.0.0.1 accepting one freshly made key for the current user (root in CI)."""
    if not Path(SSHD).exists():
        # Not installed by setup.sh on purpose (its package starts a network-facing service); the tunnel is
        # exercised against the appliances' own sshd by the cloud pair test either way.
        pytest.skip("no sshd binary on this host (Debian package openssh-server)")
    client = make_keypair(tmp_path / "client", kind="ed25519")
    host = make_keypair(tmp_path / "host_key", kind="ed25519")
    authorized = tmp_path / "authorized_keys"
    authorized.write_text(client.public_line() + "\n")
    authorized.chmod(0o600)
    port = free_port()
    config = tmp_path / "sshd_config"
    config.write_text(
        f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {host.private}\nAuthorizedKeysFile {authorized}\n"
        f"PidFile {tmp_path / 'sshd.pid'}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "UsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\nAllowTcpForwarding yes\n"
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
    process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            import socket

            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if process.poll() is not None:
                pytest.fail(f"sshd exited: {process.stderr.read()}")
            time.sleep(0.1)
    yield port, client.private, host.public
    process.terminate()
    process.wait(timeout=10)


def _user() -> str:
    import getpass

    return getpass.getuser()


def test_execute_and_forward(sshd: tuple[int, Path, Path], tmp_path: Path) -> None:
    port, key, host_public = sshd
    served = tmp_path / "www"
    served.mkdir()
    (served / "health").write_text("ok from behind the tunnel")
    handler = lambda *args: http.server.SimpleHTTPRequestHandler(*args, directory=str(served))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        session = SSHSession(
            "127.0.0.1", _user(), key, port=port, expected_host_key=host_public.read_text(),
            known_hosts=tmp_path / "known_hosts",
        )  # fmt: skip
        with session.connect(timeout=20):
            code, out, _ = session.execute("echo tunnel-$((20 + 22))")
            assert (code, out.strip()) == (0, "tunnel-42")
            with session.forward("127.0.0.1", server.server_address[1]) as forward:
                for _ in range(3):  # several connections through one forward
                    with urllib.request.urlopen(f"http://{forward.address}/health", timeout=10) as reply:
                        assert reply.read() == b"ok from behind the tunnel"
        assert (tmp_path / "known_hosts").read_text().strip(), "the host key is recorded"
    finally:
        server.shutdown()


def test_a_different_host_key_is_refused(sshd: tuple[int, Path, Path], tmp_path: Path) -> None:
    port, key, _ = sshd
    other = make_keypair(tmp_path / "other_host", kind="ed25519").public_line()
    session = SSHSession("127.0.0.1", _user(), key, port=port, expected_host_key=other)
    started = time.monotonic()
    with pytest.raises(FactoryError, match="does not match"):
        session.connect(timeout=30)
    assert time.monotonic() - started < 10, "a wrong host key is final, not retried"


def test_an_unknown_client_key_is_refused(sshd: tuple[int, Path, Path], tmp_path: Path) -> None:
    port, _, _ = sshd
    stranger = make_keypair(tmp_path / "stranger", kind="ed25519").private
    with pytest.raises(FactoryError, match="SSH to"):
        SSHSession("127.0.0.1", _user(), stranger, port=port).connect(timeout=3)
