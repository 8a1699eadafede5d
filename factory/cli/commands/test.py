"""``python build.py test``: test the selected pairs with real federation rounds and record the results."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from factory.cli.commands import Command
from factory.cli.commands._pairargs import add_pair_test_arguments, pair_selection, pair_test_options

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


# -- the command ---------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    from factory.cli.commands._pairargs import campaign_parallel
    from factory.harness.campaign import Campaign, cloud_target, select_pairs
    from factory.release.results import RunTimings, new_run_name, run_dir, write_junit, write_result
    from hostkit.progress import DEFAULT as progress

    options = pair_test_options(args)
    run_name = args.run or new_run_name()
    run_dir(run_name)
    specs = select_pairs(pair_selection(args), args.target, args.images)
    progress.line(f"run {run_name}: {len(specs)} pair(s), target {args.target}")
    timings = RunTimings(run_name)
    campaign = Campaign(specs, run_name, options, record=write_result, keep_going=args.keep_going)
    if args.target == "bare":
        campaign.parallel = campaign_parallel(args, specs, options, None)
        with timings.stage("test"):
            outcome = campaign.test(None)
    else:
        with contextlib.ExitStack() as stack:
            with timings.stage("cloud start"):
                target = stack.enter_context(cloud_target(args.images))
            campaign.parallel = campaign_parallel(args, specs, options, target)
            # built (or found) one after another before any pair starts: never two builds at once
            with progress.stage("images"), timings.stage("images"):
                images = campaign.resolve_images(target, on_stage=timings.add)
            with timings.stage("test"):
                outcome = campaign.test(target, images)
    junit = write_junit(run_name) if outcome.results else Path()
    tested = len(outcome.results)
    if outcome.results:
        timings.add_pairs(outcome.timings, outcome.parallel)
        timings.write()
        print(timings.table())
    print(f"{outcome.passed}/{tested} pair(s) passed; results in {run_dir(run_name)}; JUnit {junit}")
    return 0 if tested and outcome.failed == 0 and tested == len(specs) else 1
