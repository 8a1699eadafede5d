"""oned's XML-RPC endpoint (``/RPC2``): method table, parameter checks as xmlrpc-c does them, the reply
envelope ``[true, value, 0]`` / ``[false, message, code, resp_id, <i8>0]``."""

from __future__ import annotations

import logging
import xml.parsers.expat
import xmlrpc.client
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from testcloud.api.httpbase import Handler, Server
from testcloud.core import errors
from testcloud.core.errors import OneError
from testcloud.core.template import text

if TYPE_CHECKING:
    from testcloud.core.cloud import Cloud

log = logging.getLogger("testcloud")

FAULT_TYPE = -501  # xmlrpc-c: XMLRPC_TYPE_ERROR
FAULT_PARSE = -503  # XMLRPC_PARSE_ERROR
FAULT_NO_METHOD = -506  # XMLRPC_NO_SUCH_METHOD_ERROR
FAULT_LIMIT = -509  # XMLRPC_LIMIT_EXCEEDED_ERROR


class Fault(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Method:
    """``call(cloud, *params)``; ``params`` the xmlrpc-c types after the session ("i", "s", "b"), the
    optional ones after a ``|``, each with its default."""

    call: Callable[..., Any]
    params: str
    defaults: tuple = ()
    obj: str = errors.VM
    caller: bool = False  # call(cloud, user, *params): the authenticated user comes first


def _m(
    call: Callable[..., Any],
    params: str = "",
    defaults: tuple = (),
    obj: str = errors.VM,
    caller: bool = False,
) -> Method:
    return Method(call, params, defaults, obj, caller)


METHODS: dict[str, Method] = {
    "one.system.version": _m(lambda c: c.system_version()),
    "one.image.allocate": _m(
        lambda c, t, ds, skip: c.images.image_allocate(t, ds, skip), "si|b", (False,), errors.IMAGE
    ),
    "one.image.info": _m(lambda c, i, _d: c.images.image_info(i), "i|b", (False,), errors.IMAGE),
    "one.image.update": _m(lambda c, i, t, a: c.images.image_update(i, t, a), "is|i", (0,), errors.IMAGE),
    "one.image.delete": _m(
        lambda c, i, force: c.images.image_delete(i, force), "i|b", (False,), errors.IMAGE
    ),
    "one.imagepool.info": _m(lambda c, f, s, e: c.images.imagepool_info(f, s, e), "iii", (), errors.IMAGE),
    "one.template.allocate": _m(lambda c, t: c.template_allocate(t), "s", (), errors.TEMPLATE),
    "one.template.info": _m(lambda c, i, _x, _d: c.template_info(i), "i|bb", (False, False), errors.TEMPLATE),
    "one.template.update": _m(lambda c, i, t, a: c.template_update(i, t, a), "is|i", (0,), errors.TEMPLATE),
    "one.template.delete": _m(lambda c, i, r: c.template_delete(i, r), "i|b", (False,), errors.TEMPLATE),
    "one.template.instantiate": _m(
        lambda c, i, n, h, x, p: c.vms.template_instantiate(i, n, h, x, p),
        "is|bsb",
        (False, "", False),
        errors.TEMPLATE,
    ),
    "one.templatepool.info": _m(lambda c, f, s, e: c.templatepool_info(f, s, e), "iii", (), errors.TEMPLATE),
    "one.template.clone": _m(lambda c, i, n, r: c.template_clone(i, n, r), "is|b", (False,), errors.TEMPLATE),
    "one.vm.allocate": _m(lambda c, t, h: c.vms.vm_allocate(t, h), "s|b", (False,)),
    "one.vm.info": _m(lambda c, i, _d: c.vms.vm_info(i), "i|b", (False,)),
    "one.vm.update": _m(lambda c, i, t, a: c.vms.vm_update(i, t, a), "is|i", (0,)),
    "one.vm.updateconf": _m(lambda c, i, t, a: c.vms.vm_updateconf(i, t, a), "is|i", (0,)),
    "one.vm.monitoring": _m(lambda c, i: c.vms.vm_monitoring(i), "i"),
    "one.vm.action": _m(lambda c, a, i: c.vms.vm_action(a, i), "si"),
    "one.vmpool.info": _m(lambda c, f, s, e, st, _q: c.vms.vmpool_info(f, s, e, st), "iiii|s", ("",)),
    "one.vmpool.infoextended": _m(
        lambda c, f, s, e, st, _q: c.vms.vmpool_infoextended(f, s, e, st), "iiii|s", ("",)
    ),
    "one.vn.info": _m(lambda c, i, _d: c.vnets.vn_info(i), "i|b", (False,), errors.NET),
    "one.vnpool.info": _m(lambda c, f, s, e: c.vnets.vnpool_info(f, s, e), "iii", (), errors.NET),
    "one.datastore.info": _m(lambda c, i, _d: c.datastore_info(i), "i|b", (False,), errors.DATASTORE),
    "one.datastorepool.info": _m(lambda c: c.datastorepool_info(), "", (), errors.DATASTORE),
    "one.market.info": _m(lambda c, i, _d: c.market.market_info(i), "i|b", (False,), errors.MARKETPLACE),
    "one.marketpool.info": _m(lambda c: c.market.marketpool_info(), "", (), errors.MARKETPLACE),
    "one.marketapp.allocate": _m(
        lambda c, t, m: c.market.marketapp_allocate(t, m), "si", (), errors.MARKETPLACEAPP
    ),
    "one.marketapp.info": _m(
        lambda c, i, _d: c.market.marketapp_info(i), "i|b", (False,), errors.MARKETPLACEAPP
    ),
    "one.marketapp.delete": _m(lambda c, i: c.market.marketapp_delete(i), "i", (), errors.MARKETPLACEAPP),
    "one.marketapppool.info": _m(
        lambda c, f, s, e: c.market.marketapppool_info(f, s, e), "iii", (), errors.MARKETPLACEAPP
    ),
    "one.cluster.info": _m(lambda c, i, _d: c.infra.cluster_info(i), "i|b", (False,), errors.CLUSTER),
    "one.clusterpool.info": _m(lambda c: c.infra.clusterpool_info(), "", (), errors.CLUSTER),
    "one.host.info": _m(lambda c, i, _d: c.infra.host_info(i), "i|b", (False,), errors.HOST),
    "one.hostpool.info": _m(lambda c: c.infra.hostpool_info(), "", (), errors.HOST),
    "one.user.info": _m(
        lambda c, u, i, _d: c.infra.user_info(u, i), "i|b", (False,), errors.USER, caller=True
    ),
    "one.userpool.info": _m(lambda c: c.infra.userpool_info(), "", (), errors.USER),
    "one.user.update": _m(lambda c, i, t, a: c.infra.user_update(i, t, a), "is|i", (0,), errors.USER),
    "one.document.allocate": _m(
        lambda c, t, ty: c.documents.document_allocate(t, ty), "si", (), errors.DOCUMENT
    ),
    "one.document.info": _m(lambda c, i, _d: c.documents.document_info(i), "i|b", (False,), errors.DOCUMENT),
    "one.document.update": _m(
        lambda c, i, t, a: c.documents.document_update(i, t, a), "is|i", (0,), errors.DOCUMENT
    ),
    "one.document.delete": _m(lambda c, i: c.documents.document_delete(i), "i", (), errors.DOCUMENT),
    "one.documentpool.info": _m(
        lambda c, f, s, e, ty: c.documents.documentpool_info(f, s, e, ty), "iiii", (), errors.DOCUMENT
    ),
}

_TYPE_NAMES = {"i": "integer", "s": "string", "b": "boolean"}


def check_params(params: tuple, spec: str, defaults: tuple) -> list:
    """xmlrpc-c's paramList getters: a missing or mistyped parameter is a fault; extras are ignored."""
    required, _, optional = spec.partition("|")
    values: list = []
    for index, kind in enumerate(required + optional, start=1):
        if index >= len(params):
            if index - 1 >= len(required):
                values.append(defaults[index - 1 - len(required)])
                continue
            raise Fault(FAULT_TYPE, "Not enough parameters")
        value = params[index]
        ok = {
            "i": isinstance(value, int) and not isinstance(value, bool),
            "s": isinstance(value, str),
            "b": isinstance(value, bool),
        }[kind]
        if not ok:
            raise Fault(FAULT_TYPE, f"Parameter that is supposed to be {_TYPE_NAMES[kind]} is not")
        values.append(value)
    return values


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return f"<value><boolean>{int(value)}</boolean></value>"
    if isinstance(value, int):
        return f"<value><int>{value}</int></value>"
    return f"<value><string>{text(value)}</string></value>"


def response_xml(items: list[Any], replication: bool) -> bytes:
    values = "".join(_value(v) for v in items)
    if replication:
        values += "<value><i8>0</i8></value>"
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\r\n<methodResponse>\r\n<params>\r\n'
        + "<param><value><array><data>"
        + values
        + "</data></array></value></param>\r\n</params>\r\n</methodResponse>\r\n"
    ).encode()


