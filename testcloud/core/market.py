"""Marketplaces: "OpenNebula Public" (type one: listed, creation refused) and an ``http`` marketplace whose
apps are image files copied into a served directory (SOURCE is their URL), LOCKED while copied, then
READY with MD5 (and SHA-256 in the app template)."""

from __future__ import annotations

import hashlib
import logging
import math
import secrets
import time
from pathlib import Path

from testcloud.core import errors
from testcloud.core.errors import OneError
from testcloud.core.images import ImagePool, copy_into
from testcloud.core.objects import (
    APP_ERROR,
    APP_IMAGE,
    APP_LOCKED,
    APP_READY,
    APP_SERVICE_TEMPLATE,
    APP_VMTEMPLATE,
    IMG_ERROR,
    IMG_LOCKED,
    IMG_LOCKED_USED,
    Image,
    MarketApp,
    Marketplace,
    Space,
)
from testcloud.core.pool import PoolStore
from testcloud.core.validate import check_name, parse_template

log = logging.getLogger("testcloud")

APP_TYPES = {"IMAGE": APP_IMAGE, "VMTEMPLATE": APP_VMTEMPLATE, "SERVICE_TEMPLATE": APP_SERVICE_TEMPLATE}


class MarketPool:
    def __init__(self, db: PoolStore, images: ImagePool) -> None:
        self.db = db
        self.images = images

    def set_market_url(self, base_url: str) -> None:
        """The http marketplace serves at ``base_url``; apps made under an older URL follow it."""
        with self.db.lock:
            for market in self.db.pools["market"].values():
                if market.market_mad != "http":
                    continue
                old = market.template.get("BASE_URL") or ""
                market.template.replace("BASE_URL", base_url)
                self.db.save(market)
                for app in self.db.pools["marketapp"].values():
                    if app.market_id == market.id and old and app.source.startswith(old):
                        app.source = base_url + app.source[len(old) :]
                        self.db.save(app)

    def market_public_dir(self, market_id: int = 1) -> Path:
        market = self.db.pools["market"][market_id]
        return Path(market.template.get("PUBLIC_DIR") or "")

    def _market_xml(self, market: Marketplace) -> str:
        apps = [a for a in self.db.pools["marketapp"].values() if a.market_id == market.id]
        used = sum(a.size_mb for a in apps)
        if market.market_mad == "http":
            total, free, _ = self.images.datastore_space(self.db.pools["datastore"][1])
        else:
            total = free = 0
        return market.to_xml([a.id for a in apps], Space(total, free, used))

    def market_info(self, oid: int) -> str:
        with self.db.lock:
            return self._market_xml(self.db.get("market", oid, errors.MARKETPLACE))

    def marketpool_info(self) -> str:
        with self.db.lock:
            pool = sorted(self.db.pools["market"].values(), key=lambda m: m.id)
            return "<MARKETPLACE_POOL>" + "".join(self._market_xml(m) for m in pool) + "</MARKETPLACE_POOL>"

    # ------------------------------------------------------------------ apps
    def marketapp_allocate(self, text_in: str, market_id: int) -> int:
        tmpl = parse_template(text_in)
        with self.db.lock:
            market: Marketplace = self.db.get("market", market_id, errors.MARKETPLACE)
            if market.market_mad not in ("http", "s3"):
                raise errors.action(f"Create disabled for market: {market.name}")
            name = tmpl.get("NAME") or ""
            reason = check_name(name)
            if reason is None:
                taken = next((a for a in self.db.pools["marketapp"].values() if a.name == name), None)
                if taken is not None:
                    reason = f"NAME is already taken by MARKETPLACEAPP {taken.id}"
            if reason:
                raise errors.allocate(reason)
            type_name = (tmpl.get("TYPE") or "IMAGE").strip().upper()
            app_type = APP_TYPES.get(type_name, 0)
            origin = tmpl.get("ORIGIN_ID")
            if origin is None:
                raise errors.allocate("Missing ORIGIN_ID for the MARKETPLACEAPP")
            image: Image | None = None
            if app_type == APP_IMAGE:
                image = (
                    self.db.pools["image"].get(int(origin)) if origin.strip().lstrip("-").isdigit() else None
                )
                if image is None:  # oned would leave the app behind in ERROR; the test cloud makes nothing
                    raise errors.internal("Image does not exist.")
                if image.state in (IMG_LOCKED, IMG_LOCKED_USED, IMG_ERROR):
                    raise errors.internal(f"Cannot clone image {image.id} in its current state.")
            elif app_type == 0:
                raise errors.internal("Marketplace app type not supported.")
            for key in ("NAME", "ZONE_ID", "SOURCE", "SIZE", "MD5", "FORMAT", "REGTIME", "ORIGIN_ID"):
                tmpl.erase(key)
            app = MarketApp(
                id=self.db.next_id("marketapp"),
                name=name,
                regtime=int(time.time()),
                origin_id=origin.strip(),
                description=tmpl.get("DESCRIPTION") or "",
                version=tmpl.get("VERSION") or "0.0",
                apptemplate64=tmpl.get("APPTEMPLATE64") or "",
                market_id=market.id,
                market_name=market.name,
                state=APP_LOCKED if app_type == APP_IMAGE else APP_READY,
                type=app_type,
                template=tmpl,
            )
            self.db.insert(app, "marketapp")
            if image is not None:
                image.app_clones.append(app.id)
                self.db.save(image)
                self.db.workers.submit(self._export_app, app.id)
            return app.id

    def _export_app(self, app_id: int) -> None:
        """The http marketplace driver's import: copy the image file into the public directory."""
        started = time.monotonic()
        with self.db.lock:
            app: MarketApp | None = self.db.pools["marketapp"].get(app_id)
            if app is None:
                return
            image: Image | None = self.db.pools["image"].get(int(app.origin_id))
            market: Marketplace = self.db.pools["market"][app.market_id]
            source = image.source if image else ""
            size_mb, image_format = (image.size_mb, image.format) if image else (0, "")
            public_dir = Path(market.template.get("PUBLIC_DIR") or "")
            base_url = market.template.get("BASE_URL") or ""
        file_name = hashlib.md5(f"app{app_id}:{secrets.token_hex(8)}".encode()).hexdigest()
        error = ""
        md5 = sha256 = ""
        try:
            if not source:
                raise OSError("Image does not exist.")
            public_dir.mkdir(parents=True, exist_ok=True)
            md5, sha256 = copy_into(source, public_dir / file_name)
            (public_dir / f"{file_name}.sha256").write_text(f"{sha256}  {file_name}\n")
            (public_dir / f"{file_name}.md5").write_text(f"{md5}  {file_name}\n")
        except OSError as failure:
            error = f"Error exporting image to file: {failure}"
        time.sleep(max(0.0, self.db.config.timings.app_lock - (time.monotonic() - started)))
        with self.db.lock:
            if image is not None and app_id in image.app_clones:
                image.app_clones.remove(app_id)
                self.db.save(image)
            app = self.db.pools["marketapp"].get(app_id)
            if app is None:
                self._remove_app_files(public_dir, file_name)
                return
            if error:
                app.state = APP_ERROR
                app.template.replace("ERROR", error)
            else:
                app.source = base_url.rstrip("/") + "/" + file_name
                app.md5 = md5
                app.size_mb = size_mb or math.ceil((public_dir / file_name).stat().st_size / 2**20)
                app.format = image_format
                app.template.replace("SHA256", sha256)
                app.state = APP_READY
            self.db.save(app)

    @staticmethod
    def _remove_app_files(public_dir: Path, file_name: str) -> None:
        for suffix in ("", ".md5", ".sha256"):
            (public_dir / f"{file_name}{suffix}").unlink(missing_ok=True)

    def marketapp_info(self, oid: int) -> str:
        return self.db.info_xml("marketapp", oid, errors.MARKETPLACEAPP)

    def marketapppool_info(self, filter_flag: int, start: int, end: int) -> str:
        apps = self.db.pools["marketapp"].values()
        return self.db.pool_xml("MARKETPLACEAPP_POOL", apps, filter_flag, start, end)

    def marketapp_delete(self, oid: int) -> int:
        with self.db.lock:
            app: MarketApp = self.db.get("marketapp", oid, errors.MARKETPLACEAPP)
            market: Marketplace = self.db.pools["market"][app.market_id]
            if market.market_mad not in ("http", "s3"):
                raise OneError(errors.INTERNAL, f"Delete disabled for market: {market.name}")
            if app.state == APP_LOCKED:
                raise OneError(errors.ACTION, "Cannot delete marketplaceapp. The app is LOCKED")
            self.db.drop(app)
            if app.source:
                self._remove_app_files(self.market_public_dir(market.id), app.source.rsplit("/", 1)[-1])
            return oid

    def resume_locked_apps(self) -> None:
        for app in list(self.db.pools["marketapp"].values()):
            if app.state == APP_LOCKED:
                self.db.workers.submit(self._export_app, app.id)
