"""TLS for a SuperNode's metrics (context/appliance/bin/flower-metrics-cert): the SuperNode's key stays on it,
its CSR and the certificate travel through the test cloud's OneGate (the calls a real OneGate answers), the
SuperLink signs with the appliance CA for the VM's address as OpenNebula set it, and the real exporter
serves HTTPS that real TLS clients (curl, Python's ssl) verify with the CA alone. The tool runs with
Flower 1.42's interpreter and libraries, as in the guest (/opt/flower/venv). Bad material is refused."""

from __future__ import annotations

import base64
import importlib.machinery
import importlib.util
import ipaddress
import json
import shutil
import socket
import ssl
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pyone
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from dummy_service import start_dummy_service
from metrics_helpers import start_exporter

from factory.harness.flwrenv import ensure_flower
from factory.harness.tlsmaterial import make_tls
from hostkit.paths import CONTEXT_DIR

TOOL = CONTEXT_DIR / "appliance" / "bin" / "flower-metrics-cert"


def _load() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("flower_metrics_cert", str(TOOL))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[loader.name] = module  # dataclasses look their module up there
    loader.exec_module(module)
    return module


cert_tool = _load()


@pytest.fixture(scope="module")
def guest_python() -> Path:
    return ensure_flower("1.42.0").python


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    tls = make_tls(tmp_path / "tls", ["127.0.0.1"])
    directory = tmp_path / "ca"
    directory.mkdir()
    shutil.copy(tls.ca_cert, directory / "ca.pem")
    shutil.copy(tls.ca_cert.parent / "ca.key", directory / "ca.key")  # make_tls keeps it beside
    return directory


# -- a OneFlow service in the test cloud (dummy driver): what the two sides see through OneGate ---------


def _guest(cloud: Any, vm_id: int) -> dict[str, str]:
    token = (cloud.state_dir / "vms" / str(vm_id) / "context" / "token.txt").read_text().strip()
    return {"ONEGATE_ENDPOINT": cloud.endpoints["onegate"], "ONEGATE_TOKEN": token, "VMID": str(vm_id)}


def _vm(cloud: Any, vm_id: int) -> Any:
    return pyone.OneServer(cloud.endpoints["xmlrpc"], session=cloud.auth).vm.info(vm_id)


def _run(python: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(python), str(TOOL), *args], capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", **env},
    )  # fmt: skip


