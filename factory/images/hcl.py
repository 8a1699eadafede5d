"""Render a variant's Packer HCL2 build directory from the templates in ``packer/``.

``build/hcl/<variant>/`` gets:

- ``plugins.pkr.hcl`` (plugin pins, Packer 1.7+), ``variables.pkr.hcl`` (every variable, described),
  ``source.pkr.hcl`` and ``build.pkr.hcl`` (from the jinja2 templates: seed kind, provisioning steps);
- the variable layers, loaded by Packer in name order so that later wins:
  ``10-common.auto.pkrvars.hcl`` -> ``20-os.auto.pkrvars.hcl`` (architecture, OS, base image) ->
  ``30-variant.auto.pkrvars.hcl`` (identity, pins, matrix.yaml's variant rules); a user's ``-var-file`` and
  ``-var`` win over all of them;
- ``seed/`` (cloud-init NoCloud or OpenNebula CONTEXT files) and ``.ssh/build_key`` (an ed25519 key made
  for this build directory, kept across re-renders; the image's hygiene step removes its public half);
- ``payload/`` uploaded to the guest: ``provision/`` (the ordered scripts and their lib/), ``appliance/``,
  ``params/params-<role>.sh``, ``apps/`` and ``monitoring/`` (one-context: the released package's URL,
  or for local images already in the local base qcow2);
- ``scripts/`` (facts, hygiene, manifest) and ``variant.json``.

One run renders all its variants into a staging directory and moves them into place only when every one
rendered (a template error leaves ``build/hcl`` as it was); ``prune_stale`` deletes the directories of
variants the matrix no longer has.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hcl2
import jinja2

from factory.model import manifest as manifest_module
from factory.model import params as params_module
from factory.model.matrix import Matrix, Variant
from factory.model.yamlfile import display
from hostkit.errors import ConfigError, FactoryError
from hostkit.fileio import replace_directory
from hostkit.paths import (
    APPS_DIR,
    BUILD_DIR,
    CONTEXT_DIR,
    MONITORING_DIR,
    PACKER_DIR,
    PARAMS_FILE,
    PROVISION_DIR,
)
from hostkit.progress import DEFAULT as DEFAULT_PROGRESS
from hostkit.progress import Progress

HCL_DIR = BUILD_DIR / "hcl"
GUEST_PAYLOAD = "/var/tmp/fl-payload"
LAYER_FILES = ("10-common.auto.pkrvars.hcl", "20-os.auto.pkrvars.hcl", "30-variant.auto.pkrvars.hcl")
SEED_FILES = {"cloud-init": ("cidata", ("user-data", "meta-data")), "context": ("CONTEXT", ("context.sh",))}
_SCRIPT = re.compile(r"^[0-9]{2}-[A-Za-z0-9._-]+\.sh$")
_MANIFEST_SOURCE = Path(manifest_module.__file__)


@dataclass(frozen=True)
class RenderSources:
    """Where the renderer takes its inputs from (tests point these at fixtures)."""

    templates: Path = PACKER_DIR
    provision: Path = PROVISION_DIR
    appliance: Path = CONTEXT_DIR / "appliance"
    apps: Path = APPS_DIR
    monitoring: Path = MONITORING_DIR
    params_file: Path = PARAMS_FILE


def provisioning_scripts(provision_dir: Path) -> list[str]:
    """The ordered provisioning scripts (``NN-name.sh``) in a directory; none if it does not exist."""
    if not provision_dir.is_dir():
        return []
    names = (path.name for path in provision_dir.iterdir() if path.is_file())
    return sorted(name for name in names if _SCRIPT.match(name))


# ---------------------------------------------------------------------------------------------- HCL values


def hcl_string(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return '"' + escaped.replace("${", "$${").replace("%{", "%%{") + '"'


def hcl_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return hcl_string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(hcl_value(item) for item in value) + "]"
    raise TypeError(f"no HCL form for {type(value).__name__}")


def pkrvars(variables: Mapping[str, Any], comment: str) -> str:
    """A ``packer fmt``-clean variable file: a comment, then aligned ``name = value`` lines."""
    lines = [f"# {line}" if line else "#" for line in comment.splitlines()]
    if variables:
        width = max(len(name) for name in variables)
        lines.append("")
        lines += [f"{name.ljust(width)} = {hcl_value(value)}" for name, value in variables.items()]
    return "\n".join(lines) + "\n"


@functools.cache
def declared_variables(templates: Path) -> frozenset[str]:
    """Names of the variables ``variables.pkr.hcl`` declares."""
    with open(templates / "variables.pkr.hcl", encoding="utf-8") as stream:
        parsed = hcl2.load(stream)
    names: set[str] = set()
    for block in parsed.get("variable", []):
        names.update(name.strip('"') for name in block)
    return frozenset(names)


# ---------------------------------------------------------------------------------------------- layers


def layers(matrix: Matrix, variant: Variant) -> list[tuple[str, dict[str, Any], str]]:
    """The variable layers of a variant: (file name, variables, comment), in load order."""
    info = matrix.os_info[variant.os]
    pins = variant.pins
    os_vars: dict[str, Any] = dict(matrix.packer.arch.get(variant.arch, {}))
    os_vars.update(matrix.packer.os.get(variant.os, {}))
    if not pins.base_image.local:
        os_vars["base_image_url"] = pins.base_image.url
        os_vars["base_image_checksum"] = pins.base_image.checksum
    identity: dict[str, Any] = {
        "variant": variant.name,
        "role": variant.role,
        "flower_version": variant.flower,
        "os": variant.os,
        "accel": variant.accel,
        "profile": variant.profile,
        "framework": variant.framework,
        "arch": variant.arch,
        "python_version": pins.python,
        "framework_packages": " ".join(pins.framework_packages),
        "framework_index_url": pins.framework_index_url,
        "cuda_version": pins.cuda,
        "nvidia_driver": pins.nvidia_driver,
        "one_context": pins.one_context,
        "one_context_version": pins.one_context_version,
        "one_context_url": pins.one_context_url,
    }
    identity.update(matrix.packer.variant_vars(variant))
    local_note = (
        "\nThe base image is built locally: pass -var base_image_url=file:///... and\n"
        "-var base_image_checksum=sha256:... (python build.py build does)."
        if pins.base_image.local
        else ""
    )
    source = matrix.source
    return [
        (LAYER_FILES[0], dict(matrix.packer.common), f"Layer 1/3, every variant: {source} packer.common."),
        (
            LAYER_FILES[1],
            os_vars,
            f"Layer 2/3, {info.title} on {variant.arch}: {source} packer.arch, packer.os and the pinned "
            f"base image.{local_note}",
        ),
        (
            LAYER_FILES[2],
            identity,
            f"Layer 3/3, this variant: what it is, its pinned components and {source} packer.variants.",
        ),
    ]


def check_layer_names(matrix: Matrix, templates: Path) -> None:
    """Every variable matrix.yaml sets must be declared by the templates."""
    known = declared_variables(templates)
    named: list[tuple[str, str]] = [(f"packer.common.{name}", name) for name in matrix.packer.common]
    for arch, variables in matrix.packer.arch.items():
        named += [(f"packer.arch.{arch}.{name}", name) for name in variables]
    for os_name, variables in matrix.packer.os.items():
        named += [(f"packer.os.{os_name}.{name}", name) for name in variables]
    for index, (_rule, variables) in enumerate(matrix.packer.variant_rules):
        named += [(f"packer.variants[{index}].vars.{name}", name) for name in variables]
    for field, name in named:
        if name not in known:
            declared_in = f"{display(templates)}/variables.pkr.hcl"
            raise ConfigError(matrix.source, field, f"not a variable of {declared_in}")


# ---------------------------------------------------------------------------------------------- rendering


@functools.cache
def _environment(templates: Path) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )


def _build_key(directory: Path, previous: Path | None) -> str:
    """Create (or carry over from the previous render) the build key pair; return the public key."""
    ssh = directory / ".ssh"
    ssh.mkdir(mode=0o700)
    if previous is not None and (previous / ".ssh" / "build_key").is_file():
        private = (previous / ".ssh" / "build_key").read_bytes()
        public = (previous / ".ssh" / "build_key.pub").read_text().strip()
    else:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        key = Ed25519PrivateKey.generate()
        private = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
        public_bytes = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        public = public_bytes.decode() + " flower-factory-build"
    key_file = ssh / "build_key"
    key_file.touch(mode=0o600)
    key_file.write_bytes(private)
    (ssh / "build_key.pub").write_text(public + "\n")
    return public


def _copy_tree(source: Path, target: Path) -> None:
    """Copy a directory (hard links where possible: the payload is read-only input)."""

    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, target, copy_function=link_or_copy, symlinks=True)


def render_variant(
    matrix: Matrix,
    variant: Variant,
    out_root: Path = HCL_DIR,
    sources: RenderSources | None = None,
    decl: params_module.ParamsDecl | None = None,
) -> Path:
    """Render one variant into ``out_root/<variant>`` and return that directory."""
    return render_variants(matrix, (variant,), out_root, sources, decl=decl)[0]


def _render_into(
    directory: Path,
    matrix: Matrix,
    variant: Variant,
    sources: RenderSources,
    decl: params_module.ParamsDecl,
    previous: Path | None,
) -> None:
    templates = sources.templates
    environment = _environment(templates)
    info = matrix.os_info[variant.os]
    seed_label, seed_files = SEED_FILES[info.seed]
    scripts = provisioning_scripts(sources.provision)
    public_key = _build_key(directory, previous)
    context = {
        "variant": variant.name,
        "seed_label": seed_label,
        "seed_files": seed_files,
        "scripts": scripts,
        "public_key": public_key,
    }
    try:
        shutil.copy2(templates / "plugins.pkr.hcl", directory / "plugins.pkr.hcl")
        shutil.copy2(templates / "variables.pkr.hcl", directory / "variables.pkr.hcl")
        for name in ("source.pkr.hcl", "build.pkr.hcl"):
            (directory / name).write_text(environment.get_template(f"{name}.j2").render(context))
        (directory / "seed").mkdir()
        for name in seed_files:
            seed = environment.get_template(f"seed/{name}.j2").render(context)
            (directory / "seed" / name).write_text(seed)
    except jinja2.TemplateError as error:
        raise FactoryError(f"{variant.name}: template error in {display(templates)}: {error}") from None
    except FileNotFoundError as error:
        raise FactoryError(f"{variant.name}: missing template file {error.filename}") from None
    for name, variables, comment in layers(matrix, variant):
        (directory / name).write_text(pkrvars(variables, comment))

    scripts_dir = directory / "scripts"
    scripts_dir.mkdir()
    for name in ("collect-facts.sh", "sysprep.sh"):
        shutil.copy2(templates / "scripts" / name, scripts_dir / name)
    shutil.copy2(_MANIFEST_SOURCE, scripts_dir / "manifest.py")
    (directory / "variant.json").write_text(json.dumps(variant.as_dict(), indent=2) + "\n")

    payload = directory / "payload"
    payload.mkdir()
    (payload / "params").mkdir()
    guest_defaults = params_module.guest_defaults(variant.role, decl)
    (payload / "params" / f"params-{variant.role}.sh").write_text(guest_defaults)
    if sources.provision.is_dir():
        _copy_tree(sources.provision, payload / "provision")
    else:
        (payload / "provision").mkdir()
    if sources.appliance.is_dir():
        _copy_tree(sources.appliance, payload / "appliance")
    if sources.apps.is_dir():
        _copy_tree(sources.apps, payload / "apps")
    if sources.monitoring.is_dir():  # the monitoring role's files (50-appliance.sh, SuperLink images)
        _copy_tree(sources.monitoring, payload / "monitoring")


def render_variants(
    matrix: Matrix,
    variants: Sequence[Variant],
    out_root: Path = HCL_DIR,
    sources: RenderSources | None = None,
    progress: Progress | None = None,
    decl: params_module.ParamsDecl | None = None,
) -> list[Path]:
    """Render several variants as one step: every directory is written into a staging directory under
    ``out_root`` first and moved into place only when all rendered, so a template error leaves ``out_root``
    as it was. A variant's build key is carried over from its previous render. Shows a counter."""
    sources = sources or RenderSources()
    progress = progress or DEFAULT_PROGRESS
    decl = decl or params_module.load_params(sources.params_file)
    check_layer_names(matrix, sources.templates)
    out_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".render-", dir=out_root))
    try:
        for variant in progress.iterate(variants, "render"):
            directory = staging / variant.name
            directory.mkdir()
            previous = out_root / variant.name
            _render_into(directory, matrix, variant, sources, decl, previous if previous.is_dir() else None)
        for variant in variants:
            replace_directory(staging / variant.name, out_root / variant.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [out_root / variant.name for variant in variants]


def prune_stale(out_root: Path, matrix: Matrix) -> list[Path]:
    """Delete the rendered directories under ``out_root`` (those holding a ``variant.json``) whose variant
    the matrix no longer has; return them. Anything else there is left alone."""
    names = {variant.name for variant in matrix.variants}
    stale = sorted(
        path
        for path in (out_root.iterdir() if out_root.is_dir() else ())
        if path.is_dir() and not path.name.startswith(".") and path.name not in names
        and (path / "variant.json").is_file()
    )  # fmt: skip
    for path in stale:
        shutil.rmtree(path)
    return stale


# ---------------------------------------------------------------------------------------------- parsing


def hcl_files(directory: Path) -> list[Path]:
    return sorted(path for path in directory.iterdir() if path.name.endswith((".pkr.hcl", ".pkrvars.hcl")))


_PARSED: dict[str, Any] = {}


def _parse_cached(text: str) -> Any:
    """python-hcl2 is slow (tens of ms a file) and most files are the same in every variant: parse each
    distinct content once."""
    digest = hashlib.sha256(text.encode()).hexdigest()
    if digest not in _PARSED:
        _PARSED[digest] = hcl2.loads(text)
    return copy.deepcopy(_PARSED[digest])


def parse_directory(directory: Path) -> dict[str, Any]:
    """Parse every HCL file of a rendered directory with python-hcl2; FactoryError names the file."""
    parsed: dict[str, Any] = {}
    for path in hcl_files(directory):
        try:
            parsed[path.name] = _parse_cached(path.read_text(encoding="utf-8"))
        except Exception as error:  # python-hcl2 raises lark errors of several kinds
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise FactoryError(f"{directory.name}: {path.name} does not parse: {first_line}") from None
    return parsed


def layered_values(directory: Path, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The variable values Packer will use: defaults, then each layer file, then ``overrides``."""
    values: dict[str, Any] = {}
    with open(directory / "variables.pkr.hcl", encoding="utf-8") as stream:
        for block in hcl2.load(stream).get("variable", []):
            for name, body in block.items():
                if "default" in body:
                    values[name.strip('"')] = body["default"]
    for name in LAYER_FILES:
        with open(directory / name, encoding="utf-8") as stream:
            values.update(hcl2.load(stream))
    values.update(overrides or {})
    return {name: _unquote(value) for name, value in values.items()}


def _unquote(value: Any) -> Any:
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return json.loads(value.replace("$${", "${"))
    return value
