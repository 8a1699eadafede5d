"""The build matrix: ``matrix.yaml`` expanded into image variants, pairs and their pinned components.

API (used by the other stages; see docs/matrix.md)::

    matrix = load_matrix()                          # validated; ConfigError (exit 2) on bad input
    matrix.variants                                  # tuple[Variant, ...] in axis order
    matrix.variant("supernode-1.42.0-debian12-cpu-standard-sklearn-x86_64")
    matrix.pairs / matrix.cross_pairs                # tuple[Pair, ...]
    selection = Selection.parse(only=["os=debian12"], exclude=["role=superlink"], axes=matrix.axes)
    matrix.select(selection)                         # variants; matrix.select_pairs(selection)
    variant.pins                                     # Pins: every component version of the image
    variant.provision_env(payload="/var/tmp/fl-payload", build_target="packer")   # FL_* for the scripts

Validation happens entirely in :func:`load_matrix` / :func:`parse_matrix`, before anything is printed or
written, so a bad file never leaves partial output.
"""

from __future__ import annotations

import fnmatch
import functools
import itertools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from factory.model.versions import is_pinned, is_python_series, is_release_version
from factory.model.yamlfile import display, load_file
from hostkit.errors import ConfigError
from hostkit.paths import MATRIX_FILE, PROVISION_DIR

# Name order of the axes: {role}-{flower}-{os}-{accel}-{profile}-{framework}-{arch}.
AXES = ("role", "flower", "os", "accel", "profile", "framework", "arch")
ROLES = ("superlink", "supernode")
ACCELS = ("cpu", "gpu")
PROFILES = ("standard", "edge")
ARCHES = ("x86_64", "aarch64")
SEEDS = ("cloud-init", "context")
ONE_CONTEXT_KINDS = ("deb", "rpm", "source")

_VALUE = re.compile(r"^[a-z0-9][a-z0-9._]*$")
_SHA256 = re.compile(r"^sha256:[0-9a-f]{64}$")
_TOP_LEVEL = ("axes", "defaults", "roles", "exclude", "pairs", "components", "os", "packer")
_GITHUB_MATRIX_LIMIT = 256
# GitHub's architecture labels of self-hosted runners, per matrix arch (.github/workflows/nightly.yml).
RUNNER_LABELS = {"x86_64": "X64", "aarch64": "ARM64"}


@dataclass(frozen=True)
class BaseImagePin:
    """Where a variant's Packer build starts (matrix.yaml ``os.<name>.images``): a vendor cloud image's URL
    and checksum, or ``local`` (the base is supplied at build time with ``-var``). A pin, not a built image:
    built images are factory/model/image.py ``Image``."""

    url: str
    checksum: str
    local: bool = False


@dataclass(frozen=True)
class Pins:
    """Every component version one image pins."""

    flower: str
    python: str
    framework_packages: tuple[str, ...]
    framework_index_url: str
    one_context: str  # "package" (released .deb/.rpm) or "source" (.deb built from upstream, local images)
    one_context_version: str
    one_context_url: str
    cuda: str  # "" for CPU images
    nvidia_driver: str  # "" for CPU images
    base_image: BaseImagePin

    def as_dict(self) -> dict[str, Any]:
        return {
            "flower": self.flower,
            "python": self.python,
            "framework_packages": list(self.framework_packages),
            "framework_index_url": self.framework_index_url,
            "one_context": self.one_context,
            "one_context_version": self.one_context_version,
            "one_context_url": self.one_context_url,
            "cuda": self.cuda,
            "nvidia_driver": self.nvidia_driver,
            "base_image": {
                "url": self.base_image.url,
                "checksum": self.base_image.checksum,
                "local": self.base_image.local,
            },
        }


