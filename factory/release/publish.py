"""Publish what passed: re-verified images as marketplace apps, appliance YAMLs, certification files.

Rules, in order:

1. Only release pairs (SuperLink and SuperNodes of one Flower version) tested in a cloud are candidates;
   a pair with any failed result in the run is never published (cross-version results only inform the
   compatibility report).
2. Every image of every candidate is hashed again and compared with the sha256/md5 recorded when it was
   tested and with its manifest (``<image>.manifest.json``; a missing manifest blocks too). One mismatch
   blocks the whole publication: nothing is written, nothing created. A large file hashed before whose
   inode, size, mtime and ctime are all unchanged since is not read again (:func:`file_digests`: a write
   changes mtime and ctime, and ctime cannot be set back with ``touch``/``utime``).
3. Files are written into a staging directory; marketplace apps are created through the API (IMAGE apps with
   ORIGIN_ID = the image, a SERVICE_TEMPLATE app per pair whose ROLE entries name the IMAGE apps); only when
   all of that succeeded does the staging directory become ``results/<run>/publish``. A failure deletes the
   apps and the images made so far.
4. Nothing is reused by name or attribute alone: an IMAGE app (new or found by name) must carry the MD5
   (and SHA256 where the marketplace records one) of the tested file, computed by the marketplace when it
   copied the image (upstream's http market driver, ``src/market_mad/remotes/http/import``, records the
   MD5 of the exported file); a SERVICE_TEMPLATE app found by name must hold the same service body and
   roles. A mismatch is refused naming the app and both checksums.

What a marketplace app carries is what OpenNebula's own exporters read (OpenNebula's CLI,
``src/oca/ruby/opennebula/marketplaceapp_ext.rb``, and pyone's ``marketapp.export``): ``VMTEMPLATE64`` and
``APPTEMPLATE64`` of IMAGE apps in ONE template syntax (factory/one/onetemplate.py, as upstream's market
driver writes them), to which the exporters append ``NAME`` and ``DISK`` lines; a SERVICE_TEMPLATE app has
``ROLE = [ NAME, APP ]`` entries naming its IMAGE apps and the OneFlow 7 service body (JSON) in
``APPTEMPLATE64``, with a ``networks`` entry and ``user_inputs`` that carry their defaults
(factory/harness/appliance_templates.py).

Outputs under ``results/<run>/publish/``:

- ``marketplace/appliances/service/<id>.yaml``: OpenNebula marketplace appliance YAMLs laid out as the
  marketplace repository lays out service appliances (their images named ``service_<name>``), one per
  published app (an IMAGE app per image, a ``SERVICE_TEMPLATE`` per pair); the tree passes upstream's
  ``app2 validate`` and yamllint with the marketplace's ``.yamllint.yml``;
- ``certification/<app>/`` (community marketplace ``metadata.yaml``, ``tests.yaml``, ``tests/00-*.rb``);
- ``published.json``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from factory.harness import appliance_templates
from factory.harness.pair import PairResult, Side
from factory.model import params
from factory.model.manifest import digests, manifest_path
from factory.one import onetemplate
from factory.release.results import final_metric, finite_number, load_results, run_dir, write_json
from factory.release.templating import render
from hostkit.errors import FactoryError
from hostkit.fileio import replace_directory, write_atomic
from hostkit.progress import DEFAULT as PROGRESS
from hostkit.progress import Progress

PUBLISHER = "Flower appliance factory"
OPENNEBULA_VERSIONS = "7.0, 7.2"
UUID_NAMESPACE = uuid.UUID("5f2b1c1e-6a0e-4d57-9a51-2f0c3f6f1a42")
# Where the marketplace repository keeps service appliances (app2 applies the OS rules to appliances/os/).
APPLIANCES_DIR = Path("marketplace") / "appliances" / "service"
OS_NAMES = {"debian": "Debian", "ubuntu": "Ubuntu", "opensuse-leap": "openSUSE Leap", "sles": "SLES"}


class ChecksumMismatch(FactoryError):
    """An image changed (or vanished) since it was tested: publishing is blocked."""


@dataclass(frozen=True)
class ImageToPublish:
    role: str
    side: Side

    @property
    def variant(self) -> str:
        return self.side.variant

    @property
    def path(self) -> Path:
        return Path(self.side.image["path"])

    @property
    def line(self) -> str:
        """The appliance line, without the Flower version: its marketplace id stays stable."""
        side = self.side
        return f"{self.role}-{side.os}-{side.accel}-{side.profile}-{side.framework}-{side.arch}"

    def app_id(self, release: int) -> str:
        return appliance_id(self.line, self.side.flower, release)

    @property
    def image_name(self) -> str:
        """The YAML's image name: ``service_<name>``, as the marketplace's service appliances name theirs."""
        side = self.side
        axes = f"{side.os}_{side.accel}_{side.profile}_{side.framework}_{side.arch}"
        return f"service_flower_{self.role}_{axes}"


def appliance_id(line: str, flower: str, release: int) -> str:
    """The marketplace ``id`` of one published app: uuid5 of the appliance line, the Flower version and the
    factory release.

    Stable: publishing the same release of the same line again (a re-run, another day) rewrites the same
    file and the marketplace sees the same appliance. Unique: every Flower version and every factory
    release of a line is its own appliance, so 1.41.0 and 1.42.0 (or release 1 and 2) never overwrite
    each other, and app2's duplicate-id check holds across the whole tree.
    """
    return str(uuid.uuid5(UUID_NAMESPACE, f"{line}|flower={flower}|release={release}"))


@dataclass
class PublishPlan:
    run: str
    pairs: list[PairResult]
    images: list[ImageToPublish]
    skipped: list[str] = field(default_factory=list)


def plan(results: list[PairResult], run: str) -> PublishPlan:
    """Which pairs and images may be published, and why the others may not."""
    by_pair: dict[str, list[PairResult]] = defaultdict(list)
    for result in results:
        by_pair[result.pair].append(result)
    pairs: list[PairResult] = []
    skipped: list[str] = []
    for name, group in sorted(by_pair.items()):
        failed = [result for result in group if not result.passed]
        if failed:
            skipped.append(f"{name}: failed ({failed[0].error[:200] or 'see its result'})")
        elif any(result.cross_version for result in group):
            skipped.append(f"{name}: cross-version pair (compatibility information only)")
        elif any(result.target == "bare" for result in group):
            skipped.append(f"{name}: tested on bare Flower, not as images in a cloud")
        elif not all(
            result.superlink.image.get("path") and result.supernodes.image.get("path") for result in group
        ):
            skipped.append(f"{name}: the result does not record which image files were tested")
        else:
            pairs.append(group[0])
    images: dict[str, ImageToPublish] = {}
    for result in pairs:
        for role, side in (("superlink", result.superlink), ("supernode", result.supernodes)):
            images.setdefault(side.variant, ImageToPublish(role, side))
    return PublishPlan(run=run, pairs=pairs, images=list(images.values()), skipped=skipped)


# Files below this size are always read again (a cached entry would save nothing worth its file).
DIGEST_CACHE_MIN_SIZE = 64 << 20
# A file changed less than this long before it was hashed gets no entry: a second write within the same
# clock tick as the first could leave its ctime as it was (git's "racy" entries, the same precaution).
DIGEST_CACHE_SETTLE_NS = 2_000_000_000


def _digest_cache_file(path: Path, stat: os.stat_result) -> Path:
    from hostkit.paths import CACHE_DIR

    key = hashlib.sha256(f"{path.resolve()}\0{stat.st_dev}\0{stat.st_ino}".encode()).hexdigest()
    return CACHE_DIR / "digests" / f"{key[:32]}.json"


def _stat_fields(stat: os.stat_result) -> dict[str, int]:
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "ctime_ns": stat.st_ctime_ns}


def file_digests(path: Path) -> tuple[tuple[str, str], bool]:
    """((sha256, md5), reused) of ``path``. A file of at least DIGEST_CACHE_MIN_SIZE bytes that was hashed
    here before and whose inode, size, mtime and ctime are all what they were then is not read again
    (a write to it, or another file moved into its place, changes one of them; ctime is set by the kernel
    on every change and cannot be set back by ``touch`` or ``os.utime``). The entry lives in
    ``<cache>/digests/`` and is written only when the file did not change while it was read and had not
    changed just before."""
    before = path.stat()
    if before.st_size < DIGEST_CACHE_MIN_SIZE:
        return digests(path), False
    entry = _digest_cache_file(path, before)
    try:
        cached = json.loads(entry.read_text())
    except (OSError, ValueError):
        cached = None
    if isinstance(cached, dict) and cached.get("stat") == _stat_fields(before):
        return (str(cached["sha256"]), str(cached["md5"])), True
    hashed = digests(path)
    settled = time.time_ns() - before.st_ctime_ns >= DIGEST_CACHE_SETTLE_NS
    if settled and _stat_fields(path.stat()) == _stat_fields(before):
        with contextlib.suppress(OSError):
            entry.parent.mkdir(parents=True, exist_ok=True)
            record = {"path": str(path), "stat": _stat_fields(before), "sha256": hashed[0], "md5": hashed[1]}
            write_atomic(entry, json.dumps(record, indent=1) + "\n")
    return hashed, False


def verify_checksums(images: list[ImageToPublish], progress: Progress = PROGRESS) -> None:
    """Hash every image again (or take its digests from when it was last hashed, if the file is unchanged
    since: :func:`file_digests`); any difference from what was tested (or from its manifest) blocks all."""
    problems: list[str] = []
    reused = 0
    for image in progress.iterate(images, "verifying image checksums"):
        recorded = image.side.image.get("sha256", "")
        if not image.path.is_file():
            problems.append(f"{image.variant}: {image.path} is missing")
            continue
        (sha256, md5), cached = file_digests(image.path)
        reused += cached
        if sha256 != recorded:
            problems.append(f"{image.variant}: sha256 {sha256} differs from the tested image's {recorded}")
        if image.side.image.get("md5") and md5 != image.side.image["md5"]:
            problems.append(
                f"{image.variant}: md5 {md5} differs from the tested image's {image.side.image['md5']}"
            )
        manifest = manifest_path(image.path)
        if not manifest.is_file():
            problems.append(f"{image.variant}: manifest {manifest} is missing (every built image has one)")
            continue
        try:
            listed = json.loads(manifest.read_text()).get("sha256")
        except (json.JSONDecodeError, AttributeError):
            problems.append(f"{image.variant}: manifest {manifest.name} is not a JSON object")
            continue
        if listed != sha256:
            problems.append(
                f"{image.variant}: manifest {manifest.name} lists sha256 {listed}, file has {sha256}"
            )
    if reused:
        progress.line(f"image checksums: {reused} of {len(images)} unchanged since hashed before (stat)")
    if problems:
        raise ChecksumMismatch("checksum verification failed, nothing published:\n  " + "\n  ".join(problems))


# -- marketplace appliance YAML ------------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    pass


class SingleQuoted(str):
    """A string the marketplace files write in single quotes (ids)."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    """As OpenNebula's marketplace files write strings: block text as ``|-``, ``$VARIABLE`` references in
    double quotes, the rest plain (PyYAML still quotes what would otherwise not read back as a string)."""
    style = None
    if "\n" in value:
        style = "|"
    elif isinstance(value, SingleQuoted):
        style = "'"
    elif value.startswith("$"):
        style = '"'
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)
_Dumper.add_representer(SingleQuoted, _str)


def dump_yaml(data: Any) -> str:
    return "---\n" + yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=4096)


def version_stamp(flower: str, release: int, when: float) -> str:
    """Marketplace app version ``X.Y.Z-R-YYYYMMDD``: the Flower version, the factory release, the date."""
    return f"{flower}-{release}-{time.strftime('%Y%m%d', time.gmtime(when))}"


def _os_fields(side: Side) -> tuple[str, str]:
    os_release = side.image.get("os_release", {}) or {}
    os_id = OS_NAMES.get(str(os_release.get("ID", "")), str(os_release.get("NAME", side.os)))
    return os_id, str(os_release.get("VERSION_ID", ""))


def _title(image: ImageToPublish) -> str:
    side = image.side
    role = appliance_templates.ROLE_TITLES[image.role]
    axes = f"{side.os}, {side.accel}, {side.profile}, {side.framework}, {side.arch}"
    return f"Flower {role} {side.flower} ({axes})"


def _lower(template: dict[str, Any]) -> dict[str, Any]:
    """A template with lower-case names (vector members too), as the marketplace YAML writes it; upstream's
    market driver upper-cases them again (``template_to_str``)."""
    return {
        key.lower(): _lower(value) if isinstance(value, dict) else value for key, value in template.items()
    }


def _upper(template: dict[str, Any]) -> dict[str, Any]:
    return {
        key.upper(): _upper(value) if isinstance(value, dict) else value for key, value in template.items()
    }


def vm_template_text(opennebula_template: dict[str, Any]) -> str:
    """``VMTEMPLATE64`` (decoded) of an IMAGE app from the YAML's ``opennebula_template``: what upstream's
    market driver (``src/market_mad/remotes/one/monitor``, ``template_to_str``) makes of the same YAML."""
    return onetemplate.render(_upper(opennebula_template))


def _describe_parameters(role: str) -> str:
    lines = [f"- `{param.name}`: {param.description}" for param in params.load_params().for_role(role)]
    return "\n".join(lines)


def described_rounds(result: PairResult) -> dict[str, int]:
    """The rounds the appliance description reports, per task: every federation the pair test recorded
    with a ``task`` (the framework task of the SuperNode image, the numpy canary) and its rounds."""
    rounds: dict[str, int] = {}
    for federation in result.federations:
        task = federation.get("task")
        if task:
            rounds[str(task)] = rounds.get(str(task), 0) + len(federation.get("rounds", []))
    return rounds


def framework_result(result: PairResult) -> str:
    """What the pair's framework task reached, e.g. ``sklearn task: final eval_accuracy 0.947 (floor
    0.85)``: the run that says what the SuperNode image is for (``PairResult.framework_federation``)."""
    federation = result.framework_federation()
    final = final_metric(federation) if federation else None
    if final is None:
        return ""
    floor = finite_number(federation.get("floor"))
    held = f" (floor {floor:g})" if floor is not None else ""
    return f"{federation['task']} task: final {federation['metric']} {final:.3g}{held}"


def appliance_yaml(
    image: ImageToPublish, stamp: str, url: str, created: float, result: PairResult, release: int
) -> dict[str, Any]:
    side = image.side
    os_id, os_release = _os_fields(side)
    runs = ", ".join(f"{count} rounds of {task}" for task, count in described_rounds(result).items())
    tested = f"{runs or 'no rounds'} ({result.security}) with SuperNodes of Flower {result.supernodes.flower}"
    if reached := framework_result(result):
        tested += f"; {reached}"
    role_title = appliance_templates.ROLE_TITLES[image.role]
    description = (
        f"Flower {role_title} appliance (Flower {side.flower}, {side.framework}), built and tested as a pair "
        f"by the Flower appliance factory: {tested} passed in run {result.run}.\n\n"
        f"Parameters:\n\n{_describe_parameters(image.role)}"
    )
    return {
        "id": SingleQuoted(image.app_id(release)),
        "name": _title(image),
        "version": stamp,
        "publisher": PUBLISHER,
        "description": description,
        "short_description": f"Flower {role_title} {side.flower} for federated learning ({side.accel})",
        "tags": ["flower", "federated-learning", image.role, side.os, side.framework, "service"],
        "format": side.image.get("format", "qcow2"),
        "creation_time": int(created),
        "os-id": os_id,
        "os-release": os_release,
        "os-arch": side.arch,
        "hypervisor": "KVM",
        "opennebula_version": OPENNEBULA_VERSIONS,
        "opennebula_template": _lower(appliance_templates.published_vm_template(image.role, side.arch)),
        "logo": "flower.png",
        "images": [
            {
                "name": image.image_name,
                "url": url,
                "type": "OS",
                "dev_prefix": "vd",
                "driver": side.image.get("format", "qcow2"),
                "size": int(side.image.get("virtual_size") or side.image.get("size") or 0),
                "checksum": {"md5": side.image.get("md5", ""), "sha256": side.image.get("sha256", "")},
            }
        ],
    }


def service_line(result: PairResult) -> str:
    node = result.supernodes
    return f"service-{node.os}-{node.accel}-{node.profile}-{node.framework}-{node.arch}"


def service_yaml(
    result: PairResult, titles: dict[str, str], stamp: str, created: float, release: int
) -> dict[str, Any]:
    """The SERVICE_TEMPLATE appliance: ``roles`` name the IMAGE apps (upstream's market driver turns them
    into ``ROLE = [ NAME, APP ]``), ``opennebula_template`` is the OneFlow 7 service body."""
    node = result.supernodes
    body = appliance_templates.service_template(
        name=f"Flower {node.flower} federation ({node.os}, {node.accel}, {node.profile}, {node.framework})",
        superlink_template_id=None,
        supernode_template_id=None,
        supernodes=node.count,
        security=None,
        description="1 Flower SuperLink and N SuperNodes; TLS and SuperNode authentication on by default.",
    )
    os_id, os_release = _os_fields(result.superlink)
    return {
        "id": SingleQuoted(appliance_id(service_line(result), node.flower, release)),
        "name": f"Service Flower {node.flower} ({node.os}, {node.accel}, {node.profile}, {node.framework})",
        "version": stamp,
        "publisher": PUBLISHER,
        "description": (
            "A Flower federated-learning service orchestrated by OneFlow: one SuperLink, then the "
            "SuperNodes, "
            "which find it through OneGate, pin its CA and authenticate with their own keys. "
            f"Pick the network (`{appliance_templates.NETWORK}`) at instantiation; every parameter has a "
            "default.\n\n"
            f"Tested as a pair in run {result.run}. Based on the appliances\n"
            f"- {titles['superlink']}\n- {titles['supernode']}"
        ),
        "short_description": f"Flower {node.flower} federation (SuperLink + SuperNodes) on OneFlow",
        "tags": ["flower", "federated-learning", "oneflow", "service", node.os],
        "creation_time": int(created),
        "os-id": os_id,
        "os-release": os_release,
        "os-arch": node.arch,
        "hypervisor": "KVM",
        "type": "SERVICE_TEMPLATE",
        "opennebula_version": OPENNEBULA_VERSIONS,
        # the monitoring role (cardinality 0) names the SuperLink's app: the exporter needs an app for every
        # role, and no monitoring image exists yet (appliance_templates.MONITORING)
        "roles": {
            "superlink": titles["superlink"],
            "supernode": titles["supernode"],
            appliance_templates.MONITORING: titles["superlink"],
        },
        "opennebula_template": body,
        "logo": "flower.png",
        "images": [],
    }


# -- community marketplace certification --------------------------------------------------------------------


def _metadata_yaml(image: ImageToPublish) -> str:
    """Community ``metadata.yaml`` (Ruby symbol keys, as app_readiness.rb reads them)."""
    if image.role == "superlink":
        test_params = {"FL_TLS": "YES", "FL_NODE_AUTH": "YES"}
    else:
        test_params = {"FL_TLS": "YES", "FL_SUPERLINK": "", "FL_DISCOVERY_TIMEOUT": "30"}
    return render(
        "certification/metadata.yaml.j2",
        role=image.role,
        side=image.side,
        test_params=test_params,
        size=appliance_templates.SIZES[image.role],
        disk_format=image.side.image.get("format", "qcow2"),
    )


def certification_files(image: ImageToPublish) -> dict[str, str]:
    """metadata.yaml, tests.yaml and the role's spec, as the community marketplace's certification runs
    them (templates/certification/)."""
    defaults = {param.name: param.default for param in params.load_params().for_role("superlink")}
    test = render(
        f"certification/{image.role}_basic.rb.j2",
        flower=image.side.flower,
        fleet_port=defaults.get("ONEAPP_FL_FLEET_PORT", "9092"),
        api_port=defaults.get("ONEAPP_FL_API_PORT", "9093"),
    )
    name = f"00-flower_{image.role}_basic.rb"
    return {"metadata.yaml": _metadata_yaml(image), "tests.yaml": f"---\n- {name}\n", f"tests/{name}": test}


# -- publishing ----------------------------------------------------------------------------------------------


@dataclass
class Publication:
    run: str
    directory: Path
    apps: list[dict[str, Any]] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _image_url(cloud: Any, app_id: int | None, image: ImageToPublish) -> str:
    if cloud is not None and app_id is not None:
        source = str(cloud.marketapp_info(app_id).SOURCE or "")
        if source.startswith(("http://", "https://")):
            return source
    if cloud is not None and cloud.settings.image_url_base:
        return f"{cloud.settings.image_url_base}/{image.path.name}"
    return image.path.name


def image_app_template(
    image: ImageToPublish, title: str, stamp: str, origin_id: int, opennebula_template: dict[str, Any]
) -> dict[str, Any]:
    """The IMAGE app: ``APPTEMPLATE64`` (the image template) and ``VMTEMPLATE64`` in ONE syntax, as
    upstream's market driver writes them (``DEV_PREFIX`` and ``TYPE``; the marketplace sets FORMAT)."""
    image_template = onetemplate.render({"DEV_PREFIX": "vd", "TYPE": "OS"})
    return {
        "NAME": f"{title} {stamp}",
        "TYPE": "IMAGE",
        "ORIGIN_ID": str(origin_id),
        "DESCRIPTION": f"{title}: tested as a pair by the Flower appliance factory",
        "VERSION": stamp,
        "PUBLISHER": PUBLISHER,
        "APPTEMPLATE64": _b64(image_template),
        "VMTEMPLATE64": _b64(vm_template_text(opennebula_template)),
    }


