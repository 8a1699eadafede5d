"""``python build.py release``: images -> cloud -> test -> publish -> report, the whole job in one command."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from factory.cli.commands import Command

if TYPE_CHECKING:
    from hostkit.progress import Progress

COMMAND = Command(
    "release",
    help="the whole job: build images, test every pair in the cloud, publish what passed, report",
    description=(
        "images -> cloud -> test -> publish -> report. Without ONE_XMLRPC it runs on the embedded local "
        "test cloud (started, and left running, if none is up: `build.py cloud down` stops it) with the "
        "pairs that can be built on this machine (debian12); "
        "with ONE_XMLRPC/ONE_AUTH/ONEFLOW_URL it tests the Packer-built images of the selected pairs in "
        "that OpenNebula. Passing pairs are published to the http marketplace; results and the "
        "compatibility report land in results/. Exit status 1 when a pair failed (the rest is still "
        "published and reported)."
    ),
)


def arguments(parser: argparse.ArgumentParser) -> None:
    from factory.cli.commands.test import add_pair_test_arguments

    add_pair_test_arguments(parser)
    parser.add_argument(
        "--release", type=int, default=1, help="factory release R in the version X.Y.Z-R-YYYYMMDD"
    )
    parser.add_argument(
        "--ssh-key",
        type=Path,
        help=(
            "public key to log into the guests with, set as the cloud user's SSH_PUBLIC_KEY (default on the "
            "local test cloud: ~/.ssh/id_*.pub if present, else a key pair generated in the cloud's state "
            "directory, whose path is printed)"
        ),
    )


def run(args: argparse.Namespace) -> int:
    from factory.cli.commands.cloud import set_user_ssh_key
    from factory.cli.commands.test import cloud_context, pair_test_options, pairs_to_test
    from factory.release.publish import publish
    from factory.release.report import write_report
    from factory.release.results import load_results, new_run_name, run_dir, write_junit, write_result
    from hostkit.errors import ConfigError, FactoryError
    from hostkit.paths import RESULTS_DIR
    from hostkit.progress import DEFAULT as progress

    if args.target != "cloud":
        raise ConfigError(
            "command line", "--target", "release tests in a cloud; use `build.py test --target bare`"
        )
    if args.release < 1:
        raise ConfigError("command line", "--release", f"must be 1 or more, got {args.release}")
    options = pair_test_options(args)
    key_path, key = _ssh_key(args.ssh_key)  # checked before anything starts
    run_name = args.run or new_run_name()
    run_dir(run_name)
    specs = pairs_to_test(args)
    progress.line(f"release run {run_name}: {len(specs)} pair(s)")
    failures = 0
    with cloud_context(args.images, keep_running=True) as (cloud, target, images_for):
        if key_path is not None:
            set_user_ssh_key(cloud.one, key)
            progress.line(f"SSH key for the guests (the cloud user's SSH_PUBLIC_KEY): {key_path}")
        with progress.stage("images"):
            images = {}
            for spec in progress.iterate(specs, "images of pair"):
                try:
                    images[spec.name] = images_for(spec)
                except FactoryError as error:
                    progress.line(f"{spec.name}: {error}")
            _record_image_timings(run_dir(run_name), progress)
        with progress.stage(f"test {len(specs)} pair(s) in {target}"):
            import tempfile
            from pathlib import Path

            from factory.harness.pairtest import failed_result, run_pair_in_cloud
            from hostkit.paths import BUILD_DIR

            scratch = BUILD_DIR / "e2e"
            scratch.mkdir(parents=True, exist_ok=True)
            for index, spec in enumerate(specs, start=1):
                progress.line(f"[{index}/{len(specs)}] {spec.name}")
                if spec.name not in images:
                    result = failed_result(spec, run_name, target, options, "its images could not be built")
                else:
                    with tempfile.TemporaryDirectory(prefix="pair-", dir=scratch) as workdir:
                        result = run_pair_in_cloud(
                            spec, run_name, Path(workdir), options, cloud, images[spec.name], target, progress
                        )
                write_result(result)
                progress.line(
                    f"{spec.name}: {result.status}" + (f": {result.error[:300]}" if result.error else "")
                )
                failures += 0 if result.passed else 1
            write_junit(run_name)
        with progress.stage("publish"):
            try:
                publication = publish(run_name, cloud, release=args.release, progress=progress)
            except FactoryError as error:
                progress.line(f"nothing published: {error}")
                publication = None
            else:
                for app in publication.apps:
                    progress.line(f"marketplace app {app['id']} ({app['type']}): {app['name']}")
    with progress.stage("report"):
        results = load_results(run_name)
        for directory in (RESULTS_DIR, run_dir(run_name)):
            paths = write_report(results, run_name, directory)
    print(f"results: {run_dir(run_name)}")
    if publication is not None:
        print(f"published: {publication.directory} ({len(publication.apps)} marketplace apps)")
    print(f"report: {paths['html']} (open it in a browser), {paths['md']}")
    return 1 if failures or publication is None else 0


def _record_image_timings(directory: Path, progress: Progress) -> None:
    """The image stage's per-image and per-layer seconds: printed, and in ``<run>/timings.json``
    (section ``images``, factory/images/timings.py)."""
    from factory.images.timings import SESSION, write_section

    write_section(directory / "timings.json", SESSION)
    for line in SESSION.breakdown().splitlines():
        progress.line(line)


def _ssh_key(given: Path | None) -> tuple[Path | None, str]:
    """The key release sets (path, key line): ``--ssh-key``; without it, on the local test cloud, the user's
    ``~/.ssh/id_*.pub`` or one generated in the cloud's state directory; none for a remote OpenNebula (its
    user's template is the user's own)."""
    import os

    from factory.cli.commands.cloud import default_public_key, read_public_key
    from hostkit.paths import CLOUD_DIR

    if given is not None:
        return given, read_public_key(given)
    if os.environ.get("ONE_XMLRPC"):
        return None, ""
    path, generated = default_public_key(CLOUD_DIR, Path.home())
    if generated:
        private = path.with_suffix("")
        print(f"no ~/.ssh/id_*.pub: generated a key pair for the guests: {private}")
        print(f"  log in with: ssh -i {private} root@<guest IP>")
    return path, read_public_key(path)
