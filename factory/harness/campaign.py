"""One test campaign: which pairs, where (a cloud or bare Flower), with which options, N pairs at once.

Both ``build.py test`` and ``build.py release`` run their pairs through this module:

    specs = select_pairs(PairSelection(only=["flower=1.42.0"]), target="cloud", images="auto")
    options = PairTestOptions(rounds=3)
    with cloud_target("auto") as target:
        parallel = choose_parallel(None, specs, options, free_addresses(target.cloud), machine_parallel(True))
        outcome = Campaign(specs, run_name, options, record=write_result, parallel=parallel).test(target)

A campaign is a list of ``PairRun``s, one object per pair: a run holds its spec, the run name and the
options, and touches nothing another run touches (its own scratch directory, its own result). In a cloud
each run also gets its own connection (``PairCloudView``: pyone's XML-RPC proxy is one HTTP connection,
not for threads) and its own progress (``PairProgress``: lines prefixed with the pair's name). The one
thing pairs share, image imports, goes through the campaign's connection under a lock. The campaign hands
the runs to a thread pool of ``parallel`` workers, records results from its own thread and lists them in
the order of the pairs.

The caller records results (``record``): the harness writes no result files itself, the release layer
(factory/release/results.py) does.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
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


# -- how many at once ----------------------------------------------------------------------------------------

# What one pair test costs the machine that runs the campaign. With the local test cloud its VMs are
# containers here (a SuperLink and SuperNodes with Flower and a framework: about 2 GiB together, measured
# with the sklearn pairs); against a real OpenNebula only the flwr CLI and an SSH tunnel run here.
LOCAL_PAIR_MEMORY = 2 << 30
REMOTE_PAIRS_MAX = 16
# The share of a core that following one run costs here. A pair test follows each run with one streamed
# `flwr log` and a `flwr list` every 30 s (FederationRunner): measured side by side with polling on the
# 2-core development machine (benchmarks/bench_e2e.py follow, issue 13), 4.7 s of flwr CPU over a 45 s
# follow, against 13.7 s polled every 10 s. Polling is only the fallback where a stream drops.
FOLLOW_CPU_SHARE = 4.7 / 45


def addresses_per_pair(spec: PairSpec, options: PairTestOptions) -> int:
    """The service network's leases one pair holds at once: its SuperLink, its SuperNodes, a rogue one, a
    monitoring VM."""
    extra = (1 if options.rogue_supernode else 0) + (1 if options.monitoring_role else 0)
    return 1 + spec.supernode.count + extra


def free_addresses(cloud: Any) -> int:
    """Leases left in the network the pairs' services use: the sum of its address ranges' SIZE minus the
    network's USED_LEASES, as ``onevnet show`` reports them (upstream one/share/doc/xsd/vnet.xsd,
    one/src/cli/one_helper/onevnet_helper.rb), read through pyone's one.vn.info."""
    network = cloud.network_id()
    try:
        vnet = cloud.one.vn.info(network)
    except Exception as error:  # pyone raises its own and transport errors alike
        raise FactoryError(f"OpenNebula one.vn.info {network}: {error}") from None
    ranges = (vnet.AR_POOL.AR if vnet.AR_POOL is not None else None) or []
    ranges = ranges if isinstance(ranges, list) else [ranges]
    size = sum(int(address_range.SIZE or 0) for address_range in ranges)
    return max(size - int(vnet.USED_LEASES or 0), 0)