@dataclass(frozen=True)
class Variant:
    """One image. Equality and order follow the axis values; ``pins`` ride along."""

    role: str
    flower: str
    os: str
    accel: str
    profile: str
    framework: str
    arch: str
    pins: Pins = field(compare=False, repr=False, hash=False)
    order: tuple[int, ...] = field(default=(), compare=False, repr=False, hash=False)

    @property
    def name(self) -> str:
        return "-".join(self.axis(axis) for axis in AXES)

    def axis(self, axis: str) -> str:
        if axis not in AXES:
            raise KeyError(axis)
        return str(getattr(self, axis))

    def axes(self) -> dict[str, str]:
        return {axis: self.axis(axis) for axis in AXES}

    def provision_env(self, payload: str, build_target: str) -> dict[str, str]:
        """The environment of the provisioning scripts (docs/architecture.md, "Provisioning scripts")."""
        if build_target not in ("packer", "chroot"):
            raise ValueError(f"build_target must be packer or chroot, not {build_target!r}")
        pins = self.pins
        return {
            "FL_ROLE": self.role,
            "FL_VARIANT": self.name,
            "FL_FLOWER_VERSION": self.flower,
            "FL_OS": self.os,
            "FL_ACCEL": self.accel,
            "FL_PROFILE": self.profile,
            "FL_FRAMEWORK": self.framework,
            "FL_FRAMEWORK_PACKAGES": " ".join(pins.framework_packages),
            "FL_FRAMEWORK_INDEX_URL": pins.framework_index_url,
            "FL_PYTHON_VERSION": pins.python,
            "FL_ARCH": self.arch,
            "FL_CUDA_VERSION": pins.cuda,
            "FL_NVIDIA_DRIVER": pins.nvidia_driver,
            "FL_ONE_CONTEXT": pins.one_context,
            "FL_ONE_CONTEXT_URL": pins.one_context_url,
            "FL_PAYLOAD": payload,
            "FL_BUILD_TARGET": build_target,
        }

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.axes(), "pins": self.pins.as_dict()}


@dataclass(frozen=True)
class Pair:
    """A SuperLink image and the SuperNode images released (and tested) with it."""

    superlink: Variant
    supernodes: tuple[Variant, ...]

    @property
    def cross_version(self) -> bool:
        return self.superlink.flower != self.supernodes[0].flower

    @property
    def name(self) -> str:
        node = self.supernodes[0]
        return (
            f"pair-sl{self.superlink.flower}-sn{node.flower}-{node.os}-{node.accel}-{node.profile}-"
            f"{node.framework}"
        )

    def values(self, axis: str) -> set[str]:
        """The pair's values on an axis: flower has the SuperLink's and the SuperNodes'; accel, profile and
        arch are the SuperNodes'; role is both."""
        if axis == "name":
            return {self.name}
        if axis == "role":
            return set(ROLES)
        if axis == "flower":
            return {self.superlink.flower, self.supernodes[0].flower}
        return {node.axis(axis) for node in self.supernodes}

    def as_dict(self) -> dict[str, Any]:
        node = self.supernodes[0]
        return {
            "name": self.name,
            "superlink": self.superlink.name,
            "supernodes": [variant.name for variant in self.supernodes],
            "superlink_flower": self.superlink.flower,
            "supernode_flower": node.flower,
            "os": node.os,
            "accel": node.accel,
            "profile": node.profile,
            "framework": node.framework,
            "cross_version": self.cross_version,
        }


@dataclass(frozen=True)
class Rule:
    """A set of conditions: axis -> allowed values (a variant matches when every condition holds)."""

    conditions: Mapping[str, tuple[str, ...]]

    def matches(self, values: Mapping[str, str]) -> bool:
        return all(values[axis] in allowed for axis, allowed in self.conditions.items())


@dataclass(frozen=True)
class PackerLayers:
    """Packer variable layers from matrix.yaml's ``packer`` section."""

    common: Mapping[str, Any]
    arch: Mapping[str, Mapping[str, Any]]
    os: Mapping[str, Mapping[str, Any]]
    variant_rules: tuple[tuple[Rule, Mapping[str, Any]], ...]

    def variant_vars(self, variant: Variant) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        values = variant.axes()
        for rule, variables in self.variant_rules:
            if rule.matches(values):
                merged.update(variables)
        return merged


@dataclass(frozen=True)
class OsInfo:
    name: str
    title: str
    python: str
    one_context: str
    seed: str
    images: Mapping[str, BaseImagePin]


@dataclass(frozen=True)
class Matrix:
    source: str
    axes: Mapping[str, tuple[str, ...]]
    variants: tuple[Variant, ...]
    pairs: tuple[Pair, ...]
    cross_pairs: tuple[Pair, ...]
    os_info: Mapping[str, OsInfo]
    packer: PackerLayers

    def variant(self, name: str) -> Variant:
        for variant in self.variants:
            if variant.name == name:
                return variant
        raise ConfigError(self.source, "", f"no variant named {name!r}")

    def select(self, selection: Selection | None = None) -> tuple[Variant, ...]:
        if selection is None:
            return self.variants
        return tuple(variant for variant in self.variants if selection.matches(variant))

    def select_pairs(self, selection: Selection | None = None, cross: bool = True) -> tuple[Pair, ...]:
        pairs = self.pairs + (self.cross_pairs if cross else ())
        if selection is None:
            return pairs
        return tuple(pair for pair in pairs if selection.matches_pair(pair))


