"""OneFlow's service engine: templates and services are documents (types 101 and 100) whose TEMPLATE/BODY
is the JSON OneFlow keeps; this engine moves services and roles through their states as OneFlow's
LifeCycleManager, EventManager and the ``straight`` strategy do.

Deploying a role instantiates its VM template once per node, named ``<role>_<n>_(service_<id>)``, with
the template's TEMPLATE deep-merged with ``template_contents``, ``SERVICE_ID`` and ``ROLE_NAME`` added and
``${parent.xpath}`` filled from the parent's VMs. A deploying role is RUNNING when all its VMs are
RUNNING, or, with ``ready_status_gate``, when each has ``USER_TEMPLATE/READY=YES``; a VM in a *_FAILURE
state fails it.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import re
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from lxml import etree

from hostkit import elasticity
from hostkit.xmldict import xml_to_dict
from testcloud.core import errors
from testcloud.core.errors import OneError
from testcloud.core.objects import DOC_SERVICE, DOC_SERVICE_TEMPLATE, VM, Document
from testcloud.core.states import FAILURE_LCM_STATES, LcmState, VmState
from testcloud.core.template import Template
from testcloud.flow import schema
from testcloud.flow.states import FAILED, TRANSIENT, RoleState, ServiceState

if TYPE_CHECKING:
    from testcloud.core.cloud import Cloud

log = logging.getLogger("testcloud")

SUBSCRIBE_STATES = {VmState.STOPPED, VmState.SUSPENDED, VmState.POWEROFF, VmState.UNDEPLOYED}
VM_INFO_KEYS = ["ID", "UID", "GID", "UNAME", "GNAME", "NAME"]
SCHEDULE_ACTIONS = [
    "terminate",
    "terminate-hard",
    "undeploy",
    "undeploy-hard",
    "hold",
    "release",
    "stop",
    "suspend",
    "resume",
    "reboot",
    "reboot-hard",
    "poweroff",
    "poweroff-hard",
    "snapshot-create",
    "snapshot-revert",
    "snapshot-delete",
    "disk-snapshot-create",
    "disk-snapshot-revert",
    "disk-snapshot-delete",
]
MAX_LOG = 50
HUGE_PARSER = etree.XMLParser(huge_tree=True)


class FlowError(Exception):
    """An answer of the OneFlow server other than success: HTTP status and body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class WaitKind(Enum):
    """What a service or role waits for; each has its step in ``FlowEngine._step``'s table."""

    DEPLOY = "deploy"
    SCALEUP = "scaleup"
    UNDEPLOY = "undeploy"
    SCALEDOWN = "scaledown"
    COOLDOWN = "cooldown"
    NETS_DEPLOY = "nets_deploy"
    NETS_UNDEPLOY = "nets_undeploy"


@dataclass
class Wait:
    kind: WaitKind
    nodes: list[int] = field(default_factory=list)
    report: bool = False
    until: float = 0.0
    successful: dict[int, bool] = field(default_factory=dict)


def one_http_status(error: OneError) -> int:
    """oneflow-server.rb ``one_error_to_http``."""
    return {errors.AUTHORIZATION: 401, errors.AUTHENTICATION: 403, errors.NO_EXISTS: 404}.get(error.code, 500)


def deep_merge(target: dict[str, Any], other: dict[str, Any], merge_array: bool = True) -> dict[str, Any]:
    """Ruby ``Hash#deep_merge`` of OneFlow's validator."""
    result = copy.deepcopy(target)
    for key, value in other.items():
        current = result.get(key)
        if isinstance(value, dict) and isinstance(current, dict):
            result[key] = deep_merge(current, value, merge_array)
        elif isinstance(value, list) and isinstance(current, list) and merge_array:
            merged = current + value
            if all(isinstance(item, dict) for item in merged):
                unique: list[Any] = []
                for item in merged:
                    if item not in unique:
                        unique.append(item)
                merged = unique
            result[key] = merged
        else:
            result[key] = copy.deepcopy(value)
    return result


def _ruby_str(value: Any) -> str:
    if value is None:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def _quote(value: Any) -> str:
    return '"' + _ruby_str(value).replace('"', '\\"') + '"'


def to_raw(content: dict[str, Any]) -> str:
    """A template hash in ONE syntax (``Hash.to_raw``): hashes are vectors, arrays repeat the key."""
    lines: list[str] = []
    for key, value in content.items():
        items = value if isinstance(value, list) else [value]
        for item in items:
            if isinstance(item, dict):
                members = ",\n".join(f"{k} = {_quote(v)}" for k, v in item.items())
                lines.append(f"{key} = [\n{members}\n]")
            else:
                lines.append(f"{key} = {_quote(item)}")
    return "\n".join(lines) + ("\n" if lines else "")


def template_hash(tmpl: Template) -> dict[str, Any]:
    """The VM template's TEMPLATE as Ruby's ``to_hash`` sees it: strings, hashes, arrays for repeats."""
    result: dict[str, Any] = {}
    for attr in tmpl.sorted():
        value: Any = dict(attr.value) if isinstance(attr.value, dict) else attr.value
        if attr.name in result:
            if not isinstance(result[attr.name], list):
                result[attr.name] = [result[attr.name]]
            result[attr.name].append(value)
        else:
            result[attr.name] = value
    return result


def _ruby_slice_first(items: list[Any], count: int) -> list[Any]:
    """``items[0..(count - 1)]`` with Ruby's negative end index."""
    end = count - 1
    if end < 0:
        end += len(items)
    return items[: end + 1] if end >= 0 else []


