"""The SuperLink's job runner (context/appliance/bin/flower-job), run here: its parameter checks with a
stand-in ``flwr`` that records every call, and whole jobs against real Flower processes on loopback
(factory.harness.bareflower: TLS, SuperNode auth). The publishing hook is replaced by a function that records
its calls (a test of the runner's logic, not of OneGate)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from factory.harness.bareflower import BareFederation
from factory.harness.flwrenv import FlowerEnv, ensure_flower
from hostkit.paths import APPS_DIR, CONTEXT_DIR

RUNNER = CONTEXT_DIR / "appliance" / "bin" / "flower-job"
HOOK = """fl_job_publish() {
    printf '%s\\n' "$(printf '%s|' "$@")" >>"${FL_TEST_CALLS:?}"
}
"""
# What flower-job publishes (images/params.yaml, published:), emptied when a job begins.
JOB_ATTRIBUTES = (
    "ONEAPP_FL_RUN_STATUS", "ONEAPP_FL_RUN_ID", "ONEAPP_FL_RUN_REASON", "ONEAPP_FL_ROUND",
    "ONEAPP_FL_METRICS", "ONEAPP_FL_RESUMED_FROM", "ONEAPP_FL_MODEL",
)  # fmt: skip
FLWR_STUB = """#!/usr/bin/env bash
printf '%s\\n' "$*" >>"${FL_TEST_FLWR_CALLS:?}"
exit 3
"""


def runner_env(root: Path, venv: Path, **params: str) -> dict[str, str]:
    state = root / "state"
    (state / ".flwr").mkdir(parents=True, exist_ok=True)
    (root / "hook.sh").write_text(HOOK)
    environment = {
        "PATH": os.environ["PATH"],
        "LANG": "C.UTF-8",
        "FL_APPLIANCE_DIR": str(CONTEXT_DIR / "appliance"),
        "FL_VENV": str(venv),
        "FL_STATE": str(state),
        "FL_RUN": str(root / "run"),
        "FL_LOG_DIR": str(root / "log"),
        "FL_JOB_APP_DIR": str(APPS_DIR / "factory-app"),
        "FL_JOB_POLL": "1",
        "FL_JOB_NODES_TIMEOUT": "120",
        "FL_JOB_HOOK": str(root / "hook.sh"),
        "FL_TEST_CALLS": str(root / "calls"),
        "FL_TEST_FLWR_CALLS": str(root / "flwr-calls"),
        "ENV_FILE": str(root / "no-one-env"),
        "ONEAPP_FL_CHECKPOINT_DIR": str(root / "checkpoints"),
    }
    environment.update(params)
    return environment


def run_job(environment: dict[str, str], timeout: float = 200) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(RUNNER)], env=environment, capture_output=True, text=True, timeout=timeout, check=False
    )


def calls(root: Path, keep_empty: bool = False) -> list[dict[str, str]]:
    """The publishing calls, KEY -> VALUE each; an emptied attribute (``KEY=``) is left out unless
    ``keep_empty`` (the runner empties the job's attributes when a job begins)."""
    path = root / "calls"
    if not path.exists():
        return []
    found = []
    for line in path.read_text().splitlines():
        pairs = dict(item.split("=", 1) for item in line.split("|") if item)
        found.append({key: value for key, value in pairs.items() if keep_empty or value})
    return found


def journal(root: Path) -> list[dict]:
    path = root / "log" / "flower-job.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def stub_venv(tmp_path: Path) -> Path:
    venv = tmp_path / "stub-venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "flwr").write_text(FLWR_STUB)
    (venv / "bin" / "flwr").chmod(0o755)
    return venv


BAD = [
    ({"ONEAPP_FL_APP": "jax"}, "ONEAPP_FL_APP: 'jax' is not a bundled use case"),
    ({"ONEAPP_FL_APP": "https://example.invalid/app.fab"}, "needs ONEAPP_FL_APP_SHA256"),
    ({"ONEAPP_FL_ROUNDS": "0"}, "ONEAPP_FL_ROUNDS: must be an integer within 1..100000, got '0'"),
    ({"ONEAPP_FL_ROUNDS": "-1"}, "ONEAPP_FL_ROUNDS: must be an integer within 1..100000, got '-1'"),
    ({"ONEAPP_FL_STRATEGY": "fedfoo"}, "ONEAPP_FL_STRATEGY: unknown strategy 'fedfoo'"),
    ({"ONEAPP_FL_MIN_NODES": "5", "FL_JOB_MAX_NODES": "3"}, "ONEAPP_FL_MIN_NODES: 5 is above the 3"),
    ({"ONEAPP_FL_DP": "local"}, "ONEAPP_FL_DP: unknown mode 'local'"),
    (
        {"ONEAPP_FL_DP": "server-fixed", "ONEAPP_FL_DP_NOISE": "-1"},
        "ONEAPP_FL_DP_NOISE: the noise multiplier",
    ),
    ({"ONEAPP_FL_DP": "client-fixed", "ONEAPP_FL_DP_CLIPPING_NORM": "0"}, "ONEAPP_FL_DP_CLIPPING_NORM"),
    ({"ONEAPP_FL_DP": "server-fixed", "ONEAPP_FL_DP_SAMPLED_CLIENTS": "3"}, "ONEAPP_FL_DP_SAMPLED_CLIENTS"),
    (
        {"ONEAPP_FL_DP": "client-adaptive", "ONEAPP_FL_DP_NOISE": "0.5"},
        "ONEAPP_FL_DP_NOISE: with adaptive clipping it must be below 0.2",
    ),
    ({"ONEAPP_FL_SECAGG": "secaggplus"}, "ONEAPP_FL_SECAGG: secaggplus is not supported"),
    ({"ONEAPP_FL_CHECKPOINT_DIR": "relative/dir"}, "ONEAPP_FL_CHECKPOINT_DIR: must be an absolute path"),
    ({"ONEAPP_FL_RUN_CONFIG": "num-server-rounds=9"}, "num-server-rounds is set through its own"),
    ({"ONEAPP_FL_RUN_CONFIG": "learning-rate"}, "'learning-rate' is not key=value"),
]


@pytest.mark.parametrize(("params", "reason"), BAD, ids=[reason[:40] for _, reason in BAD])
def test_bad_parameters_fail_with_the_reason_and_start_nothing(
    params: dict[str, str], reason: str, tmp_path: Path, stub_venv: Path
) -> None:
    earlier = tmp_path / "checkpoints" / "job-earlier" / "round-00002.json"
    earlier.parent.mkdir(parents=True)
    earlier.write_text('{"job": "job-earlier", "round": 2}')
    before = {path: path.read_bytes() for path in (tmp_path / "checkpoints").rglob("*") if path.is_file()}
    environment = runner_env(
        tmp_path, stub_venv, **{"ONEAPP_FL_APP": "numpy", "ONEAPP_FL_MIN_NODES": "2", **params}
    )
    result = run_job(environment, timeout=30)
    assert result.returncode == 1, result.stderr
    # first an earlier job's attributes are emptied (a refused job shows no run id, round or model of it)
    assert calls(tmp_path, keep_empty=True)[0] == dict.fromkeys(JOB_ATTRIBUTES, ""), calls(tmp_path, True)
    published = calls(tmp_path)
    assert published and published[-1]["ONEAPP_FL_RUN_STATUS"] == "failed", published
    assert reason in published[-1]["ONEAPP_FL_RUN_REASON"], published[-1]
    assert journal(tmp_path)[-1]["event"] == "failed"
    assert not (tmp_path / "flwr-calls").exists()  # no flwr call at all: nothing submitted
    after = {path: path.read_bytes() for path in (tmp_path / "checkpoints").rglob("*") if path.is_file()}
    assert after == before  # a previous job's checkpoints are untouched


def test_user_bundles_are_verified_before_anything_runs(tmp_path: Path, stub_venv: Path) -> None:
    bundle = b"PK\x05\x06" + b"\x00" * 18  # an empty zip
    encoded = base64.b64encode(bundle).decode()
    wrong = hashlib.sha256(b"something else").hexdigest()
    cases = [
        ({"ONEAPP_FL_APP": encoded, "ONEAPP_FL_APP_SHA256": wrong}, "sha256 mismatch: the bundle has"),
        (
            {"ONEAPP_FL_APP": encoded, "ONEAPP_FL_APP_SHA256": hashlib.sha256(bundle).hexdigest()},
            "is not a Flower app bundle",
        ),
        # nothing listens on port 9 of loopback: the URL does not answer
        (
            {"ONEAPP_FL_APP": "http://127.0.0.1:9/app.fab", "ONEAPP_FL_APP_SHA256": wrong},
            "could not download",
        ),
    ]
    for index, (params, reason) in enumerate(cases):
        root = tmp_path / f"case-{index}"
        root.mkdir()
        result = run_job(runner_env(root, stub_venv, **params), timeout=60)
        assert result.returncode == 1, result.stderr
        assert reason in calls(root)[-1]["ONEAPP_FL_RUN_REASON"], calls(root)
        assert not (root / "flwr-calls").exists()


def test_no_app_means_no_job(tmp_path: Path, stub_venv: Path) -> None:
    result = run_job(runner_env(tmp_path, stub_venv, ONEAPP_FL_APP=""), timeout=30)
    assert result.returncode == 0 and "no job" in result.stderr
    assert not calls(tmp_path) and not (tmp_path / "flwr-calls").exists()


@pytest.fixture(scope="module")
def flower() -> FlowerEnv:
    return ensure_flower("1.42.0")


def connect(root: Path, federation: BareFederation) -> None:
    """The "local" connection as the configure stage writes it (lib/superlink.sh)."""
    assert federation.tls is not None
    (root / "state" / ".flwr").mkdir(parents=True, exist_ok=True)
    (root / "state" / ".flwr" / "config.toml").write_text(
        '[superlink]\ndefault = "local"\n\n[superlink.local]\n'
        f'address = "{federation.address}"\nroot-certificates = "{federation.tls.ca_cert}"\n'
    )


@contextlib.contextmanager
def connected_federation(
    root: Path, flower: FlowerEnv, params: dict[str, str]
) -> Iterator[tuple[BareFederation, dict[str, str]]]:
    """A bare federation (2 SuperNodes) and the runner's environment for ``params``, connected to it."""
    os.chmod(root, 0o700)
    with BareFederation(root / "fed", flower, num_supernodes=2) as federation:
        environment = runner_env(root, flower.bin_dir.parent, **params)
        connect(root, federation)
        yield federation, environment


@pytest.mark.slow  # about 3-5 minutes on a shared 2-core host: every poll is two flwr CLI calls
def test_a_job_from_parameters_runs_to_the_end(flower: FlowerEnv, tmp_path: Path) -> None:
    """numpy, 2 rounds, 2 nodes: waiting-for-nodes, running with the run id, every round k/N with its
    metrics, finished with the final model; started again, the complete job is not run twice."""
    params = {"ONEAPP_FL_APP": "numpy", "ONEAPP_FL_ROUNDS": "2", "ONEAPP_FL_MIN_NODES": "2"}
    with connected_federation(tmp_path, flower, params) as (_, environment):
        result = run_job(environment, timeout=480)
        assert result.returncode == 0, result.stderr[-3000:]
        published = calls(tmp_path)
        statuses = [call["ONEAPP_FL_RUN_STATUS"] for call in published if "ONEAPP_FL_RUN_STATUS" in call]
        assert statuses == ["waiting-for-nodes", "running", "finished"], published
        rounds = [call["ONEAPP_FL_ROUND"] for call in published if "ONEAPP_FL_ROUND" in call]
        assert rounds == ["0/2", "1/2", "2/2"], published
        metrics = [call["ONEAPP_FL_METRICS"] for call in published if "ONEAPP_FL_METRICS" in call]
        losses = [float(m.split("eval_loss=")[1].split()[0]) for m in metrics]
        assert len(losses) == 2 and losses[1] < losses[0]
        run_id = next(call["ONEAPP_FL_RUN_ID"] for call in published if "ONEAPP_FL_RUN_ID" in call)
        assert run_id.isdigit()
        model = Path(published[-1]["ONEAPP_FL_MODEL"])
        assert model.is_file() and model.name == "final.npz"
        assert model.parent.parent == tmp_path / "checkpoints"
        events = [event["event"] for event in journal(tmp_path)]
        assert events[0] == "waiting" and events[-1] == "finished"
        assert events.count("round") == 2 and "start" in events
        # every event is a JSON line on stdout (the journal) too
        assert [json.loads(line)["event"] for line in result.stdout.splitlines()] == events

        # the same job again: complete already, nothing submitted
        (tmp_path / "calls").unlink()
        again = run_job(environment, timeout=60)
        assert again.returncode == 0, again.stderr[-2000:]
        assert calls(tmp_path)[-1] == {
            "ONEAPP_FL_RUN_STATUS": "finished",
            "ONEAPP_FL_ROUND": "2/2",
            "ONEAPP_FL_MODEL": str(model),
        }


@pytest.mark.slow  # two runs of a job through the runner: about 5 minutes on a shared 2-core host
def test_a_run_that_ends_early_is_resumed_by_a_new_run(flower: FlowerEnv, tmp_path: Path) -> None:
    """The job's run is stopped after its round-1 checkpoint (as if the ServerApp died): the runner
    submits the job again, the app resumes from the checkpoint, and the job finishes at round N."""
    import threading
    import time

    from factory.harness.federation import FlowerCLI

    params = {"ONEAPP_FL_APP": "numpy", "ONEAPP_FL_ROUNDS": "3", "ONEAPP_FL_MIN_NODES": "2"}
    with connected_federation(tmp_path, flower, params) as (federation, environment):
        cli = FlowerCLI(flower, tmp_path / "cli", federation.connection())
        stopped: list[str] = []

        def stop_after_first_checkpoint() -> None:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                if list((tmp_path / "checkpoints").glob("job-*/round-00001.json")):
                    run_id = next(c["ONEAPP_FL_RUN_ID"] for c in calls(tmp_path) if "ONEAPP_FL_RUN_ID" in c)
                    cli.stop_run(int(run_id))
                    stopped.append(run_id)
                    return
                time.sleep(0.05)

        stopper = threading.Thread(target=stop_after_first_checkpoint, daemon=True)
        stopper.start()
        result = run_job(environment, timeout=540)
        stopper.join(timeout=10)
        assert stopped, "the first run was never stopped"
        assert result.returncode == 0, result.stderr[-3000:]
        published = calls(tmp_path)
        run_ids = [c["ONEAPP_FL_RUN_ID"] for c in published if "ONEAPP_FL_RUN_ID" in c]
        assert len(run_ids) == 2 and run_ids[0] == stopped[0]
        resumed = [int(c["ONEAPP_FL_RESUMED_FROM"]) for c in published if "ONEAPP_FL_RESUMED_FROM" in c]
        assert len(resumed) == 1 and 1 <= resumed[0] < 3
        assert published[-1]["ONEAPP_FL_RUN_STATUS"] == "finished"
        rounds = [c["ONEAPP_FL_ROUND"] for c in published if "ONEAPP_FL_ROUND" in c]
        assert rounds[-1] == "3/3"
        events = [event["event"] for event in journal(tmp_path)]
        assert "interrupted" in events and events[-1] == "finished"


# flwr as the runner calls it before a run exists: two SuperNodes online, and a `flwr run` that is
# recorded (its --run-config) and refused, so that the test sees exactly what would have been submitted.
FLWR_ONLINE_STUB = """#!/usr/bin/env bash
printf '%s\\n' "$*" >>"${FL_TEST_FLWR_CALLS:?}"
case "$1 $2" in
    "supernode list") echo '{"success": true, "nodes": [{"status": "online"}, {"status": "online"}]}' ;;
    *) echo '{"success": false, "error-message": "refused by the stand-in"}'; exit 1 ;;
esac
"""


# flwr for a run that the test finishes: `flwr log --stream` gives round 1 at once and the rest once the
# file DONE exists; `flwr list` says running until then; `flwr log --show` gives every event.
FLWR_STREAM_STUB = """#!/usr/bin/env bash
printf '%s\\n' "$*" >>"${FL_TEST_FLWR_CALLS:?}"
round() {
    printf 'INFO : FF-ROUND {"round": %s, "loss": %s, "evaluate_metrics": {"eval_loss": %s}}\\n' \\
        "$1" "$2" "$2"
}
end() { echo 'INFO : FF-END {"model": "/nowhere/final.npz"}'; }
case "$*" in
    "supernode list local --format json")
        echo '{"success": true, "nodes": [{"status": "online"}, {"status": "online"}]}'
        ;;
    "run "*) echo '{"success": true, "run-id": 5}' ;;
    "list local --run-id 5 --format json")
        if [[ -e "${FL_TEST_DONE:?}" ]]; then status=finished:completed; else status=running; fi
        echo "{\\"success\\": true, \\"runs\\": [{\\"run-id\\": 5, \\"status\\": \\"${status}\\"}]}"
        ;;
    "log 5 local --stream")
        round 1 0.5
        while [[ ! -e "${FL_TEST_DONE}" ]]; do sleep 0.2; done
        round 2 0.25
        end
        ;;
    "log 5 local --show") round 1 0.5; round 2 0.25; end ;;
    *) exit 3 ;;
esac
"""


def test_the_rounds_are_published_from_the_streamed_log_as_they_come(tmp_path: Path) -> None:
    """While a run goes on, the runner reads the app's events from one streamed `flwr log` (every
    FL_JOB_EVENTS_POLL second), not only when it looks at the status (every FL_JOB_POLL seconds, a CLI
    process each): round 1 is published before the run finishes and before any `flwr log --show`."""
    import threading
    import time

    venv = tmp_path / "stream-venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "flwr").write_text(FLWR_STREAM_STUB)
    (venv / "bin" / "flwr").chmod(0o755)
    done = tmp_path / "DONE"
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    environment = runner_env(
        tmp_path, venv, ONEAPP_FL_APP="numpy", ONEAPP_FL_ROUNDS="2", FL_JOB_POLL="3", FL_TEST_DONE=str(done),
        TMPDIR=str(scratch),
    )  # fmt: skip
    seen: list[list[str]] = []

    def finish_after_round_one() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if any(call.get("ONEAPP_FL_ROUND") == "1/2" for call in calls(tmp_path)):
                seen.append((tmp_path / "flwr-calls").read_text().splitlines())
                break
            time.sleep(0.1)
        done.touch()

    finisher = threading.Thread(target=finish_after_round_one, daemon=True)
    finisher.start()
    result = run_job(environment, timeout=120)
    finisher.join(timeout=10)
    assert result.returncode == 0, result.stderr[-3000:]
    assert seen, "round 1 was not published while the run went on"
    before = seen[0]
    assert "log 5 local --stream" in before and not any("--show" in line for line in before), before
    assert sum(line.startswith("list ") for line in before) == 1, before  # one status look so far
    published = calls(tmp_path)
    rounds = [call["ONEAPP_FL_ROUND"] for call in published if "ONEAPP_FL_ROUND" in call]
    assert rounds == ["0/2", "1/2", "2/2"], published
    assert published[-1] == {"ONEAPP_FL_RUN_STATUS": "finished", "ONEAPP_FL_MODEL": "/nowhere/final.npz"}
    start = next(event for event in journal(tmp_path) if event["event"] == "start")
    assert isinstance(start["submit_seconds"], int) and start["submit_seconds"] >= 0
    assert not list(scratch.iterdir()), "the streamed log was left behind"


def _bundle(tmp_path: Path, declared: str) -> tuple[str, str]:
    """A Flower app bundle (zip with pyproject.toml) as base64, and its sha256."""
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(
            "pyproject.toml",
            '[project]\nname = "user-app"\nversion = "1.0.0"\n\n[tool.flwr.app]\npublisher = "someone"\n\n'
            f"[tool.flwr.app.config]\n{declared}",
        )
        archive.writestr("../escape.txt", "must not land outside the app directory")
    data = buffer.getvalue()
    return base64.b64encode(data).decode(), hashlib.sha256(data).hexdigest()


def test_a_user_bundle_gets_only_the_run_config_it_declares(tmp_path: Path) -> None:
    import shutil
    import sys

    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "flwr").write_text(FLWR_ONLINE_STUB)
    (venv / "bin" / "flwr").chmod(0o755)
    (venv / "bin" / "python").symlink_to(shutil.which("python3") or sys.executable)
    encoded, digest = _bundle(tmp_path, "num-server-rounds = 3\nlearning-rate = 0.1\n")
    base = {"ONEAPP_FL_APP": encoded, "ONEAPP_FL_APP_SHA256": digest, "ONEAPP_FL_ROUNDS": "4"}

    root = tmp_path / "declared"
    root.mkdir()
    params = {**base, "ONEAPP_FL_RUN_CONFIG": "learning-rate=0.05"}
    result = run_job(runner_env(root, venv, **params), timeout=60)
    assert result.returncode == 1  # the stand-in refuses the run
    run_call = next(
        line for line in (root / "flwr-calls").read_text().splitlines() if line.startswith("run ")
    )
    assert run_call.endswith("--run-config learning-rate=0.05 num-server-rounds=4 --format json"), run_call
    assert "refused by the stand-in" in calls(root)[-1]["ONEAPP_FL_RUN_REASON"]
    unpacked = next((root / "state" / "job").glob("app-*"))
    assert (unpacked / "pyproject.toml").is_file()
    assert (unpacked / "escape.txt").is_file() and not (unpacked.parent / "escape.txt").exists()

    root = tmp_path / "undeclared"
    root.mkdir()
    result = run_job(runner_env(root, venv, **base, ONEAPP_FL_DP="server-fixed"), timeout=60)
    assert result.returncode == 1
    reason = calls(root)[-1]["ONEAPP_FL_RUN_REASON"]
    assert reason.startswith("ONEAPP_FL_DP: the app bundle does not declare the run-config key dp"), reason
    assert not (root / "flwr-calls").exists()  # refused before any flwr call