def service_app_template(document: dict[str, Any], app_names: dict[str, str], stamp: str) -> dict[str, Any]:
    """The SERVICE_TEMPLATE app as ``export_service_template`` (marketplaceapp_ext.rb) reads it: a
    ``ROLE = [ NAME = <role>, APP = <IMAGE app name> ]`` per role and the service body (JSON) in
    ``APPTEMPLATE64``; the exporter exports each named app and sets the role's template from it."""
    return {
        "NAME": f"{document['name']} {stamp}",
        "TYPE": "SERVICE_TEMPLATE",
        "ORIGIN_ID": "-1",
        "DESCRIPTION": document["short_description"],
        "VERSION": stamp,
        "PUBLISHER": PUBLISHER,
        "APPTEMPLATE64": _b64(json.dumps(document["opennebula_template"])),
        "ROLE": [{"NAME": role, "APP": name} for role, name in app_names.items()],
    }


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _verify_image_app(cloud: Any, app_id: int, image: ImageToPublish) -> None:
    """The app's content, as the marketplace hashed it when it copied the image, is the tested file's."""
    info = cloud.marketapp_info(app_id)
    side = image.side
    expected = {"MD5": side.image.get("md5", ""), "SHA256": side.image.get("sha256", "")}
    found = {"MD5": str(info.MD5 or ""), "SHA256": str((info.TEMPLATE or {}).get("SHA256") or "")}
    where = f"marketplace app {app_id} ({info.NAME}, from image {info.ORIGIN_ID})"
    if not found["MD5"]:
        raise ChecksumMismatch(
            f"{where}: the marketplace recorded no MD5, so its content cannot be compared with the tested "
            f"image {image.path.name} (md5 {expected['MD5']}): nothing published"
        )
    for algorithm, value in found.items():
        if value and expected[algorithm] and value != expected[algorithm]:
            raise ChecksumMismatch(
                f"{where}: {algorithm.lower()} {value} differs from the tested image {image.path.name}'s "
                f"{expected[algorithm]}: nothing published"
            )


