"""The http marketplace's web server: GET/HEAD of the app files in the public directory, with byte ranges
(what oned's downloader and the datastore's size probe ask for)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from testcloud.api.httpbase import Handler, Server

if TYPE_CHECKING:
    from testcloud.core.cloud import Cloud

_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
CHUNK = 2**20


class MarketHandler(Handler):
    server: Server

    def _file(self) -> Path | None:
        name = self.path.split("?", 1)[0].lstrip("/")
        if not _NAME.match(name) or name.startswith("."):
            return None
        cloud: Cloud = self.server.app
        path = cloud.market.market_public_dir() / name
        return path if path.is_file() else None

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        path = self._file()
        if path is None:
            self.send(404, "Not Found")
            return
        size = path.stat().st_size
        start, end, status = 0, size - 1, 200
        match = _RANGE.match(self.headers.get("Range", ""))
        if match and (match.group(1) or match.group(2)):
            if match.group(1):
                start = int(match.group(1))
                end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
            else:
                start = max(size - int(match.group(2)), 0)
            if start > end or start >= size:
                self.send(
                    416, "Requested Range Not Satisfiable", headers={"Content-Range": f"bytes */{size}"}
                )
                return
            status = 206
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if self.command == "HEAD":
            return
        with open(path, "rb") as handle:
            handle.seek(start)
            remaining = end - start + 1
            while remaining > 0:
                chunk = handle.read(min(CHUNK, remaining))
                if not chunk:
                    break
                self.wfile.write(chunk)
                remaining -= len(chunk)


def make_server(cloud: Cloud, host: str, port: int) -> Server:
    return Server((host, port), MarketHandler, cloud)
