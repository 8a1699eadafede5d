"""OneGate: what a VM may ask of the cloud about itself and its service, authenticated by the token of
its context (``X-ONEGATE-TOKEN``: base64 AES-256-CBC of "VMID:STIME" under the owner's TOKEN_PASSWORD).

Routes, bodies, codes and messages follow onegate-server.rb: ``GET /vm``, ``PUT /vm`` (form ``data=..&type=``
or a raw ``KEY=VALUE`` body; type 2 erases), ``GET /service``, ``GET /vms/:id``, ``PUT /vms/:id``,
``POST /vms/:id/action``, ``PUT /service/role/:role``, and ``GET /vrouter`` / ``GET /vnet/:id`` with the
answers upstream gives a VM that belongs to no virtual router (the test cloud has none); anything else is 400.
"""

from __future__ import annotations

import json
import logging
import re
import urllib.parse
from typing import TYPE_CHECKING, Any

from lxml import etree

from hostkit.xmldict import xml_to_dict
from testcloud.api.httpbase import Handler, Server
from testcloud.core import errors
from testcloud.core.context import decrypt_token
from testcloud.core.errors import OneError
from testcloud.core.objects import VM

if TYPE_CHECKING:
    from testcloud.core.cloud import Cloud
    from testcloud.flow.engine import FlowEngine

log = logging.getLogger("testcloud")

RESTRICTED_ATTRS = ["SCHED_REQUIREMENTS", "SERVICE_ID", "ROLE_NAME"]
RESTRICTED_ACTIONS = ["reboot"]
NIC_VALID_KEYS = [
    "IP",
    "IP6_LINK",
    "IP6_SITE",
    "IP6_GLOBAL",
    "NETWORK",
    "MAC",
    "NAME",
    "PARENT",
    "EXTERNAL",
    "EXTERNAL_IP",
]
USER_TEMPLATE_INVALID_KEYS = ["SCHED_MESSAGE"]
VM_ACTIONS = {
    "hold",
    "resume",
    "release",
    "stop",
    "suspend",
    "terminate",
    "reboot",
    "poweroff",
    "undeploy",
    "resched",
    "unresched",
    "delete",
    "shutdown",
}


