"""One test campaign: which pairs, where (a cloud or bare Flower), with which options, one pair at a time.

Both ``build.py test`` and ``build.py release`` run their pairs through this module:

    specs = select_pairs(PairSelection(only=["flower=1.42.0"]), target="cloud", images="auto")
    options = PairTestOptions(rounds=3)
    with cloud_target("auto") as target:
        outcome = Campaign(specs, run_name, options, record=write_result).test(target)

A campaign is a list of ``PairRun``s, one object per pair: a run holds its spec, the run name and the
options, and touches nothing another run touches (its own scratch directory, its own result), so that the
loop in ``Campaign.test`` can later hand the runs to a pool (``--parallel N``) unchanged. The campaign
itself only counts and reports progress.

The caller records results (``record``): the harness writes no result files itself, the release layer
(factory/release/results.py) does.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from factory.harness.pair import PairResult, PairSpec, Side
from factory.harness.pairtest import (
    ImageFile,
    PairTestOptions,
    failed_result,
    run_pair_bare,
    run_pair_in_cloud,
)
from hostkit.errors import ConfigError, FactoryError
from hostkit.paths import BUILD_DIR
from hostkit.progress import DEFAULT as PROGRESS
from hostkit.progress import Progress

Images = dict[str, ImageFile]
ImageResolver = Callable[[PairSpec], Images]


# -- selection -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairSelection:
    """--matrix/--only/--except/--no-cross and how many SuperNodes each pair starts."""

    matrix: Path | None = None
    only: Sequence[str] = ()
    exclude: Sequence[str] = ()
    cross: bool = True
    supernodes: int = 2


def host_arch() -> str:
    machine = platform.machine()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def side_of(variant: Any, count: int = 1) -> Side:
    """A matrix variant as one side of a pair."""
    return Side(
        variant=variant.name,
        flower=variant.flower,
        os=variant.os,
        accel=variant.accel,
        profile=variant.profile,
        framework=variant.framework,
        arch=variant.arch,
        count=count,
    )


def pair_specs(pairs: Any, supernodes: int = 2) -> list[PairSpec]:
    """PairSpecs of matrix pairs: ``supernodes`` SuperNodes of the variant of this machine's architecture."""
    specs = []
    arch = host_arch()
    for pair in pairs:
        nodes = [variant for variant in pair.supernodes if variant.arch == arch]
        if not nodes:
            continue  # e.g. an aarch64-only edge pair on an x86_64 runner
        specs.append(PairSpec(pair.name, side_of(pair.superlink), side_of(nodes[0], supernodes)))
    return specs


def find_pair_specs(names: list[str], supernodes: int = 2) -> list[PairSpec]:
    """The PairSpecs of pairs named as `build.py matrix` lists them."""
    from factory.model.matrix import load_matrix

    matrix = load_matrix()
    by_name = {pair.name: pair for pair in matrix.pairs + matrix.cross_pairs}
    unknown = [name for name in names if name not in by_name]
    if unknown:
        raise ConfigError(
            "command line", "--pair", f"unknown pair(s) {', '.join(unknown)} (see build.py matrix)"
        )
    return pair_specs([by_name[name] for name in names], supernodes)


def uses_local_images(target: str, images: str) -> bool:
    """Whether pair images are built here: the local test cloud with --images auto, or --images local."""
    return target == "cloud" and (
        images == "local" or (images == "auto" and not os.environ.get("ONE_XMLRPC"))
    )


def locally_buildable(specs: list[PairSpec], progress: Progress = PROGRESS) -> list[PairSpec]:
    """The pairs whose images this machine can build (the local builder's OS); the others are named."""
    from factory.images.localbuild import LOCAL_OS

    kept = [spec for spec in specs if spec.superlink.os == LOCAL_OS and spec.supernode.os == LOCAL_OS]
    if len(kept) < len(specs):
        progress.line(
            f"{len(specs) - len(kept)} selected pair(s) need vendor cloud images that cannot be built here "
            f"(only {LOCAL_OS}): left out; build them with Packer and test against an OpenNebula"
        )
    return kept


