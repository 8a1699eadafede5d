#!/usr/bin/env python3
"""Image builds straight vs through layers, side by side in one run (no timed assertions anywhere).

Two debian12 variants that share layers (default: the pair of variants whose layer plans share the most;
``--variants A,B`` to choose) are built, in this order, each forced (their cache entries rebuilt):

1. straight: every provisioning step on a copy of the base, A then B;
2. layered: A with its layers rebuilt too, then B, which reuses the layers it shares with A;
3. warm: A and B again with nothing changed (cache hits).

Prints the seconds of each build, which layers the two variants share, and the ratios layered/straight
(B alone: what the second image of a shared layer costs; A+B: the whole) and warm/straight. The base
root filesystem is built first if missing and is not part of any figure. Results also go to
``results/bench/bench-images-<time>.json``.

    FLOWER_FACTORY_CACHE=/tmp/layers-cache python benchmarks/bench_images.py [--variants A,B]

Builds take minutes of every core: run it alone.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.record import save_record
from factory.images import layers, localbuild
from factory.images.timings import BuildTimings
from factory.model.matrix import Variant, load_matrix
from hostkit import onecontext
from hostkit.progress import Progress

PROGRESS = Progress()


def plan(variant: Variant, base_key: str) -> tuple[layers.Layer, ...]:
    package = onecontext.build_package()
    environment = variant.provision_env(payload=localbuild.GUEST_PAYLOAD, build_target="chroot")
    parts = [package.commit, package.source_digest, package.version]
    return layers.plan_layers(
        environment, base_key, localbuild.PROVISION_DIR, parts, localbuild.BUILDER_VERSION
    )


def shared_layers(first: Variant, second: Variant, base_key: str) -> list[str]:
    return [
        str(a.name)
        for a, b in zip(plan(first, base_key), plan(second, base_key), strict=True)
        if a.key == b.key
    ]


def choose(variants: list[Variant], base_key: str) -> tuple[Variant, Variant]:
    """The two variants sharing the most layers (the smallest frameworks first on a tie)."""
    pairs = itertools.combinations(variants, 2)

    def small(pair: tuple[Variant, Variant]) -> int:
        return sum(("numpy" in variant.name) + ("edge" in variant.name) for variant in pair)

    return max(pairs, key=lambda pair: (len(shared_layers(*pair, base_key)), small(pair)))


def build(variant: Variant, **options: Any) -> dict[str, Any]:
    timings = BuildTimings()
    started = time.monotonic()
    image = localbuild.build_appliance(variant, progress=PROGRESS, timings=timings, **options)
    seconds = round(time.monotonic() - started, 2)
    print(f"bench: {variant.name} {options or 'warm'}: {seconds} s (reused: {image.reused})", flush=True)
    return {
        "variant": variant.name,
        "seconds": seconds,
        "reused": image.reused,
        "sha256": image.manifest.get("sha256"),
        "entries": timings.as_dict()["entries"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", help="two debian12 variant names, comma-separated")
    args = parser.parse_args()
    matrix = load_matrix()
    base = localbuild.build_base(PROGRESS)
    if args.variants:
        names = args.variants.split(",")
        if len(names) != 2:
            parser.error("--variants takes two variant names, comma-separated")
        first, second = (matrix.variant(name) for name in names)
    else:
        local = [variant for variant in matrix.variants if variant.os == localbuild.LOCAL_OS]
        first, second = choose(local, base.key)
    shared = shared_layers(first, second, base.key)
    print(f"A = {first.name}\nB = {second.name}\nshared layers: {', '.join(shared) or 'none'}")
    runs: dict[str, list[dict[str, Any]]] = {
        "straight": [build(v, force=True, layered=False) for v in (first, second)],
        "layered": [
            build(first, force=True, force_layers=True),
            build(second, force=True, force_layers=False),
        ],
        "warm": [build(v) for v in (first, second)],
    }
    seconds = {mode: [run["seconds"] for run in results] for mode, results in runs.items()}
    print(f"\n{'':10}{'A':>10}{'B':>10}{'A+B':>10}   (seconds)")
    for mode, (a, b) in seconds.items():
        print(f"{mode:10}{a:10.1f}{b:10.1f}{a + b:10.1f}")
    ratios = {
        "layered_b_over_straight_b": seconds["layered"][1] / seconds["straight"][1],
        "layered_over_straight": sum(seconds["layered"]) / sum(seconds["straight"]),
        "warm_over_straight": sum(seconds["warm"]) / sum(seconds["straight"]),
    }
    for name, ratio in ratios.items():
        print(f"{name}: {ratio:.3f}")
    record = {"variants": [first.name, second.name], "shared_layers": shared, "runs": runs, "ratios": ratios}
    print(f"results: {save_record('bench-images', record)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
