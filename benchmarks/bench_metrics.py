#!/usr/bin/env python3
"""What the metrics cost a round, measured side by side in one run (no timed assertions anywhere).

Bare Flower on loopback (1 SuperLink + 2 SuperNodes, SQLite state as the appliances default, the numpy
app) runs R rounds twice: once alone, once with the real exporter attached as on the appliances (one
``flower-metrics superlink`` on the SuperLink's state database and log, one ``flower-metrics supernode``
per SuperNode on its log, ``--no-gpus``, each on a free loopback port, started with the Flower processes)
and a scraper reading every exporter every ``--scrape-interval`` seconds for the whole run (1 s by
default, harsher than Prometheus' usual 15 s). With ``--repeats N`` the pair runs N times, the order
alternating (without/with, then with/without, ...) so that a machine that gets busier or quieter during
the run does not favour one side.

Prints the mean round time without and with the exporters and their ratio (with / without), the time
from start to the first finished round both ways, the scrape latency (median, p95) and count, and each
exporter's memory: peak RSS (VmHWM of /proc/<pid>/status) and RSS at the end of the run, in MiB, and the
CPU time it used. Results also go to ``results/bench/bench-metrics-<time>.json``.

    python benchmarks/bench_metrics.py [--rounds 3] [--repeats 1] [--scrape-interval 1] [--flower 1.42.0]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.record import save_record
from factory.cli.commands._selection import positive_int
from factory.harness.bareflower import BareFederation, free_port
from factory.harness.federation import FederationRunner, evaluate_checks
from factory.harness.flwrenv import ensure_flower
from hostkit.errors import FactoryError
from hostkit.host import stop_process
from hostkit.paths import CONTEXT_DIR
from hostkit.progress import Progress

PROGRESS = Progress()
EXPORTER = CONTEXT_DIR / "appliance" / "bin" / "flower-metrics"
SUPERNODES = 2
START_TIMEOUT_S = 60.0
SCRAPE_TIMEOUT_S = 10.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# -- the exporters -------------------------------------------------------------------------------------------


@dataclass
class Exporter:
    """One flower-metrics process (the project's Python has prometheus-client pinned, as the images'
    venv does) and what the scraper saw of it."""

    name: str
    process: subprocess.Popen
    port: int
    log_path: Path
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    before_up: int = 0  # refused connections before its first answer (it was still starting)
    last_text: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    @property
    def answered(self) -> bool:
        return bool(self.latencies)

    def scrape(self) -> None:
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(self.url, timeout=SCRAPE_TIMEOUT_S) as reply:
                text = reply.read().decode()
        except (urllib.error.URLError, OSError) as error:
            if not self.answered and self.process.poll() is None:
                self.before_up += 1
            else:
                self.errors.append(str(error))
            return
        self.latencies.append(time.perf_counter() - started)
        self.last_text = text

    def memory_mib(self) -> dict[str, float]:
        """Peak and current resident memory (VmHWM, VmRSS; /proc reports kB = KiB)."""
        found = {}
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                found[key] = int(value.split()[0]) / 1024
        return {"peak_rss_mib": found["VmHWM"], "end_rss_mib": found["VmRSS"]}

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process so far (fields 14 and 15 of /proc/<pid>/stat)."""
        stat = Path(f"/proc/{self.process.pid}/stat").read_text()
        fields = stat.rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def stop(self) -> None:
        stop_process(self.process)

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-1500:]
        except FileNotFoundError:
            return ""


def spawn_exporter(name: str, role: str, args: list[str], workdir: Path) -> Exporter:
    """Start flower-metrics on a free loopback port (as tests/appliance/metrics_helpers.py does), its output
    to a file; not waited for: on an appliance it starts alongside Flower."""
    port = free_port()
    log_path = workdir / f"exporter-{name}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, str(EXPORTER), role, "--port", str(port), "--no-gpus", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    return Exporter(name, process, port, log_path)


