#!/usr/bin/env python3
"""End-to-end benchmarks, measured side by side in one run (no timed assertions anywhere).

1. ``overhead``: a 1 SuperLink + 2 SuperNode pair in the test cloud (OneFlow service from the pair's images,
   numpy app over the SSH tunnel) next to the same app on bare Flower processes on loopback: time from
   instantiate (or process start) to the first finished round, and the mean round time; the same pair
   again with the SuperLink's train-on-deploy job from context (ONEAPP_FL_APP): instantiate to the job's
   first finished round (``--no-job`` leaves it out). Prints the ratios (targets: first round <= 1.2,
   round <= 1.0) and the load; the VMs' appliance logs and journals go into the record.
2. ``scaling``: round time with 2, 10 and 30 SuperNodes (bare processes) on one SuperLink, and how it grows.
3. ``tasks``: what running the framework task costs a release, per pair: the same pair tested twice in one
   run, first with the numpy canary only (what a pair test did before), then with the canary and the task of
   its SuperNode image's framework (what it does now); prints both pair-test times and their ratio. Image
   import is left out of both (it happens once per cloud, not per pair test).
4. ``parallel``: the same pairs tested one after another, then N at once (``--parallel``), in one run:
   wall time of each campaign and their ratio (the records of both are the same but for clocks and ids).
5. ``follow``: what following a submitted run costs the harness, polled (two ``flwr`` CLI starts every
   ``--poll-interval``, the pair tests' 10 s) next to streamed (one ``flwr log`` process, the status every
   30 s and at the stream's end), on one bare Flower pair (SuperLink + 2 SuperNodes, TLS and node auth,
   on loopback), ``--repeat`` times each, alternating: CPU seconds of the harness and the ``flwr``
   processes it started while following, CPU seconds of the SuperLink meanwhile, ``flwr`` processes
   started, and how long after the last round the run was seen finished; prints the ratios.

    python benchmarks/bench_e2e.py scaling [--nodes 2,10,30] [--rounds 3]
    python benchmarks/bench_e2e.py overhead --pair NAME [--rounds 3]     # needs the cloud and built images
    python benchmarks/bench_e2e.py tasks --pair NAME [--target cloud|bare] [--rounds 3]
    python benchmarks/bench_e2e.py parallel --pairs A,B [--parallel 2] [--target cloud|bare] [--rounds 3]
    python benchmarks/bench_e2e.py follow [--rounds 3] [--repeat 2] [--poll-interval 10]
    python benchmarks/bench_e2e.py all --pair NAME

Results also go to ``results/bench/bench-<time>.json``.
"""

from __future__ import annotations

import argparse
import calendar
import math
import os
import re
import resource
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.record import save_record
from factory.harness.bareflower import BareFederation
from factory.harness.federation import FederationRunner
from factory.harness.flwrenv import ensure_flower
from hostkit.progress import Progress

PROGRESS = Progress()
# Every progress line of this run with its wall time (all Progress objects: the cloud's service states go
# through its own): the harness's steps for the timeline (see stamp_progress).
STAMPED: list[tuple[float, str]] = []


def stamp_progress() -> None:
    """Keep every Progress line with its wall time in STAMPED (called by main: a benchmark run only)."""
    write = Progress._write

    def stamped(self: Progress, text: str) -> None:
        now = time.time()
        STAMPED.extend((now, line) for line in text.splitlines() if line.strip())
        write(self, text)

    Progress._write = stamped  # type: ignore[method-assign]


