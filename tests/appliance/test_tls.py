"""SuperLink certificates: generated CA and server certificate (SANs, modes, kept across runs), or the
user's own; a real TLS handshake on loopback with what `configure` produced."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def sans(certificate: x509.Certificate) -> tuple[set[str], set[str]]:
    extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = set(extension.get_values_for_type(x509.DNSName))
    addresses = {str(address) for address in extension.get_values_for_type(x509.IPAddress)}
    return names, addresses


def fingerprint(path: Path) -> bytes:
    return load(path).fingerprint(hashes.SHA256())


@pytest.fixture
def configured(make_sandbox):
    return make_sandbox("superlink").configured(ETH0_IP="10.231.64.50", ETH1_IP="192.168.77.5")


def test_server_certificate_names_every_address_the_hostname_and_loopback(configured) -> None:
    tls = configured.etc / "tls"
    names, addresses = sans(load(tls / "server.pem"))
    assert {"10.231.64.50", "192.168.77.5", "127.0.0.1"} <= addresses
    assert socket.gethostname() in names
    assert "localhost" in names  # the proxy verifies the SuperLink as "localhost"


def test_ca_and_server_certificate_profiles(configured) -> None:
    tls = configured.etc / "tls"
    ca = load(tls / "ca.pem")
    server = load(tls / "server.pem")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    usages = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usages
    assert (
        isinstance(ca.public_key(), ec.EllipticCurvePublicKey) and ca.public_key().curve.name == "secp384r1"
    )
    assert server.issuer == ca.subject
    ca.public_key().verify(
        server.signature, server.tbs_certificate_bytes, ec.ECDSA(server.signature_hash_algorithm)
    )


def test_private_keys_are_0600(configured) -> None:
    tls = configured.etc / "tls"
    for key in ("ca.key", "server.key"):
        assert stat.S_IMODE((tls / key).stat().st_mode) == 0o600, key


def test_reconfigure_keeps_ca_and_certificate(configured) -> None:
    tls = configured.etc / "tls"
    before = (fingerprint(tls / "ca.pem"), fingerprint(tls / "server.pem"))
    configured.configured(ETH0_IP="10.231.64.50", ETH1_IP="192.168.77.5")
    assert (fingerprint(tls / "ca.pem"), fingerprint(tls / "server.pem")) == before


def test_new_address_reissues_the_server_certificate_from_the_same_ca(configured) -> None:
    tls = configured.etc / "tls"
    ca_before = fingerprint(tls / "ca.pem")
    configured.configured(ETH0_IP="10.231.64.51")
    assert fingerprint(tls / "ca.pem") == ca_before
    _, addresses = sans(load(tls / "server.pem"))
    assert "10.231.64.51" in addresses and "10.231.64.50" not in addresses


def serve_tls_once(certificate: Path, key: Path) -> tuple[int, threading.Thread]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificate, key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        with listener:
            connection, _ = listener.accept()
            try:
                with context.wrap_socket(connection, server_side=True) as tls_connection:
                    tls_connection.recv(1)
            except (ssl.SSLError, OSError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return port, thread


def test_generated_chain_verifies_for_127_0_0_1_as_flower_superexec_needs(configured) -> None:
    tls = configured.etc / "tls"
    port, thread = serve_tls_once(tls / "server.pem", tls / "server.key")
    client = ssl.create_default_context(cafile=str(tls / "ca.pem"))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        client.wrap_socket(raw, server_hostname="127.0.0.1") as connection,
    ):
        assert connection.version() in {"TLSv1.2", "TLSv1.3"}
        connection.sendall(b"x")
    thread.join(timeout=10)


# --- the user's own certificates -------------------------------------------------------------------


def sign(
    subject: str,
    issuer: x509.Name | None,
    signer: ec.EllipticCurvePrivateKey | None,
    extension,
    *,
    critical: bool,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A new key and its certificate for ``subject`` (valid now, 30 days), signed by ``signer`` as
    ``issuer``, or self-signed when both are None."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(extension, critical=critical)
        .sign(signer or key, hashes.SHA256())
    )
    return key, certificate


def make_ca(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    return sign(name, None, None, x509.BasicConstraints(ca=True, path_length=0), critical=True)


def make_leaf(ca_key, ca_cert, address: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    names = [x509.DNSName("superlink.example"), x509.IPAddress(ipaddress.ip_address(address))]
    return sign(
        "superlink.example", ca_cert.subject, ca_key, x509.SubjectAlternativeName(names), critical=False
    )


def pem64(item) -> str:
    if isinstance(item, x509.Certificate):
        data = item.public_bytes(serialization.Encoding.PEM)
    else:
        data = item.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    return base64.b64encode(data).decode()


def configure_with_user_tls(make_sandbox, **material):
    """A SuperLink's `configure` given the user's PEM items as ONEAPP_FL_SSL_<NAME> (cert, key, ca)."""
    sandbox = make_sandbox("superlink")
    parameters = {f"ONEAPP_FL_SSL_{name.upper()}": pem64(item) for name, item in material.items()}
    return sandbox, sandbox.service("configure", ETH0_IP="10.231.64.50", **parameters)


def test_user_certificates_are_presented_by_the_proxy(make_sandbox) -> None:
    ca_key, ca_cert = make_ca("User CA")
    leaf_key, leaf_cert = make_leaf(ca_key, ca_cert, "10.231.64.50")
    sandbox, result = configure_with_user_tls(make_sandbox, cert=leaf_cert, key=leaf_key, ca=ca_cert)
    assert result.returncode == 0, result.stdout + result.stderr
    tls = sandbox.etc / "tls"
    assert load(tls / "user.pem") == leaf_cert
    assert stat.S_IMODE((tls / "user.key").stat().st_mode) == 0o600
    proxy = (sandbox.etc / "proxy" / "nginx.conf").read_text()
    assert f"ssl_certificate {tls / 'user.pem'};" in proxy
    assert f"ssl_certificate_key {tls / 'user.key'};" in proxy
    # The SuperLink itself keeps the appliance's own certificate (SAN 127.0.0.1 for its SuperExec).
    assert str(tls / "server.pem") in sandbox.args("superlink")
    assert f"FL_PUBLIC_CA={tls / 'user-ca.pem'}" in (tls / "public.env").read_text()


def test_user_key_that_does_not_match_is_refused(make_sandbox) -> None:
    ca_key, ca_cert = make_ca("User CA")
    _, leaf_cert = make_leaf(ca_key, ca_cert, "10.231.64.50")
    other_key = ec.generate_private_key(ec.SECP256R1())
    sandbox, result = configure_with_user_tls(make_sandbox, cert=leaf_cert, key=other_key, ca=ca_cert)
    assert result.returncode != 0
    assert sandbox.status == "configure_failure"
    assert "ONEAPP_FL_SSL_KEY: does not match the certificate" in sandbox.reason


def test_user_certificate_from_another_ca_is_refused(make_sandbox) -> None:
    ca_key, ca_cert = make_ca("User CA")
    _, other_ca = make_ca("Someone else")
    leaf_key, leaf_cert = make_leaf(ca_key, ca_cert, "10.231.64.50")
    sandbox, result = configure_with_user_tls(make_sandbox, cert=leaf_cert, key=leaf_key, ca=other_ca)
    assert result.returncode != 0
    assert "ONEAPP_FL_SSL_CERT: does not verify against ONEAPP_FL_SSL_CA" in sandbox.reason


def test_user_certificate_without_its_ca_is_refused(make_sandbox) -> None:
    ca_key, ca_cert = make_ca("User CA")
    leaf_key, leaf_cert = make_leaf(ca_key, ca_cert, "10.231.64.50")
    sandbox, result = configure_with_user_tls(make_sandbox, cert=leaf_cert, key=leaf_key)
    assert result.returncode != 0
    assert "ONEAPP_FL_SSL_CA: missing" in sandbox.reason
