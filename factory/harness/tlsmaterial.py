"""TLS and SuperNode-auth key material made with the real OpenSSL and OpenSSH tools.

Used by the bare-Flower harness (a SuperLink and SuperNodes on loopback) and by the federation runner's SSH
access. Private keys are written 0600; nothing secret is ever printed.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from hostkit.errors import FactoryError


@dataclass(frozen=True)
class TLSFiles:
    ca_cert: Path
    server_cert: Path
    server_key: Path


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path

    def public_line(self) -> str:
        return self.public.read_text().strip()


def _run(command: list[str], what: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise FactoryError(
            f"{what} failed ({command[0]} exit {result.returncode}): {result.stderr.strip()[-800:]}"
        )


def _private(path: Path) -> None:
    os.chmod(path, 0o600)


def make_tls(directory: Path, hosts: list[str], days: int = 30) -> TLSFiles:
    """A fresh CA and a server certificate for ``hosts`` (IP addresses or DNS names); EC P-384 keys.

    127.0.0.1 is always among the SANs: a SuperLink's own SuperExec connects to it and verifies it.
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = directory / "ca.key", directory / "ca.crt"
    server_key, server_csr, server_cert = (
        directory / "server.key",
        directory / "server.csr",
        directory / "server.pem",
    )
    names = ["127.0.0.1", *[host for host in hosts if host != "127.0.0.1"]]
    sans = []
    for name in names:
        try:
            ipaddress.ip_address(name)
            sans.append(f"IP:{name}")
        except ValueError:
            sans.append(f"DNS:{name}")
    for key in (ca_key, server_key):
        _run(["openssl", "ecparam", "-name", "secp384r1", "-genkey", "-noout", "-out", str(key)], "CA key")
        _private(key)
    _run(
        [
            "openssl", "req", "-x509", "-new", "-key", str(ca_key), "-sha384", "-days", str(days),
            "-subj", "/CN=Flower factory test CA", "-out", str(ca_cert),
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        ],
        "CA certificate",
    )  # fmt: skip
    _run(
        [
            "openssl",
            "req",
            "-new",
            "-key",
            str(server_key),
            "-subj",
            f"/CN={names[-1]}",
            "-out",
            str(server_csr),
        ],
        "server certificate request",
    )
    extensions = directory / "server.ext"
    extensions.write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        f"extendedKeyUsage=serverAuth\nsubjectAltName={','.join(sans)}\n"
    )
    _run(
        [
            "openssl", "x509", "-req", "-in", str(server_csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
            "-CAcreateserial", "-days", str(days), "-sha384", "-extfile", str(extensions),
            "-out", str(server_cert),
        ],
        "server certificate",
    )  # fmt: skip
    return TLSFiles(ca_cert=ca_cert, server_cert=server_cert, server_key=server_key)


def make_keypair(private: Path, kind: str = "ecdsa-p384", comment: str = "flower-factory") -> KeyPair:
    """An OpenSSH key pair: ``ecdsa-p384`` (what SuperNode authentication accepts) or ``ed25519`` (SSH)."""
    private.parent.mkdir(parents=True, exist_ok=True)
    for stale in (private, private.with_name(private.name + ".pub")):
        stale.unlink(missing_ok=True)
    type_args = {"ecdsa-p384": ["-t", "ecdsa", "-b", "384"], "ed25519": ["-t", "ed25519"]}[kind]
    _run(["ssh-keygen", "-q", *type_args, "-N", "", "-C", comment, "-f", str(private)], "ssh-keygen")
    _private(private)
    return KeyPair(private=private, public=private.with_name(private.name + ".pub"))