def select_pairs(
    selection: PairSelection, target: str = "cloud", images: str = "auto", progress: Progress = PROGRESS
) -> list[PairSpec]:
    """The selected pairs runnable here; with local images, only those this machine can build. None is an
    error naming the filters."""
    from factory.model.matrix import Selection, load_matrix

    matrix = load_matrix(selection.matrix)
    chosen = Selection.parse(list(selection.only), list(selection.exclude), matrix.axes)
    specs = pair_specs(matrix.select_pairs(chosen, cross=selection.cross), selection.supernodes)
    if not specs:
        raise ConfigError(
            "command line", "--only/--except", f"the filters select no pair runnable on {host_arch()}"
        )
    if uses_local_images(target, images):
        specs = locally_buildable(specs, progress)
        if not specs:
            raise ConfigError(
                "command line", "--only/--except", "no selected pair can be built on this machine"
            )
    return specs


# -- images --------------------------------------------------------------------------------------------------


def packer_image(variant: str) -> ImageFile:
    """build/images/<variant>/<variant>.qcow2 and its manifest, as `build.py build` leaves them."""
    from factory.images.packer import IMAGES_DIR

    image = IMAGES_DIR / variant / f"{variant}.qcow2"
    manifest = image.with_name(f"{variant}.manifest.json")
    if not image.is_file() or not manifest.is_file():
        raise FactoryError(
            f"{variant}: no built image at {image}: run `python build.py build --only name={variant}`"
        )
    return ImageFile(image, json.loads(manifest.read_text()))


def local_image(variant_name: str) -> ImageFile:
    """The container-bootable raw image of a debian12 variant, built here (cached by content)."""
    from factory.images.localbuild import build_appliance
    from factory.model.matrix import load_matrix

    built = build_appliance(load_matrix().variant(variant_name))
    return ImageFile(built.image, dict(built.manifest))


def image_resolver(source: str) -> ImageResolver:
    """Images of a pair's two sides: ``local`` (built here) or ``packer`` (build/images)."""
    resolve = local_image if source == "local" else packer_image

    def images_for(spec: PairSpec) -> Images:
        return {"superlink": resolve(spec.superlink.variant), "supernode": resolve(spec.supernode.variant)}

    return images_for


# -- the cloud -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CloudTarget:
    """Where cloud pairs run: the OneCloud, its name in the results, and where its images come from."""

    cloud: Any  # factory.one.OneCloud
    name: str  # "testcloud" or "opennebula"
    images_for: ImageResolver


@contextmanager
def cloud_target(
    images: str = "auto", keep_running: bool = False, progress: Progress = PROGRESS
) -> Iterator[CloudTarget]:
    """The OpenNebula ONE_XMLRPC names, else the local test cloud: the one `build.py cloud up` started, or
    one started here, stopped at the end unless ``keep_running`` (then it stays up as a daemon, like
    `build.py cloud up`, so that what was published can be looked at)."""
    from factory.one import OneCloud, load_settings
    from hostkit.paths import CLOUD_DIR

    if os.environ.get("ONE_XMLRPC"):
        settings = load_settings()
        progress.line(f"OpenNebula: {settings.describe()}")
        source = "packer" if images == "auto" else images
        yield CloudTarget(OneCloud(settings, progress), "opennebula", image_resolver(source))
        return
    resolver = image_resolver("local" if images == "auto" else images)
    if (CLOUD_DIR / "endpoints.json").is_file():
        cloud = OneCloud(load_settings(), progress)
        try:
            cloud.version()
        except Exception:  # a stale endpoints.json: start a fresh cloud below
            pass
        else:
            progress.line(f"local test cloud (already up): {cloud.settings.describe()}")
            yield CloudTarget(cloud, "testcloud", resolver)
            return
    from testcloud.launcher import start

    with progress.stage("start the local test cloud" + (" (it stays up)" if keep_running else "")):
        handle = start(CLOUD_DIR, "auto", background=keep_running)
    settings = load_settings()
    if keep_running:
        progress.line(f"local test cloud: {settings.describe()}; stop it with `python build.py cloud down`")
        yield CloudTarget(OneCloud(settings, progress), "testcloud", resolver)
        return
    try:
        progress.line(f"local test cloud: {settings.describe()}")
        yield CloudTarget(OneCloud(settings, progress), "testcloud", resolver)
    finally:
        with progress.stage("stop the local test cloud"):
            handle.stop()


