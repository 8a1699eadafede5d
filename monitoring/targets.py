"""Prometheus targets from OneGate's view of a OneFlow service: file_sd JSON, or an http_sd endpoint.

A Prometheus that is not part of the service (the user's own) scrapes every VM of it, SuperNodes added or
removed by scaling included, with one of:

    python -m monitoring.targets file --out /etc/prometheus/flower.json [--interval 30]
    python -m monitoring.targets http --listen 127.0.0.1:9199 [--interval 30]

and in prometheus.yml ``file_sd_configs: [{files: [/etc/prometheus/flower.json]}]`` or
``http_sd_configs: [{url: http://127.0.0.1:9199/targets}]`` (``monitoring/prometheus/*.yml.j2``).

OneGate: the credentials one-context gives a VM of the service (ONEGATE_ENDPOINT, ONEGATE_TOKEN or
``--token-file``, VMID). ``GET /service`` lists the roles and their VMs; its ``vm_info`` is minimal
(OneFlow keeps only ID/UID/GID/UNAME/GNAME/NAME, src/flow/lib/models/role.rb ``VM_INFO``), so each VM is
read with ``GET /vms/:id`` (``build_vm_hash`` in src/onegate/onegate-server.rb: NAME, ID, STATE, LCM_STATE,
USER_TEMPLATE, TEMPLATE.NIC/NIC_ALIAS), as the appliance's own fl_onegate_service_vms does. The address
is the VM's first NIC IP (set by OpenNebula, not writable through OneGate); the port is the role's.

The output follows Prometheus' file_sd / http_sd format: a JSON list of
``{"targets": [...], "labels": {...}}`` (Prometheus configuration docs: file_sd_config, http_sd_config).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

DEFAULT_ROLES = {"superlink": 9101, "supernode": 9101}
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
# VM states (include/VirtualMachine.h): only ACTIVE (3) VMs are scraped.
VM_ACTIVE = "3"


class TargetsError(Exception):
    """OneGate could not be read, or a bad option: one line for the user."""


@dataclass(frozen=True)
class OneGate:
    endpoint: str
    token: str
    vmid: str
    timeout: float = 10.0

    def get(self, path: str) -> Any:
        request = urllib.request.Request(
            self.endpoint.rstrip("/") + path,
            headers={
                "X-ONEGATE-TOKEN": self.token,
                "X-ONEGATE-VMID": self.vmid,
                "Accept": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as reply:
                return json.loads(reply.read().decode())
        except urllib.error.HTTPError as error:
            raise TargetsError(
                f"OneGate {path}: HTTP {error.code} {error.read().decode(errors='replace')[:200]}"
            ) from None
        except (urllib.error.URLError, OSError, ValueError) as error:
            raise TargetsError(f"OneGate {path}: {error}") from None

    @classmethod
    def from_environment(cls, environ: dict[str, str], token_file: str = "") -> OneGate:
        endpoint = environ.get("ONEGATE_ENDPOINT", "")
        token = environ.get("ONEGATE_TOKEN", "")
        if token_file:
            try:
                token = Path(token_file).read_text().strip()
            except OSError as error:
                raise TargetsError(f"--token-file: cannot read {token_file}: {error.strerror}") from None
        vmid = environ.get("VMID", "")
        missing = [
            name
            for name, value in (("ONEGATE_ENDPOINT", endpoint), ("ONEGATE_TOKEN", token), ("VMID", vmid))
            if not value
        ]
        if missing:
            raise TargetsError(
                f"missing OneGate setting(s): {', '.join(missing)} (one-context sets them in a VM)"
            )
        if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", endpoint):
            raise TargetsError(f"ONEGATE_ENDPOINT: {endpoint[:80]!r} is not an http(s) URL")
        return cls(endpoint, token, vmid)


def service_with_vms(gate: OneGate) -> dict[str, Any]:
    """GET /service with each node's vm_info replaced by GET /vms/:id (a VM that cannot be read keeps
    the minimal vm_info and gets no target)."""
    document = gate.get("/service")
    if not isinstance(document, dict) or not isinstance(document.get("SERVICE"), dict):
        raise TargetsError(
            "OneGate /service: no SERVICE in the answer (is this VM part of a OneFlow service?)"
        )
    for role in document["SERVICE"].get("roles") or []:
        for node in role.get("nodes") or []:
            try:
                node["vm_info"] = gate.get(f"/vms/{int(node['deploy_id'])}")
            except (TargetsError, KeyError, ValueError, TypeError):
                continue
    return document


def _first_ip(vm: dict[str, Any]) -> str:
    nics = (vm.get("TEMPLATE") or {}).get("NIC") or []
    for nic in nics if isinstance(nics, list) else [nics]:
        if isinstance(nic, dict) and nic.get("IP"):
            return str(nic["IP"])
    return ""


def targets(document: dict[str, Any], roles: dict[str, int], scheme: str = "http") -> list[dict[str, Any]]:
    """One target group per VM of the listed roles that is ACTIVE and has an IP address."""
    service = document["SERVICE"]
    groups = []
    for role in service.get("roles") or []:
        name = str(role.get("name", ""))
        if name not in roles:
            continue
        for node in role.get("nodes") or []:
            vm = ((node.get("vm_info") or {}).get("VM")) or {}
            address = _first_ip(vm)
            if not address or str(vm.get("STATE", "")) != VM_ACTIVE:
                continue
            host = f"[{address}]" if ":" in address else address
            labels = {
                "flower_service": str(service.get("name", "")),
                "flower_service_id": str(service.get("id", "")),
                "flower_role": name,
                "one_vm_id": str(node.get("deploy_id", vm.get("ID", ""))),
                "one_vm_name": str(vm.get("NAME", "")),
            }
            if scheme != "http":
                labels["__scheme__"] = scheme
            groups.append({"targets": [f"{host}:{roles[name]}"], "labels": labels})
    groups.sort(key=lambda group: (group["labels"]["flower_role"], int(group["labels"]["one_vm_id"] or 0)))
    return groups


def validate_groups(groups: Any) -> None:
    """The shape Prometheus' file_sd/http_sd accept (a list of targets/labels objects); raises ValueError."""
    if not isinstance(groups, list):
        raise ValueError("not a JSON list")
    for group in groups:
        if not isinstance(group, dict) or set(group) - {"targets", "labels"}:
            raise ValueError(f"not a target group: {group!r}")
        if not isinstance(group.get("targets"), list) or not all(
            isinstance(t, str) for t in group["targets"]
        ):
            raise ValueError(f"targets must be a list of strings: {group!r}")
        for key, value in (group.get("labels") or {}).items():
            if not LABEL_NAME.match(key) or not isinstance(value, str):
                raise ValueError(f"bad label {key!r}={value!r}")