# ---------------------------------------------------------------------------------------------- selection


@dataclass(frozen=True)
class Selection:
    """``--only`` / ``--except`` filters. Each clause is ``axis=value[,axis=value...]``: conditions on
    different axes must all hold, several values for one axis are alternatives, values may be globs
    (``os=ubuntu*``) and ``name=`` matches the variant (or pair) name. A variant is selected when it
    matches any ``only`` clause (or there is none) and no ``except`` clause."""

    only: tuple[Mapping[str, tuple[str, ...]], ...] = ()
    exclude: tuple[Mapping[str, tuple[str, ...]], ...] = ()

    @classmethod
    def parse(
        cls, only: Iterable[str] = (), exclude: Iterable[str] = (), axes: Mapping[str, Sequence[str]] = {}
    ) -> Selection:
        return cls(
            only=tuple(_parse_clause(text, "--only", axes) for text in only),
            exclude=tuple(_parse_clause(text, "--except", axes) for text in exclude),
        )

    @staticmethod
    def _clause_matches(clause: Mapping[str, tuple[str, ...]], values_of: Any) -> bool:
        return all(
            any(fnmatch.fnmatchcase(value, pattern) for value in values_of(axis) for pattern in patterns)
            for axis, patterns in clause.items()
        )

    def _matches(self, values_of: Any) -> bool:
        if self.only and not any(self._clause_matches(clause, values_of) for clause in self.only):
            return False
        return not any(self._clause_matches(clause, values_of) for clause in self.exclude)

    def matches(self, variant: Variant) -> bool:
        return self._matches(lambda axis: {variant.name} if axis == "name" else {variant.axis(axis)})

    def matches_pair(self, pair: Pair) -> bool:
        return self._matches(pair.values)


def _parse_clause(text: str, option: str, axes: Mapping[str, Sequence[str]]) -> dict[str, tuple[str, ...]]:
    clause: dict[str, list[str]] = {}
    for part in text.split(","):
        key, sep, value = part.strip().partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise ConfigError("command line", option, f"expected axis=value[,axis=value...], got {text!r}")
        if key != "name" and key not in AXES:
            known_axes = ", ".join(AXES)
            raise ConfigError("command line", option, f"unknown axis {key!r} (known: {known_axes}, name)")
        if key in axes and not any(fnmatch.fnmatchcase(known, value) for known in axes[key]):
            known_values = ", ".join(axes[key])
            problem = f"{key}={value} matches no value (known: {known_values})"
            raise ConfigError("command line", option, problem)
        clause.setdefault(key, []).append(value)
    return {key: tuple(values) for key, values in clause.items()}


# ---------------------------------------------------------------------------------------------- loading


def load_matrix(path: Path | None = None) -> Matrix:
    """Read, validate and expand a matrix file. Raises ConfigError naming the file, field and problem."""
    return load_file(path, MATRIX_FILE, parse_matrix)


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    names = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "a number"}
    return names.get(type(value), "a number" if isinstance(value, float) else type(value).__name__)


