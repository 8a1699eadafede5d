"""bench_e2e's timeline: the appliance log and journal lines that show where the time to the first round
went, in seconds after the instantiation (the journal's lines carry no year), with the harness's own steps
from its progress lines and the train-on-deploy job's events from the SuperLink's journal."""

from __future__ import annotations

import calendar
import io
import time

import pytest

from benchmarks import bench_e2e
from benchmarks.bench_e2e import timeline
from hostkit.progress import Progress


def test_the_timeline_orders_both_log_kinds_from_the_instantiation() -> None:
    instantiated = calendar.timegm(time.strptime("2026-12-02T11:00:00Z", "%Y-%m-%dT%H:%M:%SZ"))
    logs = {
        "supernode-2": (
            "ACTIVE READY\n"
            "2026-12-02T11:00:12Z [bootstrap] found the SuperLink at 10.0.0.1:9092\n"
            "Dec 02 11:00:20 sn1 flower-supernode[12]: Failed to activate SuperNode [code: 2004]\n"
            "Dec 02 11:00:21 sn1 flower-supernode[12]: some other line\n"
        ),
        "superlink-1": "2026-12-02T11:00:15Z [keysync] registered SuperNode key 0123 as node 7\n",
    }
    assert timeline(logs, instantiated) == [
        (12, "supernode-2", "[bootstrap] found the SuperLink at 10.0.0.1:9092"),
        (15, "superlink-1", "[keysync] registered SuperNode key 0123 as node 7"),
        (20, "supernode-2", "flower-supernode[12]: Failed to activate SuperNode [code: 2004]"),
    ]


def test_the_timeline_holds_the_harness_steps_and_the_job_events() -> None:
    instantiated = calendar.timegm(time.strptime("2026-12-02T11:00:00Z", "%Y-%m-%dT%H:%M:%SZ"))
    job_start = '{"time":"2026-12-02T11:00:21Z","event":"start","run_id":5,"submit_seconds":3}'
    logs = {  # the journal's copy of a job event is left out: flower-job.jsonl has it with its time
        "superlink-1": f"=== /var/log/one-appliance/flower-job.jsonl\n{job_start}\n"
        f"Dec 02 11:00:22 sl flower-job[40]: {job_start}\n"
    }
    harness = [
        (instantiated + 18.25, "==> service 3 [   18 s] RUNNING; superlink/3:ACTIVE+READY"),
        (instantiated + 19.0, "==> service 3 [   19 s] nothing to see"),
        (instantiated + 20.5, "==> 2 of 2 SuperNodes online (1.2 s)"),
        (instantiated + 24.0, "==> run 7: numpy/fedavg, 3 rounds, 2 nodes (flwr run 2.9 s)"),
        (instantiated + 37.0, "==> run 7: round 1/3 in 12.0 s eval_loss=1.3"),
        (instantiated + 49.0, "==> run 7: round 2/3 in 12.0 s eval_loss=0.2"),
    ]
    assert timeline(logs, instantiated, harness) == [
        (18.2, "harness", "service 3 [   18 s] RUNNING; superlink/3:ACTIVE+READY"),
        (20.5, "harness", "2 of 2 SuperNodes online (1.2 s)"),
        (21, "superlink-1", '"event":"start","run_id":5,"submit_seconds":3}'),
        (24.0, "harness", "run 7: numpy/fedavg, 3 rounds, 2 nodes (flwr run 2.9 s)"),
        (37.0, "harness", "run 7: round 1/3 in 12.0 s eval_loss=1.3"),
    ]


def test_every_progress_line_is_stamped_with_its_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """stamp_progress catches the lines of every Progress object (the cloud's service states come
    through its own, not the benchmark's)."""
    monkeypatch.setattr(Progress, "_write", Progress._write)  # undone after the test
    monkeypatch.setattr(bench_e2e, "STAMPED", [])
    bench_e2e.stamp_progress()
    before = time.time()
    stream = io.StringIO()
    Progress(stream).line("service 3 [   18 s] RUNNING")
    assert stream.getvalue() == "==> service 3 [   18 s] RUNNING\n"
    ((stamp, line),) = bench_e2e.STAMPED
    assert line == "==> service 3 [   18 s] RUNNING" and before <= stamp <= time.time()