def fault_xml(code: int, message: str) -> bytes:
    return xmlrpc.client.dumps(xmlrpc.client.Fault(code, message), methodresponse=True).encode()


def dispatch(cloud: Cloud, body: bytes) -> bytes:
    """One call: parse, authenticate, run, wrap. Never raises."""
    try:
        params, method_name = xmlrpc.client.loads(body, use_builtin_types=True)
    except (xml.parsers.expat.ExpatError, xmlrpc.client.ResponseError) as error:
        return fault_xml(FAULT_PARSE, f"Call XML not a proper XML-RPC call.  {error}")
    except Exception as error:  # whatever else the unmarshaller trips on is still a malformed call
        return fault_xml(FAULT_PARSE, f"Call XML not a proper XML-RPC call.  {type(error).__name__}: {error}")
    method = METHODS.get(method_name or "")
    if method is None:
        return fault_xml(FAULT_NO_METHOD, f"Method '{method_name}' not defined")
    try:
        if not params:
            raise Fault(FAULT_TYPE, "Not enough parameters")
        if not isinstance(params[0], str):
            raise Fault(FAULT_TYPE, "Parameter that is supposed to be string is not")
        values = check_params(params, method.params, method.defaults)
    except Fault as fault:
        return fault_xml(fault.code, fault.message)
    try:
        user = cloud.authenticate(params[0])
        result = method.call(cloud, user, *values) if method.caller else method.call(cloud, *values)
        return response_xml([True, result, 0], replication=False)
    except OneError as error:
        return response_xml([False, error.message(method_name, method.obj), error.code, error.resp_id], True)
    except Exception:
        log.exception("%s failed", method_name)
        return response_xml([False, f"[{method_name}] Internal error", errors.INTERNAL, -1], True)


class RpcHandler(Handler):
    server: Server

    def do_POST(self) -> None:
        if self.path.split("?", 1)[0].rstrip("/") != "/RPC2":
            self.send(404, "Not Found")
            return
        body = self.body_or_refusal(200, fault_xml(FAULT_LIMIT, "XML-RPC request too large"), "text/xml")
        if body is not None:
            self.send(200, dispatch(self.server.app, body), "text/xml")

    def do_GET(self) -> None:
        self.send(405, "Method Not Allowed", headers={"Allow": "POST"})


def make_server(cloud: Cloud, host: str, port: int) -> Server:
    return Server((host, port), RpcHandler, cloud)