class _Reader:
    """Typed access to the parsed YAML with errors that name the field."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, field_name: str, problem: str) -> ConfigError:
        return ConfigError(self.source, field_name, problem)

    def mapping(self, value: Any, field_name: str, allow_empty: bool = False) -> dict[str, Any]:
        if value is None and allow_empty:
            return {}
        if not isinstance(value, dict) or (not value and not allow_empty):
            raise self.fail(field_name, f"expected a non-empty mapping, got {_kind(value)}")
        for key in value:
            if not isinstance(key, str):
                raise self.fail(field_name, f"key {key!r} must be a string")
        return value

    def string(self, value: Any, field_name: str) -> str:
        if not isinstance(value, str) or not value.strip():
            hint = " (quote it in YAML)" if isinstance(value, bool | int | float) else ""
            raise self.fail(field_name, f"expected a non-empty string, got {_kind(value)}{hint}")
        return value

    def strings(self, value: Any, field_name: str) -> list[str]:
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list) or not value:
            raise self.fail(field_name, f"expected a value or a non-empty list, got {_kind(value)}")
        return [self.string(item, f"{field_name}[{index}]") for index, item in enumerate(value)]

    def known_keys(self, value: dict[str, Any], field_name: str, known: Sequence[str]) -> None:
        for key in value:
            if key not in known:
                prefix = f"{field_name}." if field_name else ""
                raise self.fail(f"{prefix}{key}", f"unknown key (known: {', '.join(known)})")


def parse_matrix(data: Any, source: str = "matrix.yaml") -> Matrix:
    """Validate and expand an already-parsed matrix (a dict as YAML gives it)."""
    read = _Reader(source)
    if not isinstance(data, dict):
        raise read.fail("", f"expected a mapping of {', '.join(_TOP_LEVEL)}, got {_kind(data)}")
    read.known_keys(data, "", _TOP_LEVEL)
    for key in ("axes", "roles", "components", "os"):
        if key not in data:
            raise read.fail(key, "missing")

    axes = _parse_axes(read, data["axes"])
    defaults = _parse_defaults(read, data.get("defaults"), axes)
    roles = _parse_roles(read, data["roles"], axes, defaults)
    components = read.mapping(data["components"], "components")
    os_info = _parse_os(read, data["os"], axes)
    frameworks = _parse_frameworks(read, components, axes)
    exclusions = _parse_rules(read, data.get("exclude"), "exclude", axes, with_why=True)
    cross_version = _parse_pairs(read, data.get("pairs"))
    layers = _parse_packer(read, data.get("packer"), axes)

    candidates = _expand(axes, defaults, roles)
    for index, rule in enumerate(exclusions):
        if not any(rule.matches(values) for values in candidates):
            raise read.fail(f"exclude[{index}].when", f"matches no variant: {_describe(rule)}")
    kept = [values for values in candidates if not any(rule.matches(values) for rule in exclusions)]
    if not kept:
        raise read.fail("exclude", "the exclusions remove every variant: the matrix is empty")

    one_context = read.mapping(components.get("one_context"), "components.one_context")
    gpu = read.mapping(components.get("gpu"), "components.gpu", allow_empty=True)
    variants: list[Variant] = []
    names: set[str] = set()
    for values in kept:
        pins = _pins(read, values, os_info, frameworks, one_context, gpu)
        order = tuple(axes[axis].index(values[axis]) for axis in AXES)
        variant = Variant(pins=pins, order=order, **values)
        if variant.name in names:
            raise read.fail("axes", f"two variants are both named {variant.name}")
        names.add(variant.name)
        variants.append(variant)
    variants.sort(key=lambda variant: variant.order)

    pairs, cross_pairs = _pair(read, variants, cross_version)
    return Matrix(
        source=source,
        axes=axes,
        variants=tuple(variants),
        pairs=pairs,
        cross_pairs=cross_pairs,
        os_info=os_info,
        packer=layers,
    )


def _parse_axes(read: _Reader, raw: Any) -> dict[str, tuple[str, ...]]:
    raw = read.mapping(raw, "axes")
    read.known_keys(raw, "axes", AXES)
    axes: dict[str, tuple[str, ...]] = {}
    fixed = {"role": ROLES, "accel": ACCELS, "profile": PROFILES, "arch": ARCHES}
    for axis in AXES:
        if axis not in raw:
            raise read.fail(f"axes.{axis}", "missing")
        values = raw[axis]
        if not isinstance(values, list) or not values:
            raise read.fail(f"axes.{axis}", f"expected a non-empty list, got {_kind(values)}")
        seen: set[str] = set()
        for index, value in enumerate(values):
            where = f"axes.{axis}[{index}]"
            if not isinstance(value, str):
                raise read.fail(where, f"expected a string, got {_kind(value)} {value!r} (quote it in YAML)")
            if not _VALUE.match(value):
                raise read.fail(where, f"{value!r} must be lower-case letters, digits, '.' or '_' (no '-')")
            if axis == "flower" and not is_release_version(value):
                raise read.fail(where, f"{value!r} is not a Flower release version X.Y.Z")
            if axis in fixed and value not in fixed[axis]:
                raise read.fail(where, f"unknown {axis} {value!r} (known: {', '.join(fixed[axis])})")
            if value in seen:
                raise read.fail(where, f"duplicate value {value!r} (variant names would collide)")
            seen.add(value)
        axes[axis] = tuple(values)
    return axes


def _parse_defaults(read: _Reader, raw: Any, axes: Mapping[str, tuple[str, ...]]) -> dict[str, str]:
    raw = read.mapping(raw, "defaults", allow_empty=True)
    defaults: dict[str, str] = {}
    for axis, value in raw.items():
        where = f"defaults.{axis}"
        if axis not in axes:
            raise read.fail(where, f"unknown axis {axis!r} (known: {', '.join(AXES)})")
        value = read.string(value, where)
        if value not in axes[axis]:
            raise read.fail(where, f"{value!r} is not a value of axes.{axis} ({', '.join(axes[axis])})")
        defaults[axis] = value
    return defaults


def _parse_roles(
    read: _Reader, raw: Any, axes: Mapping[str, tuple[str, ...]], defaults: Mapping[str, str]
) -> dict[str, tuple[str, ...]]:
    raw = read.mapping(raw, "roles")
    roles: dict[str, tuple[str, ...]] = {}
    for role, varied in raw.items():
        where = f"roles.{role}"
        if role not in axes["role"]:
            raise read.fail(where, f"{role!r} is not a value of axes.role ({', '.join(axes['role'])})")
        varied = read.strings(varied, where)
        for axis in varied:
            if axis not in AXES or axis == "role":
                raise read.fail(where, f"unknown axis {axis!r} (known: {', '.join(AXES[1:])})")
        for axis in AXES[1:]:
            if axis not in varied and axis not in defaults:
                raise read.fail(where, f"does not vary {axis} but defaults.{axis} is not set")
        roles[role] = tuple(varied)
    for role in axes["role"]:
        if role not in roles:
            raise read.fail(f"roles.{role}", "missing: say which axes this role varies")
    return roles


def _parse_rules(
    read: _Reader, raw: Any, where: str, axes: Mapping[str, tuple[str, ...]], with_why: bool
) -> list[Rule]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise read.fail(where, f"expected a list of rules, got {_kind(raw)}")
    rules = []
    for index, entry in enumerate(raw):
        field_name = f"{where}[{index}]"
        entry = read.mapping(entry, field_name)
        read.known_keys(entry, field_name, ("when", "why") if with_why else ("when", "vars"))
        when = read.mapping(entry.get("when"), f"{field_name}.when")
        conditions: dict[str, tuple[str, ...]] = {}
        for axis, values in when.items():
            axis_field = f"{field_name}.when.{axis}"
            if axis not in AXES:
                raise read.fail(axis_field, f"unknown axis {axis!r} (known: {', '.join(AXES)})")
            values = read.strings(values, axis_field)
            for value in values:
                if value not in axes[axis]:
                    known = ", ".join(axes[axis])
                    raise read.fail(axis_field, f"{value!r} is not a value of axes.{axis} ({known})")
            conditions[axis] = tuple(values)
        if with_why and "why" in entry:
            read.string(entry["why"], f"{field_name}.why")
        rules.append(Rule(conditions))
    return rules


def _describe(rule: Rule) -> str:
    return ", ".join(f"{axis}={'|'.join(values)}" for axis, values in rule.conditions.items())


def _parse_pairs(read: _Reader, raw: Any) -> bool:
    raw = read.mapping(raw, "pairs", allow_empty=True)
    read.known_keys(raw, "pairs", ("cross_version",))
    cross = raw.get("cross_version", True)
    if not isinstance(cross, bool):
        raise read.fail("pairs.cross_version", f"expected true or false, got {_kind(cross)}")
    return cross


DISTRO_SCRIPT = PROVISION_DIR / "lib" / "distro.sh"
_DISTRO_CASE = re.compile(r'^case "\$\{FL_OS[^"]*"\s+in\s*$(?P<body>.*?)^esac', re.MULTILINE | re.DOTALL)
_CASE_PATTERN = re.compile(r"^\s*(?P<names>[a-z0-9._]+(?:\s*\|\s*[a-z0-9._]+)*)\)", re.MULTILINE)


@functools.cache
def supported_os(script: Path = DISTRO_SCRIPT) -> tuple[str, ...]:
    """The FL_OS values the provisioning scripts support: the patterns of distro.sh's ``case
    "${FL_OS}"`` (the one place that knows them; its ``*)`` branch refuses every other value)."""
    try:
        text = script.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(display(script), "", f"cannot read: {error.strerror}") from None
    match = _DISTRO_CASE.search(text)
    if match is None:
        raise ConfigError(display(script), "", 'no case "${FL_OS}" block: cannot tell the supported OSes')
    names = [
        name.strip() for found in _CASE_PATTERN.finditer(match["body"]) for name in found["names"].split("|")
    ]
    return tuple(sorted(names))


def _parse_os(read: _Reader, raw: Any, axes: Mapping[str, tuple[str, ...]]) -> dict[str, OsInfo]:
    raw = read.mapping(raw, "os")
    result: dict[str, OsInfo] = {}
    for name in axes["os"]:
        where = f"os.{name}"
        if name not in raw:
            raise read.fail(where, f"missing: axes.os lists {name!r} but it has no definition here")
        known = supported_os()
        if name not in known:
            raise read.fail(
                where,
                f"no provisioning script supports OS {name!r} ({display(DISTRO_SCRIPT)} knows "
                f"{', '.join(known)}): the image build would fail at its first step",
            )
        entry = read.mapping(raw[name], where)
        read.known_keys(entry, where, ("title", "python", "one_context", "seed", "images"))
        python = read.string(entry.get("python"), f"{where}.python")
        if not is_python_series(python):
            raise read.fail(f"{where}.python", f"expected a Python version like '3.11', got {python!r}")
        one_context = read.string(entry.get("one_context"), f"{where}.one_context")
        if one_context not in ONE_CONTEXT_KINDS:
            known = ", ".join(ONE_CONTEXT_KINDS)
            raise read.fail(f"{where}.one_context", f"unknown kind {one_context!r} (known: {known})")
        seed = read.string(entry.get("seed"), f"{where}.seed")
        if seed not in SEEDS:
            raise read.fail(f"{where}.seed", f"unknown seed {seed!r} (known: {', '.join(SEEDS)})")
        images = {
            arch: _parse_base_image(read, image, f"{where}.images.{arch}", arch)
            for arch, image in read.mapping(entry.get("images"), f"{where}.images").items()
        }
        title = entry.get("title", name)
        result[name] = OsInfo(
            name=name,
            title=read.string(title, f"{where}.title"),
            python=python,
            one_context=one_context,
            seed=seed,
            images=images,
        )
    for name in raw:
        if name not in axes["os"]:
            raise read.fail(f"os.{name}", f"not a value of axes.os ({', '.join(axes['os'])})")
    return result


def _parse_base_image(read: _Reader, raw: Any, where: str, arch: str) -> BaseImagePin:
    """One ``os.<name>.images.<arch>`` entry: a vendor image's https/file URL and sha256, or ``local``."""
    if arch not in ARCHES:
        raise read.fail(where, f"unknown architecture (known: {', '.join(ARCHES)})")
    image = read.mapping(raw, where)
    read.known_keys(image, where, ("url", "checksum", "local"))
    if image.get("local") is True:
        if "url" in image or "checksum" in image:
            raise read.fail(where, "a local base takes no url or checksum (they come with -var)")
        return BaseImagePin(url="", checksum="", local=True)
    if "local" in image and image["local"] is not False:
        raise read.fail(f"{where}.local", f"expected true or false, got {_kind(image['local'])}")
    url = read.string(image.get("url"), f"{where}.url")
    if not url.startswith(("https://", "file:///")):
        raise read.fail(f"{where}.url", f"expected an https:// or file:/// URL, got {url!r}")
    checksum = read.string(image.get("checksum"), f"{where}.checksum")
    if not _SHA256.match(checksum):
        raise read.fail(f"{where}.checksum", "expected sha256:<64 lower-case hex digits>")
    return BaseImagePin(url=url, checksum=checksum)


