"""Command-line options shared by `test` and `release`: which pairs (--matrix/--only/--except/--no-cross),
where and how they are tested, and the checked PairTestOptions and PairSelection made of them."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from factory.harness.campaign import CloudTarget, PairSelection
    from factory.harness.pair import PairSpec
    from factory.harness.pairtest import PairTestOptions

TARGETS = ("cloud", "bare")
SECURITY = ("tls-auth", "tls", "insecure")
OVERLAPS = ("none", "job", "all")  # factory.harness.pairtest.TaskOverlap
STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedmedian", "krum", "multikrum", "fedtrimmedavg")


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
        "--job-features", action="store_true",
        help="cloud: also prove SecAgg+, DP and resume by train-on-deploy jobs on each pair (the report's "
        "feature columns; a few minutes more per pair)",
    )  # fmt: skip
    parser.add_argument(
        "--monitoring-pair", default="first", metavar="first|none|PAIR",
        help="cloud: the pair deployed with the service's monitoring role on (Prometheus on a VM of the "
        "SuperLink image) and checked through it: the campaign's first pair (default), none, or a pair",
    )  # fmt: skip
    parser.add_argument(
        "--keep-on-failure", action="store_true", help="leave a failed pair's service running"
    )
    parser.add_argument("--keep-going", action="store_true", help="test the remaining pairs after a failure")
    parser.add_argument(
        "--parallel", type=int, default=None, metavar="N",
        help="test up to N pairs at once, each in its own service (default: what this machine carries, "
        "capped by the free addresses of the cloud's service network and the number of pairs)",
    )  # fmt: skip
    parser.add_argument(
        "--overlap", choices=OVERLAPS, default=None,
        help="what of a pair's training runs at once: none (the job from context, then the canary, then the "
        "framework task), job (the job beside the canary, then the framework task: the default), all",
    )  # fmt: skip
    parser.add_argument(
        "--poll-interval", type=float, default=10.0, metavar="SECONDS",
        help="seconds between two looks at a run when its streamed flwr log has ended early and the "
        "runner polls (default 10; each look: 2.4-3.6 s of CPU)",
    )  # fmt: skip
    parser.add_argument(
        "--deploy-timeout", type=float, default=900.0, help="seconds until the service is RUNNING"
    )
    parser.add_argument(
        "--federation-timeout", type=float, default=900.0, help="seconds for one federation run"
    )


def pair_test_options(args: argparse.Namespace) -> PairTestOptions:
    """The options of `test` and `release`, checked (bad ones are refused before anything runs)."""
    from factory.harness.bareflower import SecurityMode
    from factory.harness.pairtest import PairTestOptions
    from hostkit.errors import ConfigError

    if args.parallel is not None:
        from factory.harness.campaign import check_parallel

        check_parallel(args.parallel)
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
        job_features=args.job_features,
        monitoring_pair=args.monitoring_pair,
        poll_interval=args.poll_interval,
    )
    if args.overlap is not None:
        from factory.harness.pairtest import TaskOverlap

        options.overlap = TaskOverlap(args.overlap)
    options.check()
    return options


def pair_selection(args: argparse.Namespace) -> PairSelection:
    from factory.harness.campaign import PairSelection

    return PairSelection(args.matrix, args.only, args.exclude, not args.no_cross, args.supernodes)


def campaign_parallel(
    args: argparse.Namespace, specs: list[PairSpec], options: PairTestOptions, target: CloudTarget | None
) -> int:
    """``--parallel`` checked against the cloud's free addresses (refused before any pair starts), or the
    default from the machine (VMs here: the local test cloud, or bare Flower processes) and the cloud."""
    from factory.harness.campaign import choose_parallel, free_addresses, machine_parallel

    local = target is None or target.name == "testcloud"
    free = free_addresses(target.cloud) if target is not None else None
    machine = machine_parallel(local_vms=local)
    return choose_parallel(args.parallel, specs, options, free, machine)
