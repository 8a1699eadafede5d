"""Images: real files in the datastore directory, registered as oned does (LOCKED while the file is
copied in, then READY; ERROR with the reason if the copy fails). Size and format come from the file
itself (``qemu-img info``), as the fs datastore driver does."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import requests

from testcloud.core import errors
from testcloud.core.objects import (
    DS_FILE,
    DS_IMAGE,
    DS_SYSTEM,
    IMAGE_STATE_NAMES,
    IMAGE_TYPE_NAMES,
    IMAGE_TYPES,
    IMG_DISABLED,
    IMG_ERROR,
    IMG_LOCKED,
    IMG_LOCKED_USED,
    IMG_READY,
    IMG_USED,
    Datastore,
    Image,
    Space,
)
from testcloud.core.pool import PoolStore
from testcloud.core.template import Template
from testcloud.core.validate import check_name, parse_template

log = logging.getLogger("testcloud")

HEAD_BYTES = 1024 * 1024  # enough of a remote image for qemu-img to read its header


class SizeError(Exception):
    pass


def qemu_img_info(path: Path) -> dict:
    result = subprocess.run(
        ["qemu-img", "info", "--output=json", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if result.returncode != 0:
        raise SizeError(result.stderr.strip() or f"qemu-img info failed for {path}")
    return json.loads(result.stdout)


def local_path(path: str) -> Path | None:
    if path.startswith("file://"):
        return Path(path[len("file://") :])
    if "://" in path:
        return None
    return Path(path)


def stat_size_mb(path: str) -> int:
    """``fs_size`` of the datastore driver: virtual size in MB (rounded up) of a file or URL."""
    local = local_path(path)
    if local is not None:
        if local.is_dir():
            total = sum(f.stat().st_size for f in local.rglob("*") if f.is_file())
            return math.ceil(total / 2**20)
        if not local.is_file() or not os.access(local, os.R_OK):
            raise SizeError(f"Cannot determine size for {path}")
        try:
            return math.ceil(qemu_img_info(local)["virtual-size"] / 2**20)
        except (SizeError, KeyError, ValueError) as error:
            raise SizeError(f"Cannot determine size for {path}") from error
    if not path.startswith(("http://", "https://")):
        raise SizeError(f"Cannot determine size for {path}")
    try:
        with requests.get(
            path, stream=True, timeout=30, headers={"Range": f"bytes=0-{HEAD_BYTES - 1}"}
        ) as reply:
            reply.raise_for_status()
            head = reply.raw.read(HEAD_BYTES)
            length = reply.headers.get("Content-Range", "").rpartition("/")[2] or reply.headers.get(
                "Content-Length"
            )
    except requests.RequestException as error:
        raise SizeError(f"Cannot determine size for {path}") from error
    with tempfile.NamedTemporaryFile() as handle:
        handle.write(head)
        handle.flush()
        try:
            info = qemu_img_info(Path(handle.name))
        except SizeError as error:
            raise SizeError("Failed to detect image format") from error
    if info.get("format") == "raw":
        if not length or not length.isdigit():
            raise SizeError("Unsupported remote image format")
        return math.ceil(int(length) / 2**20)
    return math.ceil(info["virtual-size"] / 2**20)


def copy_into(source: str, destination: Path) -> tuple[str, str]:
    """Copy a file or URL to ``destination`` (sparse, reflinked where the filesystem can); returns the
    MD5 and SHA-256 of the bytes copied."""
    md5, sha256 = hashlib.md5(), hashlib.sha256()
    partial = destination.with_name(destination.name + ".part")
    local = local_path(source)
    try:
        if local is not None:
            subprocess.run(
                ["cp", "--sparse=always", "--reflink=auto", str(local), str(partial)],
                capture_output=True,
                text=True,
                check=True,
            )
            with open(partial, "rb") as handle:
                while chunk := handle.read(4 * 2**20):
                    md5.update(chunk)
                    sha256.update(chunk)
        else:
            with requests.get(source, stream=True, timeout=60) as reply, open(partial, "wb") as out:
                reply.raise_for_status()
                for chunk in reply.iter_content(4 * 2**20):
                    md5.update(chunk)
                    sha256.update(chunk)
                    out.write(chunk)
        os.replace(partial, destination)
    except subprocess.CalledProcessError as error:
        partial.unlink(missing_ok=True)
        raise OSError(error.stderr.strip() or str(error)) from error
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return md5.hexdigest(), sha256.hexdigest()


class ImagePool:
    def __init__(self, db: PoolStore) -> None:
        self.db = db

    def datastore_space(self, ds: Datastore) -> Space:
        """TOTAL_MB, FREE_MB, USED_MB of the filesystem holding the datastore (capped by LIMIT_MB)."""
        path = Path(ds.base_path)
        path.mkdir(parents=True, exist_ok=True)
        usage = shutil.disk_usage(path)
        total, free = usage.total // 2**20, usage.free // 2**20
        used = total - free
        limit = ds.template.get("LIMIT_MB")
        if limit is not None and limit.strip().isdigit():
            images_mb = sum(i.size_mb for i in self.db.pools["image"].values() if i.datastore_id == ds.id)
            total, free, used = int(limit), max(int(limit) - images_mb, 0), images_mb
        return Space(total, free, used)

    # ------------------------------------------------------------------ one.image.*
    def image_allocate(self, text_in: str, ds_id: int, skip_capacity_check: bool = False) -> int:
        tmpl = parse_template(text_in)
        with self.db.lock:
            ds: Datastore = self.db.get("datastore", ds_id, errors.DATASTORE)
            if ds.type == DS_SYSTEM:
                raise errors.allocate("New images can only be allocated in a files or image datastore.")
            from_app = tmpl.get("FROM_APP")
            if from_app is not None:
                app = self.db.pools["marketapp"].get(int(from_app)) if from_app.strip().isdigit() else None
                if app is None:
                    raise errors.internal("Cannot determine image SIZE.")
                tmpl.replace("FROM_APP_NAME", app.name)
                tmpl.replace("PATH", app.source)
                tmpl.replace("FORMAT", app.format)
                tmpl.replace("FROM_APP_MD5", app.md5)
                size_mb = app.size_mb
            else:
                size_mb = self._stat_image(tmpl)
            _, free, _ = self.datastore_space(ds)
            if not skip_capacity_check and size_mb > free:
                raise errors.action("Not enough space in datastore")
            image = self._new_image(tmpl, ds, size_mb)
            self.db.insert(image, "image")
            self.db.workers.submit(self._register_file, image.id)
            return image.id

    def _stat_image(self, tmpl: Template) -> int:
        """``ImageManager::stat_image``: the size in MB, or oned's reason it cannot be known."""
        type_name = (tmpl.get("TYPE") or "OS").upper()
        path, source = tmpl.get("PATH") or "", tmpl.get("SOURCE") or ""

        def declared_size() -> int:
            size = (tmpl.get("SIZE") or "").strip()
            if not size.isdigit():
                raise errors.internal("Cannot parse image SIZE: Wrong number or missing SIZE attribute.")
            return int(size)

        if type_name in ("CDROM", "KERNEL", "RAMDISK", "CONTEXT"):
            if source:
                return declared_size()
            if not path:
                raise errors.internal(
                    f"Cannot parse image SIZE: Either PATH or SOURCE are required for {type_name}"
                )
        elif type_name == "FILESYSTEM" and not path:
            raise errors.internal("Cannot parse image SIZE: Missing PATH attribute.")
        elif source or not path:
            return declared_size()
        try:
            return stat_size_mb(path)
        except SizeError as error:
            raise errors.internal(f"Cannot parse image SIZE: {error}") from None

    def _check_name_and_type(self, name: str, type_name: str, ds: Datastore) -> None:
        reason = check_name(name)
        if reason:
            raise errors.allocate(reason)
        if type_name not in IMAGE_TYPES or type_name == "BACKUP":
            raise errors.allocate(f"Unknown type {type_name}")
        if type_name in ("OS", "DATABLOCK", "CDROM", "FILESYSTEM") and ds.type != DS_IMAGE:
            raise errors.allocate(
                "Only IMAGES of type KERNEL, RAMDISK and CONTEXT can be registered in a FILE_DS datastore"
            )
        if type_name in ("KERNEL", "RAMDISK", "CONTEXT") and ds.type != DS_FILE:
            raise errors.allocate(
                "IMAGES of type KERNEL, RAMDISK and CONTEXT cannot be registered in an IMAGE_DS datastore"
            )
        taken = next((i for i in self.db.pools["image"].values() if i.name == name), None)
        if taken is not None:
            raise errors.allocate(f"NAME is already taken by IMAGE {taken.id}.")

    def _new_image(self, tmpl: Template, ds: Datastore, size_mb: int) -> Image:
        name = tmpl.get("NAME") or ""
        type_name = (tmpl.get("TYPE") or "OS").strip().upper()
        self._check_name_and_type(name, type_name, ds)
        image_type = IMAGE_TYPES[type_name]
        path, source = tmpl.get("PATH") or "", tmpl.get("SOURCE") or ""
        image_format = tmpl.get("FORMAT") or ""
        if source and path:
            raise errors.allocate("PATH and SOURCE cannot be both set.")
        if source and not image_format:
            raise errors.allocate("SOURCE needs FORMAT to be set.")
        if not source and not path:
            if type_name in ("OS", "DATABLOCK"):
                image_format = image_format or "raw"
            elif type_name == "FILESYSTEM":
                image_format = "dir"
            else:
                raise errors.allocate("No PATH nor SOURCE in template.")
        elif path and not tmpl.get("FROM_APP"):
            image_format = ""  # filled in from the file once it is copied
        persistent = (tmpl.get("PERSISTENT") or "").strip().upper() == "YES"
        for key in (
            "NAME",
            "TYPE",
            "PERSISTENT",
            "SIZE",
            "FS",
            "DRIVER",
            "PATH",
            "SOURCE",
            "FORMAT",
            "TM_MAD",
        ):
            tmpl.erase(key)
        if type_name in ("OS", "DATABLOCK") and tmpl.get("DEV_PREFIX") is None:
            tmpl.add("DEV_PREFIX", "vd")
        now = int(time.time())
        return Image(
            id=self.db.next_id("image"),
            name=name,
            type=image_type,
            persistent=int(persistent and image_type in (0, 2)),
            regtime=now,
            modtime=now,
            source=source,
            path=path,
            format=image_format,
            size_mb=size_mb,
            state=IMG_LOCKED,
            datastore_id=ds.id,
            datastore=ds.name,
            template=tmpl,
        )

    def _register_file(self, image_id: int) -> None:
        """The datastore ``cp``: bring the file into the datastore, then unlock the image."""
        started = time.monotonic()
        with self.db.lock:
            image: Image | None = self.db.pools["image"].get(image_id)
            if image is None:
                return
            ds: Datastore = self.db.pools["datastore"][image.datastore_id]
            path, source, size_mb = image.path, image.source, image.size_mb
            expected_md5 = image.template.get("FROM_APP_MD5") or ""
        destination = (
            Path(ds.base_path) / hashlib.md5(f"{image_id}:{secrets.token_hex(8)}".encode()).hexdigest()
        )
        error = ""
        detected_format = ""
        try:
            if source:
                destination = Path(source)
            elif path:
                md5, _ = copy_into(path, destination)
                if expected_md5 and md5 != expected_md5:
                    raise OSError(f"checksum mismatch: expected MD5 {expected_md5}, got {md5}")
                detected_format = qemu_img_info(destination).get("format", "raw")
            else:  # an empty datablock: a sparse raw file of SIZE MB
                with open(destination, "wb") as handle:
                    handle.truncate(size_mb * 2**20)
                detected_format = "raw"
        except (OSError, SizeError, requests.RequestException, subprocess.SubprocessError) as failure:
            error = f"Error copying image in the datastore: {failure}"
            if not source:
                destination.unlink(missing_ok=True)
        time.sleep(max(0.0, self.db.config.timings.image_lock - (time.monotonic() - started)))
        with self.db.lock:
            image = self.db.pools["image"].get(image_id)
            if image is None:  # deleted while being copied
                if not source:
                    destination.unlink(missing_ok=True)
                return
            if error:
                image.state = IMG_ERROR
                image.template.replace("ERROR", error)
            else:
                image.source = str(destination)
                if detected_format and not image.format:
                    image.format = detected_format
                image.state = IMG_USED if image.vms else IMG_READY
            image.modtime = int(time.time())
            self.db.save(image)

    def image_info(self, oid: int) -> str:
        return self.db.info_xml("image", oid, errors.IMAGE)

    def imagepool_info(self, filter_flag: int, start: int, end: int) -> str:
        return self.db.pool_xml("IMAGE_POOL", self.db.pools["image"].values(), filter_flag, start, end)

    def image_update(self, oid: int, text_in: str, append: int) -> int:
        """``one.image.update``: replace or merge the image's TEMPLATE (the CLI's export rewrites it)."""
        return self.db.update_template("image", oid, errors.IMAGE, text_in, append).id

    def image_delete(self, oid: int, force: bool = False) -> int:
        with self.db.lock:
            image: Image = self.db.get("image", oid, errors.IMAGE)
            if image.vms or image.state in (IMG_USED, IMG_LOCKED_USED):
                raise errors.action(f"Cannot delete image. There are {len(image.vms)} VMs using it.")
            if image.app_clones and image.state == IMG_LOCKED:
                raise errors.action(
                    f"Cannot delete image. There are {len(image.app_clones)} active clone operations."
                )
            self.db.drop(image)
            ds: Datastore = self.db.pools["datastore"][image.datastore_id]
            if image.source and Path(image.source).parent == Path(ds.base_path):
                Path(image.source).unlink(missing_ok=True)
            return oid

    # ------------------------------------------------------------------ used by VMs
    def acquire_image(self, vm_id: int, disk: dict[str, str]) -> Image:
        """``ImageManager::acquire_image`` for a DISK of a new VM."""
        if "IMAGE_ID" in disk:
            raw = disk["IMAGE_ID"].strip()
            image = self.db.pools["image"].get(int(raw)) if raw.lstrip("-").isdigit() else None
            if image is None:
                raise errors.allocate(f"Image with ID: {raw} does not exist")
        elif "IMAGE" in disk:
            image = next((i for i in self.db.pools["image"].values() if i.name == disk["IMAGE"]), None)
            if image is None:
                raise errors.allocate(
                    f"User 0 does not own an image with name: {disk['IMAGE']} . "
                    "Set IMAGE_UNAME or IMAGE_UID of owner in DISK."
                )
        else:
            raise errors.allocate("DISK without IMAGE_ID or IMAGE: volatile disks are not supported")
        assert isinstance(image, Image)
        if image.type not in (0, 1, 2, 7):
            raise errors.allocate(
                f"Image {image.id} ({image.name}) of type {IMAGE_TYPE_NAMES[image.type]} "
                "cannot be used as DISK."
            )
        if image.state in (IMG_READY, IMG_USED):
            if image.persistent and image.vms:
                raise errors.allocate(f"Cannot acquire image {image.id}, it is persistent and already in use")
            image.state = IMG_USED
        elif image.state in (IMG_LOCKED, IMG_LOCKED_USED):
            image.state = IMG_LOCKED_USED
        else:
            raise errors.allocate(
                f"Cannot acquire image {image.id}, it is in state: {IMAGE_STATE_NAMES[image.state]}"
            )
        image.vms.append(vm_id)
        self.db.save(image)
        return image

    def release_image(self, vm_id: int, image_id: int) -> None:
        image: Image | None = self.db.pools["image"].get(image_id)
        if image is None or vm_id not in image.vms:
            return
        image.vms.remove(vm_id)
        if not image.vms:
            if image.state == IMG_USED:
                image.state = IMG_READY
            elif image.state == IMG_LOCKED_USED:
                image.state = IMG_LOCKED
        self.db.save(image)

    def resume_locked_images(self) -> None:
        """After a restart: copies that were under way start again."""
        for image in list(self.db.pools["image"].values()):
            if image.state in (IMG_LOCKED, IMG_LOCKED_USED):
                self.db.workers.submit(self._register_file, image.id)

    def image_is_ready_for(self, image_id: int) -> bool | None:
        """For a CLONING VM: True when its image is usable, False when it failed, None while locked."""
        image: Image | None = self.db.pools["image"].get(image_id)
        if image is None or image.state in (IMG_ERROR, IMG_DISABLED):
            return False
        if image.state in (IMG_LOCKED, IMG_LOCKED_USED):
            return None
        return True