def _decoded(value: Any) -> str:
    try:
        return base64.b64decode(str(value or "")).decode()
    except (ValueError, UnicodeDecodeError):
        return ""


def _same_service_app(existing: Any, template: dict[str, Any]) -> bool:
    found = existing.TEMPLATE or {}
    roles = found.get("ROLE") or []
    roles = roles if isinstance(roles, list) else [roles]
    try:
        body = json.loads(_decoded(found.get("APPTEMPLATE64")))
    except json.JSONDecodeError:
        return False
    return (
        body == json.loads(_decoded(template["APPTEMPLATE64"]))
        and [{"NAME": str(role.get("NAME")), "APP": str(role.get("APP"))} for role in roles]
        == template["ROLE"]
    )


@dataclass
class _Made:
    """What this publication created in the cloud, deleted again when it fails."""

    apps: list[int] = field(default_factory=list)
    images: list[int] = field(default_factory=list)

    def undo(self, cloud: Any) -> None:
        for app_id in reversed(self.apps):
            with contextlib.suppress(FactoryError):
                cloud.delete_marketapp(app_id)
        for image_id in reversed(self.images):
            with contextlib.suppress(FactoryError):
                cloud.delete_image(image_id)


def _market_app(
    cloud: Any,
    template: dict[str, Any],
    market_id: int,
    made: _Made,
    publication: Publication,
    progress: Progress,
    image: ImageToPublish | None = None,
) -> int:
    """Create the app, or reuse the one of the same name only when its content is what would be published
    (publishing a run again changes nothing); refuse an app of that name with other content."""
    existing = cloud.find_marketapp(template["NAME"], market_id)
    if existing is not None:
        app_id, reused = int(existing.ID), True
        if image is not None:
            try:
                _verify_image_app(cloud, app_id, image)
            except ChecksumMismatch as error:  # the same name and version, another build: say the way out
                raise ChecksumMismatch(
                    f"{error}. An app of this name and version (X.Y.Z-R-YYYYMMDD) holds another build: "
                    f"publish as another --release (R), or delete marketplace app {app_id}"
                ) from None
        elif not _same_service_app(existing, template):
            raise ChecksumMismatch(
                f"marketplace app {app_id} ({template['NAME']}) exists with another service body or other "
                "roles than this publication's: delete it or publish as another --release; nothing published"
            )
        progress.line(f"marketplace app {app_id} {template['NAME']!r} exists with the same content: reused")
    else:
        with progress.stage(f"marketplace app {template['NAME']!r}"):
            app_id, reused = cloud.create_marketapp(template, market_id), False
        made.apps.append(app_id)
        if image is not None:
            _verify_image_app(cloud, app_id, image)
    publication.apps.append(
        {"id": app_id, "type": template["TYPE"], "name": template["NAME"], "reused": reused}
    )
    return app_id