def _parse_frameworks(
    read: _Reader, components: Mapping[str, Any], axes: Mapping[str, tuple[str, ...]]
) -> dict[str, dict[str, tuple[tuple[str, ...], str]]]:
    read.known_keys(dict(components), "components", ("one_context", "gpu", "frameworks"))
    raw = read.mapping(components.get("frameworks"), "components.frameworks")
    frameworks: dict[str, dict[str, tuple[tuple[str, ...], str]]] = {}
    for name, per_accel in raw.items():
        where = f"components.frameworks.{name}"
        if name not in axes["framework"]:
            raise read.fail(where, f"not a value of axes.framework ({', '.join(axes['framework'])})")
        per_accel = read.mapping(per_accel, where)
        frameworks[name] = {}
        for accel, spec in per_accel.items():
            spec_field = f"{where}.{accel}"
            if accel not in ACCELS:
                raise read.fail(spec_field, f"unknown accelerator (known: {', '.join(ACCELS)})")
            spec = read.mapping(spec, spec_field)
            read.known_keys(spec, spec_field, ("packages", "index_url"))
            packages = read.strings(spec.get("packages"), f"{spec_field}.packages")
            for index, requirement in enumerate(packages):
                if not is_pinned(requirement):
                    raise read.fail(
                        f"{spec_field}.packages[{index}]", f"{requirement!r} is not pinned as name==version"
                    )
            index_url = spec.get("index_url", "")
            if index_url:
                index_url = read.string(index_url, f"{spec_field}.index_url")
                if not index_url.startswith("https://"):
                    raise read.fail(f"{spec_field}.index_url", f"expected an https:// URL, got {index_url!r}")
            frameworks[name][accel] = (tuple(packages), index_url)
    return frameworks


