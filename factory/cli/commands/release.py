"""``python build.py release``: images -> cloud -> test -> publish -> report, the whole job in one command."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
    from factory.cli.commands._pairargs import add_pair_test_arguments

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
    from factory.cli.commands._pairargs import campaign_parallel, pair_selection, pair_test_options
    from factory.cli.commands.cloud import set_user_ssh_key
    from factory.harness.campaign import Campaign, cloud_target, select_pairs
    from factory.release.results import RunTimings, new_run_name, run_dir, write_junit, write_result
    from hostkit.progress import DEFAULT as progress

    _check_arguments(args)
    options = pair_test_options(args)
    key_path, key = _ssh_key(args.ssh_key)  # checked before anything starts
    run_name = args.run or new_run_name()
    run_dir(run_name)
    timings = RunTimings(run_name)
    specs = select_pairs(pair_selection(args), args.target, args.images)
    progress.line(f"release run {run_name}: {len(specs)} pair(s)")
    campaign = Campaign(specs, run_name, options, record=write_result, keep_going=True)
    with contextlib.ExitStack() as stack:
        with timings.stage("cloud start"):
            target = stack.enter_context(cloud_target(args.images, keep_running=True))
        campaign.parallel = campaign_parallel(args, specs, options, target)  # refused before any image
        if key_path is not None:
            set_user_ssh_key(target.cloud.one, key)
            progress.line(f"SSH key for the guests (the cloud user's SSH_PUBLIC_KEY): {key_path}")
        with progress.stage("images"), timings.stage("images"):
            images = campaign.resolve_images(target, on_stage=timings.add)
        with progress.stage(f"test {len(specs)} pair(s) in {target.name}"), timings.stage("test"):
            outcome = campaign.test(target, images)
            write_junit(run_name)
        timings.add_pairs(outcome.timings, outcome.parallel)
        with progress.stage("publish"), timings.stage("publish"):
            publication = _publish(run_name, target.cloud, args.release)
    with timings.stage("report"):
        paths = _report(run_name)
    timings_path = timings.write()
    _record_image_timings(run_dir(run_name), progress)  # the per-layer image record, as section "images"
    _print_summary(timings.table(), run_dir(run_name), timings_path, publication, paths)
    return 1 if outcome.failed or publication is None else 0


def _check_arguments(args: argparse.Namespace) -> None:
    from hostkit.errors import ConfigError

    if args.target != "cloud":
        raise ConfigError(
            "command line", "--target", "release tests in a cloud; use `build.py test --target bare`"
        )
    if args.release < 1:
        raise ConfigError("command line", "--release", f"must be 1 or more, got {args.release}")


def _print_summary(
    table: str, results: Path, timings: Path, publication: Any, paths: dict[str, Path]
) -> None:
    print(table)
    print(f"results: {results} (timings: {timings})")
    if publication is not None:
        print(f"published: {publication.directory} ({len(publication.apps)} marketplace apps)")
    print(f"report: {paths['html']} (open it in a browser), {paths['md']}")


def _publish(run_name: str, cloud: Any, release: int) -> Any:
    """The passing pairs published, or None (with why) when there was nothing to publish."""
    from factory.release.publish import publish
    from hostkit.errors import FactoryError
    from hostkit.progress import DEFAULT as progress

    try:
        publication = publish(run_name, cloud, release=release, progress=progress)
    except FactoryError as error:
        progress.line(f"nothing published: {error}")
        return None
    for app in publication.apps:
        progress.line(f"marketplace app {app['id']} ({app['type']}): {app['name']}")
    return publication


def _report(run_name: str) -> dict[str, Path]:
    """The compatibility report, in results/ and in the run's folder."""
    from factory.release.report import write_report
    from factory.release.results import load_results, run_dir
    from hostkit.paths import RESULTS_DIR
    from hostkit.progress import DEFAULT as progress

    with progress.stage("report"):
        results = load_results(run_name)
        for directory in (RESULTS_DIR, run_dir(run_name)):
            paths = write_report(results, run_name, directory)
    return paths


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
        print(f"no ~/.ssh/id_*.pub: the guests get the test cloud's own key pair (made once): {private}")
        print(f"  log in with: ssh -i {private} root@<guest IP>")
    return path, read_public_key(path)