def _write_yaml(staging: Path, document: dict[str, Any]) -> None:
    target = staging / APPLIANCES_DIR / f"{document['id']}.yaml"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(dump_yaml(document))


@dataclass
class _Staging:
    """One publication in progress: where its files are staged, what it made in the cloud, the names the
    service apps refer to."""

    cloud: Any | None
    release: int
    created: float
    staging: Path
    publication: Publication
    progress: Progress
    market_id: int | None = None
    made: _Made = field(default_factory=_Made)
    titles: dict[str, str] = field(default_factory=dict)
    app_names: dict[str, str] = field(default_factory=dict)

    def image(self, image: ImageToPublish, result: PairResult) -> None:
        """The IMAGE app (marketplace app of the tested image), its YAML and its certification files."""
        title = _title(image)
        self.titles[image.variant] = title
        stamp = version_stamp(image.side.flower, self.release, self.created)
        document = appliance_yaml(image, stamp, "", self.created, result, self.release)
        app_id = None
        if self.cloud is not None:
            reference = self.cloud.ensure_image(
                image.path,
                f"flower-{image.variant}",
                image.side.image["sha256"],
                image.side.image.get("format", "raw"),
            )
            if not reference.reused:
                self.made.images.append(reference.id)
            template = image_app_template(image, title, stamp, reference.id, document["opennebula_template"])
            self.app_names[image.variant] = template["NAME"]
            app_id = _market_app(
                self.cloud, template, self.market_id, self.made, self.publication, self.progress, image
            )
        document["images"][0]["url"] = _image_url(self.cloud, app_id, image)
        _write_yaml(self.staging, document)
        app_dir = self.staging / "certification" / f"flower-{image.line}"
        for relative, text in certification_files(image).items():
            (app_dir / relative).parent.mkdir(parents=True, exist_ok=True)
            (app_dir / relative).write_text(text)

    def service(self, result: PairResult) -> None:
        """The SERVICE_TEMPLATE app of a pair, naming its two IMAGE apps, and its YAML."""
        link, node = result.superlink.variant, result.supernodes.variant
        stamp = version_stamp(result.superlink.flower, self.release, self.created)
        names = {"superlink": self.titles[link], "supernode": self.titles[node]}
        document = service_yaml(result, names, stamp, self.created, self.release)
        _write_yaml(self.staging, document)
        if self.cloud is not None:
            roles = {
                "superlink": self.app_names[link],
                "supernode": self.app_names[node],
                appliance_templates.MONITORING: self.app_names[link],
            }
            template = service_app_template(document, roles, stamp)
            _market_app(self.cloud, template, self.market_id, self.made, self.publication, self.progress)

    def index(self, run: str, chosen: PublishPlan) -> None:
        """published.json: the apps and files of the publication."""
        publication = self.publication
        publication.files = sorted(
            str(path.relative_to(self.staging)) for path in self.staging.rglob("*") if path.is_file()
        )
        write_json(
            self.staging / "published.json",
            {"run": run, "created": self.created, "release": self.release, "apps": publication.apps,
             "files": publication.files, "pairs": [result.pair for result in chosen.pairs],
             "skipped": chosen.skipped},
        )  # fmt: skip