def bare_run(version: str, nodes: int, rounds: int, workdir: Path, persistent: bool = True) -> dict:
    """Start SuperLink + ``nodes`` SuperNodes, run the numpy app: start-to-first-round, rounds, failures.

    A run that fails its checks is reported (with why), not hidden: at 30 SuperNodes on a small machine the
    SuperLink's SQLite state can refuse a SuperNode's reply ("database is locked"), and that round then waits
    for its timeout.
    """
    env = ensure_flower(version)
    started = time.time()
    with BareFederation(
        workdir, env, num_supernodes=nodes, start_timeout=300, persistent_state=persistent
    ) as federation:
        runner = FederationRunner(env, workdir / "runner", federation.connection(), progress=PROGRESS)
        outcome = runner.run(
            rounds=rounds,
            strategy="fedavg",
            expected_supernodes=nodes,
            timeout=3600,
            extra_config={"round-timeout": 300},
        )
        locked = sum(text.count("database is locked") for text in federation.logs().values())
    seconds = [record.seconds for record in outcome.rounds]
    return {
        "nodes": nodes,
        "passed": outcome.passed,
        "failures": outcome.failures(),
        "database_locked_errors": locked,
        "start_to_first_round_seconds": outcome.rounds[0].finished - started if outcome.rounds else None,
        "round_seconds": seconds,
        "replies_per_round": [
            min(record.train_replies, record.evaluate_replies) for record in outcome.rounds
        ],
        "mean_round_seconds": statistics.mean(seconds) if seconds else None,
    }


def scaling(version: str, counts: list[int], rounds: int, workdir: Path, persistent: bool) -> list[dict]:
    rows = []
    for count in counts:
        with PROGRESS.stage(f"scaling: {count} SuperNodes"):
            rows.append(bare_run(version, count, rounds, workdir / f"scale-{count}", persistent))
    base = rows[0]["mean_round_seconds"] or float("nan")
    state = "SQLite state" if persistent else "in-memory state"
    print(
        f"\nRound time vs number of SuperNodes (bare Flower {version}, {state}, numpy app, {rounds} rounds)"
    )
    print(f"{'SuperNodes':>10} {'mean round (s)':>15} {'x of smallest':>14} {'s per extra node':>17}  notes")
    for row in rows:
        mean = row["mean_round_seconds"]
        extra = row["nodes"] - rows[0]["nodes"]
        per_node = (mean - base) / extra if extra and mean is not None else 0.0
        row["ratio_to_smallest"] = mean / base if mean is not None else None
        notes = "ok" if row["passed"] else "; ".join(row["failures"])[:160]
        if row["database_locked_errors"]:
            notes += f" ({row['database_locked_errors']} 'database is locked' errors at the SuperLink)"
        if mean is None:
            print(f"{row['nodes']:>10} {'-':>15} {'-':>14} {'-':>17}  {notes}")
        else:
            ratio = row["ratio_to_smallest"]
            print(f"{row['nodes']:>10} {mean:>15.1f} {ratio:>14.2f} {per_node:>17.2f}  {notes}")
    return rows


def cloud_run(pair_name: str, rounds: int, workdir: Path, job: bool = False) -> dict:
    """The pair in the test cloud (or the OpenNebula ONE_XMLRPC names), through the real pair test.

    ``job``: the SuperLink also gets its train-on-deploy job from context (ONEAPP_FL_APP, as a pair test
    runs it); the time that counts is then the job's first finished round (seen through OneGate). Without
    it, the canary submitted over the tunnel as soon as the service is RUNNING. Every VM's appliance log
    and Flower journal are kept in the record (where the time went). The job runs alone
    (``TaskOverlap.NONE``): beside the canary both would share the SuperNodes and the cores, and the ratio
    would no longer compare one federation with one bare federation.
    """
    from factory.harness.campaign import PairRun, cloud_target, find_pair_specs
    from factory.harness.pairtest import PairTestOptions, TaskOverlap

    spec = find_pair_specs([pair_name])[0]
    workdir.mkdir(parents=True, exist_ok=True)
    options = PairTestOptions(
        rounds=rounds, job_from_context=job, collect_logs=True, overlap=TaskOverlap.NONE
    )
    mark = len(STAMPED)
    with cloud_target() as target:
        run = PairRun(spec, "bench", options)
        result = run.in_cloud(target, target.images_for(spec), workdir, PROGRESS)
    if not result.passed:
        raise SystemExit(f"cloud run of {pair_name} failed: {result.error}")
    seconds = list(result.timings["round_seconds"])
    key = "job_instantiate_to_first_round_seconds" if job else "instantiate_to_first_round_seconds"
    first_round = result.timings.get(key)
    instantiated = result.started_at + float(result.timings.get("images_seconds", 0.0))
    if key not in result.timings:
        raise SystemExit(f"cloud run of {pair_name}: no first round was seen ({key} missing)")
    return {
        "pair": pair_name,
        "job_from_context": job,
        "supernode_flower": result.supernodes.flower,
        "start_to_first_round_seconds": result.timings[key],
        "deploy_seconds": result.timings.get("deploy_seconds"),
        "round_seconds": seconds,
        "mean_round_seconds": statistics.mean(seconds),
        "logs": dict(result.logs),
        # the instantiation's wall time is not in the record: the images' import ends just before it
        "timeline": timeline(dict(result.logs), instantiated, STAMPED[mark:]),
        "first_round_after_instantiation": first_round,
    }


