"""OneFlow REST client (HTTP Basic auth, JSON), as documented for OpenNebula 7's OneFlow server."""

from __future__ import annotations

import json
from typing import Any

import requests

from hostkit.errors import FactoryError

# OneFlow service states (src/flow/lib/models/service.rb).
SERVICE_STATES = [
    "PENDING", "DEPLOYING", "RUNNING", "UNDEPLOYING", "WARNING", "DONE", "FAILED_UNDEPLOYING",
    "FAILED_DEPLOYING", "SCALING", "FAILED_SCALING", "COOLDOWN", "DEPLOYING_NETS", "UNDEPLOYING_NETS",
    "FAILED_DEPLOYING_NETS", "FAILED_UNDEPLOYING_NETS", "HOLD",
]  # fmt: skip
FAILED_STATES = frozenset(name for name in SERVICE_STATES if name.startswith("FAILED"))


def state_name(state: int | str) -> str:
    try:
        return SERVICE_STATES[int(state)]
    except (ValueError, IndexError):
        return f"UNKNOWN({state})"


class OneFlow:
    def __init__(self, url: str, auth: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        user, password = auth.split(":", 1)
        self.session = requests.Session()
        self.session.auth = (user, password)
        self.session.headers["Content-Type"] = "application/json"
        self.timeout = timeout

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            reply = self.session.request(
                method,
                self.url + path,
                data=json.dumps(body) if body is not None else None,
                timeout=self.timeout,
            )
        except requests.RequestException as error:
            raise FactoryError(f"OneFlow {method} {path}: {error}") from error
        if reply.status_code >= 400:
            try:
                message = reply.json().get("error", {}).get("message", reply.text)
            except ValueError:
                message = reply.text
            raise FactoryError(
                f"OneFlow {method} {path}: HTTP {reply.status_code}: {str(message).strip()[:800]}"
            )
        if reply.status_code == 204 or not reply.content:
            return None
        try:
            return reply.json()
        except ValueError:
            raise FactoryError(f"OneFlow {method} {path}: answer is not JSON: {reply.text[:300]}") from None

    @staticmethod
    def _document(payload: Any, what: str) -> dict[str, Any]:
        try:
            return dict(payload["DOCUMENT"])
        except (KeyError, TypeError):
            raise FactoryError(f"OneFlow {what}: no DOCUMENT in the answer: {str(payload)[:300]}") from None

    def create_service_template(self, body: dict[str, Any]) -> int:
        document = self._document(self._request("POST", "/service_template", body), "create service template")
        return int(document["ID"])

    def service_template(self, template_id: int) -> dict[str, Any]:
        return self._document(self._request("GET", f"/service_template/{template_id}"), "service template")

    def delete_service_template(self, template_id: int) -> None:
        self._request("DELETE", f"/service_template/{template_id}", {"delete_type": "none"})

    def instantiate(self, template_id: int, merge_template: dict[str, Any] | None = None) -> int:
        params = {"merge_template": merge_template} if merge_template else {}
        payload = self._request(
            "POST",
            f"/service_template/{template_id}/action",
            {"action": {"perform": "instantiate", "params": params}},
        )
        return int(self._document(payload, "instantiate")["ID"])

    def service(self, service_id: int) -> dict[str, Any]:
        return self._document(self._request("GET", f"/service/{service_id}"), "service")

    def delete_service(self, service_id: int) -> None:
        self._request("DELETE", f"/service/{service_id}")

    def recover_delete(self, service_id: int) -> None:
        """Force removal of a service stuck in a failed state (``oneflow recover --delete``)."""
        self._request(
            "POST",
            f"/service/{service_id}/action",
            {"action": {"perform": "recover", "params": {"delete": True}}},
        )


def service_body(document: dict[str, Any]) -> dict[str, Any]:
    """The service's JSON body (TEMPLATE.BODY), a dict whether the server sent it parsed or as a string."""
    body = document.get("TEMPLATE", {}).get("BODY", {})
    if isinstance(body, str):
        body = json.loads(body)
    return dict(body)