# -- the loop ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairRun:
    """One pair's test: everything it needs, nothing another run shares (its own scratch directory)."""

    spec: PairSpec
    run: str
    options: PairTestOptions

    def bare(self, scratch_root: Path, progress: Progress = PROGRESS) -> PairResult:
        with tempfile.TemporaryDirectory(prefix="pair-", dir=scratch_root) as workdir:
            return run_pair_bare(self.spec, self.run, Path(workdir), self.options, progress)

    def in_cloud(
        self, target: CloudTarget, images: Images | str, scratch_root: Path, progress: Progress = PROGRESS
    ) -> PairResult:
        """The pair in ``target`` with ``images``, or its failed record when ``images`` is why they are not
        there."""
        if isinstance(images, str):
            return failed_result(self.spec, self.run, target.name, self.options, images)
        with tempfile.TemporaryDirectory(prefix="pair-", dir=scratch_root) as workdir:
            return run_pair_in_cloud(
                self.spec, self.run, Path(workdir), self.options, target.cloud, images, target.name, progress
            )


@dataclass
class CampaignOutcome:
    results: list[PairResult] = field(default_factory=list)
    stopped_early: bool = False

    @property
    def passed(self) -> int:
        return sum(1 for result in self.results if result.passed)

    @property
    def failed(self) -> int:
        return len(self.results) - self.passed


@dataclass
class Campaign:
    """The selected pairs, tested one after another; ``record`` keeps each result as soon as it is known."""

    specs: list[PairSpec]
    run: str
    options: PairTestOptions
    record: Callable[[PairResult], Path]
    keep_going: bool = True
    progress: Progress = PROGRESS
    scratch_root: Path = BUILD_DIR / "e2e"

    def runs(self) -> list[PairRun]:
        return [PairRun(spec, self.run, self.options) for spec in self.specs]

    def resolve_images(self, target: CloudTarget) -> dict[str, Images | str]:
        """Every pair's images, before any pair runs; a pair whose images cannot be had maps to the reason."""
        images: dict[str, Images | str] = {}
        for spec in self.progress.iterate(self.specs, "images of pair"):
            try:
                images[spec.name] = target.images_for(spec)
            except FactoryError as error:
                self.progress.line(f"{spec.name}: {error}")
                images[spec.name] = f"images: {error}"
        return images

    def test(
        self, target: CloudTarget | None, images: dict[str, Images | str] | None = None
    ) -> CampaignOutcome:
        """Each pair in ``target`` (None: bare Flower), its images from ``images`` when resolved beforehand
        (else each pair's as its turn comes). Without ``keep_going`` the first failure ends the campaign."""
        self.scratch_root.mkdir(parents=True, exist_ok=True)
        outcome = CampaignOutcome()
        where = "on bare Flower" if target is None else f"in {target.name}"
        for index, run in enumerate(self.runs(), start=1):
            self.progress.line(f"[{index}/{len(self.specs)}] {run.spec.name} {where}")
            if target is None:
                result = run.bare(self.scratch_root, self.progress)
            else:
                pair_images = images[run.spec.name] if images is not None else self._images(target, run.spec)
                result = run.in_cloud(target, pair_images, self.scratch_root, self.progress)
            self._report(result)
            outcome.results.append(result)
            if not result.passed and not self.keep_going:
                self.progress.line("stopping after the first failed pair (--keep-going tests the rest)")
                outcome.stopped_early = True
                break
        return outcome

    @staticmethod
    def _images(target: CloudTarget, spec: PairSpec) -> Images | str:
        try:
            return target.images_for(spec)
        except FactoryError as error:
            return f"images: {error}"

    def _report(self, result: PairResult) -> None:
        path = self.record(result)
        line = f"{result.pair}: {result.status}"
        if result.error:
            line += f": {result.error[:300]}"
        self.progress.line(line)
        self.progress.line(f"  record: {path}")
