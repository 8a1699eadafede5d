"""SuperNode logic on this host: node config from the service, version policy, GPU policy, its key,
and failing closed when the SuperLink's certificate does not verify (a real TLS server on loopback)."""

from __future__ import annotations

import base64
import json
import socket
import ssl
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest


def service_document(roles: list[tuple[str, int, list[int]]]) -> str:
    """A OneGate GET /service answer (shape as in ../shared/notes/opennebula.md) for the given roles."""
    return json.dumps(
        {
            "SERVICE": {
                "name": "flower",
                "id": "7",
                "state": 2,
                "roles": [
                    {
                        "name": name,
                        "cardinality": cardinality,
                        "state": 2,
                        "nodes": [
                            {"deploy_id": vm_id, "running": True, "vm_info": {"VM": {"ID": str(vm_id)}}}
                            for vm_id in vm_ids
                        ],
                    }
                    for name, cardinality, vm_ids in roles
                ],
            }
        }
    )


@pytest.mark.parametrize(
    ("vmid", "roles", "expected"),
    [
        (12, [("superlink", 1, [10]), ("supernode", 3, [14, 12, 11])], "partition-id=1 num-partitions=3"),
        (11, [("superlink", 1, [10]), ("supernode", 3, [14, 12, 11])], "partition-id=0 num-partitions=3"),
        (14, [("superlink", 1, [10]), ("supernode", 3, [14, 12, 11])], "partition-id=2 num-partitions=3"),
        # scale-down in progress: three VMs still listed for a cardinality of 2
        (14, [("superlink", 1, [10]), ("supernode", 2, [11, 12, 14])], "partition-id=2 num-partitions=3"),
        # a second SuperNode role (e.g. GPU nodes) counts on its own
        (21, [("supernode", 2, [11, 12]), ("gpu", 2, [21, 22])], "partition-id=0 num-partitions=2"),
        (99, [("supernode", 2, [11, 12])], ""),
    ],
)
def test_node_config_from_the_service(make_sandbox, vmid: int, roles, expected: str) -> None:
    sandbox = make_sandbox("supernode")
    document = service_document(roles)
    result = sandbox.bash('fl_node_config_from_service "$DOC" "$ID"', DOC=document, ID=str(vmid))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected


@pytest.mark.parametrize(
    ("ours", "theirs", "expected"),
    [
        ("1.42.0", "1.42.0", "compatible"),
        ("1.42.0", "1.42.3", "compatible"),
        ("1.42.0", "1.41.0", "mismatched"),
        ("1.42.0", "2.42.0", "mismatched"),
        ("1.9.0", "1.90.0", "mismatched"),
    ],
)
def test_version_compat(make_sandbox, ours: str, theirs: str, expected: str) -> None:
    result = make_sandbox("supernode").bash(f"fl_version_compat {ours} {theirs}")
    assert result.returncode == 0 and result.stdout.strip() == expected


def test_unparsable_version_is_not_guessed(make_sandbox) -> None:
    result = make_sandbox("supernode").bash("fl_version_compat 1.42.0 nightly || echo status=$?")
    assert result.stdout.strip() == "status=2"


@pytest.mark.parametrize(("policy", "fails"), [("strict", True), ("warn", False)])
def test_version_policy(make_sandbox, policy: str, fails: bool) -> None:
    sandbox = make_sandbox("supernode")
    script = (
        "FL_SL_VERSION=1.41.0\n"
        "if (supernode_check_version 1.42.0); then echo RAN\n"
        'else echo "REFUSED: $(cat "$FL_REASON_FILE")"; fi\n'
    )
    result = sandbox.bash(script, ONEAPP_FL_VERSION_POLICY=policy)
    assert result.returncode == 0, result.stderr
    if fails:
        assert result.stdout.startswith(
            "REFUSED: Flower version mismatch: SuperNode 1.42.0, SuperLink 1.41.0"
        )
        assert "ONEAPP_FL_VERSION_POLICY=strict" in result.stdout
    else:
        assert result.stdout.strip() == "RAN"
        assert "Flower version mismatch" in result.stderr