def _https(port: int, name: str, ca: Path) -> str:
    """GET /metrics from 127.0.0.1:port verifying the certificate for ``name`` (the VM's address), as a
    Prometheus scraping https://name:port/ with ``ca_file`` does."""
    context = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=name) as tls,
    ):
        tls.sendall(f"GET /metrics HTTP/1.0\r\nHost: {name}\r\n\r\n".encode())
        chunks = []
        while chunk := tls.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def test_a_supernode_gets_a_certificate_of_the_appliance_ca_through_onegate(
    dummy_cloud: Any, tmp_path: Path, ca_dir: Path, guest_python: Path
) -> None:
    cloud = dummy_cloud
    service = start_dummy_service(cloud, "fl-tls", 2, nic=True)
    superlink, (node, other) = service.superlink, service.supernodes
    gate = cert_tool.OneGate.from_context(_guest(cloud, superlink))
    gate.publish({"ONEAPP_FL_ENDPOINT": "10.231.64.9:9092"})  # what the SuperLink appliance publishes
    address = str(_vm(cloud, node).TEMPLATE["NIC"]["IP"])
    node_dir, pinned = tmp_path / "node-tls", ca_dir / "ca.pem"  # the SuperNode pinned this CA already

    # the SuperNode publishes its request and waits (exit 3): nothing is signed yet
    waiting = _run(guest_python, _guest(cloud, node), "request", "--dir", str(node_dir), "--ca", str(pinned))
    assert waiting.returncode == 3, waiting.stderr
    csr = base64.b64decode(_vm(cloud, node).USER_TEMPLATE["ONEAPP_FL_METRICS_CSR"])
    assert b"BEGIN CERTIFICATE REQUEST" in csr and b"PRIVATE" not in csr
    key_file = node_dir / "node.key"
    assert key_file.stat().st_mode & 0o777 == 0o640  # the key stays in the VM, readable by root and flower

    # the SuperLink signs the one request there is, for the VM's address as OpenNebula set it
    signed = _run(guest_python, _guest(cloud, superlink), "sign", "--ca-dir", str(ca_dir))
    assert signed.returncode == 0, signed.stderr
    assert signed.stdout.strip() == f"issued the metrics certificate of SuperNode VM {node} for {address}"
    published = json.loads(base64.b64decode(_vm(cloud, superlink).USER_TEMPLATE["ONEAPP_FL_METRICS_CERTS"]))
    assert set(published) == {str(node)} and str(other) not in published
    again = _run(guest_python, _guest(cloud, superlink), "sign", "--ca-dir", str(ca_dir))
    assert again.returncode == 0 and again.stdout == "", again.stdout  # current: not re-issued

    # the SuperNode checks and installs it
    installed = _run(
        guest_python, _guest(cloud, node), "request", "--dir", str(node_dir), "--ca", str(pinned)
    )
    assert installed.returncode == 0, installed.stderr
    cert = x509.load_pem_x509_certificate((node_dir / "node.pem").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address(address)]
    assert names.get_values_for_type(x509.DNSName) == []
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False

    # the real exporter serves it; real TLS clients verify it with the CA alone, for that address only
    exporter = start_exporter(
        "supernode", "--log", str(tmp_path / "none.log"), "--no-gpus",
        "--tls-cert", str(node_dir / "node.pem"), "--tls-key", str(key_file),
    )  # fmt: skip
    try:
        assert "flower_supernode_connected" in _https(exporter.port, address, pinned)
        curl = subprocess.run(
            ["curl", "--silent", "--show-error", "--fail", "--cacert", str(pinned),
             "--connect-to", f"{address}:{exporter.port}:127.0.0.1:{exporter.port}",
             f"https://{address}:{exporter.port}/metrics"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert curl.returncode == 0 and "flower_exporter_source_up" in curl.stdout, curl.stderr
        with pytest.raises(ssl.SSLCertVerificationError, match="IP address mismatch"):
            _https(exporter.port, "10.231.64.250", pinned)  # another VM's address
        other_ca = make_tls(tmp_path / "other", ["127.0.0.1"]).ca_cert
        with pytest.raises(ssl.SSLCertVerificationError):
            _https(exporter.port, address, other_ca)
    finally:
        exporter.stop()


def _csr(key: ec.EllipticCurvePrivateKey, *, asks_for: str = "") -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "superlink")])
    )
    if asks_for:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(asks_for)), x509.DNSName("x")]),
            critical=False,
        )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def test_the_names_a_request_asks_for_are_ignored(ca_dir: Path) -> None:
    """A SuperNode asking for the SuperLink's address (or a CA) gets its own address only, no CA flag."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = cert_tool.sign_csr(
        _csr(key, asks_for="10.231.64.2"), (ca_dir / "ca.pem").read_bytes(), (ca_dir / "ca.key").read_bytes(),
        "7", "10.231.64.7",
    )  # fmt: skip
    cert = x509.load_pem_x509_certificate(pem)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["10.231.64.7"]
    assert names.get_values_for_type(x509.DNSName) == []
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign is False


def test_a_tampered_request_is_refused(ca_dir: Path) -> None:
    key, impostor = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    csr = x509.load_pem_x509_csr(_csr(key))
    # the request's body with another key's signature: the signature does not verify
    forged = x509.load_pem_x509_csr(_csr(impostor))
    der = csr.tbs_certrequest_bytes
    tampered = forged.public_bytes(serialization.Encoding.DER).replace(forged.tbs_certrequest_bytes, der)
    pem = (
        b"-----BEGIN CERTIFICATE REQUEST-----\n"
        + base64.encodebytes(tampered)
        + (b"-----END CERTIFICATE REQUEST-----\n")
    )
    ca, ca_key = (ca_dir / "ca.pem").read_bytes(), (ca_dir / "ca.key").read_bytes()
    with pytest.raises(cert_tool.CertError, match="signature of its certificate request does not verify"):
        cert_tool.sign_csr(pem, ca, ca_key, "7", "10.231.64.7")
    with pytest.raises(cert_tool.CertError, match="not a PEM certificate request"):
        cert_tool.sign_csr(b"nonsense", ca, ca_key, "7", "10.231.64.7")
    with pytest.raises(cert_tool.CertError, match="not an IP address"):
        cert_tool.sign_csr(_csr(key), ca, ca_key, "7", "")


def test_the_supernode_installs_only_a_certificate_for_itself_from_its_ca(
    ca_dir: Path, tmp_path: Path
) -> None:
    ca, ca_key = (ca_dir / "ca.pem").read_bytes(), (ca_dir / "ca.key").read_bytes()
    key, other_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    good = cert_tool.sign_csr(_csr(key), ca, ca_key, "7", "10.231.64.7")
    assert cert_tool.check_issued(good, key, ca, "10.231.64.7").serial_number > 0
    with pytest.raises(cert_tool.CertError, match="for another key"):
        cert_tool.check_issued(cert_tool.sign_csr(_csr(other_key), ca, ca_key, "7", "10.231.64.7"), key, ca,
                               "10.231.64.7")  # fmt: skip
    with pytest.raises(cert_tool.CertError, match="does not name this VM's address"):
        cert_tool.check_issued(good, key, ca, "10.231.64.8")
    rogue = make_tls(tmp_path / "rogue", ["127.0.0.1"])
    rogue_key = (rogue.ca_cert.parent / "ca.key").read_bytes()
    rogue_signed = cert_tool.sign_csr(_csr(key), rogue.ca_cert.read_bytes(), rogue_key, "7", "10.231.64.7")
    with pytest.raises(cert_tool.CertError, match="not signed by the pinned CA"):
        cert_tool.check_issued(rogue_signed, key, ca, "10.231.64.7")
    assert cert_tool.needs_renewal(good.decode(), _csr(other_key), "10.231.64.7")
    assert cert_tool.needs_renewal(good.decode(), _csr(key), "10.231.64.8")
    assert not cert_tool.needs_renewal(good.decode(), _csr(key), "10.231.64.7")


def test_without_onegate_it_is_one_line_and_exit_2(guest_python: Path, tmp_path: Path) -> None:
    result = _run(guest_python, {}, "request", "--dir", str(tmp_path / "d"))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().startswith("flower-metrics-cert: no OneGate ONEGATE_ENDPOINT")
    assert len(result.stderr.splitlines()) == 1
    dead = {"ONEGATE_ENDPOINT": "http://127.0.0.1:9", "ONEGATE_TOKEN": "t", "VMID": "1"}
    result = _run(guest_python, dead, "sign", "--ca-dir", str(tmp_path))
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
