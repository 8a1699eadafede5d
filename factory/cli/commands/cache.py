"""``python build.py cache prune [--dry-run]``: remove the image cache entries the matrix no longer uses."""

from __future__ import annotations

import argparse
from pathlib import Path

from factory.cli.commands import Command

COMMAND = Command(
    "cache",
    help="prune the local image cache: remove layers, images and work directories no image uses",
    description=(
        "prune: remove the entries of $FLOWER_FACTORY_CACHE/images (base, base-qcow2, layers, appliances, "
        "qcow2, work) that the current matrix's locally built images do not reach, and print each with its "
        "size and the space freed. Never removed: what the matrix reaches, an entry whose build lock is "
        "held, an entry changed less than --min-age hours ago (builds of other checkouts sharing the "
        "cache, whose keys this one does not know), a work directory of a running process. --dry-run "
        "only prints what would go."
    ),
)


def non_negative_hours(text: str) -> float:
    """argparse type: hours, a number >= 0 (a bad one is a usage error, exit 2)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected hours (a number >= 0), got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected hours (a number >= 0), got {text!r}")
    return value


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("prune",), help="what to do with the cache")
    parser.add_argument("--dry-run", action="store_true", help="print what would be removed, remove nothing")
    parser.add_argument(
        "--min-age", type=non_negative_hours, default=2.0, metavar="HOURS",
        help="keep entries changed less than HOURS ago (default 2)",
    )  # fmt: skip
    parser.add_argument("--matrix", type=Path, default=None, help="matrix file (default matrix.yaml)")


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{count} B"
        value /= 1024
    return f"{count} B"  # pragma: no cover - the loop returns


def run(args: argparse.Namespace) -> int:

    from factory.images import cache, localbuild
    from factory.model.matrix import load_matrix

    root = localbuild.images_cache()
    # checked before the matrix's layer keys, which read upstream files: the first mistake is named first
    cache.check_root(root)
    matrix = load_matrix(args.matrix)
    wanted = cache.wanted_entries(matrix.variants)
    entries = cache.prune(root, wanted, args.min_age * 3600, args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    freed = 0
    for entry in entries:
        if entry.verdict is cache.Verdict.REMOVE:
            freed += entry.size
            print(f"{verb} {_size(entry.size):>10}  {entry.path}")
    kept = [entry for entry in entries if entry.verdict is not cache.Verdict.REMOVE]
    counts = {verdict: sum(1 for e in kept if e.verdict is verdict) for verdict in cache.Verdict}
    reasons = ", ".join(f"{count} {verdict}" for verdict, count in counts.items() if count)
    removed = len(entries) - len(kept)
    print(
        f"{root}: {verb} {removed} entr{'y' if removed == 1 else 'ies'}, {_size(freed)} "
        f"{'would be ' if args.dry_run else ''}freed; kept {len(kept)} ({reasons or 'none'}, "
        f"{_size(sum(entry.size for entry in kept))})"
    )
    return 0