# What the timeline of a deployment shows: the appliance stages and the steps of key enrolment and the
# SuperNode's start (appliance logs: "<UTC time> [stage] text"; journal: "Mon DD HH:MM:SS host unit: text").
TIMELINE_EVENTS = re.compile(
    r"(\[(configure|bootstrap)\] (looking for|found the|SuperNode public key|created the|node config"
    r"|the SuperLink at|the SuperLink \(VM|pinned the)"
    r"|(configure|bootstrap) (started|finished)|registered SuperNode key|pinned SuperNode key"
    r"|SuperNodes enrolled|enrolled this node|did not list this node"
    r"|Started flower-|Starting Flower|start number|Failed to activate|code: 2004|Activate|Node Unavailable"
    r"|ready|READY|\[ROUND \d+\]"
    r'|"event":"(waiting|start|round|finished|failed|interrupted)")'
)
# The harness's own steps among its progress lines (factory/harness: pairtest, federation, deployment).
HARNESS_EVENTS = re.compile(
    r"(\] (RUNNING|DEPLOYING;.*READY)|SuperNodes online|^run \d+: (\w+/\w+|round 1/)|job from context"
    r"|instantiated as OneFlow service|teardown)"
)
APPLIANCE_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ) (.*)$")
# flower-job.jsonl: {"time":"<UTC>","event":...}
JOB_TIME = re.compile(r'^\{"time":"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)",(.*)$')
JOURNAL_TIME = re.compile(r"^([A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d) \S+ (.*)$")


def timeline(
    logs: dict[str, str], instantiated: float, harness: Sequence[tuple[float, str]] = ()
) -> list[tuple[float, str, str]]:
    """(seconds after the instantiation, VM, line) of the interesting lines of every VM's appliance logs
    and Flower journal (whole seconds: the logs' resolution) and of the harness's progress lines
    (``harness``: wall time and line; VM "harness"), in time order."""
    year = time.gmtime(instantiated).tm_year
    events = set()
    for stamp, text in harness:
        line = text.removeprefix("==> ").removeprefix("<== ")
        if HARNESS_EVENTS.search(line):
            events.add((round(stamp - instantiated, 1), "harness", line[:160]))
    for vm, text in logs.items():
        for line in text.splitlines():
            if not TIMELINE_EVENTS.search(line):
                continue
            if match := APPLIANCE_TIME.match(line) or JOB_TIME.match(line):
                stamp = calendar.timegm(time.strptime(match.group(1), "%Y-%m-%dT%H:%M:%SZ"))
            elif '{"time":"' in line:
                continue  # a job event as the journal has it: flower-job.jsonl has it too, with its time
            elif match := JOURNAL_TIME.match(line):
                stamp = calendar.timegm(time.strptime(f"{year} {match.group(1)}", "%Y %b %d %H:%M:%S"))
            else:
                continue
            events.add((stamp - instantiated, vm, match.group(2)[:160]))
    return sorted(events)


