"""The one image artifact type: a built appliance image file and its manifest.

Every builder returns an ``Image``: the local container image (factory/images/localbuild.py
``build_appliance``, raw ext4), the local qcow2 (``build_qcow2``) and Packer's build
(factory/images/packer.py ``build_variant``). The manifest beside the file is the format of
factory/model/manifest.py, whichever tool wrote it.

    image = Image.beside(variant.name, path, ImageFormat.RAW, key=key, reused=True)
    image.manifest["sha256"], image.manifest_path
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from factory.model.manifest import manifest_path
from hostkit.errors import FactoryError


class ImageFormat(enum.StrEnum):
    RAW = "raw"  # an ext4 filesystem image: the test cloud's container driver boots it
    QCOW2 = "qcow2"  # a bootable disk: QEMU/KVM, OpenNebula, the marketplace


@dataclass(frozen=True)
class Image:
    name: str  # the variant's name
    image: Path  # the image file
    format: ImageFormat
    manifest_path: Path
    manifest: Mapping[str, Any] = field(default_factory=dict)
    key: str = ""  # the content key of its cache entry ("" when not built into the cache)
    reused: bool = False  # taken from the cache, not built now
    seconds: float = 0.0  # how long the build took (0 when reused)

    @classmethod
    def beside(cls, name: str, image: Path, image_format: ImageFormat, **extra: Any) -> Image:
        """The image at ``image`` with the manifest written beside it (``<stem>.manifest.json``)."""
        path = manifest_path(image)
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise FactoryError(f"{name}: no readable manifest at {path}: {error}") from None
        return cls(name, image, image_format, path, manifest, **extra)