def _parse_packer(read: _Reader, raw: Any, axes: Mapping[str, tuple[str, ...]]) -> PackerLayers:
    raw = read.mapping(raw, "packer", allow_empty=True)
    read.known_keys(raw, "packer", ("common", "arch", "os", "variants"))

    def variables(value: Any, where: str) -> dict[str, Any]:
        value = read.mapping(value, where, allow_empty=True)
        for key, item in value.items():
            if not re.match(r"^[a-z][a-z0-9_]*$", key):
                raise read.fail(f"{where}.{key}", "not a Packer variable name")
            if not isinstance(item, str | int | bool) or isinstance(item, float):
                raise read.fail(f"{where}.{key}", f"expected a string, number or boolean, got {_kind(item)}")
        return value

    arch_layers = {}
    for arch, value in read.mapping(raw.get("arch"), "packer.arch", allow_empty=True).items():
        if arch not in axes["arch"]:
            raise read.fail(f"packer.arch.{arch}", f"not a value of axes.arch ({', '.join(axes['arch'])})")
        arch_layers[arch] = variables(value, f"packer.arch.{arch}")
    os_layers = {}
    for name, value in read.mapping(raw.get("os"), "packer.os", allow_empty=True).items():
        if name not in axes["os"]:
            raise read.fail(f"packer.os.{name}", f"not a value of axes.os ({', '.join(axes['os'])})")
        os_layers[name] = variables(value, f"packer.os.{name}")
    rules = _parse_rules(read, raw.get("variants"), "packer.variants", axes, with_why=False)
    raw_rules = raw.get("variants") or []
    variant_rules = tuple(
        (rule, variables(entry.get("vars"), f"packer.variants[{index}].vars"))
        for index, (rule, entry) in enumerate(zip(rules, raw_rules, strict=True))
    )
    return PackerLayers(
        common=variables(raw.get("common"), "packer.common"),
        arch=arch_layers,
        os=os_layers,
        variant_rules=variant_rules,
    )