def test_a_supernode_looks_for_its_superlink_at_most_2_s_apart(make_sandbox) -> None:
    """The service deploys the SuperNodes with the SuperLink (OneFlow deployment none), so a SuperNode looks
    for it before it published its endpoint: it looks again after 1 s, then every 2 s (FL_DISCOVERY_POLL),
    not with a backoff to 15 s that would leave it idle up to 15 s after the SuperLink's READY. The
    lookups fail 6 times here (a SuperLink still booting), never fatally."""
    script = (
        "SLEEPS=() looks=0\n"
        'sleep() { SLEEPS+=("$1"); }\n'
        "supernode_lookup_service() {\n"
        "    looks=$((looks + 1))\n"
        "    ((looks >= 7)) || return 1\n"
        "    FL_SL_ENDPOINT=10.231.64.9:9092 FL_SL_VERSION=1.42.0\n"
        "}\n"
        "supernode_discover\n"
        'printf "%s|%s|%s\\n" "${SLEEPS[*]}" "$looks" "$FL_SL_ENDPOINT"\n'
    )
    result = make_sandbox("supernode").bash(
        script,
        ONEGATE_ENDPOINT="http://127.0.0.1:9",
        TOKENTXT="token",
        VMID="3",
        ONEAPP_FL_SUPERLINK="",
        ONEAPP_FL_DISCOVERY_TIMEOUT="600",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1 2 2 2 2 2|7|10.231.64.9:9092"
    assert "found the SuperLink at 10.231.64.9:9092" in result.stderr


def test_gpu_image_without_gpu_fails_clearly(make_sandbox) -> None:
    sandbox = make_sandbox("supernode", accel="gpu")
    result = sandbox.service("configure")
    assert result.returncode != 0
    assert sandbox.status == "configure_failure"
    assert "no NVIDIA GPU found" in sandbox.reason and "ONEAPP_FL_GPU=off" in sandbox.reason


def test_gpu_image_can_be_told_to_use_the_cpu(make_sandbox) -> None:
    sandbox = make_sandbox("supernode", accel="gpu")
    sandbox.configured(ONEAPP_FL_GPU="off")


def test_cpu_image_ignores_the_gpu_parameter(make_sandbox) -> None:
    sandbox = make_sandbox("supernode")
    assert sandbox.service("configure", ONEAPP_FL_GPU="auto").returncode == 0


def test_supernode_key_is_ecdsa_p384_private_0600_and_kept(make_sandbox) -> None:
    sandbox = make_sandbox("supernode")
    assert sandbox.service("configure").returncode == 0
    private = sandbox.state / "keys" / "supernode"
    public = sandbox.state / "keys" / "supernode.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    described = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(public)], capture_output=True, text=True, check=True
    )
    assert described.stdout.startswith("384 ") and "(ECDSA)" in described.stdout
    first = public.read_text()
    assert sandbox.service("configure").returncode == 0
    assert public.read_text() == first
    assert "BEGIN OPENSSH PRIVATE KEY" not in sandbox.log("configure")


# --- fail closed on the SuperLink's certificate ------------------------------------------------------


def make_ca_and_server(directory: Path, name: str) -> tuple[Path, Path, Path]:
    """An openssl CA and a server certificate for 127.0.0.1 in ``directory``."""
    directory.mkdir(parents=True)
    ca_key, ca, key, csr, cert = (
        directory / f for f in ("ca.key", "ca.pem", "server.key", "server.csr", "s.pem")
    )

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    curve = ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]
    openssl("genpkey", *curve, "-out", str(ca_key))
    openssl("req", "-x509", "-key", str(ca_key), "-subj", f"/CN={name}", "-days", "2", "-out", str(ca))
    openssl("genpkey", *curve, "-out", str(key))
    openssl("req", "-new", "-key", str(key), "-subj", "/CN=127.0.0.1", "-out", str(csr))
    extensions = directory / "ext.cnf"
    extensions.write_text("subjectAltName=IP:127.0.0.1\n")
    openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-set_serial", "7",
        "-days", "2", "-extfile", str(extensions), "-out", str(cert),
    )  # fmt: skip
    return ca, cert, key


