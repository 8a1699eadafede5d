"""OneFlow's REST API (Basic auth, JSON documents), as oneflow-server.rb answers it."""

from __future__ import annotations

import base64
import json
import logging
import re
from typing import TYPE_CHECKING, Any

from testcloud.api.httpbase import Handler, Server
from testcloud.core.errors import OneError
from testcloud.core.objects import DOC_SERVICE, DOC_SERVICE_TEMPLATE
from testcloud.flow.engine import FlowEngine, FlowError, parse_json, sinatra_500

if TYPE_CHECKING:
    from testcloud.core.cloud import Cloud

log = logging.getLogger("testcloud")

CONTENT_TYPE = "text/html;charset=utf-8"  # Sinatra's default: oneflow-server sets none
NOT_FOUND = "<h1>Not Found</h1>"
# The two document collections of oneflow-server.rb, by their path.
COLLECTIONS = {"service_template": DOC_SERVICE_TEMPLATE, "service": DOC_SERVICE}


def _pretty(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False)


def _json_body(raw: bytes) -> Any:
    """An action's body: oneflow-server.rb's action routes call JSON.parse outside any rescue, so a body
    Ruby's parser refuses (bad JSON, nesting past 100) is Sinatra's 500, not POST /service_template's 400."""
    try:
        return parse_json(raw.decode("utf-8", errors="replace") or "null")
    except FlowError as error:
        raise sinatra_500(error.message) from None


class OneFlowApp:
    def __init__(self, cloud: Cloud, engine: FlowEngine) -> None:
        self.cloud = cloud
        self.engine = engine

    def authenticate(self, header: str | None) -> None:
        if not header or not header.lower().startswith("basic "):
            raise FlowError(401, "A username and password must be provided")
        try:
            user_pass = base64.b64decode(header.split(None, 1)[1], validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            raise FlowError(401, "Invalid credentials") from None
        try:
            self.cloud.authenticate(user_pass)
        except OneError:
            raise FlowError(401, "Invalid credentials") from None

    def route(self, method: str, path: str, body: bytes) -> tuple[int, str]:
        engine = self.engine
        route = path.split("?", 1)[0].rstrip("/") or "/"
        match = re.fullmatch(r"/(service_template|service)(?:/(\d+))?", route)
        if match:
            kind = COLLECTIONS[match.group(1)]
            oid = int(match.group(2)) if match.group(2) else None
            return self._document(method, kind, oid, body)
        match = re.fullmatch(r"/service_template/(\d+)/action", route)
        if match and method == "POST":
            return self._template_action(int(match.group(1)), body)
        match = re.fullmatch(r"/service/(\d+)/scale", route)
        if match and method == "POST":
            call = _json_body(body)
            call = call if isinstance(call, dict) else {}
            error = engine.scale(
                int(match.group(1)), str(call.get("role_name")), call.get("cardinality"), call.get("force")
            )
            if error is not None:
                status = 404 if error.startswith("[one.document.info]") else 500
                raise FlowError(status, error)
            return 204, ""
        match = re.fullmatch(r"/service/(\d+)/action", route)
        if match and method == "POST":
            call = _json_body(body)
            action = call.get("action") if isinstance(call, dict) else None
            if not isinstance(action, dict):
                raise FlowError(500, "Internal server error")
            engine.action(int(match.group(1)), str(action.get("perform")), action.get("params"))
            return 204, ""
        return 404, NOT_FOUND

    def _document(self, method: str, kind: int, oid: int | None, body: bytes) -> tuple[int, str]:
        """A collection (``oid`` None: list, or create a template) or one document: show, update a template,
        delete (a service undeploys first)."""
        engine = self.engine
        if oid is None and method == "GET":
            return 200, _pretty(engine.pool_json(kind))
        if oid is None and method == "POST" and kind == DOC_SERVICE_TEMPLATE:
            return 201, _pretty(engine.create_template(body.decode("utf-8", errors="replace")))
        if oid is None:
            return 404, NOT_FOUND
        if method == "GET":
            return 200, _pretty(engine.get_json(oid, kind))
        if method == "PUT" and kind == DOC_SERVICE_TEMPLATE:
            return 200, _pretty(engine.update_template(oid, body.decode("utf-8", errors="replace")))
        if method == "DELETE" and kind == DOC_SERVICE_TEMPLATE:
            engine.delete_template(oid)
            return 204, ""
        if method == "DELETE":
            engine.undeploy(oid)
            return 204, ""
        return 404, NOT_FOUND

    def _template_action(self, oid: int, body: bytes) -> tuple[int, str]:
        """``POST /service_template/<id>/action``: instantiate or update."""
        action = _json_body(body)
        action = action.get("action") if isinstance(action, dict) else None
        if not isinstance(action, dict):
            raise FlowError(500, "Internal server error")
        params = action.get("params") if isinstance(action.get("params"), dict) else {}
        if action.get("perform") == "instantiate":
            return 201, _pretty(self.engine.instantiate(oid, params.get("merge_template")))
        if action.get("perform") == "update":
            template = params.get("template_json")
            if not template:
                raise FlowError(500, "Action update: You have to provide a template")
            self.engine.update_template(oid, template, params.get("append") is True)
            return 204, ""
        raise FlowError(500, f"Action {action.get('perform')} not supported")


class OneFlowHandler(Handler):
    server: Server

    def _handle(self) -> None:
        app: OneFlowApp = self.server.app
        body = self.body_or_refusal(413, "Request Entity Too Large", CONTENT_TYPE)
        if body is None:
            return
        try:
            app.authenticate(self.headers.get("Authorization"))
            status, text_out = app.route(self.command, self.path, body)
        except FlowError as error:
            status, text_out = error.status, error.message
        except Exception as error:
            log.exception("OneFlow %s %s failed", self.command, self.path)
            status, text_out = 500, sinatra_500(str(error).splitlines()[0] if str(error) else "").message
        self.send(status, text_out, CONTENT_TYPE)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle


def make_server(cloud: Cloud, engine: FlowEngine, host: str, port: int) -> Server:
    return Server((host, port), OneFlowHandler, OneFlowApp(cloud, engine))