class Halt(Exception):
    """Sinatra's ``halt status, body``."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(body)
        self.status = status
        self.body = body


def build_vm_hash(vm: dict[str, Any]) -> dict[str, Any]:
    """onegate-server.rb ``build_vm_hash``."""
    template = vm.get("TEMPLATE") if isinstance(vm.get("TEMPLATE"), dict) else {}

    def filtered(key: str) -> list[dict[str, Any]]:
        items = template.get(key)
        if items is None:
            return []
        items = items if isinstance(items, list) else [items]
        return [
            {k: v for k, v in item.items() if k in NIC_VALID_KEYS} for item in items if isinstance(item, dict)
        ]

    user_template = vm.get("USER_TEMPLATE") if isinstance(vm.get("USER_TEMPLATE"), dict) else {}
    return {
        "VM": {
            "NAME": vm["NAME"],
            "ID": vm["ID"],
            "STATE": vm["STATE"],
            "LCM_STATE": vm["LCM_STATE"],
            "USER_TEMPLATE": {k: v for k, v in user_template.items() if k not in USER_TEMPLATE_INVALID_KEYS},
            "TEMPLATE": {"NIC": filtered("NIC"), "NIC_ALIAS": filtered("NIC_ALIAS")},
        }
    }


def escape_attr(attr: str) -> str:
    """onegate-server.rb ``escape_attr``: quote the values of ``KEY=value`` lines (and of vector members)."""
    out: list[str] = []
    chars = list(attr)
    escaping = False
    for index, char in enumerate(chars):
        previous = chars[index - 1] if index > 0 else chars[-1] if chars else ""
        following = chars[index + 1] if index + 1 < len(chars) else ""
        if char == "=" and escaping:
            out.append(char)
            continue
        if char == "=" and following not in ("[", '"'):
            out.append('="')
            escaping = True
        elif char == "," and previous != '"':
            out.append('",')
        elif char == "[" and previous not in ("=", '"'):
            out.append('"[')
        elif char == "]" and previous not in ("=", '"'):
            out.append('"]')
            escaping = False
        elif char == "\\" and previous != '"':
            out.append('"\\')
            escaping = False
        elif char == "\n" and previous != '"':
            out.append('"\n')
            escaping = False
        else:
            out.append(char)
    result = "".join(out).replace("\\n", "\n")
    if escaping and result[-1:] not in ("]", '"'):
        result += '"'
    return result


class OneGate:
    def __init__(self, cloud: Cloud, flow: FlowEngine) -> None:
        self.cloud = cloud
        self.flow = flow

    # ------------------------------------------------------------------ auth
    def authenticate(self, headers: Any) -> VM:
        token = headers.get("X-ONEGATE-TOKEN")
        vmid = headers.get("X-ONEGATE-VMID")
        if token is None or vmid is None or not vmid.strip().isdigit():
            raise Halt(401, "Not authorized")
        with self.cloud.lock:
            vm: VM | None = self.cloud.pools["vm"].get(int(vmid))
            if vm is None:
                raise Halt(401, "Not authorized")
            password = self.cloud.db.token_password(vm.created_by)
            stime = vm.stime
        if not password:
            raise Halt(401, "Not authorized")
        try:
            token_vm, _, token_stime = decrypt_token(token, password).partition(":")
        except (ValueError, UnicodeDecodeError):
            raise Halt(401, "Not authorized") from None
        if token_vm != str(vm.id) or token_stime != str(stime):
            raise Halt(401, "Not authorized")
        return vm

    def source_vm(self, headers: Any) -> VM:
        vm = self.authenticate(headers)
        with self.cloud.lock:
            current = self.cloud.pools["vm"].get(vm.id)
        if current is None:
            raise Halt(404, f"[one.vm.info] Error getting virtual machine [{vm.id}].")
        return current

    def requested_vm(self, requested_id: int, headers: Any) -> VM:
        source = self.source_vm(headers)
        if source.id == requested_id:
            return source
        service_id = source.user_template.get("SERVICE_ID")
        if service_id is None:
            raise Halt(
                400,
                "This VM does not belong to any Virtual Router or Service, so it cannot retrieve "
                "information from other VMs",
            )
        self.check_vm_in_service(requested_id, service_id)
        with self.cloud.lock:
            vm = self.cloud.pools["vm"].get(requested_id)
        if vm is None:
            raise Halt(404, f"[one.vm.info] Error getting virtual machine [{requested_id}].")
        return vm

    # ------------------------------------------------------------------ service
    def service_doc(self, service_id: str | None) -> dict[str, Any]:
        if service_id is None or not re.fullmatch(r"\d+", service_id):
            raise Halt(400, "Empty or invalid SERVICE_ID")
        document = self.flow.service_json(int(service_id))
        if document is None:
            raise Halt(404, f"Service {service_id} not found")
        return document

    def build_service_hash(self, document: dict[str, Any]) -> dict[str, Any] | None:
        body = document["DOCUMENT"]["TEMPLATE"]["BODY"]
        roles = body.get("roles")
        if roles is None:
            return None
        service: dict[str, Any] = {
            "name": document["DOCUMENT"]["NAME"],
            "id": document["DOCUMENT"]["ID"],
            "state": body.get("state"),
            "roles": [],
        }
        for role in roles:
            nodes = [
                {
                    "deploy_id": int(node["deploy_id"]),
                    "running": node.get("running"),
                    "vm_info": node.get("vm_info"),
                }
                for node in role.get("nodes") or []
            ]
            service["roles"].append(
                {
                    "name": role["name"],
                    "cardinality": role["cardinality"],
                    "state": role["state"],
                    "nodes": nodes,
                }
            )
        return {"SERVICE": service}

    def check_vm_in_service(self, requested_id: int, service_id: str) -> dict[str, Any]:
        response = self.build_service_hash(self.service_doc(service_id))
        if response is None:
            raise Halt(400, f"Service {service_id} is empty.")
        ids = [node["deploy_id"] for role in response["SERVICE"]["roles"] for node in role["nodes"]]
        if not ids or requested_id not in ids:
            raise Halt(400, f"Service {service_id} does not contain VM {requested_id}.")
        return response

    # ------------------------------------------------------------------ update
    def update(self, vm: VM, params: dict[str, str], raw_body: str) -> None:
        attr = params.get("data")
        kind = int(params["type"]) if (params.get("type") or "").strip().lstrip("-").isdigit() else 1
        if attr is None:
            attr = raw_body
        attr = escape_attr(attr)
        error = "cannot be modified" if kind == 1 else "cannot be deleted"
        for line in attr.split("\n"):
            key = line.split("=")[0]
            if key and key.upper() in RESTRICTED_ATTRS:
                raise Halt(403, f"Attribute ({key}) {error}")
        try:
            if kind == 1:
                self.cloud.vms.vm_update(vm.id, attr, 1)
                return
            with self.cloud.lock:
                current: VM = self.cloud.db.get("vm", vm.id, errors.VM)
                if not current.user_template.get_all(attr.strip()):
                    raise Halt(500, "attribute not found")
                remaining = current.user_template.copy()
                remaining.erase(attr.strip())
                self.cloud.vms.vm_update(vm.id, remaining.to_one(), 0)
        except OneError as failure:
            raise Halt(500, failure.message("one.vm.update", errors.VM)) from None

    def perform_action(self, vm: VM, body: str) -> None:
        try:
            parsed = json.loads(body)
        except json.JSONDecodeError as error:
            raise Halt(400, str(error)) from None
        if not isinstance(parsed, dict) or "action" not in parsed:
            raise Halt(400, "Error parsing JSON: Wrong resource type")
        action = parsed["action"] if isinstance(parsed["action"], dict) else {}
        perform = str(action.get("perform") or "")
        if perform.lower() in RESTRICTED_ACTIONS:
            raise Halt(403, f"Action ({perform}) is not allowed on this resource")
        if perform not in VM_ACTIONS:
            raise Halt(500, f"{perform} action not  available for this resource")
        name = {"delete": "terminate-hard", "shutdown": "terminate"}.get(perform, perform)
        if action.get("params") is True and name in ("terminate", "reboot", "poweroff", "undeploy"):
            name += "-hard"
        try:
            self.cloud.vms.vm_action(name, vm.id)
        except OneError as failure:
            raise Halt(500, failure.message("one.vm.action", errors.VM)) from None

    @staticmethod
    def vrouter_of(vm: VM) -> None:
        """``get_vrouter``: the test cloud has no virtual routers, so a VM names none or one that does not
        exist (onegate-server.rb: ``Integer(nil)`` -> 400, a failed ``vrouter.info`` -> 404)."""
        vrouter_id = vm.template.get("VROUTER_ID")
        if vrouter_id is None:
            raise Halt(400, "Empty or invalid VROUTER_ID")
        raise Halt(404, f"Virtual router {vrouter_id} not found")

    # ------------------------------------------------------------------ routes
    def route(self, method: str, path: str, headers: Any, body: bytes) -> tuple[int, str]:
        raw = body.decode("utf-8", errors="replace")
        route, params = _route_and_params(method, path, headers, raw)
        if method == "GET" and route == "/":
            self.authenticate(headers)
            host = headers.get("Host") or ""
            return 200, _json({"vm_info": f"http://{host}/vm", "service_info": f"http://{host}/service"})
        if method == "GET" and route == "/vm":
            vm = self.source_vm(headers)
            with self.cloud.lock:
                data = build_vm_hash(xml_to_dict(_vm_tree(vm)))
            return 200, _json(data)
        if method == "PUT" and route == "/vm":
            self.update(self.source_vm(headers), params, raw)
            return 200, ""
        if method == "GET" and route == "/service":
            vm = self.source_vm(headers)
            response = self.check_vm_in_service(vm.id, vm.user_template.get("SERVICE_ID"))
            return 200, _json(response)
        if method == "GET" and route == "/vrouter":
            vm = self.source_vm(headers)
            self.vrouter_of(vm)
        match = re.fullmatch(r"/vnet/([^/]+)", route)
        if match and method == "GET":
            self.authenticate(headers)
            try:
                int(match.group(1))
            except ValueError:
                raise Halt(400, f"Invalid id format (ID: {match.group(1)}). ID must be an integer.") from None
            vm = self.source_vm(headers)
            if not (vm.template.get("VROUTER_ID") or ""):
                raise Halt(400, "Virtual networks information can only be retrieved from Virtual Routers.")
            self.vrouter_of(vm)
        match = re.fullmatch(r"/vms/([^/]+)", route)
        if match and method in ("GET", "PUT"):
            requested = self.requested_vm(_to_i(match.group(1)), headers)
            if method == "GET":
                with self.cloud.lock:
                    data = build_vm_hash(xml_to_dict(_vm_tree(requested)))
                return 200, _json(data)
            self.update(requested, params, raw)
            return 200, ""
        match = re.fullmatch(r"/vms/([^/]+)/action", route)
        if match and method == "POST":
            requested = self.requested_vm(_to_i(match.group(1)), headers)
            self.perform_action(requested, raw)
            return 204, ""
        match = re.fullmatch(r"/service/role/([^/]+)", route)
        if match and method == "PUT":
            return self.scale_role(urllib.parse.unquote(match.group(1)), headers, raw)
        return 400, "OneGate server doesn't support this feature"

    def scale_role(self, role: str, headers: Any, raw: str) -> tuple[int, str]:
        """``PUT /service/role/<name>``: the role's new cardinality, asked from one of the service's VMs."""
        vm = self.source_vm(headers)
        service_id = vm.user_template.get("SERVICE_ID")
        self.check_vm_in_service(vm.id, service_id)
        try:
            cardinality = json.loads(raw)["cardinality"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise Halt(500, f"Internal server error: {error}") from None
        error = self.flow.scale(int(service_id), role, cardinality, False)
        if error is not None:
            raise Halt(400, f"Error performing action on service {service_id} role {role}")
        return 200, ""


def _route_and_params(method: str, path: str, headers: Any, raw: str) -> tuple[str, dict[str, str]]:
    """The path, and the parameters of the query and (form-encoded, or a POST without a type) the body."""
    parsed_url = urllib.parse.urlsplit(path)
    params = {k: v[-1] for k, v in urllib.parse.parse_qs(parsed_url.query, keep_blank_values=True).items()}
    content_type = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
    if content_type == "application/x-www-form-urlencoded" or (method == "POST" and not content_type):
        form = urllib.parse.parse_qs(raw, keep_blank_values=True)
        params.update({k: v[-1] for k, v in form.items()})
    return parsed_url.path, params


def _json(data: Any) -> str:
    """Ruby's ``to_json``: compact."""
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def _to_i(text_in: str) -> int:
    """Ruby's ``String#to_i``: the leading integer, else 0."""
    match = re.match(r"\s*[+-]?\d+", text_in)
    return int(match.group(0)) if match else 0


def _vm_tree(vm: VM) -> etree._Element:
    return etree.fromstring(vm.to_xml().encode())


class OneGateHandler(Handler):
    server: Server

    def _handle(self) -> None:
        gate: OneGate = self.server.app
        body = self.body_or_refusal(413, "Request Entity Too Large")
        if body is None:
            return
        try:
            status, text_out = gate.route(self.command, self.path, self.headers, body)
        except Halt as halt:
            status, text_out = halt.status, halt.body
        except Exception as error:  # Sinatra's error 500 handler
            log.exception("OneGate %s %s failed", self.command, self.path)
            status, text_out = 500, str(error)
        self.send(status, text_out, "application/json;charset=utf-8")

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = _handle


def make_server(cloud: Cloud, flow: FlowEngine, host: str, port: int) -> Server:
    return Server((host, port), OneGateHandler, OneGate(cloud, flow))