@pytest.mark.slow  # a whole job through the runner: 3-5 minutes on a shared 2-core host
def test_a_verified_user_bundle_runs(flower: FlowerEnv, tmp_path: Path) -> None:
    """ONEAPP_FL_APP as a base64 Flower app bundle (here: the factory app, built with Flower's own
    builder) with the right sha256: verified, unpacked, submitted, followed to the end."""
    fab = tmp_path / "user.fab"
    subprocess.run(
        [
            str(flower.python),
            "-c",
            "import sys; from pathlib import Path; from flwr.cli.build import build_fab_from_disk; "
            "Path(sys.argv[2]).write_bytes(build_fab_from_disk(Path(sys.argv[1])))",
            str(APPS_DIR / "factory-app"),
            str(fab),
        ],
        check=True,
        timeout=120,
    )
    data = fab.read_bytes()
    params = {
        "ONEAPP_FL_APP": base64.b64encode(data).decode(),
        "ONEAPP_FL_APP_SHA256": hashlib.sha256(data).hexdigest(),
        "ONEAPP_FL_ROUNDS": "2",
        "ONEAPP_FL_MIN_NODES": "2",
    }
    with connected_federation(tmp_path, flower, params) as (_, environment):
        result = run_job(environment, timeout=480)
    assert result.returncode == 0, result.stderr[-3000:]
    published = calls(tmp_path)
    assert [c["ONEAPP_FL_ROUND"] for c in published if "ONEAPP_FL_ROUND" in c] == ["0/2", "1/2", "2/2"]
    assert published[-1]["ONEAPP_FL_RUN_STATUS"] == "finished"
    assert Path(published[-1]["ONEAPP_FL_MODEL"]).is_file()
    start = next(event for event in journal(tmp_path) if event["event"] == "start")
    assert start["app"] == f"fab:{hashlib.sha256(data).hexdigest()}"