def overhead(pair_name: str, rounds: int, workdir: Path, job: bool = True) -> dict:
    """Instantiate -> first finished round of the appliance pair next to bare Flower processes on
    loopback, for a run submitted over the tunnel and (``job``) for the SuperLink's train-on-deploy job."""
    with PROGRESS.stage(f"overhead: {pair_name} in the cloud, run submitted over the tunnel"):
        cloud = cloud_run(pair_name, rounds, workdir / "cloud")
    deployed = {"cloud": cloud}
    if job:
        with PROGRESS.stage(f"overhead: {pair_name} in the cloud, train-on-deploy job (ONEAPP_FL_APP)"):
            deployed["job"] = cloud_run(pair_name, rounds, workdir / "job", job=True)
    with PROGRESS.stage("overhead: the same app on bare Flower"):
        bare = bare_run(cloud["supernode_flower"], 2, rounds, workdir / "bare")
    if not bare["passed"]:
        raise SystemExit(f"the bare baseline failed: {bare['failures']}")
    ratios = {
        "first_round": cloud["start_to_first_round_seconds"] / bare["start_to_first_round_seconds"],
        "round": cloud["mean_round_seconds"] / bare["mean_round_seconds"],
    }
    if "job" in deployed:
        ratios["job_first_round"] = (
            deployed["job"]["start_to_first_round_seconds"] / bare["start_to_first_round_seconds"]
        )
    print(f"\nAppliance overhead, 1 SuperLink + 2 SuperNodes, numpy app, {rounds} rounds")
    print(f"{'':44} {'appliance pair':>15} {'bare Flower':>12} {'ratio':>7}")
    rows = [("instantiate -> first round (s)", cloud, "first_round")]
    if "job" in deployed:
        rows.append(("instantiate -> first round, job (s)", deployed["job"], "job_first_round"))
    for label, run, ratio in rows:
        print(
            f"{label:44} {run['start_to_first_round_seconds']:>15.1f} "
            f"{bare['start_to_first_round_seconds']:>12.1f} {ratios[ratio]:>7.2f}   (target <= 1.2)"
        )
    print(
        f"{'mean round (s)':44} {cloud['mean_round_seconds']:>15.1f} {bare['mean_round_seconds']:>12.1f} "
        f"{ratios['round']:>7.2f}   (target <= 1.0)"
    )
    print(f"{'(deploy to RUNNING (s))':44} {cloud['deploy_seconds'] or 0.0:>15.1f}")
    for name, run in deployed.items():
        print(
            f"\nTimeline of the {name} run (s after the instantiation, about; first round at "
            f"{run['start_to_first_round_seconds']:.1f} s):"
        )
        for seconds, vm, line in run["timeline"]:
            print(f"  {seconds:6.1f}  {vm:14} {line}")
    return {**deployed, "bare": bare, "ratios": ratios, "load": os.getloadavg()}


def _task_row(result: Any, label: str) -> dict:
    """One pair test: its time without image import, and each task's time and checks."""
    timings = dict(result.timings)
    seconds = result.finished_at - result.started_at - float(timings.get("images_seconds", 0.0))
    return {
        "label": label,
        "status": result.status,
        "error": result.error,
        "pair_seconds": seconds,
        "deploy_seconds": timings.get("deploy_seconds"),
        "task_seconds": dict(timings.get("task_seconds", {})),
        "failed_checks": [
            f"{check['task']}/{check['name']}: {check['detail']}"
            for check in result.checks
            if not check["passed"]
        ],
    }