def _expand(
    axes: Mapping[str, tuple[str, ...]], defaults: Mapping[str, str], roles: Mapping[str, tuple[str, ...]]
) -> list[dict[str, str]]:
    """The product of the axes per role; axes a role does not vary take their default."""
    seen: set[tuple[str, ...]] = set()
    result: list[dict[str, str]] = []
    for role in axes["role"]:
        varied = roles[role]
        ranges = [axes[axis] if axis in varied else (defaults[axis],) for axis in AXES[1:]]
        for combination in itertools.product(*ranges):
            values = {"role": role, **dict(zip(AXES[1:], combination, strict=True))}
            key = tuple(values[axis] for axis in AXES)
            if key not in seen:
                seen.add(key)
                result.append(values)
    return result


def _pins(
    read: _Reader,
    values: Mapping[str, str],
    os_info: Mapping[str, OsInfo],
    frameworks: Mapping[str, Mapping[str, tuple[tuple[str, ...], str]]],
    one_context: Mapping[str, Any],
    gpu: Mapping[str, Any],
) -> Pins:
    name = "-".join(values[axis] for axis in AXES)
    info = os_info[values["os"]]
    image = info.images.get(values["arch"])
    if image is None:
        raise read.fail(
            f"os.{values['os']}.images",
            f"no {values['arch']} base image for {name}: add one or exclude os={values['os']} "
            f"arch={values['arch']}",
        )
    framework = frameworks.get(values["framework"], {})
    if values["accel"] not in framework:
        raise read.fail(
            f"components.frameworks.{values['framework']}",
            f"no {values['accel']} packages for {name}: add them or exclude "
            f"framework={values['framework']} accel={values['accel']}",
        )
    packages, index_url = framework[values["accel"]]
    cuda = driver = ""
    if values["accel"] == "gpu":
        cuda = read.string(gpu.get("cuda"), "components.gpu.cuda")
        driver = read.string(gpu.get("nvidia_driver"), "components.gpu.nvidia_driver")
    version = read.string(one_context.get("version"), "components.one_context.version")
    url = ""
    if info.one_context in ("deb", "rpm"):
        where = f"components.one_context.{info.one_context}"
        url = read.string(one_context.get(info.one_context), where)
        if not url.startswith("https://"):
            raise read.fail(where, f"expected an https:// URL, got {url!r}")
    return Pins(
        flower=values["flower"],
        python=info.python,
        framework_packages=packages,
        framework_index_url=index_url,
        one_context="source" if info.one_context == "source" else "package",
        one_context_version=version if info.one_context != "source" else "",
        one_context_url=url,
        cuda=cuda,
        nvidia_driver=driver,
        base_image=image,
    )


