"""How many pairs at once (--parallel, its default, the cloud's free addresses), a crashing pair beside a
healthy one, prefixed progress, and the run's timings, without booting anything."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from factory.harness import campaign as campaign_module
from factory.harness.campaign import (
    Campaign,
    PairProgress,
    PairTiming,
    choose_parallel,
    find_pair_specs,
    free_addresses,
    machine_parallel,
)
from factory.harness.pair import FAILED, PASSED, PairResult
from factory.harness.pairtest import PairTestOptions
from factory.one import OneCloud, load_settings
from factory.release.results import RunTimings
from hostkit.errors import ConfigError
from hostkit.paths import REPO_ROOT
from hostkit.progress import Progress

PAIRS = [
    "pair-sl1.42.0-sn1.42.0-debian12-cpu-edge-numpy",
    "pair-sl1.41.0-sn1.41.0-debian12-cpu-edge-numpy",
    "pair-sl1.42.0-sn1.42.0-debian12-cpu-standard-sklearn",
]


@pytest.fixture(scope="module")
def dummy_cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[OneCloud, dict[str, str]]]:
    from testcloud import launcher

    state = tmp_path_factory.mktemp("testcloud")
    with launcher.start(state, ports="auto", driver="dummy") as handle:
        yield OneCloud(load_settings(environ={}, cloud_dir=state), Progress(quiet=True)), handle.endpoints


def test_free_addresses_are_the_ranges_size_minus_the_leases(dummy_cloud: tuple[OneCloud, Any]) -> None:
    cloud, _ = dummy_cloud
    vnet = cloud.one.vn.info(cloud.network_id())
    size = sum(int(address_range.SIZE) for address_range in vnet.AR_POOL.AR)
    before = free_addresses(cloud)
    assert before == size - int(vnet.USED_LEASES) > 0
    vm = cloud.one.vm.allocate(f'NAME="lease"\nCPU="1"\nMEMORY="64"\nNIC=[NETWORK_ID="{cloud.network_id()}"]')
    try:
        assert free_addresses(cloud) == before - 1
    finally:
        cloud.one.vm.action("terminate-hard", vm)


def test_parallel_default_and_refusals() -> None:
    specs = find_pair_specs(PAIRS)  # 2 SuperNodes each: 3 addresses a pair
    options = PairTestOptions()
    quiet = Progress(quiet=True)
    assert choose_parallel(None, specs, options, None, machine=8, progress=quiet) == 3  # the pairs
    assert choose_parallel(None, specs, options, 7, machine=8, progress=quiet) == 2  # the addresses
    assert choose_parallel(None, specs, options, 100, machine=1, progress=quiet) == 1  # the machine
    assert choose_parallel(2, specs, options, 6, machine=1, progress=quiet) == 2  # asked, and it fits
    with pytest.raises(ConfigError, match=r"need 6 addresses .* has 5 free: use --parallel 1"):
        choose_parallel(2, specs, options, 5, machine=8, progress=quiet)
    with pytest.raises(ConfigError, match=r"need 8 addresses \(4 per pair\)"):  # the rogue takes one more
        choose_parallel(2, specs, PairTestOptions(rogue_supernode=True), 7, machine=8, progress=quiet)
    with pytest.raises(ConfigError, match="a pair needs 3"):
        choose_parallel(None, specs, options, 2, machine=8, progress=quiet)
    for bad in (0, -1):
        with pytest.raises(ConfigError, match=f"--parallel.*got {bad}"):
            choose_parallel(bad, specs, options, None, machine=8, progress=quiet)


def test_machine_parallel_from_cores_and_memory() -> None:
    gib = 1 << 30
    assert machine_parallel(local_vms=True, cores=2, memory=22 * gib) == 2
    assert machine_parallel(local_vms=True, cores=16, memory=5 * gib) == 2  # memory bounds it
    assert machine_parallel(local_vms=True, cores=4, memory=gib) == 1  # never below one
    # remote: only following the runs costs CPU here (a streamed flwr log each, ~0.1 core): 9 per core
    assert machine_parallel(local_vms=False, cores=1, memory=gib) == 9
    assert machine_parallel(local_vms=False, cores=2) == 16  # capped
    assert machine_parallel(local_vms=False, cores=64) == 16


def test_more_pairs_than_free_addresses_is_refused_before_any_pair(
    dummy_cloud: tuple[OneCloud, dict[str, str]], tmp_path: Path
) -> None:
    cloud, endpoints = dummy_cloud
    free = free_addresses(cloud)
    too_many = free // 3 + 1
    results = tmp_path / "results"
    environment = dict(
        os.environ,
        FLOWER_FACTORY_RESULTS=str(results),
        FLOWER_FACTORY_BUILD=str(tmp_path / "build"),
        ONE_XMLRPC=endpoints["xmlrpc"],
        ONE_AUTH=endpoints["auth"],
        ONEFLOW_URL=endpoints["oneflow"],
    )
    refused = subprocess.run(
        [sys.executable, "build.py", "test", "--images", "packer", "--only", f"name={PAIRS[0]}",
         "--parallel", str(too_many), "--run", "too-many"],
        cwd=REPO_ROOT, capture_output=True, text=True, env=environment, timeout=300, check=False,
    )  # fmt: skip
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert f"{too_many * 3} addresses" in refused.stderr and f"{free} free" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not (results / "too-many").exists() or not any((results / "too-many").iterdir())


def test_a_crashing_pair_is_recorded_failed_and_the_others_finish(tmp_path: Path, monkeypatch: Any) -> None:
    """A bug in one pair's run (an exception nobody expected) fails that pair only: the pairs beside it
    run to their end, all are recorded, the records listed in the order of the pairs."""
    specs = find_pair_specs(PAIRS)
    running = threading.Barrier(3, timeout=30)  # all three are started at once: none waits for another

    def fake(spec: Any, run: str, workdir: Path, options: Any, progress: Progress) -> PairResult:
        running.wait()
        assert workdir.is_dir() and progress.name == spec.name  # its own scratch dir, its own progress
        if spec.name == PAIRS[1]:
            raise RuntimeError("boom")
        time.sleep(0.2)
        result = PairResult.begin(spec, run, "bare", "tls-auth")
        result.status = PASSED
        return result

    monkeypatch.setattr(campaign_module, "run_pair_bare", fake)
    stream = io.StringIO()
    recorded: list[str] = []
    campaign = Campaign(
        specs, "crash", PairTestOptions(), lambda result: recorded.append(result.pair) or tmp_path,
        keep_going=True, parallel=3, progress=Progress(stream), scratch_root=tmp_path,
    )  # fmt: skip
    outcome = campaign.test(None)
    assert [result.pair for result in outcome.results] == PAIRS
    assert [result.status for result in outcome.results] == [PASSED, FAILED, PASSED]
    assert outcome.results[1].error == "internal error: RuntimeError: boom"
    assert sorted(recorded) == sorted(PAIRS) and not outcome.stopped_early
    assert outcome.parallel == 3 and [timing.pair for timing in outcome.timings] == PAIRS
    assert f"[{PAIRS[1]}] ==> internal error: Traceback" in stream.getvalue()


def test_pair_progress_prefixes_whole_lines_and_times_stages() -> None:
    stream = io.StringIO()
    progress = PairProgress("pair-a", Progress(stream), threading.Lock())
    with progress.stage("teardown"):
        progress.line("one\ntwo")
    assert stream.getvalue().splitlines()[:3] == [
        "[pair-a] ==> teardown ...",
        "[pair-a] ==> one",
        "[pair-a] two",
    ]
    assert "teardown" in progress.stages and not progress.interactive()


def test_run_timings_file_and_table(tmp_path: Path) -> None:
    timings = RunTimings("t1")
    with timings.stage("images"):
        timings.add("images/base", 1.5)  # the hook the image stage reports its layers through
    timings.add("publish", 84.0)
    result = PairResult.begin(find_pair_specs(PAIRS[:1])[0], "t1", "bare", "tls-auth")
    result.timings.update(deploy_seconds=10.0, task_seconds={"numpy": 40.0})  # type: ignore[arg-type]
    timings.add_pairs([PairTiming.of(result, 60.0, {"teardown": 5.0})], parallel=2)
    path = timings.write(tmp_path)
    data = json.loads(path.read_text())
    assert path == tmp_path / "t1" / "timings.json"
    assert [stage["stage"] for stage in data["stages"]] == ["images", "images/base", "publish"]
    assert data["pairs"] == [
        {"pair": PAIRS[0], "total": 60.0, "deploy": 10.0, "rounds": 40.0, "teardown": 5.0, "other": 5.0}
    ]
    assert data["parallel"] == 2 and data["stages_seconds"] == pytest.approx(84.0, abs=1.0)
    table = timings.table()
    assert "    base" in table and "1m24.0s" in table and "pairs (2 at once)" in table


def test_tasks_side_by_side_count_once_in_a_pairs_rounds() -> None:
    result = PairResult.begin(find_pair_specs(PAIRS[:1])[0], "t1", "bare", "tls-auth")
    result.federations = [
        {"task": "numpy", "submitted_at": 100.0, "finished_at": 160.0},
        {"task": "sklearn", "submitted_at": 101.0, "finished_at": 170.0},  # beside the canary
        {"task": "later", "submitted_at": 180.0, "finished_at": 190.0},  # after a gap
    ]
    result.timings.update(task_seconds={"numpy": 60.0, "sklearn": 69.0, "later": 10.0})  # type: ignore[arg-type]
    timing = PairTiming.of(result, 100.0, {})
    assert timing.rounds == pytest.approx(80.0) and timing.other == pytest.approx(20.0)


def test_a_pyone_connection_per_pair() -> None:
    """Each pair gets a connection of its own (pyone's proxy is one HTTP connection, not for threads)."""
    settings = load_settings(
        environ={
            "ONE_XMLRPC": "http://127.0.0.1:9/RPC2",
            "ONE_AUTH": "a:b",
            "ONEFLOW_URL": "http://127.0.0.1:9",
        }
    )
    shared = OneCloud(settings, Progress(quiet=True))
    progress = Progress(quiet=True)
    own = campaign_module.own_connection(shared, progress)
    assert own is not shared and own.one is not shared.one and own.progress is progress


def test_one_at_a_time_stops_at_the_first_failure_without_keep_going(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """--parallel 1 runs the pairs in the command's own thread (Ctrl-C reaches the pair at once); without
    --keep-going the first failure starts nothing more."""
    started: list[str] = []

    def fake(spec: Any, run: str, workdir: Path, options: Any, progress: Progress) -> PairResult:
        started.append(spec.name)
        assert threading.current_thread() is threading.main_thread()
        result = PairResult.begin(spec, run, "bare", "tls-auth")
        result.status = FAILED
        return result

    monkeypatch.setattr(campaign_module, "run_pair_bare", fake)
    campaign = Campaign(
        find_pair_specs(PAIRS), "stop", PairTestOptions(), lambda result: tmp_path, keep_going=False,
        parallel=1, progress=Progress(quiet=True), scratch_root=tmp_path,
    )  # fmt: skip
    outcome = campaign.test(None)
    assert started == PAIRS[:1] and [result.pair for result in outcome.results] == PAIRS[:1]
    assert outcome.stopped_early and outcome.failed == 1