def tasks(pair_name: str, rounds: int, workdir: Path, target: str) -> dict:
    """The pair test with the canary only, then with the canary and the framework task, side by side."""
    from contextlib import nullcontext

    from factory.harness.campaign import PairRun, cloud_target, find_pair_specs
    from factory.harness.pairtest import PairTestOptions, framework_task

    spec = find_pair_specs([pair_name])[0]
    framework = framework_task(spec)
    rows = []
    with nullcontext(None) if target == "bare" else cloud_target() as cloud:
        where = "bare" if cloud is None else cloud.name
        images = None if cloud is None else cloud.images_for(spec)
        for label, with_framework in (("canary only (before)", False), ("canary + framework (after)", True)):
            with PROGRESS.stage(f"tasks: {pair_name} in {where}, {label}"):
                run = PairRun(spec, "bench", PairTestOptions(rounds=rounds, framework_task=with_framework))
                scratch = workdir / label.split()[0]
                scratch.mkdir(parents=True, exist_ok=True)
                if cloud is None:
                    result = run.bare(scratch, PROGRESS)
                else:
                    result = run.in_cloud(cloud, images, scratch, PROGRESS)
                rows.append(_task_row(result, label))
    before, after = rows
    # the canary-only run fails by design ("framework task not run"): only its own checks count here
    if before["failed_checks"] or after["status"] == "failed":
        raise SystemExit(f"tasks benchmark: a pair test failed: {before['failed_checks'] or after['error']}")
    ratio = after["pair_seconds"] / before["pair_seconds"]
    print(f"\nPair test time, {pair_name} ({where}, {rounds} rounds per task, image import left out)")
    print(f"{'':34} {'pair test (s)':>14} {'deploy (s)':>11} {'numpy (s)':>10} {framework + ' (s)':>14}")
    for row in rows:
        numpy_seconds = row["task_seconds"].get("numpy")
        framework_seconds = row["task_seconds"].get(framework) if framework != "numpy" else None
        framework_text = f"{framework_seconds:.1f}" if framework_seconds is not None else "-"
        print(
            f"{row['label']:34} {row['pair_seconds']:>14.1f} {row['deploy_seconds'] or 0.0:>11.1f} "
            f"{numpy_seconds or 0.0:>10.1f} {framework_text:>14}"
        )
    print(f"{'ratio after / before':34} {ratio:>14.2f}")
    return {"pair": pair_name, "target": where, "framework_task": framework, "runs": rows, "ratio": ratio}


def parallel(pair_names: list[str], at_once: int, rounds: int, workdir: Path, target: str) -> dict:
    """The campaign of ``pair_names`` one after another, then ``at_once`` at a time, side by side."""
    from contextlib import nullcontext

    from factory.harness.campaign import Campaign, cloud_target, find_pair_specs
    from factory.harness.pairtest import PairTestOptions

    specs = find_pair_specs(pair_names)
    rows = []
    with nullcontext(None) if target == "bare" else cloud_target() as cloud:
        where = "bare" if cloud is None else cloud.name
        for count in (1, at_once):
            scratch = workdir / f"parallel-{count}"
            scratch.mkdir(parents=True, exist_ok=True)
            campaign = Campaign(
                specs, f"bench-p{count}", PairTestOptions(rounds=rounds),
                record=lambda result, directory=scratch: directory,
                progress=PROGRESS, scratch_root=scratch, parallel=count,
            )  # fmt: skip
            with PROGRESS.stage(f"parallel: {len(specs)} pair(s) in {where}, {count} at once"):
                outcome = campaign.test(cloud)
            if outcome.failed:
                errors = [result.error for result in outcome.results if not result.passed]
                raise SystemExit(f"parallel benchmark: a pair failed: {errors}")
            rows.append(
                {
                    "parallel": count,
                    "wall_seconds": outcome.wall_seconds,
                    "pairs": [{"pair": timing.pair, **timing.to_dict()} for timing in outcome.timings],
                }
            )
    ratio = rows[1]["wall_seconds"] / rows[0]["wall_seconds"]
    print(f"\n{len(specs)} pair(s) in {where}, {rounds} rounds per task")
    for row in rows:
        mean = statistics.mean(pair["total"] for pair in row["pairs"])
        print(f"  {row['parallel']} at once: wall {row['wall_seconds']:.1f} s, mean pair test {mean:.1f} s")
    print(f"  ratio {at_once} at once / one after another: {ratio:.2f}")
    return {"target": where, "pairs": pair_names, "runs": rows, "ratio": ratio}