def appliance_exporters(federation_dir: Path, workdir: Path) -> list[Exporter]:
    """The exporters of a 1 + 2 service, on the paths where BareFederation keeps state and logs."""
    database = str(federation_dir / "superlink-state.db")
    link_log = str(federation_dir / "superlink" / "output.log")
    exporters = [
        spawn_exporter(
            "superlink",
            "superlink",
            ["--database", database, "--log", link_log, "--keysync-log", "none", "--checkpoint", database],
            workdir,
        )
    ]
    for index in range(SUPERNODES):
        node_log = str(federation_dir / f"supernode-{index}" / "output.log")
        exporters.append(spawn_exporter(f"supernode-{index}", "supernode", ["--log", node_log], workdir))
    return exporters


def wait_listening(exporter: Exporter, timeout: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if exporter.process.poll() is not None:
            raise FactoryError(
                f"flower-metrics ({exporter.name}) exited with {exporter.process.returncode}: "
                f"{exporter.log_tail()}"
            )
        try:
            with socket.create_connection(("127.0.0.1", exporter.port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise FactoryError(f"flower-metrics ({exporter.name}) did not listen within {timeout:.0f} s")


class Scraper(threading.Thread):
    """Scrapes every exporter, one after another, every ``interval`` seconds until stopped."""

    def __init__(self, exporters: list[Exporter], interval: float) -> None:
        super().__init__(name="scraper", daemon=True)
        self.exporters = exporters
        self.interval = interval
        self.halt = threading.Event()

    def run(self) -> None:
        tick = time.monotonic()
        while not self.halt.is_set():
            for exporter in self.exporters:
                exporter.scrape()
            tick += self.interval
            self.halt.wait(max(0.0, tick - time.monotonic()))

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=SCRAPE_TIMEOUT_S * len(self.exporters) + 5)


def sample_sum(text: str, name: str) -> float | None:
    """Sum of every sample of ``name`` in an exposition (None when it has none)."""
    values = [
        float(line.rpartition(" ")[2])
        for line in text.splitlines()
        if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " ")
    ]
    return sum(values) if values else None


# -- one federation run --------------------------------------------------------------------------------------


def federation_run(version: str, rounds: int, workdir: Path, with_metrics: bool, interval: float) -> dict:
    """One bare 1 + 2 federation, R rounds of the numpy app, with or without the exporters and scraper."""
    env = ensure_flower(version)
    federation_dir = workdir / "federation"
    workdir.mkdir(parents=True, exist_ok=True)
    exporters: list[Exporter] = []
    scraper: Scraper | None = None
    load_before = os.getloadavg()
    started = time.time()
    try:
        if with_metrics:
            exporters = appliance_exporters(federation_dir, workdir)
            scraper = Scraper(exporters, interval)
            scraper.start()
        with BareFederation(
            federation_dir, env, num_supernodes=SUPERNODES, start_timeout=300, persistent_state=True
        ) as federation:
            for exporter in exporters:
                wait_listening(exporter)
            runner = FederationRunner(env, workdir / "runner", federation.connection(), progress=PROGRESS)
            outcome = runner.run(
                rounds=rounds,
                strategy="fedavg",
                expected_supernodes=SUPERNODES,
                timeout=3600,
                extra_config={"round-timeout": 300},
            )
            if scraper is not None:
                scraper.stop()
                # one more scrape of each, so the last exposition shows the whole run
                for exporter in exporters:
                    exporter.scrape()
            exporter_rows = [exporter_row(exporter) for exporter in exporters]
    finally:
        if scraper is not None:
            scraper.stop()
        for exporter in exporters:
            exporter.stop()
    # The generic checks (nodes online, run completed, every round answered by every node, finite metrics)
    # decide whether the timing counts; the task's learning checks (loss falling, floor) do not: a 1-round
    # smoke cannot pass them, and they say nothing about what the metrics cost.
    generic = [
        f"{check.name}: {check.detail}" for check in evaluate_checks(outcome, None) if not check.passed
    ]
    if generic:
        raise FactoryError(f"the run {'with' if with_metrics else 'without'} metrics failed: {generic}")
    for exporter in exporters:
        if not exporter.answered:
            raise FactoryError(f"flower-metrics ({exporter.name}) never answered: {exporter.log_tail()}")
    seconds = [record.seconds for record in outcome.rounds]
    return {
        "metrics": with_metrics,
        "task_checks_failed": outcome.failures(),
        "start_to_first_round_seconds": outcome.rounds[0].finished - started,
        "round_seconds": seconds,
        "mean_round_seconds": statistics.mean(seconds),
        "load_average_before": list(load_before),
        "load_average_after": list(os.getloadavg()),
        "exporters": exporter_rows,
    }


def exporter_row(exporter: Exporter) -> dict:
    """What one exporter cost and saw, read while it still runs."""
    if exporter.process.poll() is not None:
        raise FactoryError(f"flower-metrics ({exporter.name}) died during the run: {exporter.log_tail()}")
    row: dict = {
        "name": exporter.name,
        **exporter.memory_mib(),
        "cpu_seconds": exporter.cpu_seconds(),
        "scrapes": len(exporter.latencies),
        "scrape_errors": exporter.errors[:5],
        "scrape_error_count": len(exporter.errors),
        "refused_before_up": exporter.before_up,
        "latencies_seconds": exporter.latencies,
    }
    # What the exporter saw, so that a cheap exporter is not one that read nothing.
    if exporter.name == "superlink":
        row["rounds_finished_seen"] = sample_sum(
            exporter.last_text, "flower_superlink_run_rounds_finished_total"
        )
    else:
        row["tasks_seen"] = sample_sum(exporter.last_text, "flower_supernode_tasks_total")
    return row


# -- the comparison ------------------------------------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def compare(version: str, rounds: int, repeats: int, interval: float, workdir: Path) -> dict:
    runs: list[dict] = []
    for repeat in range(repeats):
        order = (False, True) if repeat % 2 == 0 else (True, False)
        for with_metrics in order:
            label = "with" if with_metrics else "without"
            with PROGRESS.stage(f"repeat {repeat + 1}/{repeats}: {rounds} rounds {label} metrics"):
                run = federation_run(version, rounds, workdir / f"{repeat}-{label}", with_metrics, interval)
            runs.append({"repeat": repeat, **run})
    without = [run for run in runs if not run["metrics"]]
    with_ = [run for run in runs if run["metrics"]]
    summary = {
        side: {
            "mean_round_seconds": statistics.mean(s for run in group for s in run["round_seconds"]),
            "mean_start_to_first_round_seconds": statistics.mean(
                run["start_to_first_round_seconds"] for run in group
            ),
        }
        for side, group in (("without", without), ("with", with_))
    }
    ratios = {
        "round": summary["with"]["mean_round_seconds"] / summary["without"]["mean_round_seconds"],
        "first_round": summary["with"]["mean_start_to_first_round_seconds"]
        / summary["without"]["mean_start_to_first_round_seconds"],
        "round_per_repeat": [
            a["mean_round_seconds"] / b["mean_round_seconds"] for a, b in zip(with_, without, strict=True)
        ],
    }
    latencies = [s for run in with_ for row in run["exporters"] for s in row["latencies_seconds"]]
    scrapes = {
        "count": len(latencies),
        "errors": sum(row["scrape_error_count"] for run in with_ for row in run["exporters"]),
        "median_ms": statistics.median(latencies) * 1000,
        "p95_ms": percentile(latencies, 0.95) * 1000,
        "max_ms": max(latencies) * 1000,
    }
    print_report(version, rounds, repeats, interval, runs, summary, ratios, scrapes)
    for run in with_:
        for row in run["exporters"]:
            del row["latencies_seconds"]  # summarised above; the record stays small
    return {
        "flower": version,
        "supernodes": SUPERNODES,
        "rounds": rounds,
        "repeats": repeats,
        "scrape_interval_seconds": interval,
        "cpus": os.cpu_count(),
        "runs": runs,
        "summary": summary,
        "ratios": ratios,
        "scrapes": scrapes,
    }


def print_report(
    version: str, rounds: int, repeats: int, interval: float, runs: list[dict], summary: dict, ratios: dict,
    scrapes: dict,
) -> None:  # fmt: skip
    loads = [run["load_average_before"][0] for run in runs] + [run["load_average_after"][0] for run in runs]
    print(
        f"\nCost of the metrics on a round: bare Flower {version}, 1 SuperLink + {SUPERNODES} SuperNodes, "
        f"numpy app, {rounds} rounds x {repeats} repeat(s), {os.cpu_count()} CPUs, "
        f"load average (1 min) {min(loads):.2f}-{max(loads):.2f}"
    )
    print(f"with = {SUPERNODES + 1} exporters (superlink + supernodes), each scraped every {interval:g} s\n")
    print(f"{'':30} {'without':>9} {'with':>9} {'ratio':>7}")
    without, with_ = summary["without"], summary["with"]
    print(
        f"{'mean round (s)':30} {without['mean_round_seconds']:>9.2f} {with_['mean_round_seconds']:>9.2f} "
        f"{ratios['round']:>7.3f}"
    )
    print(
        f"{'start -> first round (s)':30} {without['mean_start_to_first_round_seconds']:>9.2f} "
        f"{with_['mean_start_to_first_round_seconds']:>9.2f} {ratios['first_round']:>7.3f}"
    )
    if repeats > 1:
        print("round ratio per repeat: " + ", ".join(f"{ratio:.3f}" for ratio in ratios["round_per_repeat"]))
    print(
        f"\nscrapes: {scrapes['count']} ({scrapes['errors']} failed), latency median "
        f"{scrapes['median_ms']:.1f} ms, p95 {scrapes['p95_ms']:.1f} ms, max {scrapes['max_ms']:.1f} ms"
    )
    header = f"{'exporter':14} {'peak RSS (MiB)':>15} {'RSS at end (MiB)':>17} {'CPU (s)':>8} {'scrapes':>8}"
    print(f"\n{header}  saw")
    for run in runs:
        if not run["metrics"]:
            continue
        for row in run["exporters"]:
            key, what = (
                ("rounds_finished_seen", "rounds finished")
                if "rounds_finished_seen" in row
                else ("tasks_seen", "tasks")
            )
            saw = "no such series" if row[key] is None else f"{row[key]:g} {what}"
            name = row["name"] if repeats == 1 else f"{row['name']} #{run['repeat'] + 1}"
            print(
                f"{name:14} {row['peak_rss_mib']:>15.1f} {row['end_rss_mib']:>17.1f} "
                f"{row['cpu_seconds']:>8.2f} {row['scrapes']:>8}  {saw}"
            )


# -- command line --------------------------------------------------------------------------------------------


class Parser(argparse.ArgumentParser):
    """Bad input is one line naming the option, exit status 2 (not argparse's usage block)."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, not {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = Parser(
        prog="bench_metrics.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=positive_int, default=3, help="rounds per federation run")
    parser.add_argument("--repeats", type=positive_int, default=1, help="pairs of runs (order alternates)")
    parser.add_argument(
        "--scrape-interval", type=positive_float, default=1.0, help="seconds between scrapes of each exporter"
    )
    parser.add_argument("--flower", default="1.42.0", help="Flower version of the bare federation")
    args = parser.parse_args(argv)
    # Stopped from outside: unwind, so that every process started here is stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    report: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        with tempfile.TemporaryDirectory(prefix="ff-bench-metrics-") as scratch:
            report.update(
                compare(args.flower, args.rounds, args.repeats, args.scrape_interval, Path(scratch))
            )
    except FactoryError as error:
        sys.stderr.write(f"bench_metrics.py: {error}\n")
        return error.exit_status
    print(f"\nwritten {save_record('bench-metrics', report)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
