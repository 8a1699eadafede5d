"""Image manifests: sha256, md5, sizes, os-release and component versions of a built image.

Standard library only: the HCL renderer copies this file into each rendered build directory as
``scripts/manifest.py``, where Packer's shell-local post-processor runs it with the host's python3::

    python3 manifest.py --image out/<variant>.qcow2 --variant variant.json --facts out/facts

It writes ``<image>.manifest.json`` next to the image (``<variant>.manifest.json`` for
``<variant>.qcow2``). Other build paths (the local chroot builder) call :func:`build_manifest` and
:func:`write_manifest` directly so that every image has the same manifest format.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

MANIFEST_FORMAT = 1


def digests(path: Path) -> tuple[str, str]:
    """(sha256, md5) of a file, read once."""
    sha256, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            sha256.update(chunk)
            md5.update(chunk)
    return sha256.hexdigest(), md5.hexdigest()


def image_info(path: Path) -> tuple[str, int]:
    """(format, virtual size in bytes) from ``qemu-img info``; raw images without qemu-img: their size."""
    try:
        result = subprocess.run(
            ["qemu-img", "info", "--output=json", str(path)], capture_output=True, text=True, check=True
        )
    except FileNotFoundError:
        return "raw", path.stat().st_size
    except subprocess.CalledProcessError as error:
        raise RuntimeError(f"qemu-img info {path} failed: {error.stderr.strip()}") from None
    info = json.loads(result.stdout)
    return str(info["format"]), int(info["virtual-size"])


def parse_os_release(text: str) -> dict[str, str]:
    """os-release's KEY=value lines (shell quoting) as a dict."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        try:
            words = shlex.split(value)
        except ValueError:
            words = [value]
        fields[key] = words[0] if words else ""
    return fields


def parse_facts(text: str) -> dict[str, str]:
    """The ``name=value`` lines written by collect-facts.sh."""
    facts: dict[str, str] = {}
    for line in text.splitlines():
        if "=" in line:
            key, _, value = line.partition("=")
            facts[key.strip()] = value.strip()
    return facts


def build_manifest(
    image: Path, variant: dict[str, Any], os_release: dict[str, str], facts: dict[str, str], tool: str
) -> dict[str, Any]:
    """The manifest of one image. ``variant`` is Variant.as_dict() (name, axes, pins)."""
    sha256, md5 = digests(image)
    image_format, virtual_size = image_info(image)
    packages = {key[len("package_") :]: value for key, value in facts.items() if key.startswith("package_")}
    components = {
        "flower": facts.get("flower", ""),
        "python": facts.get("python", ""),
        "framework": variant.get("framework", ""),
        "framework_packages": packages,
        "one_context": facts.get("one_context", ""),
        "kernel": facts.get("kernel", ""),
    }
    if variant.get("accel") == "gpu":
        components["nvidia_driver"] = facts.get("nvidia_driver", "")
        components["cuda"] = variant.get("pins", {}).get("cuda", "")
    return {
        "manifest_format": MANIFEST_FORMAT,
        "variant": variant.get("name", ""),
        "role": variant.get("role", ""),
        "image": image.name,
        "format": image_format,
        "size": image.stat().st_size,
        "virtual_size": virtual_size,
        "sha256": sha256,
        "md5": md5,
        "os_release": os_release,
        "components": components,
        "pins": variant.get("pins", {}),
        "build": {
            "tool": tool,
            "created": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
    }


def manifest_path(image: Path) -> Path:
    return image.with_name(f"{image.stem}.manifest.json")


def write_manifest(image: Path, manifest: dict[str, Any]) -> Path:
    """Write ``<stem>.manifest.json`` beside the image, atomically."""
    target = manifest_path(image)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        json.dump(manifest, stream, indent=2, sort_keys=True)
        stream.write("\n")
    os.chmod(temporary, 0o644)
    os.replace(temporary, target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the manifest of a built image.")
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--variant", type=Path, required=True, help="variant.json of the rendered build")
    parser.add_argument("--facts", type=Path, required=True, help="directory with os-release and facts.env")
    parser.add_argument("--tool", default="packer")
    args = parser.parse_args(argv)
    try:
        variant = json.loads(args.variant.read_text(encoding="utf-8"))
        os_release = parse_os_release((args.facts / "os-release").read_text(encoding="utf-8"))
        facts = parse_facts((args.facts / "facts.env").read_text(encoding="utf-8"))
        target = write_manifest(args.image, build_manifest(args.image, variant, os_release, facts, args.tool))
    except (OSError, RuntimeError, ValueError) as error:
        print(f"manifest: {error}", file=sys.stderr)
        return 1
    print(f"manifest: {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