def _cpu_seconds(usage: resource.struct_rusage) -> float:
    return usage.ru_utime + usage.ru_stime


def _process_cpu_seconds(pid: int) -> float:
    """utime + stime of one live process (proc(5): fields 14 and 15 of /proc/PID/stat, in clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def follow_run(federation: BareFederation, env: Any, workdir: Path, rounds: int, streamed: bool,
               poll_interval: float) -> dict:  # fmt: skip
    """One run of ``rounds`` numpy rounds on ``federation``, followed polled or streamed: what the
    following cost (the harness's own CPU and that of the flwr processes it waited for, all reaped by the
    end of the follow; the stream is stopped there too)."""
    runner = FederationRunner(
        env, workdir, federation.connection(), progress=PROGRESS, poll_interval=poll_interval, stream=streamed
    )
    starts = {"flwr": 0}
    call, stream_log = runner.cli.call, runner.cli.stream_log

    def counted_call(*args: Any, **kwargs: Any) -> Any:
        starts["flwr"] += 1
        return call(*args, **kwargs)

    def counted_stream(*args: Any, **kwargs: Any) -> Any:
        starts["flwr"] += 1
        return stream_log(*args, **kwargs)

    runner.cli.call, runner.cli.stream_log = counted_call, counted_stream  # type: ignore[method-assign]
    follow = runner._follow
    measured: dict[str, float] = {}

    def timed_follow(*args: Any, **kwargs: Any) -> None:
        assert federation.superlink is not None
        pid = federation.superlink.process.pid
        before = (
            _cpu_seconds(resource.getrusage(resource.RUSAGE_SELF)),
            _cpu_seconds(resource.getrusage(resource.RUSAGE_CHILDREN)),
            _process_cpu_seconds(pid), time.monotonic(), starts["flwr"],
        )  # fmt: skip
        follow(*args, **kwargs)
        measured.update(
            harness_cpu_seconds=_cpu_seconds(resource.getrusage(resource.RUSAGE_SELF)) - before[0],
            flwr_cpu_seconds=_cpu_seconds(resource.getrusage(resource.RUSAGE_CHILDREN)) - before[1],
            superlink_cpu_seconds=_process_cpu_seconds(pid) - before[2],
            follow_seconds=time.monotonic() - before[3],
            flwr_starts=starts["flwr"] - before[4],
            seen_finished_at=time.time(),
        )

    runner._follow = timed_follow  # type: ignore[method-assign]
    outcome = runner.run(rounds=rounds, strategy="fedavg", expected_supernodes=2, timeout=1800)
    last = outcome.rounds[-1].finished if outcome.rounds else math.nan
    return {
        "mode": "streamed" if streamed else "polled",
        "passed": outcome.passed,
        "failures": outcome.failures(),
        "rounds": [record.round for record in outcome.rounds],
        "status": outcome.status,
        **{key: value for key, value in measured.items() if key != "seen_finished_at"},
        "following_cpu_seconds": measured["harness_cpu_seconds"] + measured["flwr_cpu_seconds"],
        "seen_finished_after_last_round_seconds": measured["seen_finished_at"] - last,
    }


def follow_costs(version: str, rounds: int, repeat: int, poll_interval: float, workdir: Path) -> dict:
    """Polled and streamed following side by side on one bare pair, alternating (P S, S P, ...)."""
    env = ensure_flower(version)
    runs: list[dict] = []
    with BareFederation(workdir / "fed", env, num_supernodes=2, start_timeout=300) as federation:
        for index in range(repeat):
            order = (False, True) if index % 2 == 0 else (True, False)
            for streamed in order:
                workdir_run = workdir / f"runner-{len(runs)}"
                runs.append(follow_run(federation, env, workdir_run, rounds, streamed, poll_interval))
                print(runs[-1], flush=True)

    def mean(mode: str, key: str) -> float:
        return statistics.mean(run[key] for run in runs if run["mode"] == mode)

    keys = ("following_cpu_seconds", "harness_cpu_seconds", "flwr_cpu_seconds", "superlink_cpu_seconds",
            "flwr_starts", "follow_seconds", "seen_finished_after_last_round_seconds")  # fmt: skip
    summary = {key: {mode: mean(mode, key) for mode in ("polled", "streamed")} for key in keys}
    print(
        f"\nfollowing one {rounds}-round bare run, mean of {repeat} each (poll_interval {poll_interval:g} s):"
    )
    for key, values in summary.items():
        ratio = values["streamed"] / values["polled"] if values["polled"] else math.nan
        print(f"  {key:42s} polled {values['polled']:8.2f}  streamed {values['streamed']:8.2f}  "
              f"streamed/polled {ratio:.2f}")  # fmt: skip
    print(f"  load average: {os.getloadavg()}")
    return {"poll_interval": poll_interval, "runs": runs, "mean": summary, "load": os.getloadavg()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("part", choices=["overhead", "scaling", "tasks", "parallel", "follow", "all"])
    parser.add_argument("--pair", help="pair name for the overhead and tasks parts (see `build.py matrix`)")
    parser.add_argument(
        "--target", choices=("cloud", "bare"), default="cloud", help="where the tasks and parallel parts test"
    )
    parser.add_argument("--pairs", help="comma-separated pair names for the parallel part")
    parser.add_argument("--parallel", type=int, default=2, help="pairs at once in the parallel part")
    parser.add_argument("--nodes", default="2,10,30", help="SuperNode counts for the scaling part")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--no-job", action="store_true", help="overhead: leave out the train-on-deploy variant"
    )
    parser.add_argument("--flower", default="1.42.0", help="Flower version of the scaling and follow parts")
    parser.add_argument("--repeat", type=int, default=2, help="follow: runs of each way of following")
    parser.add_argument(
        "--poll-interval", type=float, default=10.0, help="follow: the polled runs' poll interval (s)"
    )
    parser.add_argument(
        "--state", choices=("persistent", "memory"), default="persistent",
        help="SuperLink state of the scaling part: SQLite (the appliances' default) or in memory",
    )  # fmt: skip
    args = parser.parse_args(argv)
    stamp_progress()
    # Stopped from outside: unwind, so that every Flower process started here is stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.part in ("overhead", "tasks", "all") and not args.pair:
        parser.error(f"the {args.part} part needs --pair")
    if args.part == "follow" and (args.repeat < 1 or args.rounds < 1 or args.poll_interval <= 0):
        parser.error("the follow part needs --repeat and --rounds of 1 or more and a --poll-interval above 0")
    if args.part == "parallel" and (not args.pairs or args.parallel < 2):
        parser.error("the parallel part needs --pairs A,B and --parallel 2 or more")
    report: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rounds": args.rounds}
    with tempfile.TemporaryDirectory(prefix="ff-bench-") as scratch:
        workdir = Path(scratch)
        if args.part in ("overhead", "all"):
            report["overhead"] = overhead(args.pair, args.rounds, workdir, job=not args.no_job)
        if args.part in ("tasks", "all"):
            report["tasks"] = tasks(args.pair, args.rounds, workdir, args.target)
        if args.part == "parallel":
            names = [name for name in args.pairs.split(",") if name]
            report["parallel"] = parallel(names, args.parallel, args.rounds, workdir, args.target)
        if args.part == "follow":
            report["follow"] = follow_costs(
                args.flower, args.rounds, args.repeat, args.poll_interval, workdir
            )
        if args.part in ("scaling", "all"):
            counts = [int(value) for value in args.nodes.split(",")]
            report["scaling"] = scaling(args.flower, counts, args.rounds, workdir, args.state == "persistent")
    print(f"\nwritten {save_record('bench', report)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
