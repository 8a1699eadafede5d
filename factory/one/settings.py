"""Where the OpenNebula driver connects, and as whom.

Environment (the names OpenNebula's own tools use, plus a few for the harness):

| variable | meaning | default |
|---|---|---|
| `ONE_XMLRPC` | oned XML-RPC endpoint, `http(s)://host:2633/RPC2` | the local test cloud's `endpoints.json` |
| `ONE_AUTH` | `user:password`, or a file holding it (as OpenNebula's CLI reads it) | the test cloud's |
| `ONEFLOW_URL` | OneFlow endpoint, `http(s)://host:2474` | the test cloud's |
| `ONE_NETWORK` | virtual network (name or ID) for the appliances' NIC | the first one listed |
| `ONE_DATASTORE` | image datastore (name or ID) for imported images | `default`, else the first image DS |
| `ONE_MARKETPLACE` | `http` marketplace (name or ID) to publish to | the first with MARKET_MAD http |
| `ONE_IMAGE_URL_BASE` | URL (or frontend path) where oned can fetch the built images | local absolute paths |
| `ONE_SSH_USER` | user the harness logs in as on the appliance VMs | `root` |
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from hostkit.errors import ConfigError
from hostkit.paths import CLOUD_DIR


@dataclass(frozen=True)
class OneSettings:
    xmlrpc: str
    auth: str
    oneflow: str
    network: str | None = None
    datastore: str | None = None
    marketplace: str | None = None
    image_url_base: str | None = None
    ssh_user: str = "root"
    source: str = "environment"

    @property
    def user(self) -> str:
        return self.auth.split(":", 1)[0]

    @property
    def password(self) -> str:
        return self.auth.split(":", 1)[1]

    def describe(self) -> str:
        """For progress lines: never shows the password."""
        return f"{self.xmlrpc} as {self.user} (OneFlow {self.oneflow}; from {self.source})"


def _read_auth(value: str, source: str) -> str:
    """``user:password`` as given, or the first line of the file ``value`` names (OpenNebula's ONE_AUTH)."""
    candidate = Path(value).expanduser()
    if candidate.is_file():
        lines = candidate.read_text().strip().splitlines()
        value = lines[0].strip() if lines else ""
    if ":" not in value or not value.split(":", 1)[0]:
        raise ConfigError(source, "ONE_AUTH", "must be user:password, or a file holding user:password")
    return value


def load_settings(environ: dict[str, str] | None = None, cloud_dir: Path = CLOUD_DIR) -> OneSettings:
    """Settings from the environment; missing endpoints come from the local test cloud's endpoints.json."""
    env = dict(os.environ if environ is None else environ)
    endpoints: dict[str, str] = {}
    source = "environment"
    if not (env.get("ONE_XMLRPC") and env.get("ONE_AUTH") and env.get("ONEFLOW_URL")):
        endpoints_file = cloud_dir / "endpoints.json"
        if endpoints_file.is_file():
            try:
                endpoints = json.loads(endpoints_file.read_text())
            except json.JSONDecodeError as error:
                raise ConfigError(str(endpoints_file), "", f"not valid JSON: {error}") from None
            source = str(endpoints_file)
        elif not env.get("ONE_XMLRPC"):
            raise ConfigError(
                "environment",
                "ONE_XMLRPC",
                f"not set, and no local test cloud is up ({endpoints_file} missing): "
                "run `python build.py cloud up` or point ONE_XMLRPC/ONE_AUTH/ONEFLOW_URL at an OpenNebula",
            )
    xmlrpc = env.get("ONE_XMLRPC") or endpoints.get("xmlrpc", "")
    oneflow = env.get("ONEFLOW_URL") or endpoints.get("oneflow", "")
    auth_value = env.get("ONE_AUTH") or endpoints.get("auth", "")
    if not xmlrpc.startswith(("http://", "https://")):
        raise ConfigError(source, "ONE_XMLRPC", f"must be an http(s):// XML-RPC endpoint, got {xmlrpc!r}")
    if not oneflow.startswith(("http://", "https://")):
        raise ConfigError(source, "ONEFLOW_URL", f"must be an http(s):// OneFlow endpoint, got {oneflow!r}")
    if not auth_value:
        raise ConfigError(source, "ONE_AUTH", "not set")
    return OneSettings(
        xmlrpc=xmlrpc,
        auth=_read_auth(auth_value, source),
        oneflow=oneflow.rstrip("/"),
        network=env.get("ONE_NETWORK") or None,
        datastore=env.get("ONE_DATASTORE") or None,
        marketplace=env.get("ONE_MARKETPLACE") or None,
        image_url_base=(env.get("ONE_IMAGE_URL_BASE") or "").rstrip("/") or None,
        ssh_user=env.get("ONE_SSH_USER") or "root",
        source=source,
    )