def test_a_verified_bundle_is_unpacked_for_the_service_user(tmp_path: Path, stub_venv: Path) -> None:
    """flower-job runs as root (UMask=0027) and `flwr run` as the service user: the unpacked bundle must be
    the service user's, or the SuperLink refuses it ("Permission denied: .../pyproject.toml", seen in
    tests/e2e/test_cloud_jobs.py). Here the service user is ``daemon`` (a user with a group of its name)."""
    import pwd
    import shutil
    import sys

    if os.geteuid() != 0:
        pytest.fail("needs root, as the appliance's flower-job.service runs (chown to the service user)")
    daemon = pwd.getpwnam("daemon")
    (stub_venv / "bin" / "python").symlink_to(shutil.which("python3") or sys.executable)  # unzips the bundle
    encoded, digest = _bundle(tmp_path, "num-server-rounds = 3\n")
    root = tmp_path / "job"
    root.mkdir()
    environment = runner_env(
        root, stub_venv, ONEAPP_FL_APP=encoded, ONEAPP_FL_APP_SHA256=digest, FL_SERVICE_USER="daemon",
        FL_JOB_NODES_TIMEOUT="1",
    )  # fmt: skip
    result = run_job(environment, timeout=60)
    assert result.returncode == 1  # no SuperNodes (the stand-in flwr): after the bundle was unpacked
    assert "SuperNodes came online" in calls(root)[-1]["ONEAPP_FL_RUN_REASON"], calls(root)
    work = root / "state" / "job"
    unpacked = next(work.glob("app-*"))
    owners = {path.stat().st_uid for path in [work, unpacked, *unpacked.rglob("*")]}
    assert owners == {daemon.pw_uid}, owners