def memory_available() -> int:
    """Bytes of memory available to new processes (MemAvailable), or 0 when it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def machine_parallel(local_vms: bool, cores: int | None = None, memory: int | None = None) -> int:
    """Pairs this machine carries at once: with the VMs here, one per core as far as memory allows (their
    Flower processes use the cores: on 2 cores a warm release's pair tests took 1.14x as long at 4 at once
    as at 2, docs/e2e.md); against a remote cloud as many per core as following their runs leaves room
    for (FOLLOW_CPU_SHARE: 9 per core), capped."""
    cores = cores if cores is not None else (os.cpu_count() or 1)
    if not local_vms:
        per_core = max(int(1 / FOLLOW_CPU_SHARE), 1)
        return max(1, min(cores * per_core, REMOTE_PAIRS_MAX))
    memory = memory if memory is not None else memory_available()
    by_memory = memory // LOCAL_PAIR_MEMORY if memory else cores
    return max(1, min(cores, by_memory))


def check_parallel(value: int) -> int:
    """``--parallel`` as given: at least 1 (0 is not "no limit")."""
    if value < 1:
        raise ConfigError("command line", "--parallel", f"must be 1 or more pairs at once, got {value}")
    return value


def choose_parallel(
    requested: int | None,
    specs: list[PairSpec],
    options: PairTestOptions,
    free: int | None,
    machine: int,
    progress: Progress = PROGRESS,
) -> int:
    """How many pairs run at once: ``requested`` (``--parallel``) when the cloud has the addresses for it,
    else a refusal before anything starts; without it the machine's figure, capped by the addresses
    (``free``, None where not known: bare Flower) and the number of pairs."""
    need = max((addresses_per_pair(spec, options) for spec in specs), default=1)
    # the campaign's one monitoring VM (--monitoring-pair) takes an address of its own
    reserved = 1 if options.monitoring_pair != "none" and free is not None else 0
    kept = " (one kept for the monitoring VM)" if reserved else ""
    if requested is not None:
        check_parallel(requested)
        if free is not None and requested * need > free - reserved:
            raise ConfigError(
                "command line",
                "--parallel",
                f"{requested} pairs at once need {requested * need} addresses ({need} per pair) but the "
                f"service network has {free} free{kept}: use --parallel {max((free - reserved) // need, 1)} "
                "or less",
            )  # fmt: skip
        return requested
    chosen = min(machine, len(specs) or 1)
    if free is not None:
        if free < need:
            raise ConfigError(
                "cloud", "network", f"the service network has {free} free address(es), a pair needs {need}"
            )
        chosen = min(chosen, max(free - reserved, 0) // need)
    chosen = max(chosen, 1)
    progress.line(
        f"{chosen} pair(s) at once (--parallel: machine {machine}"
        + (f", {free} free addresses / {need} per pair" if free is not None else "")
        + f", {len(specs)} pair(s))"
    )
    return chosen


# -- one pair's view of the shared things --------------------------------------------------------------------


class PairProgress(Progress):
    """A pair's progress: every line prefixed with the pair's name, written whole under a lock shared by
    the campaign's pairs (so lines of pairs running at once never interleave mid-line), and the seconds of
    every stage it showed, for the timings."""

    def __init__(self, name: str, base: Progress, lock: threading.Lock) -> None:
        super().__init__(base.stream, base.quiet)
        self.name = name
        self.lock = lock
        self.stages: dict[str, float] = {}

    def _write(self, text: str) -> None:
        prefixed = "".join(f"[{self.name}] {line}" for line in text.lstrip("\r").splitlines(keepends=True))
        with self.lock:
            super()._write(prefixed)

    def interactive(self) -> bool:
        return False  # no counter redrawn in place: other pairs write between its updates

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            with super().stage(name):
                yield
        finally:
            self.stages[name] = self.stages.get(name, 0.0) + time.monotonic() - started


class PairCloudView:
    """A pair's own connection to the campaign's cloud (pyone's XML-RPC proxy is not shared between
    threads) with its own progress; image imports go through the campaign's connection one at a time,
    so two pairs of one image never import it twice and its checksum is hashed once."""

    def __init__(self, shared: Any, own: Any, lock: threading.Lock) -> None:
        self._shared = shared
        self._own = own
        self._lock = lock

    def ensure_image(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return self._shared.ensure_image(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._own, name)


def monitoring_pair_of(specs: list[PairSpec], choice: str) -> str | None:
    """The name of the pair deployed with the monitoring role on: ``first`` (the campaign's first pair),
    ``none``, or a pair's name (which must be one of the campaign's)."""
    if choice == "none" or not specs:
        return None
    if choice == "first":
        return specs[0].name
    if choice not in {spec.name for spec in specs}:
        raise ConfigError(
            "command line", "--monitoring-pair",
            f"{choice!r} is not a pair of this campaign (first, none, or one of: "
            f"{', '.join(spec.name for spec in specs)})",
        )  # fmt: skip
    return choice


def own_connection(cloud: Any, progress: Progress) -> Any:
    """A new connection like ``cloud`` (a factory.one.OneCloud) reporting to ``progress``; any other cloud
    object (a test's fake) is used as it is."""
    from factory.one import OneCloud

    return cloud.reconnect(progress) if type(cloud) is OneCloud else cloud


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


def task_wall_seconds(federations: list[dict[str, Any]]) -> float | None:
    """The wall time during which at least one of the pair's tasks ran (tasks side by side count once):
    the union of each federation's submission to its end; None when no federation has both clocks."""
    spans = sorted(
        (float(federation["submitted_at"]), float(federation["finished_at"]))
        for federation in federations
        if federation.get("submitted_at") and federation.get("finished_at")
    )
    if not spans:
        return None
    total, (start, end) = 0.0, spans[0]
    for begin, finish in spans[1:]:
        if begin > end:
            total, start = total + end - start, begin
        end = max(end, finish)
    return total + end - start


@dataclass(frozen=True)
class PairTiming:
    """Where one pair's wall time went: deploy (images, templates, the service RUNNING; bare: processes
    up), rounds (while any task's federation ran: tasks side by side count once), teardown, and the rest
    (tunnel, the job's end if it outlasts the tasks, logs, checks)."""

    pair: str
    total: float
    deploy: float
    rounds: float
    teardown: float

    @staticmethod
    def of(result: PairResult, total: float, stages: dict[str, float]) -> PairTiming:
        timings: dict[str, Any] = result.timings
        deploy = float(timings.get("images_seconds", 0.0)) + float(timings.get("deploy_seconds", 0.0))
        rounds = task_wall_seconds(result.federations)
        if rounds is None:  # a record without the tasks' clocks: their durations, one after another
            rounds = sum(float(seconds) for seconds in (timings.get("task_seconds") or {}).values())
        return PairTiming(result.pair, total, deploy, rounds, stages.get("teardown", 0.0))

    @property
    def other(self) -> float:
        return max(self.total - self.deploy - self.rounds - self.teardown, 0.0)

    def to_dict(self) -> dict[str, float]:
        return {
            "total": self.total,
            "deploy": self.deploy,
            "rounds": self.rounds,
            "teardown": self.teardown,
            "other": self.other,
        }


@dataclass
class CampaignOutcome:
    results: list[PairResult] = field(default_factory=list)
    stopped_early: bool = False
    timings: list[PairTiming] = field(default_factory=list)
    parallel: int = 1
    wall_seconds: float = 0.0

    @property
    def passed(self) -> int:
        return sum(1 for result in self.results if result.passed)

    @property
    def failed(self) -> int:
        return len(self.results) - self.passed


@dataclass
class Campaign:
    """The selected pairs, up to ``parallel`` at once; ``record`` keeps each result as soon as it is known.

    Each pair runs in a thread of its own (the work is subprocesses, SSH and HTTP: waiting) with its own
    scratch directory, service (named after the pair and the run), SSH key and tunnel (a free local port),
    its own connection to the cloud and progress lines prefixed with its name. Results are recorded from
    the campaign's thread, one at a time, and listed in the order of the pairs, whatever order they
    finished in: a run with ``parallel`` 1 and one with 4 leave the same records."""

    specs: list[PairSpec]
    run: str
    options: PairTestOptions
    record: Callable[[PairResult], Path]
    keep_going: bool = True
    progress: Progress = PROGRESS
    scratch_root: Path = BUILD_DIR / "e2e"
    parallel: int = 1

    def __post_init__(self) -> None:
        monitoring_pair_of(self.specs, self.options.monitoring_pair)  # a bad --monitoring-pair: refused now

    def runs(self) -> list[PairRun]:
        chosen = monitoring_pair_of(self.specs, self.options.monitoring_pair)
        return [
            PairRun(spec, self.run, replace(self.options, monitoring_role=spec.name == chosen))
            for spec in self.specs
        ]

    def resolve_images(
        self, target: CloudTarget, on_stage: Callable[[str, float], None] | None = None
    ) -> dict[str, Images | str]:
        """Every pair's images, before any pair runs; a pair whose images cannot be had maps to the reason.
        ``on_stage("images/<variant>", seconds)`` is told how long each variant took the first time."""
        images: dict[str, Images | str] = {}
        for spec in self.progress.iterate(self.specs, "images of pair"):
            started = time.monotonic()
            try:
                images[spec.name] = target.images_for(spec)
            except FactoryError as error:
                self.progress.line(f"{spec.name}: {error}")
                images[spec.name] = f"images: {error}"
            if on_stage is not None:
                on_stage(f"images/{spec.name}", time.monotonic() - started)
        return images

    def test(
        self, target: CloudTarget | None, images: dict[str, Images | str] | None = None
    ) -> CampaignOutcome:
        """Each pair in ``target`` (None: bare Flower), its images from ``images`` when resolved beforehand
        (else each pair's in its own thread as its turn comes: where images are built here, resolve them
        first, so that builds never overlap). Without ``keep_going`` the first failure starts no further
        pair (those already running finish and are recorded)."""
        check_parallel(self.parallel)
        self.scratch_root.mkdir(parents=True, exist_ok=True)
        runs = self.runs()
        outcome = CampaignOutcome(parallel=min(self.parallel, max(len(runs), 1)))
        where = "on bare Flower" if target is None else f"in {target.name}"
        stop = threading.Event()
        lines = threading.Lock()
        imports = threading.Lock()
        finished: dict[int, tuple[PairResult, PairTiming]] = {}
        started = time.monotonic()

        def one(index: int, run: PairRun) -> tuple[PairResult, PairTiming] | None:
            if stop.is_set():
                return None
            progress = PairProgress(run.spec.name, self.progress, lines)
            progress.line(f"[{index}/{len(runs)}] {run.spec.name} {where}")
            began = time.monotonic()
            try:
                result = self._run_one(run, target, images, progress, imports)
            except Exception as error:  # a bug in one pair's run must not end the others'
                progress.line(f"internal error: {traceback.format_exc()}")
                kind = "bare" if target is None else target.name
                message = f"internal error: {type(error).__name__}: {error}"
                result = failed_result(run.spec, run.run, kind, run.options, message)
            return result, PairTiming.of(result, time.monotonic() - began, progress.stages)

        def settle(index: int, done: tuple[PairResult, PairTiming]) -> None:
            finished[index] = done
            self._report(done[0])
            if not done[0].passed and not self.keep_going and not stop.is_set():
                self.progress.line(
                    "stopping after the first failed pair: no further pair starts, those running finish "
                    "(--keep-going tests the rest)"
                )
                stop.set()
                outcome.stopped_early = True

        if outcome.parallel == 1:  # in this thread: Ctrl-C reaches the pair, which tears down at once
            for index, run in enumerate(runs, start=1):
                done = one(index, run)
                if done is None:
                    break
                settle(index, done)
        else:
            self._pool(runs, one, settle, stop)
        outcome.stopped_early = outcome.stopped_early or len(finished) < len(runs)
        for index in sorted(finished):
            outcome.results.append(finished[index][0])
            outcome.timings.append(finished[index][1])
        outcome.wall_seconds = time.monotonic() - started
        return outcome

    def _run_one(
        self, run: PairRun, target: CloudTarget | None, images: dict[str, Images | str] | None,
        progress: PairProgress, imports: threading.Lock,
    ) -> PairResult:  # fmt: skip
        """One pair's run: bare, or in the cloud through its own connection (pyone's is not thread-safe)."""
        if target is None:
            return run.bare(self.scratch_root, progress)
        view = PairCloudView(target.cloud, own_connection(target.cloud, progress), imports)
        own_target = CloudTarget(view, target.name, target.images_for)
        pair_images = images[run.spec.name] if images is not None else self._images(target, run.spec)
        return run.in_cloud(own_target, pair_images, self.scratch_root, progress)

    def _pool(
        self,
        runs: list[PairRun],
        one: Callable[[int, PairRun], tuple[PairResult, PairTiming] | None],
        settle: Callable[[int, tuple[PairResult, PairTiming]], None],
        stop: threading.Event,
    ) -> None:
        """The runs in ``self.parallel`` threads; results settled here, in this thread, as they come.
        Ctrl-C (or a failure without keep_going, through ``stop``) starts no further pair; a running pair
        cannot be interrupted from here and finishes its run and teardown before the command ends."""
        with ThreadPoolExecutor(max_workers=self.parallel, thread_name_prefix="pair") as pool:
            futures = {pool.submit(one, index, run): index for index, run in enumerate(runs, start=1)}
            try:
                for future in as_completed(futures):
                    done = None if future.cancelled() else future.result()
                    if done is not None:
                        settle(futures[future], done)
                    if stop.is_set():
                        for pending in futures:
                            pending.cancel()
            except BaseException:
                stop.set()
                for pending in futures:
                    pending.cancel()
                self.progress.line("interrupted: no further pair starts; the running ones finish first")
                raise

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