def write_if_changed(path: Path, groups: list[dict[str, Any]]) -> bool:
    """Atomically replace ``path`` (Prometheus re-reads it on change); False when nothing changed."""
    text = json.dumps(groups, indent=2, sort_keys=True) + "\n"
    try:
        if path.read_text() == text:
            return False
    except OSError:
        pass
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)
    return True


def parse_roles(values: list[str] | None) -> dict[str, int]:
    if not values:
        return dict(DEFAULT_ROLES)
    roles = {}
    for value in values:
        name, _, port = value.partition("=")
        if not name or (port and not port.isdigit()) or (port and not 0 < int(port) < 65536):
            raise TargetsError(f"--role: {value[:60]!r} is not ROLE or ROLE=PORT (a TCP port)")
        roles[name] = int(port) if port else 9101
    return roles


class _Handler(BaseHTTPRequestHandler):
    server: _SDServer

    def do_GET(self) -> None:
        if self.path.split("?")[0] != "/targets":
            self.send_error(404)
            return
        with self.server.lock:
            body, healthy = self.server.body, self.server.healthy
        if not healthy:
            # Prometheus keeps the last good list when http_sd fails: say so rather than serve nothing.
            self.send_error(503, "OneGate not read yet")
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


class _SDServer(ThreadingHTTPServer):
    daemon_threads = True
    lock = threading.Lock()
    body = b"[]"
    healthy = False


def main(argv: list[str], environ: dict[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monitoring.targets", description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["file", "http", "print"])
    parser.add_argument("--out", default="", help="file mode: the file_sd JSON file")
    parser.add_argument("--listen", default="127.0.0.1:9199", help="http mode: HOST:PORT")
    parser.add_argument("--interval", type=float, default=0, help="seconds between reads (0: once)")
    parser.add_argument(
        "--role", action="append", help="ROLE[=PORT] to scrape (default superlink, supernode)"
    )
    parser.add_argument("--scheme", choices=["http", "https"], default="http")
    parser.add_argument("--token-file", default="")
    options = parser.parse_args(argv)
    try:
        roles = parse_roles(options.role)
        gate = OneGate.from_environment(dict(os.environ if environ is None else environ), options.token_file)
        if options.mode == "file" and not options.out:
            raise TargetsError("file mode needs --out FILE")
        if options.mode == "http":
            host, _, port = options.listen.rpartition(":")
            if not host or not port.isdigit():
                raise TargetsError(f"--listen: {options.listen[:60]!r} is not HOST:PORT")
            server = _SDServer((host.strip("[]"), int(port)), _Handler)
            threading.Thread(target=server.serve_forever, daemon=True).start()
        while True:
            try:
                groups = targets(service_with_vms(gate), roles, options.scheme)
            except TargetsError as error:
                if not options.interval:
                    raise
                sys.stderr.write(f"flower targets: {error}; keeping the last list\n")
            else:
                if options.mode == "file":
                    write_if_changed(Path(options.out), groups)
                elif options.mode == "print":
                    sys.stdout.write(json.dumps(groups, indent=2, sort_keys=True) + "\n")
                else:
                    with server.lock:
                        server.body, server.healthy = json.dumps(groups).encode(), True
            if not options.interval:
                if options.mode == "http":
                    threading.Event().wait()
                return 0
            time.sleep(options.interval)
    except TargetsError as error:
        sys.stderr.write(f"flower targets: {error}\n")
        return 2
    except OSError as error:
        sys.stderr.write(f"flower targets: {error}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