def publish(
    run: str,
    cloud: Any | None,
    release: int = 1,
    results_root: Path | None = None,
    progress: Progress = PROGRESS,
) -> Publication:
    """Publish the passing release pairs of ``run``. ``cloud`` (a factory.one.OneCloud) creates the
    marketplace apps; without it only the files are written (for a marketplace pull request). Nothing is
    left half-done: on any failure the staged files and the apps made so far are removed again."""
    from hostkit.paths import RESULTS_DIR

    root = results_root or RESULTS_DIR
    chosen = plan(load_results(run, root), run)
    if not chosen.pairs:
        reasons = "\n  ".join(chosen.skipped) or "no results in the run"
        raise FactoryError(
            f"nothing to publish from run {run}: no passing release pair tested in a cloud:\n  {reasons}"
        )
    verify_checksums(chosen.images, progress)
    final = run_dir(run, root) / "publish"
    staging = Path(tempfile.mkdtemp(prefix=".publish-", dir=run_dir(run, root)))
    publication = Publication(run=run, directory=final, skipped=chosen.skipped)
    job = _Staging(cloud, release, time.time(), staging, publication, progress)
    try:
        job.market_id = cloud.marketplace_id() if cloud is not None else None
        for image in chosen.images:
            tested = next(pair for pair in chosen.pairs if image.variant in pair.variants)
            job.image(image, tested)
        for result in chosen.pairs:
            job.service(result)
        job.index(run, chosen)
        replace_directory(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if cloud is not None:
            job.made.undo(cloud)
        raise
    return publication
