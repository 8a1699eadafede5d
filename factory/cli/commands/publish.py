"""``python build.py publish``: publish the passing pairs of a test run (marketplace apps, appliance YAML)."""

from __future__ import annotations

import argparse

from factory.cli.commands import Command

COMMAND = Command(
    "publish",
    help="publish the passing pairs of a test run to the http marketplace and as appliance YAML",
    description=(
        "For the release pairs that passed in the run (default: the latest): re-verify every "
        "image's checksum and manifest (a mismatch blocks everything), create marketplace apps through "
        "the OpenNebula API in the http marketplace (IMAGE apps and a SERVICE_TEMPLATE app per pair, "
        "in the form onemarketapp export and pyone read; an app is reused only when the checksums the "
        "marketplace computed match the tested image), and write the marketplace appliance YAMLs "
        "(marketplace/appliances/service/, one per app) and community certification files under "
        "results/<run>/publish/. A failed pair is never published."
    ),
)


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", help="results/<run> to publish from (default: the latest run)")
    parser.add_argument(
        "--release",
        type=int,
        default=1,
        help="factory release R in the version X.Y.Z-R-YYYYMMDD (each release gets its own appliance ids)",
    )
    parser.add_argument(
        "--no-market",
        action="store_true",
        help="only write the files (no OpenNebula connection): for a marketplace pull request",
    )


def run(args: argparse.Namespace) -> int:
    from factory.release.publish import publish
    from factory.release.results import resolve_run
    from hostkit.errors import ConfigError
    from hostkit.progress import DEFAULT as progress

    if args.release < 1:
        raise ConfigError("command line", "--release", f"must be 1 or more, got {args.release}")
    name = resolve_run(args.run)
    cloud = None
    if not args.no_market:
        from factory.one import OneCloud, load_settings

        settings = load_settings()
        progress.line(f"OpenNebula: {settings.describe()}")
        cloud = OneCloud(settings, progress)
    with progress.stage(f"publish run {name}"):
        publication = publish(name, cloud, release=args.release, progress=progress)
    for line in publication.skipped:
        print(f"not published: {line}")
    for app in publication.apps:
        print(f"marketplace app {app['id']} ({app['type']}): {app['name']}")
    print(f"{len(publication.files)} files under {publication.directory}")
    return 0
