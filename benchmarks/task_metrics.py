#!/usr/bin/env python3
"""The factory app's tasks in-process (FedAvg by hand over their train/evaluate functions, weighted by
examples as Flower's FedAvg weights them): evaluation loss and metrics per round, for setting and checking
the floors in apps/task-checks.toml. No Flower processes, no timing.

Run it with a Python that has the task's framework, e.g. the host Flower venv of the pair's SuperNode
packages (.cache/flwr/<version>-<hash>/bin/python):

    python benchmarks/task_metrics.py sklearn --rounds 5 --partitions 2,10
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "apps" / "factory-app"))


def main() -> int:
    from factory_app.tasks.reference import DEFAULT_CONFIG, fedavg

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("task")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--partitions", default="2,10")
    parser.add_argument("--seeds", default="42", help="run-config seeds to try (comma list)")
    args = parser.parse_args()
    for seed in [int(value) for value in args.seeds.split(",")]:
        for partitions in [int(value) for value in args.partitions.split(",")]:
            history = fedavg(args.task, partitions, args.rounds, {**DEFAULT_CONFIG, "seed": seed})
            print(
                json.dumps(
                    {
                        "task": args.task,
                        "seed": seed,
                        "partitions": partitions,
                        "rounds": [
                            {name: round(value, 4) for name, value in metrics.items()} for metrics in history
                        ],
                    }
                )
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