class FlowEngine:
    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud
        self.waits: dict[tuple[int, str], Wait] = {}
        self._next_autoscale = time.monotonic() + cloud.config.timings.autoscaler
        with cloud.lock:
            self._catch_up()

    # ------------------------------------------------------------------ documents and bodies
    def _doc(self, oid: int, doc_type: int) -> Document:
        doc = self.cloud.pools["document"].get(oid)
        if doc is None or doc.type != doc_type:
            raise FlowError(404, f"[one.document.info] Error getting document [{oid}].")
        return doc

    @staticmethod
    def body(doc: Document) -> dict[str, Any]:
        return json.loads(doc.template.get("BODY") or "{}")

    def save_body(self, doc: Document, body: dict[str, Any]) -> None:
        if doc.type == DOC_SERVICE:  # what Role/VMRole.new add to every role of a loaded service
            for role in self._roles(body).values():
                if role.get("cooldown") is None:
                    role["cooldown"] = self.cloud.config.flow_cooldown
        doc.template.replace("BODY", json.dumps(body, separators=(",", ":"), ensure_ascii=False))
        self.cloud.db.save(doc)

    @staticmethod
    def document_json(doc: Document) -> dict[str, Any]:
        data = xml_to_dict(etree.fromstring(doc.to_xml().encode()))
        template = data.get("TEMPLATE")
        if isinstance(template, dict) and template.get("BODY"):
            template["BODY"] = json.loads(template["BODY"])
        return {"DOCUMENT": data}

    def pool_json(self, doc_type: int) -> dict[str, Any]:
        with self.cloud.lock:
            docs = sorted(
                (d for d in self.cloud.pools["document"].values() if d.type == doc_type), key=lambda d: d.id
            )
            if not docs:
                return {"DOCUMENT_POOL": {}}
            return {"DOCUMENT_POOL": {"DOCUMENT": [self.document_json(d)["DOCUMENT"] for d in docs]}}

    def service_json(self, oid: int) -> dict[str, Any] | None:
        with self.cloud.lock:
            doc = self.cloud.pools["document"].get(oid)
            if doc is None or doc.type != DOC_SERVICE:
                return None
            return self.document_json(doc)

    def get_json(self, oid: int, doc_type: int) -> dict[str, Any]:
        with self.cloud.lock:
            return self.document_json(self._doc(oid, doc_type))

    # ------------------------------------------------------------------ logging and states
    @staticmethod
    def _log(body: dict[str, Any], severity: str, message: str) -> None:
        body.setdefault("log", []).append(
            {"timestamp": int(time.time()), "severity": severity, "message": message}
        )
        body["log"] = body["log"][-MAX_LOG:]

    def _set_state(self, body: dict[str, Any], state: int) -> None:
        body["state"] = state
        self._log(body, "I", f"New state: {ServiceState(state).name}")

    @staticmethod
    def _roles(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
        roles = {}
        for role in body.get("roles") or []:
            role.setdefault("state", RoleState.PENDING)
            role.setdefault("nodes", [])
            if role.get("on_hold") is None:
                role["on_hold"] = False
            roles[role["name"]] = role
        return roles

    # ------------------------------------------------------------------ service templates
    def create_template(self, text_in: str) -> dict[str, Any]:
        template = parse_json(text_in)
        _validate(template)
        template["registration_time"] = int(time.time())
        return self._allocate(template, DOC_SERVICE_TEMPLATE)

    def _allocate(self, body: dict[str, Any], doc_type: int) -> dict[str, Any]:
        name = body.get("name") if isinstance(body.get("name"), str) else ""
        tmpl = Template(
            [("NAME", name), ("BODY", json.dumps(body, separators=(",", ":"), ensure_ascii=False))]
        )
        try:
            oid = self.cloud.documents.document_allocate(tmpl.to_xml("TEMPLATE"), doc_type)
        except OneError as error:
            raise FlowError(
                one_http_status(error), error.message("one.document.allocate", errors.DOCUMENT)
            ) from None
        return self.get_json(oid, doc_type)

    def update_template(self, oid: int, text_in: str, append: bool = False) -> dict[str, Any]:
        with self.cloud.lock:
            doc = self._doc(oid, DOC_SERVICE_TEMPLATE)
            current = self.body(doc)
            template = parse_json(text_in)
            if not isinstance(template, dict):
                raise FlowError(400, "KEY: '' must be an Object;")
            registered = current.get("registration_time")
            if append and "registration_time" in template:
                raise FlowError(500, IMMUTABLE_REGISTRATION)
            if append:
                template = {**current, **template}
            elif template.setdefault("registration_time", registered) != registered:
                raise FlowError(500, IMMUTABLE_REGISTRATION)
            _validate(template)
            doc.name = template.get("name") or doc.name
            self.save_body(doc, template)
            return self.document_json(doc)

    def delete_template(self, oid: int) -> None:
        with self.cloud.lock:
            self._doc(oid, DOC_SERVICE_TEMPLATE)
            self.cloud.documents.document_delete(oid)

    # ------------------------------------------------------------------ instantiate
    def instantiate(self, template_id: int, merge_template: Any) -> dict[str, Any]:
        with self.cloud.lock:
            body = self.body(self._doc(template_id, DOC_SERVICE_TEMPLATE))
            merge = merge_template if isinstance(merge_template, dict) else {}
            merge = copy.deepcopy(merge)
            self._check_inputs(body, merge)
            self._check_networks(body, merge)
            body = self._handle_nested_values(body, merge)
            service = deep_merge(body, merge)
            _validate(service, schema_status=500)  # instantiate answers a schema error with a 500
            if any(role.get("type") == "vr" for role in service["roles"]):
                raise FlowError(500, "Virtual router roles are not supported by the test cloud")
            service["state"] = ServiceState.PENDING
            for role in service["roles"]:
                role.setdefault("state", RoleState.PENDING)
            service["start_time"] = int(time.time())
            created = self._allocate(service, DOC_SERVICE)
            sid = int(created["DOCUMENT"]["ID"])
            doc = self._doc(sid, DOC_SERVICE)
            body = self.body(doc)
            self._deploy_nets(sid, body)
            self.save_body(doc, body)
            return created

    @staticmethod
    def _check_user_inputs(inputs: Any, values: Any) -> None:
        if not inputs:
            return
        if values is None:
            raise FlowError(400, "The Service template specifies User Inputs but no values have been found")
        if not isinstance(inputs, dict) or not isinstance(values, dict):
            raise FlowError(400, "Wrong User Inputs or User Inputs Values format")
        if set(inputs) - set(values):
            raise FlowError(400, "Verify that every User Input have its corresponding value defined")
        # Nothing more: check_user_inptus (src/flow/oneflow-server.rb) never reads a value's type; only the
        # CLI's prompt does (one_helper.rb); the factory checks its own (factory/one/service_checks.py).

    def _check_inputs(self, body: dict[str, Any], merge: dict[str, Any]) -> None:
        if "custom_attrs_values" in merge:
            merge["user_inputs_values"] = merge.pop("custom_attrs_values")
        self._check_user_inputs(body.get("user_inputs"), merge.get("user_inputs_values"))
        for role in body.get("roles") or []:
            if not isinstance(role.get("template_contents", {}), dict):
                raise FlowError(
                    400,
                    "Error validating template_contents object for the role "
                    f"{role.get('name')}. The object must be a valid hash.",
                )
            if role.get("user_inputs") is None:
                continue
            merge_roles = merge.get("roles")
            if merge_roles is None:
                raise FlowError(
                    400,
                    "The Service template specifies user inputs for the role "
                    f"{role['name']} but no values have been found",
                )
            if not isinstance(merge_roles, list) or not merge_roles:
                raise FlowError(400, "The role user inputs are empty or do not have a valid format")
            merge_role = next(
                (r for r in merge_roles if isinstance(r, dict) and r.get("name") == role["name"]), None
            )
            if merge_role is None:
                continue
            if "custom_attrs_values" in merge_role:
                merge_role["user_inputs_values"] = merge_role.pop("custom_attrs_values")
            self._check_user_inputs(role["user_inputs"], merge_role.get("user_inputs_values"))

    @staticmethod
    def _check_networks(body: dict[str, Any], merge: dict[str, Any]) -> None:
        networks = body.get("networks")
        values = merge.get("networks_values")
        if networks and not values:
            values = []
            try:
                for key, value in networks.items():
                    kind, _, ref = value.split("|")[4].strip().partition(":")
                    values.append({key: {kind: ref}})
            except (AttributeError, IndexError, TypeError):
                raise FlowError(400, "Wrong networks format") from None
            merge["networks_values"] = values
        if networks and not isinstance(networks, dict):
            raise FlowError(400, "Wrong networks format")
        if values and any(not isinstance(v, dict) for v in values):
            raise FlowError(400, "Wrong networks_values format")
        if networks and not values:
            raise FlowError(400, "Missing networks_values")
        if networks and values and set(networks) - {k for v in values for k in v}:
            raise FlowError(400, "Every network key must have its value defined at networks_value")
        for value in values or []:
            for net in value.values():
                if isinstance(net, dict):
                    for key, item in net.items():
                        if isinstance(item, str):
                            net[key] = item.replace('\\"', "")

    @staticmethod
    def _handle_nested_values(template: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        template_nets = template.get("networks_values") or []
        extra_nets = extra.get("networks_values") or []
        if extra_nets:
            for net in extra_nets:
                if not isinstance(net, dict) or not net:
                    continue
                name = next(iter(net))
                index = next(
                    (i for i, n in enumerate(template_nets) if isinstance(n, dict) and name in n), None
                )
                if index is None:
                    template_nets.append(net)
                else:
                    template_nets[index] = net
            template["networks_values"] = template_nets
            extra["networks_values"] = []
        extra_roles = extra.get("roles") or []
        if not extra_roles:
            return template
        for index, role in enumerate(template.get("roles") or []):
            match = next(
                (r for r in extra_roles if isinstance(r, dict) and r.get("name") == role.get("name")), None
            )
            if match is not None:
                template["roles"][index] = deep_merge(role, match)
        extra.pop("roles", None)
        return template

    # ------------------------------------------------------------------ deployment
    def _deploy_nets(self, sid: int, body: dict[str, Any]) -> None:
        for value in body.get("networks_values") or []:
            for name, net in value.items():
                if isinstance(net, dict) and "id" not in net:
                    self._log(
                        body,
                        "E",
                        f"Network {name}: only existing networks (id) are supported by the test cloud",
                    )
                    self._set_state(body, ServiceState.FAILED_DEPLOYING)
                    return
        self._set_state(body, ServiceState.DEPLOYING_NETS)
        self.waits[(sid, "")] = Wait(WaitKind.NETS_DEPLOY)

    def _fill_template(self, body: dict[str, Any]) -> None:
        service_inputs = body.get("user_inputs_values") or {}
        networks = body.get("networks_values") or []
        for role in body.get("roles") or []:
            contents = role.get("template_contents") or {}
            role_inputs = role.get("user_inputs_values") or {}
            nics = contents.get("NIC") or []
            for nic in nics if isinstance(nics, list) else [nics]:
                if not isinstance(nic, dict) or not isinstance(nic.get("NETWORK_ID"), str):
                    continue
                match = re.search(r"\$(\w+)", nic["NETWORK_ID"])
                if not match:
                    continue
                network = next((n for n in networks if isinstance(n, dict) and match.group(1) in n), None)
                if network is not None:
                    nic["NETWORK_ID"] = network[match.group(1)].get("id")
            if service_inputs or role_inputs:
                merged = deep_merge(service_inputs, role_inputs)
                contents.setdefault("CONTEXT", {})
                for key, value in merged.items():
                    contents[key] = value
                    contents["CONTEXT"][key] = f"${key}"
            role["template_contents"] = contents

    def _roles_deploy(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        roles = self._roles(body)
        if body.get("deployment") == "straight":
            running = {name for name, role in roles.items() if role["state"] == RoleState.RUNNING}
            return [
                r
                for r in roles.values()
                if r["state"] == RoleState.PENDING and all(p in running for p in r.get("parents") or [])
            ]
        return [r for r in roles.values() if r["state"] in (RoleState.PENDING, RoleState.SCALING)]

    def _roles_shutdown(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        roles = self._roles(body)
        gone = (RoleState.UNDEPLOYING, RoleState.DONE, RoleState.FAILED_UNDEPLOYING)
        live = [r for r in roles.values() if r["state"] not in gone]
        if body.get("deployment") != "straight":
            return live
        parents = {p for r in roles.values() if r["state"] != RoleState.DONE for p in r.get("parents") or []}
        return [r for r in live if r["name"] not in parents]

    def _deploy_action(self, sid: int, body: dict[str, Any]) -> None:
        self._fill_template(body)
        roles = self._roles_deploy(body)
        if not roles:
            if all(r["state"] == RoleState.RUNNING for r in self._roles(body).values()):
                self._set_state(body, ServiceState.RUNNING)
            return
        error = self._deploy_roles(sid, body, roles)
        if error is None and body.get("on_hold"):
            self._set_state(body, ServiceState.HOLD)
        elif error is None:
            self._set_state(body, ServiceState.DEPLOYING)
        else:
            self._set_state(body, ServiceState.FAILED_DEPLOYING)

    def _deploy_roles(
        self, sid: int, body: dict[str, Any], roles: list[dict[str, Any]], scaling: bool = False
    ) -> str | None:
        """Deploy ``roles``: the service's deployment, or with ``scaling`` a role's scale-up."""
        success, failure, wait_kind = (
            (RoleState.SCALING, RoleState.FAILED_SCALING, WaitKind.SCALEUP)
            if scaling
            else (RoleState.DEPLOYING, RoleState.FAILED_DEPLOYING, WaitKind.DEPLOY)
        )
        report = bool(body.get("ready_status_gate"))
        all_roles = self._roles(body)
        for role in roles:
            if role["state"] == RoleState.PENDING and (
                body.get("on_hold")
                or any(all_roles.get(p, {}).get("on_hold") for p in role.get("parents") or [])
            ):
                role["on_hold"] = True
            ok, result = self._deploy_role(sid, body, role)
            if not ok:
                role["state"] = failure
                message = f"Error deploying role {role['name']}: {result}"
                log.info("service %s: %s", sid, message)
                return message
            if role.get("on_hold") and role["state"] == RoleState.PENDING:
                role["state"] = RoleState.HOLD
            else:
                role["state"] = success
                self.waits[(sid, role["name"])] = Wait(wait_kind, list(result), report)
        return None

    def _deploy_role(self, sid: int, body: dict[str, Any], role: dict[str, Any]) -> tuple[bool, Any]:
        name = role["name"]
        count = int(role.get("cardinality") or 0) - len(role["nodes"])
        if count <= 0:
            return True, []
        role.setdefault("last_vmname", 0)
        template_id = int(role["template_id"])
        extra = copy.deepcopy(role.get("template_contents") or {})
        if extra:
            source = self.cloud.pools["template"].get(template_id)
            if source is None:
                message = f"[one.template.info] Error getting virtual machine template [{template_id}]."
                self._log(body, "E", f"Role {name} : Info template {template_id}; {message}")
                return (
                    False,
                    f"Error fetching Info to instantiate template {template_id} in Role {name}: {message}",
                )
            extra = deep_merge(template_hash(source.template), extra, merge_array=False)
        extra["SERVICE_ID"] = sid
        extra["ROLE_NAME"] = name
        raw = self._evaluate(body, role, to_raw(extra))
        deployed: list[int] = []
        for _ in range(count):
            vm_name = f"{name}_{role['last_vmname']}_(service_{sid})"
            role["last_vmname"] += 1
            try:
                vm_id = self.cloud.vms.template_instantiate(
                    template_id, vm_name, bool(role.get("on_hold")), raw, False
                )
            except OneError as error:
                message = error.message("one.template.instantiate", errors.TEMPLATE)
                self._log(
                    body, "E", f"Role {name} : Instantiate failed for template {template_id}; {message}"
                )
                return False, f"Error instantiating VM Template {template_id} in Role {name}: {message}"
            deployed.append(vm_id)
            vm: VM = self.cloud.pools["vm"][vm_id]
            info = xml_to_dict(etree.fromstring(vm.to_xml().encode()))
            role["nodes"].append({"deploy_id": vm_id, "vm_info": {"VM": {k: info[k] for k in VM_INFO_KEYS}}})
        return True, deployed

    def _evaluate(self, body: dict[str, Any], role: dict[str, Any], raw: str) -> str:
        """``${parent.xpath}``: the first of the parent's VMs that has the element gives its text."""
        roles = self._roles(body)
        for value in dict.fromkeys(re.findall(r"\$\{(.*?)\}", raw)):
            parts = value.split(".")
            replacement = ""
            if parts[0] in (role.get("parents") or []) and parts[0] in roles:
                xpath = "//" + "/".join(parts[1:]).upper()
                for node in roles[parts[0]]["nodes"]:
                    vm = self.cloud.pools["vm"].get(int(node["deploy_id"]))
                    if vm is None:
                        continue
                    try:
                        found = etree.fromstring(vm.to_xml().encode()).xpath(xpath)
                    except etree.XPathError:
                        found = []
                    if found:
                        first = found[0]
                        replacement = first.text or "" if isinstance(first, etree._Element) else str(first)
                        break
            raw = raw.replace("${" + value + "}", replacement)
        return raw

    # ------------------------------------------------------------------ undeploy
    def _shutdown_role(self, sid: int, body: dict[str, Any], role: dict[str, Any]) -> list[int]:
        nodes = role["nodes"]
        cardinality = int(role.get("cardinality") or 0)
        count = len(nodes) - cardinality if len(nodes) != cardinality else len(nodes)
        action = role.get("shutdown_action") or body.get("shutdown_action") or "terminate"
        done: list[int] = []
        for node in _ruby_slice_first(nodes, count):
            vm_id = int(node["deploy_id"])
            try:
                self.cloud.vms.vm_action(
                    "terminate-hard" if action == "terminate-hard" else "terminate", vm_id
                )
                done.append(vm_id)
            except OneError as error:
                message = error.message("one.vm.action", errors.VM)
                self._log(
                    body,
                    "E",
                    f"Role {role['name']} : Terminate failed for VM {vm_id}, will perform a "
                    f"Delete; {message}",
                )
                try:
                    self.cloud.vms.vm_action("terminate-hard", vm_id)
                    done.append(vm_id)
                except OneError as second:
                    self._log(
                        body,
                        "E",
                        f"Role {role['name']} : Delete failed for VM {vm_id}; "
                        f"{second.message('one.vm.action', errors.VM)}",
                    )
        return done

    def _undeploy_roles(
        self, sid: int, body: dict[str, Any], roles: list[dict[str, Any]], scaling: bool = False
    ) -> None:
        """Shut ``roles`` down: the service's undeployment, or with ``scaling`` a role's scale-down."""
        success, wait_kind = (
            (RoleState.SCALING, WaitKind.SCALEDOWN) if scaling else (RoleState.UNDEPLOYING, WaitKind.UNDEPLOY)
        )
        for role in roles:
            nodes = self._shutdown_role(sid, body, role)
            role["state"] = success
            self.waits[(sid, role["name"])] = Wait(wait_kind, nodes)

    def undeploy(self, sid: int, delete: bool = False) -> None:
        with self.cloud.lock:
            doc = self._doc(sid, DOC_SERVICE)
            body = self.body(doc)
            state = body.get("state", 0)
            can = not (
                (state in TRANSIENT and state != ServiceState.UNDEPLOYING)
                or state == ServiceState.DONE
                or state in FAILED
            )
            if not can and not delete:
                raise FlowError(500, f"Service cannot be undeployed in state: {ServiceState(state).name}")
            self._cancel(sid)
            roles = self._roles_shutdown(body)
            if not roles:
                self.cloud.documents.document_delete(sid)
                return
            self._undeploy_roles(sid, body, roles)
            self._set_state(body, ServiceState.UNDEPLOYING)
            self.save_body(doc, body)

    def _cancel(self, sid: int) -> None:
        for key in [k for k in self.waits if k[0] == sid]:
            del self.waits[key]

    # ------------------------------------------------------------------ scale
    def scale(self, sid: int, role_name: str, cardinality: Any, force: Any) -> str | None:
        """``scale_action``: None on success, else the error message (HTTP 500)."""
        try:
            self._scale(sid, role_name, cardinality, force)
        except FlowError as error:
            return error.message
        return None

    def _scale(self, sid: int, role_name: str, cardinality: Any, force: Any) -> None:
        with self.cloud.lock:
            doc = self._doc(sid, DOC_SERVICE)
            body = self.body(doc)
            if body.get("state") != ServiceState.RUNNING:
                raise FlowError(
                    500, f"Service cannot be scaled in state: {ServiceState(body.get('state', 0)).name}"
                )
            roles = self._roles(body)
            role = roles.get(role_name)
            if role is None:
                raise FlowError(500, f"Role {role_name} not found")
            try:
                target = int(cardinality)
            except (TypeError, ValueError):
                target = 0
            diff = target - int(role.get("cardinality") or 0)
            if force is not True:
                minimum, maximum = role.get("min_vms"), role.get("max_vms")
                if target < int(minimum or 0):
                    raise FlowError(500, f"Can't scale service {sid}: Minimum cardinality is {minimum}")
                if maximum is not None and target > int(maximum):
                    raise FlowError(500, f"Can't scale service {sid}: Maximum cardinality is {maximum}")
            if diff == 0:
                raise FlowError(500, f"Cardinality of {role_name} is already at {target}")
            direction = "up" if diff > 0 else "down"
            self._log(
                body,
                "I",
                f"Role {role_name} scaling {direction} from {role.get('cardinality')} to {target} nodes",
            )
            role["cardinality"] = target
            role.setdefault("cooldown", self.cloud.config.flow_cooldown)
            elasticity.clear_true_evals(role)  # Role#set_state(SCALING)
            if diff > 0:
                role["scale_way"] = 0
                error = self._deploy_roles(sid, body, [role], scaling=True)
            else:
                role["scale_way"] = 1
                self._undeploy_roles(sid, body, [role], scaling=True)
                error = None
            self._set_state(body, ServiceState.SCALING if error is None else ServiceState.FAILED_SCALING)
            self.save_body(doc, body)
            if error is not None:
                raise FlowError(500, error)

    # ------------------------------------------------------------------ other service actions
    def action(self, sid: int, perform: str, params: Any) -> None:
        with self.cloud.lock:
            doc = self._doc(sid, DOC_SERVICE)
            body = self.body(doc)
            params = params if isinstance(params, dict) else {}
            if perform == "recover":
                if params.get("delete"):
                    self.undeploy(sid, delete=True)
                    return
                self._recover(sid, body)
            elif perform == "rename":
                if not params.get("name"):
                    raise FlowError(500, f"Action {perform}: You have to specify a name")
                doc.name = str(params["name"])
            elif perform == "release":
                self._release(sid, body)
            elif perform in SCHEDULE_ACTIONS:
                for role in self._roles(body).values():
                    for node in role["nodes"]:
                        try:
                            self.cloud.vms.vm_action(perform, int(node["deploy_id"]))
                        except OneError as error:
                            self._log(
                                body,
                                "E",
                                f"Role {role['name']} : VM {node['deploy_id']} error scheduling "
                                f"action; {error.message('one.vm.action', errors.VM)}",
                            )
                self._log(body, "I", f"Action:{perform} scheduled on all roles")
            else:
                raise FlowError(500, f"Action {perform} not supported")
            self.save_body(doc, body)

    def _recover(self, sid: int, body: dict[str, Any]) -> None:
        state = body.get("state", 0)
        roles = self._roles(body)
        self._cancel(sid)
        if state in (ServiceState.FAILED_DEPLOYING, ServiceState.DEPLOYING, ServiceState.PENDING):
            report = bool(body.get("ready_status_gate"))
            for role in roles.values():
                if role["state"] in (RoleState.FAILED_DEPLOYING, RoleState.DEPLOYING):
                    kept = []
                    for node in role["nodes"]:
                        vm = self.cloud.pools["vm"].get(int(node["deploy_id"]))
                        if vm is None or vm.state == VmState.DONE:
                            continue
                        if vm.state == VmState.ACTIVE and vm.lcm_state in FAILURE_LCM_STATES:
                            self.cloud.vms.vm_action("terminate-hard", vm.id)
                            continue
                        kept.append(node)
                    role["nodes"] = kept
                    role["state"] = RoleState.PENDING
            self._set_state(body, ServiceState.DEPLOYING)
            for role in self._roles_deploy(body):
                ok, _ = self._deploy_role(sid, body, role)
                role["state"] = RoleState.DEPLOYING if ok else RoleState.FAILED_DEPLOYING
                if ok:
                    nodes = [int(n["deploy_id"]) for n in role["nodes"]]
                    self.waits[(sid, role["name"])] = Wait(WaitKind.DEPLOY, nodes, report)
        elif state in (
            ServiceState.FAILED_UNDEPLOYING,
            ServiceState.UNDEPLOYING,
            ServiceState.FAILED_UNDEPLOYING_NETS,
        ):
            for role in roles.values():
                if role["state"] in (RoleState.FAILED_UNDEPLOYING, RoleState.UNDEPLOYING):
                    role["state"] = RoleState.UNDEPLOYING
                    self.waits[(sid, role["name"])] = Wait(
                        WaitKind.UNDEPLOY, self._shutdown_role(sid, body, role)
                    )
            self._set_state(body, ServiceState.UNDEPLOYING)
        elif state == ServiceState.COOLDOWN:
            for role in roles.values():
                role["state"] = RoleState.RUNNING
            self._set_state(body, ServiceState.RUNNING)
        elif state == ServiceState.WARNING:
            for role in roles.values():
                if role["state"] == RoleState.WARNING:
                    role["state"] = RoleState.RUNNING
            self._set_state(body, ServiceState.RUNNING)
        else:
            raise FlowError(500, f"Service cannot be recovered in state: {ServiceState(state).name}")

    def _release(self, sid: int, body: dict[str, Any]) -> None:
        report = bool(body.get("ready_status_gate"))
        roles = [r for r in self._roles(body).values() if r["state"] == RoleState.HOLD]
        if not roles:
            raise FlowError(
                500, "Service cannot be released in state: " + ServiceState(body.get("state", 0)).name
            )
        for role in roles:
            for node in role["nodes"]:
                try:
                    self.cloud.vms.vm_action("release", int(node["deploy_id"]))
                except OneError as error:
                    self._log(
                        body,
                        "E",
                        f"Role {role['name']}: Release failed for VM {node['deploy_id']}, "
                        f"{error.message('one.vm.action', errors.VM)}",
                    )
            role["on_hold"] = False
            role["state"] = RoleState.DEPLOYING
            self.waits[(sid, role["name"])] = Wait(
                "deploy", [int(n["deploy_id"]) for n in role["nodes"]], report
            )
        body["on_hold"] = False
        self._set_state(body, ServiceState.DEPLOYING)

    # ------------------------------------------------------------------ the engine
    def _catch_up(self) -> None:
        """After a restart: wait again for whatever the services were waiting for."""
        now = time.time()
        for doc in self.cloud.pools["document"].values():
            if doc.type != DOC_SERVICE:
                continue
            body = self.body(doc)
            report = bool(body.get("ready_status_gate"))
            state = body.get("state")
            if state == ServiceState.DEPLOYING_NETS:
                self.waits[(doc.id, "")] = Wait(WaitKind.NETS_DEPLOY)
            elif state == ServiceState.UNDEPLOYING_NETS:
                self.waits[(doc.id, "")] = Wait(WaitKind.NETS_UNDEPLOY)
            for role in self._roles(body).values():
                nodes = [int(n["deploy_id"]) for n in role["nodes"]]
                key = (doc.id, role["name"])
                if role["state"] == RoleState.DEPLOYING:
                    self.waits[key] = Wait(WaitKind.DEPLOY, nodes, report)
                elif role["state"] == RoleState.UNDEPLOYING:
                    self.waits[key] = Wait(WaitKind.UNDEPLOY, nodes)
                elif role["state"] == RoleState.SCALING:
                    self.waits[key] = Wait(
                        WaitKind.SCALEUP if role.get("scale_way") == 0 else WaitKind.SCALEDOWN, nodes, report
                    )
                elif role["state"] == RoleState.COOLDOWN:
                    self.waits[key] = Wait(WaitKind.COOLDOWN, until=now + int(role.get("cooldown") or 0))

    def tick(self) -> None:
        with self.cloud.lock:
            for key, wait in list(self.waits.items()):
                if self.waits.get(key) is not wait:
                    continue
                sid, role_name = key
                doc: Document | None = self.cloud.pools["document"].get(sid)
                if doc is None:
                    self.waits.pop(key, None)
                    continue
                body = self.body(doc)
                if self._step(sid, role_name, wait, body) and doc.id in self.cloud.pools["document"]:
                    self.save_body(doc, body)
            self._watch_running()
            if time.monotonic() >= self._next_autoscale:
                self._next_autoscale = time.monotonic() + self.cloud.config.timings.autoscaler
                self.autoscale()

    # ------------------------------------------------------------------ the autoscaler
    def autoscale(self, now: int | None = None) -> None:
        """One pass of ``ServiceAutoScaler`` (src/flow/lib/ServiceAutoScaler.rb): for every service in
        RUNNING (SCALING and COOLDOWN ones wait for their scale to finish), each role's policies are evaluated
        over its VMs (``hostkit.elasticity.evaluate_role``), the policies' counters and the cooldown are
        written back (``update_role_policies``), and a change becomes ``scale_action`` with force=false,
        whose refusal is only logged (the service's log gets scale_action's own lines)."""
        when = int(time.time()) if now is None else now
        with self.cloud.lock:
            for doc in sorted(self.cloud.pools["document"].values(), key=lambda d: d.id):
                if doc.type != DOC_SERVICE:
                    continue
                body = self.body(doc)
                if body.get("state") != ServiceState.RUNNING:
                    continue
                for name in [r.get("name") for r in body.get("roles") or [] if isinstance(r, dict)]:
                    self._autoscale_role(doc, str(name), when)

    def _autoscale_role(self, doc: Document, name: str, now: int) -> None:
        body = self.body(doc)  # fresh: an earlier role's scale_action saved the document
        role = self._roles(body).get(name)
        if role is None or role.get("type", "vm") != "vm":
            return
        if not (role.get("elasticity_policies") or role.get("scheduled_policies") or role.get("min_vms")):
            return
        vms = []
        for node in role["nodes"]:
            vm = self.cloud.pools["vm"].get(int(node["deploy_id"]))
            if vm is None:
                continue
            try:  # a guest may have set a value over libxml2's default limit through OneGate
                element = etree.fromstring(vm.to_xml().encode(), HUGE_PARSER)
            except etree.XMLSyntaxError:
                continue
            vms.append(elasticity.VmView.from_vm_hash({"VM": xml_to_dict(element)}))
        decision = elasticity.evaluate_role(role, vms, now, default_cooldown=self.cloud.config.flow_cooldown)
        decision.write_to(role)
        for level, text in decision.messages:  # upstream logs these to oneflow.log, not the service's log
            log.log(logging.DEBUG if level == "D" else logging.INFO, "service %s: %s", doc.id, text)
        self.save_body(doc, body)
        if decision.cardinality is None:
            return
        error = self.scale(doc.id, name, decision.cardinality, False)
        if error is not None:
            body = self.body(doc)
            self._log(body, "E", f"Role {name} : scale to {decision.cardinality} failed; {error}")
            self.save_body(doc, body)

    def _step(self, sid: int, role_name: str, wait: Wait, body: dict[str, Any]) -> bool:
        """Advance one wait; True when the body changed."""
        if wait.kind in (WaitKind.NETS_DEPLOY, WaitKind.NETS_UNDEPLOY):
            del self.waits[(sid, role_name)]
            if wait.kind == WaitKind.NETS_UNDEPLOY:
                self.cloud.documents.document_delete(sid)
                return False
            self._deploy_action(sid, body)
            return True
        roles = self._roles(body)
        role = roles.get(role_name)
        if role is None:
            del self.waits[(sid, role_name)]
            return False
        if wait.kind == WaitKind.COOLDOWN:
            return self._cooldown_over(sid, role_name, wait, body, role)
        finished, failed = self._check(wait, wait.kind in (WaitKind.DEPLOY, WaitKind.SCALEUP))
        if not failed and not finished:
            return False
        del self.waits[(sid, role_name)]
        if wait.kind == WaitKind.SCALEDOWN or wait.kind == WaitKind.UNDEPLOY:
            successful = set(wait.successful)
            role["nodes"] = [n for n in role["nodes"] if int(n["deploy_id"]) not in successful]
        finish = {
            WaitKind.DEPLOY: functools.partial(self._walked, up=True),
            WaitKind.SCALEUP: self._scaled,
            WaitKind.SCALEDOWN: self._scaled,
            WaitKind.UNDEPLOY: functools.partial(self._walked, up=False),
        }[wait.kind]
        return finish(sid, body, roles, role, failed)

    def _cooldown_over(
        self, sid: int, role_name: str, wait: Wait, body: dict[str, Any], role: dict[str, Any]
    ) -> bool:
        if time.time() < wait.until:
            return False
        del self.waits[(sid, role_name)]
        self._set_state(body, ServiceState.RUNNING)
        role["state"] = RoleState.RUNNING
        self._auto_delete(sid, body, role)
        return True

    def _walked(
        self,
        sid: int,
        body: dict[str, Any],
        roles: dict[str, Any],
        role: dict[str, Any],
        failed: bool,
        up: bool,
    ) -> bool:
        """A role's DEPLOY (``up``) or UNDEPLOY wait is over (ServiceLCM's deploy_cb / undeploy_cb): the role
        runs, or is done; once every role is, the service runs, or its networks go; until then a straight
        service walks on to the roles whose parents are through."""
        if failed:
            failure = ServiceState.FAILED_DEPLOYING if up else ServiceState.FAILED_UNDEPLOYING
            return self._failed(sid, body, role, failure, cancel=True)
        role["state"] = RoleState.RUNNING if up else RoleState.DONE
        through = all(r["state"] == role["state"] for r in roles.values())
        if through and up:
            self._set_state(body, ServiceState.RUNNING)
        elif through:
            self._set_state(body, ServiceState.UNDEPLOYING_NETS)
            self.waits[(sid, "")] = Wait(WaitKind.NETS_UNDEPLOY)
        elif body.get("deployment") == "straight" and up:
            self._fill_template(body)
            self._deploy_roles(sid, body, self._roles_deploy(body))
        elif body.get("deployment") == "straight":
            self._undeploy_roles(sid, body, self._roles_shutdown(body))
        if up:
            self._auto_delete(sid, body, role)
        return True

    def _failed(
        self, sid: int, body: dict[str, Any], role: dict[str, Any], state: ServiceState, cancel: bool
    ) -> bool:
        """The service and the role enter the failure ``state`` (the same name in both); with ``cancel``
        the service's other waits go."""
        if cancel:
            self._cancel(sid)
        self._set_state(body, state)
        role["state"] = RoleState[state.name]
        return True

    def _scaled(
        self, sid: int, body: dict[str, Any], roles: dict[str, Any], role: dict[str, Any], failed: bool
    ) -> bool:
        if failed:
            return self._failed(sid, body, role, ServiceState.FAILED_SCALING, cancel=False)
        return self._cooldown(sid, body, role)

    def _cooldown(self, sid: int, body: dict[str, Any], role: dict[str, Any]) -> bool:
        self._set_state(body, ServiceState.COOLDOWN)
        role["state"] = RoleState.COOLDOWN
        role.pop("scale_way", None)
        cooldown = role.get("cooldown")
        seconds = int(cooldown) if cooldown is not None else self.cloud.config.flow_cooldown
        self.waits[(sid, role["name"])] = Wait(WaitKind.COOLDOWN, until=time.time() + seconds)
        return True

    def _auto_delete(self, sid: int, body: dict[str, Any], role: dict[str, Any]) -> None:
        if not body.get("automatic_deletion") or role["nodes"]:
            return
        if all(not r["nodes"] for r in self._roles(body).values()):
            self._log(body, "I", f"Automatically deleting service {sid}")
            self._undeploy_roles(sid, body, self._roles_shutdown(body))
            self._set_state(body, ServiceState.UNDEPLOYING)

    def _check(self, wait: Wait, up: bool) -> tuple[bool, bool]:
        """EventManager's check_nodes / check_nodes_report: (all nodes done, one failed)."""
        failed = False
        remaining = []
        for vm_id in wait.nodes:
            vm: VM | None = self.cloud.pools["vm"].get(vm_id)
            if vm is None or vm.state == VmState.DONE:
                wait.successful[vm_id] = True
                continue
            if vm.state in SUBSCRIBE_STATES:
                wait.successful[vm_id] = False
                continue
            if up and wait.report:
                if (vm.user_template.get("READY") or "").strip() == "YES":
                    wait.successful[vm_id] = False
                    continue
            elif up and vm.state == VmState.ACTIVE and vm.lcm_state == LcmState.RUNNING:
                wait.successful[vm_id] = True
                continue
            if vm.state == VmState.ACTIVE and vm.lcm_state in FAILURE_LCM_STATES:
                failed = True
                continue
            remaining.append(vm_id)
        wait.nodes = remaining
        return not remaining, failed

    def _watch_running(self) -> None:
        """ServiceWatchDog: a VM of a RUNNING service that fails turns it WARNING, and back when it runs."""
        for doc in list(self.cloud.pools["document"].values()):
            if doc.type != DOC_SERVICE:
                continue
            body = self.body(doc)
            if body.get("state") not in (ServiceState.RUNNING, ServiceState.WARNING):
                continue
            changed = False
            roles = self._roles(body)
            for role in roles.values():
                if (doc.id, role["name"]) in self.waits:
                    continue
                failing = False
                for node in list(role["nodes"]):
                    vm = self.cloud.pools["vm"].get(int(node["deploy_id"]))
                    if vm is None or vm.state == VmState.DONE:
                        role["nodes"].remove(node)
                        role["cardinality"] = max(int(role.get("cardinality") or 0) - 1, 0)
                        self._log(
                            body, "I", f"Node {node['deploy_id']} is DONE, removed from role {role['name']}"
                        )
                        changed = True
                    elif vm.state == VmState.ACTIVE and vm.lcm_state in FAILURE_LCM_STATES | {
                        LcmState.UNKNOWN
                    }:
                        failing = True
                wanted = RoleState.WARNING if failing else RoleState.RUNNING
                if role["state"] in (RoleState.RUNNING, RoleState.WARNING) and role["state"] != wanted:
                    role["state"] = wanted
                    changed = True
            service_state = (
                ServiceState.WARNING
                if any(r["state"] == RoleState.WARNING for r in roles.values())
                else ServiceState.RUNNING
            )
            if service_state != body["state"]:
                self._set_state(body, service_state)
                changed = True
            if changed:
                self.save_body(doc, body)


# Ruby's JSON.parse: at most 100 levels of nesting (JSON::NestingError, a ParserError, which oneflow-server.rb
# answers with 400 where it rescues JSON::ParserError), no NaN or Infinity literals; 1e400 reads as Infinity
# (a float), which Integer() refuses later with FloatDomainError (a 500, flow_schema.FloatDomainError).
MAX_NESTING = 100
IMMUTABLE_REGISTRATION = "Immutable value: `service_template/registration_time` can not be changed"


def _no_constant(name: str) -> Any:
    raise FlowError(400, f"unexpected token at '{name}'")


def _validate(template: Any, schema_status: int = 400) -> None:
    """A service template as oneflow-server.rb checks it: a schema error is a ``schema_status``, a number Ruby
    cannot read a 500."""
    try:
        schema.validate(template)
    except schema.ParseException as error:
        raise FlowError(schema_status, str(error)) from None
    except schema.FloatDomainError as error:
        raise sinatra_500(str(error)) from None


def sinatra_500(reason: str) -> FlowError:
    """oneflow-server.rb's ``error 500`` handler: an exception it does not rescue, as one line of JSON."""
    return FlowError(
        500, json.dumps({"message": "Internal server error", "reason": reason}, separators=(",", ":"))
    )


def _nesting(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            stack += [(child, depth + 1) for child in (item.values() if isinstance(item, dict) else item)]
    return deepest


def parse_json(text_in: str) -> Any:
    """A request body as OneFlow's JSON.parse reads it; bad JSON is a 400 naming where."""
    try:
        value = json.loads(text_in, parse_constant=_no_constant)
    except json.JSONDecodeError as error:
        raise FlowError(400, f"unexpected token at '{text_in[error.pos : error.pos + 40]}'") from None
    except RecursionError:
        raise FlowError(400, f"nesting of {MAX_NESTING + 1} is too deep") from None
    except ValueError:
        # An integer literal over Python's 4300 digits. Ruby reads it as a Bignum and OneFlow would store it;
        # the stand-in refuses it (a deviation, docs/testcloud.md), with no Python text.
        raise FlowError(400, "unexpected number: an integer literal of more than 4300 digits") from None
    if _nesting(value) > MAX_NESTING:
        raise FlowError(400, f"nesting of {MAX_NESTING + 1} is too deep")
    return value