def _pair(read: _Reader, variants: Sequence[Variant], cross_version: bool) -> tuple[tuple[Pair, ...], ...]:
    superlinks = {(v.flower, v.os, v.framework): v for v in variants if v.role == "superlink"}
    groups: dict[tuple[str, ...], list[Variant]] = {}
    for variant in variants:
        if variant.role == "supernode":
            key = (variant.flower, variant.os, variant.accel, variant.profile, variant.framework)
            groups.setdefault(key, []).append(variant)
    paired_superlinks: set[str] = set()
    pairs: list[Pair] = []
    for (flower, os_name, _accel, _profile, framework), nodes in groups.items():
        superlink = superlinks.get((flower, os_name, framework))
        if superlink is None:
            raise read.fail(
                "exclude",
                f"{nodes[0].name} has no SuperLink to pair with (superlink flower={flower} os={os_name} "
                f"framework={framework} is excluded)",
            )
        paired_superlinks.add(superlink.name)
        pairs.append(Pair(superlink=superlink, supernodes=tuple(nodes)))
    for superlink in superlinks.values():
        if superlink.name not in paired_superlinks:
            raise read.fail(
                "exclude",
                f"{superlink.name} pairs with no SuperNode: exclude it too, or keep a SuperNode with "
                f"flower={superlink.flower} os={superlink.os} framework={superlink.framework}",
            )
    cross: list[Pair] = []
    if cross_version:
        for (flower, os_name, _accel, _profile, framework), nodes in groups.items():
            for (other_flower, other_os, other_framework), superlink in superlinks.items():
                if other_os == os_name and other_framework == framework and other_flower != flower:
                    cross.append(Pair(superlink=superlink, supernodes=tuple(nodes)))
    order = {variant.name: index for index, variant in enumerate(variants)}

    def pair_key(pair: Pair) -> tuple[int, int]:
        return (order[pair.superlink.name], order[pair.supernodes[0].name])

    return tuple(sorted(pairs, key=pair_key)), tuple(sorted(cross, key=pair_key))


def github_matrix(variants: Sequence[Variant]) -> dict[str, Any]:
    """A GitHub Actions ``strategy.matrix`` (``include`` list) fanning the builds out over runners."""
    if len(variants) > _GITHUB_MATRIX_LIMIT:
        raise ConfigError(
            "command line",
            "--format github",
            f"{len(variants)} variants exceed GitHub's {_GITHUB_MATRIX_LIMIT} jobs per matrix: "
            "filter with --only",
        )
    include = []
    for variant in variants:
        include.append(
            {
                "variant": variant.name,
                **variant.axes(),
                # the architecture label of the nightly workflow's self-hosted runners (runs-on)
                "runner": RUNNER_LABELS[variant.arch],
                "local_base": variant.pins.base_image.local,
            }
        )
    return {"include": include}