@pytest.fixture
def tls_superlink(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A TLS server on 127.0.0.1 answering /health with 200, like the Fleet proxy; yields (port, its CA)."""
    ca, cert, key = make_ca_and_server(tmp_path / "superlink-ca", "SuperLink test CA")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            try:
                with context.wrap_socket(connection, server_side=True) as tls:
                    tls.settimeout(5)
                    tls.recv(4096)
                    tls.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            except (ssl.SSLError, OSError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield port, ca
    stop.set()
    thread.join(timeout=5)
    listener.close()


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def test_supernode_with_the_wrong_ca_fails_closed(make_sandbox, tls_superlink, tmp_path: Path) -> None:
    port, _ = tls_superlink
    wrong_ca, _, _ = make_ca_and_server(tmp_path / "other-ca", "Another CA")
    sandbox = make_sandbox("supernode")
    parameters = {"ONEAPP_FL_SUPERLINK": f"127.0.0.1:{port}", "ONEAPP_FL_SUPERLINK_CA": b64(wrong_ca)}
    result = sandbox.service("configure", "bootstrap", **parameters)
    assert result.returncode != 0
    assert sandbox.status == "bootstrap_failure"
    assert f"TLS verification of the SuperLink at 127.0.0.1:{port} failed" in sandbox.reason
    assert not (sandbox.etc / "supernode.args").exists()


def test_supernode_with_the_right_ca_starts(make_sandbox, tls_superlink) -> None:
    port, ca = tls_superlink
    sandbox = make_sandbox("supernode")
    parameters = {
        "ONEAPP_FL_SUPERLINK": f"127.0.0.1:{port}",
        "ONEAPP_FL_SUPERLINK_CA": b64(ca),
        "ONEAPP_FL_NODE_CONFIG": "partition-id=1 num-partitions=4",
    }
    result = sandbox.service("configure", "bootstrap", **parameters)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sandbox.status == "bootstrap_success"
    assert "All set and ready to serve" in sandbox.motd
    args = sandbox.args("supernode")
    assert args[args.index("--superlink") + 1] == f"127.0.0.1:{port}"
    pinned = Path(args[args.index("--root-certificates") + 1])
    assert pinned.read_bytes() == ca.read_bytes()
    assert args[args.index("--auth-supernode-private-key") + 1] == str(sandbox.state / "keys" / "supernode")
    assert args[args.index("--node-config") + 1] == "partition-id=1 num-partitions=4"
    assert "--insecure" not in args


def test_supernode_without_any_ca_fails_closed(make_sandbox, tls_superlink) -> None:
    port, _ = tls_superlink
    sandbox = make_sandbox("supernode")
    result = sandbox.service("configure", "bootstrap", ONEAPP_FL_SUPERLINK=f"127.0.0.1:{port}")
    assert result.returncode != 0
    assert "no CA certificate for the SuperLink" in sandbox.reason


def test_insecure_supernode_only_when_chosen(make_sandbox) -> None:
    sandbox = make_sandbox("supernode")
    closed_port = socket.create_server(("127.0.0.1", 0))
    port = closed_port.getsockname()[1]
    closed_port.close()  # nothing listens: the SuperNode is told to keep retrying, not to fail
    result = sandbox.service(
        "configure", "bootstrap", ONEAPP_FL_SUPERLINK=f"127.0.0.1:{port}", ONEAPP_FL_TLS="NO"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    args = sandbox.args("supernode")
    assert "--insecure" in args
    assert "--root-certificates" not in args and "--auth-supernode-private-key" not in args
    assert "not reachable now" in sandbox.log("bootstrap")
    assert "partition-id=0 num-partitions=1" in args


@pytest.mark.parametrize(
    ("published", "own", "expected"),
    [
        ("YES", "YES", "YES"),
        ("NO", "YES", "NO"),  # a TLS-only SuperLink refuses a key it does not know (2004)
        ("YES", "NO", "YES"),  # one with node auth refuses a node without a key (2001)
        ("", "NO", "NO"),  # nothing published (explicit ONEAPP_FL_SUPERLINK): this VM's parameter
        ("", "YES", "YES"),
    ],
)
def test_the_key_is_presented_as_the_superlink_requires(
    make_sandbox, published: str, own: str, expected: str
) -> None:
    result = make_sandbox("supernode").bash(
        'FL_SL_NODE_AUTH="$PUBLISHED"; supernode_node_auth', PUBLISHED=published, ONEAPP_FL_NODE_AUTH=own
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected
    assert ("following it" in result.stderr) == (published not in ("", own))
