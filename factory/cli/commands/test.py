"""``python build.py test``: test the selected pairs with real federation rounds and record the results."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from factory.cli.commands import Command

TARGETS = ("cloud", "bare")
SECURITY = ("tls-auth", "tls", "insecure")
STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedmedian", "krum", "multikrum", "fedtrimmedavg")


COMMAND = Command(
    "test",
    help="test the selected pairs (and cross-version pairs) with real federation rounds",
    description=(
        "Boot each selected pair in OpenNebula (the local test cloud, or the one ONE_XMLRPC/ONE_AUTH/"
        "ONEFLOW_URL name) or run its Flower versions on bare processes (--target bare), run the factory "
        "app for N rounds through the SuperLink's Control API (the numpy canary, then the task of the "
        "SuperNode image's framework, held to apps/task-checks.toml), and write "
        "results/<run>/<pair>.json and junit.xml. Exit status 1 when a pair failed."
    ),
)


def arguments(parser: argparse.ArgumentParser) -> None:
    add_pair_test_arguments(parser)


def add_pair_selection_arguments(parser: argparse.ArgumentParser) -> None:
    """--matrix/--only/--except as `build.py matrix` has them (pairs match on both sides' values)."""
    parser.add_argument("--matrix", type=Path, default=None, help="matrix file (default matrix.yaml)")
    parser.add_argument(
        "--only", action="append", default=[], metavar="AXIS=VALUE[,...]",
        help="select pairs matching all conditions (values may be globs; repeat for alternatives)",
    )  # fmt: skip
    parser.add_argument(
        "--except", dest="exclude", action="append", default=[], metavar="AXIS=VALUE[,...]",
        help="leave out pairs matching all conditions (repeatable)",
    )  # fmt: skip


def add_pair_test_arguments(parser: argparse.ArgumentParser) -> None:
    add_pair_selection_arguments(parser)
    parser.add_argument("--target", choices=TARGETS, default="cloud", help="where pairs run (default: cloud)")
    parser.add_argument(
        "--images",
        choices=("auto", "local", "packer"),
        default="auto",
        help="image files to test: local (debian12, built here), packer (build/images/*.qcow2); "
        "auto: local for the local test cloud, packer for a real OpenNebula",
    )
    parser.add_argument("--run", help="results/<run> name (default: a new UTC timestamp)")
    parser.add_argument(
        "--rounds", type=int, default=3, help="federation rounds per task (default 3, at least 2)"
    )
    parser.add_argument("--strategy", choices=STRATEGIES, default="fedavg")
    parser.add_argument("--supernodes", type=int, default=2, help="SuperNodes per pair (default 2)")
    parser.add_argument("--security", choices=SECURITY, default="tls-auth", help="default: TLS + node auth")
    parser.add_argument("--allow-insecure", action="store_true", help="permit --security insecure")
    parser.add_argument(
        "--rogue", action="store_true", help="also start an unregistered SuperNode (must be refused)"
    )
    parser.add_argument("--no-cross", action="store_true", help="leave out the cross-version pairs")
    parser.add_argument(
        "--keep-on-failure", action="store_true", help="leave a failed pair's service running"
    )
    parser.add_argument("--keep-going", action="store_true", help="test the remaining pairs after a failure")
    parser.add_argument(
        "--deploy-timeout", type=float, default=900.0, help="seconds until the service is RUNNING"
    )
    parser.add_argument(
        "--federation-timeout", type=float, default=900.0, help="seconds for one federation run"
    )


def pair_test_options(args: argparse.Namespace) -> Any:
    from factory.harness.bareflower import SecurityMode
    from factory.harness.pairtest import PairTestOptions
    from hostkit.errors import ConfigError

    if args.supernodes < 1:
        raise ConfigError("command line", "--supernodes", f"must be at least 1, got {args.supernodes}")
    options = PairTestOptions(
        rounds=args.rounds,
        strategy=args.strategy,
        security=SecurityMode(args.security),
        allow_insecure=args.allow_insecure,
        rogue_supernode=args.rogue,
        keep_on_failure=args.keep_on_failure,
        deploy_timeout=args.deploy_timeout,
        federation_timeout=args.federation_timeout,
    )
    options.check()
    return options


def host_arch() -> str:
    import platform

    machine = platform.machine()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def side_of(variant: Any, count: int = 1) -> Any:
    from factory.release.results import Side

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


def pair_specs(pairs: Any, supernodes: int = 2) -> list[Any]:
    """PairSpecs of matrix pairs: ``supernodes`` SuperNodes of the variant of this machine's architecture."""
    from factory.harness.pairtest import PairSpec

    specs = []
    arch = host_arch()
    for pair in pairs:
        nodes = [variant for variant in pair.supernodes if variant.arch == arch]
        if not nodes:
            continue  # e.g. an aarch64-only edge pair on an x86_64 runner
        specs.append(PairSpec(pair.name, side_of(pair.superlink), side_of(nodes[0], supernodes)))
    return specs


def selected_pairs(args: argparse.Namespace) -> list[Any]:
    from factory.model.matrix import Selection, load_matrix
    from hostkit.errors import ConfigError

    matrix = load_matrix(args.matrix)
    selection = Selection.parse(args.only, args.exclude, matrix.axes)
    pairs = matrix.select_pairs(selection, cross=not args.no_cross)
    specs = pair_specs(pairs, args.supernodes)
    if not specs:
        raise ConfigError(
            "command line", "--only/--except", f"the filters select no pair runnable on {host_arch()}"
        )
    return specs


def locally_buildable(specs: list[Any]) -> list[Any]:
    """The pairs whose images this machine can build (the local builder's OS); the others are named."""
    from factory.images.localbuild import LOCAL_OS
    from hostkit.progress import DEFAULT as progress

    kept = [spec for spec in specs if spec.superlink.os == LOCAL_OS and spec.supernode.os == LOCAL_OS]
    if len(kept) < len(specs):
        progress.line(
            f"{len(specs) - len(kept)} selected pair(s) need vendor cloud images that cannot be built here "
            f"(only {LOCAL_OS}): left out; build them with Packer and test against an OpenNebula"
        )
    return kept


def uses_local_images(args: argparse.Namespace) -> bool:
    import os

    return args.target == "cloud" and (
        args.images == "local" or (args.images == "auto" and not os.environ.get("ONE_XMLRPC"))
    )


def find_pair_specs(names: list[str], supernodes: int = 2) -> list[Any]:
    from factory.model.matrix import load_matrix
    from hostkit.errors import ConfigError

    matrix = load_matrix()
    by_name = {pair.name: pair for pair in matrix.pairs + matrix.cross_pairs}
    unknown = [name for name in names if name not in by_name]
    if unknown:
        raise ConfigError(
            "command line", "--pair", f"unknown pair(s) {', '.join(unknown)} (see build.py matrix)"
        )
    return pair_specs([by_name[name] for name in names], supernodes)


# -- images --------------------------------------------------------------------------------------------------


def packer_image(variant: str) -> Any:
    """build/images/<variant>/<variant>.qcow2 and its manifest, as `build.py build` leaves them."""
    import json

    from factory.harness.pairtest import ImageFile
    from factory.images.packer import IMAGES_DIR
    from hostkit.errors import FactoryError

    image = IMAGES_DIR / variant / f"{variant}.qcow2"
    manifest = image.with_name(f"{variant}.manifest.json")
    if not image.is_file() or not manifest.is_file():
        raise FactoryError(
            f"{variant}: no built image at {image}: run `python build.py build --only name={variant}`"
        )
    return ImageFile(image, json.loads(manifest.read_text()))


def local_image(variant_name: str) -> Any:
    """The container-bootable raw image of a debian12 variant, built here (cached by content)."""
    from factory.harness.pairtest import ImageFile
    from factory.images.localbuild import build_appliance
    from factory.model.matrix import load_matrix

    built = build_appliance(load_matrix().variant(variant_name))
    return ImageFile(built.image, dict(built.manifest))


def image_resolver(source: str) -> Callable[[Any], dict[str, Any]]:
    resolve = local_image if source == "local" else packer_image

    def images_for(spec: Any) -> dict[str, Any]:
        return {"superlink": resolve(spec.superlink.variant), "supernode": resolve(spec.supernode.variant)}

    return images_for


# -- the cloud -----------------------------------------------------------------------------------------------


@contextmanager
def cloud_context(
    images: str = "auto", keep_running: bool = False
) -> Iterator[tuple[Any, str, Callable[[Any], dict[str, Any]]]]:
    """(OneCloud, target name, image resolver): the OpenNebula ONE_XMLRPC names, else the local test cloud:
    the one `build.py cloud up` started, or one started here, stopped at the end unless ``keep_running``
    (then it stays up as a daemon, like `build.py cloud up`, so that what was published can be looked at)."""
    import os

    from factory.one import OneCloud, load_settings
    from hostkit.paths import CLOUD_DIR
    from hostkit.progress import DEFAULT as progress

    if os.environ.get("ONE_XMLRPC"):
        settings = load_settings()
        progress.line(f"OpenNebula: {settings.describe()}")
        yield (
            OneCloud(settings, progress),
            "opennebula",
            image_resolver("packer" if images == "auto" else images),
        )
        return
    source = "local" if images == "auto" else images
    if (CLOUD_DIR / "endpoints.json").is_file():
        settings = load_settings()
        cloud = OneCloud(settings, progress)
        try:
            cloud.version()
        except Exception:  # a stale endpoints.json: start a fresh cloud below
            pass
        else:
            progress.line(f"local test cloud (already up): {settings.describe()}")
            yield cloud, "testcloud", image_resolver(source)
            return
    from testcloud.launcher import start

    with progress.stage("start the local test cloud" + (" (it stays up)" if keep_running else "")):
        handle = start(CLOUD_DIR, "auto", background=keep_running)
    if keep_running:
        settings = load_settings()
        progress.line(f"local test cloud: {settings.describe()}; stop it with `python build.py cloud down`")
        yield OneCloud(settings, progress), "testcloud", image_resolver(source)
        return
    try:
        settings = load_settings()
        progress.line(f"local test cloud: {settings.describe()}")
        yield OneCloud(settings, progress), "testcloud", image_resolver(source)
    finally:
        with progress.stage("stop the local test cloud"):
            handle.stop()


# -- the command ---------------------------------------------------------------------------------------------


def pairs_to_test(args: argparse.Namespace) -> list[Any]:
    """The selected pairs; with local images, only those this machine can build (none is an error)."""
    from hostkit.errors import ConfigError

    specs = selected_pairs(args)
    if uses_local_images(args):
        specs = locally_buildable(specs)
        if not specs:
            raise ConfigError(
                "command line", "--only/--except", "no selected pair can be built on this machine"
            )
    return specs


def test_pairs(args: argparse.Namespace, specs: list[Any], run_name: str) -> tuple[list[Any], Path]:
    import tempfile

    from factory.harness.pairtest import run_pair_bare, run_pair_in_cloud
    from factory.release.results import write_junit, write_result
    from hostkit.errors import FactoryError
    from hostkit.paths import BUILD_DIR
    from hostkit.progress import DEFAULT as progress

    options = pair_test_options(args)
    results = []
    scratch_root = BUILD_DIR / "e2e"
    scratch_root.mkdir(parents=True, exist_ok=True)

    def record(result: Any) -> None:
        path = write_result(result)
        results.append(result)
        line = f"{result.pair}: {result.status}"
        if result.error:
            line += f": {result.error[:300]}"
        progress.line(line)
        progress.line(f"  record: {path}")
        if not result.passed and not args.keep_going:
            raise _StopAfterFailure

    try:
        if args.target == "bare":
            for index, spec in enumerate(specs, start=1):
                progress.line(f"[{index}/{len(specs)}] {spec.name} on bare Flower")
                with tempfile.TemporaryDirectory(prefix="pair-", dir=scratch_root) as workdir:
                    record(run_pair_bare(spec, run_name, Path(workdir), options, progress))
        else:
            with cloud_context(args.images) as (cloud, target, images_for):
                for index, spec in enumerate(specs, start=1):
                    progress.line(f"[{index}/{len(specs)}] {spec.name} in {target}")
                    try:
                        images = images_for(spec)
                    except FactoryError as error:
                        from factory.harness.pairtest import failed_result

                        record(failed_result(spec, run_name, target, options, f"images: {error}"))
                        continue
                    with tempfile.TemporaryDirectory(prefix="pair-", dir=scratch_root) as workdir:
                        result = run_pair_in_cloud(
                            spec, run_name, Path(workdir), options, cloud, images, target, progress
                        )
                    record(result)
    except _StopAfterFailure:
        progress.line("stopping after the first failed pair (--keep-going tests the rest)")
    junit = write_junit(run_name) if results else Path()
    return results, junit


class _StopAfterFailure(Exception):
    pass


def run(args: argparse.Namespace) -> int:
    from factory.release.results import new_run_name, run_dir
    from hostkit.progress import DEFAULT as progress

    pair_test_options(args)  # bad options are refused before anything runs
    run_name = args.run or new_run_name()
    run_dir(run_name)
    specs = pairs_to_test(args)
    progress.line(f"run {run_name}: {len(specs)} pair(s), target {args.target}")
    results, junit = test_pairs(args, specs, run_name)
    passed = sum(1 for result in results if result.passed)
    print(f"{passed}/{len(results)} pair(s) passed; results in {run_dir(run_name)}; JUnit {junit}")
    return 0 if results and passed == len(results) and len(results) == len(specs) else 1
