#!/usr/bin/env python3
"""Render and validate the whole matrix; print variants per second and where the time goes.

Everything is measured side by side in one run, serially (one variant at a time, so that each second
is attributed to exactly one party):

- our code: loading and expanding matrix.yaml, rendering the build directories, parsing them with
  python-hcl2, and the orchestration around the Packer runs;
- Packer's own time: ``packer fmt -check`` and ``packer validate`` (process start included: that is
  what each validation costs).

Target: our code is a small fraction of Packer's own time. Usage:
    python benchmarks/bench_matrix.py [--only os=debian12] [--rounds 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from factory.images.hcl import render_variant
from factory.images.packer import check_directory, packer_version
from factory.model.matrix import Selection, load_matrix
from factory.model.params import load_params


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[])
    parser.add_argument("--rounds", type=int, default=1, help="repeat the whole run (results are summed)")
    args = parser.parse_args()

    expand_s = render_s = parse_s = fmt_s = validate_s = total_s = 0.0
    count = 0
    failures = 0
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="bench-matrix-") as scratch:
            root = Path(scratch)
            run_started = time.perf_counter()
            started = time.perf_counter()
            matrix = load_matrix()
            variants = matrix.select(Selection.parse(args.only, axes=matrix.axes))
            decl = load_params()
            expand_s += time.perf_counter() - started
            for variant in variants:
                started = time.perf_counter()
                directory = render_variant(matrix, variant, root / "hcl", decl=decl)
                render_s += time.perf_counter() - started
                result = check_directory(directory, variant.pins.base_image.local, work=root)
                parse_s += result.parse_s
                fmt_s += result.fmt_s
                validate_s += result.validate_s
                failures += not result.ok
                count += 1
            total_s += time.perf_counter() - run_started

    packer_s = fmt_s + validate_s
    ours_s = total_s - packer_s
    version = ".".join(map(str, packer_version()))
    print(f"variants rendered and validated: {count} ({args.rounds} round(s)), failures: {failures}")
    print(f"wall time:            {total_s:8.2f} s   -> {count / total_s:6.2f} variants/s")
    print(
        f"packer {version}:         {packer_s:8.2f} s   fmt -check {fmt_s:.2f} s, validate {validate_s:.2f} s"
    )
    print(
        f"our code:             {ours_s:8.2f} s   expand {expand_s:.2f} s, render {render_s:.2f} s, "
        f"python-hcl2 parse {parse_s:.2f} s, other {ours_s - expand_s - render_s - parse_s:.2f} s"
    )
    print(f"our share of Packer's own time: {ours_s / packer_s:.1%}   (ours / packer)")
    in_validate, in_ours = validate_s / total_s, ours_s / total_s
    print(f"share of the wall time in packer validate: {in_validate:.1%}, in our code: {in_ours:.1%}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
