"""The layers of a local appliance build and their content keys (a plan: nothing is built here).

An appliance image is the base root filesystem with the provisioning scripts (``images/provision/NN-*.sh``)
run in order, then the image hygiene. The local builder (factory/images/localbuild.py) cuts that sequence
into layers, each a cached root filesystem that the next one copies:

- ``system``: steps before 40 (distribution packages, one-context, a GPU driver);
- ``runtime``: steps 40-49 (the Flower virtualenv with the framework packages);
- ``role``: steps from 50 (the appliance, SSH, cleanup, checks), then collect-facts.sh and sysprep.sh: the
  final image, keyed by every input (``localbuild.appliance_key``).

A layer runs its scripts with only the ``FL_*`` variables those scripts (and ``lib/``) name, and its key is
a digest of its parent's key, its scripts, ``lib/``, those variables and the one-context package its payload
carries. So two variants share a layer exactly when nothing the layer's scripts can see differs between
them: a script that branches on ``FL_ROLE`` makes its layer one per role, and stops doing so as soon as it
no longer names it. Steps keep their order: a layered build runs the same scripts in the same order as a
straight one, only in more than one container.
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


class LayerName(enum.StrEnum):
    SYSTEM = "system"
    RUNTIME = "runtime"
    ROLE = "role"


# The first step number of each layer; a layer holds the steps up to the next one's start.
LAYER_STARTS: tuple[tuple[LayerName, int], ...] = (
    (LayerName.SYSTEM, 0),
    (LayerName.RUNTIME, 40),
    (LayerName.ROLE, 50),
)
INTERMEDIATE = (LayerName.SYSTEM, LayerName.RUNTIME)
STEP_NAME = re.compile(r"^(\d\d)-[A-Za-z0-9._-]+\.sh$")


def digest(parts: Iterable[bytes]) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(len(part).to_bytes(8, "big"))
        hasher.update(part)
    return hasher.hexdigest()


def tree_digest(root: Path) -> str:
    """Digest of a directory: relative paths, executable bits and contents (caches excluded)."""
    parts: list[bytes] = []
    for path in sorted(root.rglob("*")):
        if "__pycache__" in path.parts or not path.is_file():
            continue
        relative = path.relative_to(root).as_posix()
        executable = b"x" if os.access(path, os.X_OK) else b"-"
        parts += [relative.encode(), executable, path.read_bytes()]
    return digest(parts)


def provisioning_steps(provision_dir: Path) -> tuple[Path, ...]:
    """The ``NN-*.sh`` scripts in the order the builds run them (the shell's glob order)."""
    return tuple(sorted(path for path in provision_dir.iterdir() if STEP_NAME.match(path.name)))


def layer_of(step: Path) -> LayerName:
    number = int(STEP_NAME.match(step.name).group(1))  # type: ignore[union-attr]
    return [name for name, start in LAYER_STARTS if number >= start][-1]


def split_steps(steps: Sequence[Path]) -> dict[LayerName, tuple[Path, ...]]:
    return {name: tuple(step for step in steps if layer_of(step) == name) for name, _ in LAYER_STARTS}


def referenced_environment(environment: Mapping[str, str], texts: Iterable[str]) -> dict[str, str]:
    """The variables of ``environment`` that any of ``texts`` names (as a whole word)."""
    joined = "\n".join(texts)
    return {
        name: value for name, value in environment.items() if re.search(rf"\b{re.escape(name)}\b", joined)
    }


@dataclass(frozen=True)
class Layer:
    """One intermediate layer of a variant's build: the steps it runs, with what, and its key."""

    name: LayerName
    steps: tuple[Path, ...]
    environment: Mapping[str, str]
    parent_key: str
    key: str

    @property
    def label(self) -> str:
        return f"{self.name}-{self.key[:16]}"


def plan_layers(
    environment: Mapping[str, str],
    base_key: str,
    provision_dir: Path,
    one_context_parts: Sequence[str],
    builder_version: str,
) -> tuple[Layer, ...]:
    """The intermediate layers (system, runtime) of a build with the provisioning ``environment``, from the
    base with ``base_key``; the role layer is the final image and is keyed by the appliance key."""
    library = provision_dir / "lib"
    library_texts = [path.read_text() for path in sorted(library.rglob("*.sh"))] if library.is_dir() else []
    library_digest = tree_digest(library) if library.is_dir() else ""
    steps = split_steps(provisioning_steps(provision_dir))
    layers: list[Layer] = []
    parent = base_key
    for name in INTERMEDIATE:
        scripts = steps[name]
        seen = referenced_environment(environment, [*(step.read_text() for step in scripts), *library_texts])
        description = {
            "builder": builder_version,
            "layer": str(name),
            "parent": parent,
            "steps": [[step.name, hashlib.sha256(step.read_bytes()).hexdigest()] for step in scripts],
            "lib": library_digest,
            "environment": seen,
            "one-context": list(one_context_parts),  # the payload of every layer carries the package
        }
        key = digest([json.dumps(description, sort_keys=True).encode()])
        layers.append(Layer(name, scripts, seen, parent, key))
        parent = key
    return tuple(layers)
