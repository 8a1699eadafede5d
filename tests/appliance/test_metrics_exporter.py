"""flower-metrics as a process: who may scrape it (loopback by default, CIDRs, TLS with the appliance's CA),
bad arguments, GPUs present or absent, journald as a source, a state database that is not there.
Every exposition passes ``promtool check metrics``. The live federation is in test_metrics_live.py."""

from __future__ import annotations

import datetime
import json
import os
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from metrics_helpers import EXPORTER, promtool_check, samples, scrape_once, scrape_until, start_exporter

from factory.harness.tlsmaterial import make_tls
from hostkit.paths import CONTEXT_DIR, REPO_ROOT

BASE_PATH = "/usr/bin:/bin"


def _fake(directory: Path, name: str, script: str) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    tool = directory / name
    tool.write_text("#!/bin/sh\n" + script)
    tool.chmod(0o755)
    return f"{directory}:{BASE_PATH}"


def _raw_get(port: int, source: str) -> bytes:
    """An HTTP request from a chosen loopback source address; b"" when the server closes without answering."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as client:
        client.settimeout(5)
        client.bind((source, 0))
        client.connect(("127.0.0.1", port))
        client.sendall(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        chunks = []
        try:
            while chunk := client.recv(65536):
                chunks.append(chunk)
        except (ConnectionResetError, TimeoutError):
            pass
        return b"".join(chunks)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--allow", "10.0.0.0/33"], "--allow: '10.0.0.0/33' is not an IP address or CIDR"),
        (["--allow", "10.0.0.1, nonsense"], "--allow: 'nonsense' is not an IP address or CIDR"),
        (["--tls-cert", "/nonexistent.pem"], "--tls-cert and --tls-key go together"),
        (
            ["--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.key"],
            "--tls-cert/--tls-key: cannot load",
        ),
        (["--port", "70000"], "--port: 70000 is not a TCP port"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, str(EXPORTER), "supernode", "--log", "/nonexistent", *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_busy_port_is_a_clear_error() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = subprocess.run(
            [sys.executable, str(EXPORTER), "supernode", "--log", "/nonexistent", "--port", str(port)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert result.returncode == 2 and f"--port: cannot listen on 127.0.0.1:{port}" in result.stderr


def test_loopback_only_without_allowed_networks(tmp_path: Path) -> None:
    exporter = start_exporter("supernode", "--log", str(tmp_path / "none.log"), "--no-gpus")
    try:
        assert _raw_get(exporter.port, "127.0.0.1").startswith(b"HTTP/1.0 200")
        with pytest.raises(ConnectionRefusedError):  # bound to 127.0.0.1 alone, not to the whole of 127/8
            socket.create_connection(("127.0.0.2", exporter.port), timeout=5).close()
    finally:
        exporter.stop()


def test_allowed_networks_decide_who_gets_an_answer(tmp_path: Path) -> None:
    log = str(tmp_path / "none.log")
    exporter = start_exporter("supernode", "--log", log, "--no-gpus", "--allow", "10.231.64.0/24")
    try:
        assert _raw_get(exporter.port, "127.0.0.2") == b""  # not in the list: closed without an answer
        assert _raw_get(exporter.port, "127.0.0.1").startswith(b"HTTP/1.0 200")  # loopback always
    finally:
        exporter.stop()
    exporter = start_exporter(
        "supernode", "--log", log, "--no-gpus", "--allow", "10.231.64.0/24,127.0.0.2/32"
    )
    try:
        assert _raw_get(exporter.port, "127.0.0.2").startswith(b"HTTP/1.0 200")
        assert _raw_get(exporter.port, "127.0.0.3") == b""
    finally:
        exporter.stop()


def test_tls_with_the_appliance_ca(tmp_path: Path) -> None:
    tls = make_tls(tmp_path / "tls", ["127.0.0.1"])
    exporter = start_exporter(
        "supernode", "--log", str(tmp_path / "none.log"), "--no-gpus",
        "--tls-cert", str(tls.server_cert), "--tls-key", str(tls.server_key), ca=tls.ca_cert,
    )  # fmt: skip
    try:
        text = exporter.scrape()
        promtool_check(text)
        assert "flower_supernode_connected 0.0" in text
        with pytest.raises((urllib.error.URLError, ConnectionError)):  # plain HTTP gets no answer
            urllib.request.urlopen(f"http://127.0.0.1:{exporter.port}/metrics", timeout=5)
        other = make_tls(tmp_path / "other", ["127.0.0.1"]).ca_cert
        with pytest.raises(urllib.error.URLError) as refused:  # a client that trusts another CA refuses it
            urllib.request.urlopen(
                exporter.url, timeout=5, context=ssl.create_default_context(cafile=str(other))
            )
        assert "CERTIFICATE_VERIFY_FAILED" in str(refused.value)
        exporter.scrape()  # still serving
    finally:
        exporter.stop()
    output = exporter.process.stdout.read().decode() if exporter.process.stdout else ""
    assert "Traceback" not in output, output
    assert "failed:" in output  # the plain-HTTP request, said in one line


GPUS = """echo "0, GPU-0f4a, NVIDIA H200, 37, 1024, 143771"
echo "1, GPU-9c1d, NVIDIA H200, [N/A], 0, 143771"
"""


def test_gpus_from_nvidia_smi(tmp_path: Path) -> None:
    path = _fake(tmp_path / "bin", "nvidia-smi", GPUS)
    exporter = start_exporter("supernode", "--log", str(tmp_path / "none.log"), path=path)
    text = scrape_once(exporter)
    found = samples(text)
    labels = 'gpu="0",name="NVIDIA H200",uuid="GPU-0f4a"'
    assert found[f"flower_gpu_utilization_ratio{{{labels}}}"] == pytest.approx(0.37)
    assert found[f"flower_gpu_memory_used_bytes{{{labels}}}"] == 1024 * 1024 * 1024
    assert found[f"flower_gpu_memory_total_bytes{{{labels}}}"] == 143771 * 1024 * 1024
    # "[N/A]" is absent, not zero
    assert not any(key.startswith("flower_gpu_utilization_ratio") and 'gpu="1"' in key for key in found)


@pytest.mark.parametrize("nvidia_smi", ["absent", "failing"])
def test_no_gpu_metrics_without_a_working_nvidia_smi(nvidia_smi: str, tmp_path: Path) -> None:
    path = BASE_PATH
    if nvidia_smi == "failing":
        path = _fake(tmp_path / "bin", "nvidia-smi", 'echo "NVIDIA-SMI has failed" >&2\nexit 9\n')
    exporter = start_exporter("supernode", "--log", str(tmp_path / "none.log"), path=path)
    text = scrape_once(exporter)
    assert "flower_gpu" not in text
    assert "flower_supernode_connected" in text


def _journal(records: list[dict]) -> str:
    return "".join(json.dumps(record) + "\n" for record in records)


def test_superlink_and_keysync_from_the_journal(tmp_path: Path) -> None:
    """``journalctl -f -o json`` records (one fake journalctl that answers per -t identifier), a message
    with a control character written as a byte array as journald does, and key sync lines as
    flower-keysync logs them (fl_log's format)."""
    refusal = (
        "[/v1/fleet/activate-node][ApiError:2004] Attempted to register SuperNode with public key: b'..'"
    )
    stamps = ("1796185835000000", "1796185836000000", "1796185837000000", "1796185838000000")
    messages = (
        "INFO: [Fleet.ActivateNode] Activated node_id=1",
        refusal,
        list(("\x1b[91mERROR \x1b[0m: " + refusal).encode()),
        "[/v1/fleet/activate-node][ApiError:2001] no key",
    )
    link = [
        {"__REALTIME_TIMESTAMP": stamp, "MESSAGE": message}
        for stamp, message in zip(stamps, messages, strict=True)
    ]
    keysync = [
        {"MESSAGE": f"2026-12-02T04:30:00Z [keysync] {text}"}
        for text in (
            "pinned SuperNode key 0123456789abcdef to VM 7 (trust on first use)",
            "registered SuperNode key 0123456789abcdef as node 42",
            "WARNING: refused a changed key for SuperNode VM 7: ab is not its pinned key cd; it stays"
            " registered.",
            "unregistered SuperNode key 0123456789abcdef (node 42): it is no longer wanted",
        )
    ]
    (tmp_path / "link.json").write_text(_journal(link))
    (tmp_path / "keysync.json").write_text(_journal(keysync))
    script = f"""case "$*" in
  *--list-boots*) exit 0 ;;
  *"-t flower-superlink"*) cat {tmp_path}/link.json ;;
  *"-t flower-keysync"*) cat {tmp_path}/keysync.json ;;
esac
exec sleep 600
"""
    path = _fake(tmp_path / "bin", "journalctl", script)
    exporter = start_exporter("superlink", "--database", str(tmp_path / "missing.db"), path=path)
    text = scrape_until(
        exporter, lambda seen: seen.get('flower_keysync_key_events_total{event="unregistered"}') == 1
    )
    found = samples(text)
    promtool_check(text)
    assert found['flower_superlink_supernode_refusals_total{reason="unregistered_key"}'] == 2
    assert found['flower_superlink_supernode_refusals_total{reason="no_key"}'] == 1
    for event in ("pinned", "registered", "refused", "unregistered"):
        assert found[f'flower_keysync_key_events_total{{event="{event}"}}'] == 1, event
    assert found['flower_exporter_source_up{source="superlink_log"}'] == 1
    # the state database is not there: said, and nothing invented from it
    assert found['flower_exporter_source_up{source="state_db"}'] == 0
    assert "flower_superlink_runs" not in text and "flower_superlink_supernodes" not in text


def test_the_journal_is_read_for_the_newest_boot_it_holds(tmp_path: Path) -> None:
    """In a container the sandboxed exporter sees the host's boot ID (the container's is a bind mount that
    ProtectKernelTunables drops): asked for that boot, the journal has nothing. The fake answers only for the
    newest boot of ``--list-boots``, as the booted SuperNode's journal did."""
    newest = "731cb4bf5f5d4caeb9caaef2d0679f03"
    node = [{"__REALTIME_TIMESTAMP": "1796185835000000", "MESSAGE": "INFO :      SuperNode ID: 7852337562"}]
    (tmp_path / "node.json").write_text(_journal(node))
    script = f"""case "$*" in
  *--list-boots*) printf 'IDX BOOT ID                          FIRST ENTRY LAST ENTRY\\n'
                  printf ' -1 0123456789abcdef0123456789abcdef Tue Wed\\n  0 {newest} Wed Wed\\n'
                  exit 0 ;;
  *"-b {newest} -t flower-supernode"*) cat {tmp_path}/node.json ;;
esac
exec sleep 600
"""
    path = _fake(tmp_path / "bin", "journalctl", script)
    exporter = start_exporter("supernode", "--no-gpus", path=path)
    found = samples(scrape_until(exporter, lambda seen: seen.get("flower_supernode_connected") == 1))
    assert found['flower_exporter_source_up{source="supernode_log"}'] == 1
    assert found['flower_supernode_connection_state{state="connected"}'] == 1


@pytest.mark.parametrize(
    ("lines", "state", "failures"),
    [
        # the SuperExec the SuperNode starts (another process, same identifier) retries its local connection
        ([(100, "SuperNode ID: 7"), (101, "Starting Flower SuperExec"), (101, "Connection attempt failed"),
          (101, "Connection attempt failed"), (101, "Connection successful after 33.75 s")], "connected", 0),
        ([(100, "SuperNode ID: 7"), (101, "Connection attempt failed")], "connected", 0),
        # the SuperNode's own retries are about the SuperLink; its success afterwards connects it again
        ([(100, "SuperNode ID: 7"), (100, "Connection attempt failed")], "retrying", 1),
        ([(100, "SuperNode ID: 7"), (100, "Connection attempt failed"), (100, "Connection successful")],
         "connected", 1),
        # no process ids (a log file): every line counts, the success after them connects it again
        ([(None, "SuperNode ID: 7"), (None, "Connection attempt failed"), (None, "Connection successful")],
         "connected", 1),
    ],
)  # fmt: skip
def test_retries_count_for_the_supernode_process_only(
    tmp_path: Path, lines: list[tuple[int | None, str]], state: str, failures: int
) -> None:
    records = [
        {"MESSAGE": f"WARNING :   {text}", **({"_PID": str(pid)} if pid is not None else {})}
        for pid, text in lines
    ]
    (tmp_path / "node.json").write_text(_journal(records))
    script = f"""case "$*" in
  *--list-boots*) exit 0 ;;
  *"-t flower-supernode"*) cat {tmp_path}/node.json ;;
esac
exec sleep 600
"""
    path = _fake(tmp_path / "bin", "journalctl", script)
    exporter = start_exporter("supernode", "--no-gpus", path=path)
    wanted = f'flower_supernode_connection_state{{state="{state}"}}'
    found = samples(scrape_until(exporter, lambda seen: seen.get(wanted) == 1))
    assert found[wanted] == 1
    assert found["flower_supernode_connection_failures_total"] == failures


def test_arguments_from_a_file(tmp_path: Path) -> None:
    """The unit passes @/etc/flower/metrics.args: one argument a line, the role first."""
    args = tmp_path / "metrics.args"
    args.write_text(f"supernode\n--log\n{tmp_path / 'none.log'}\n--no-gpus\n")
    port_probe = start_exporter("supernode", "--log", str(tmp_path / "none.log"), "--no-gpus")
    port_probe.stop()
    result = subprocess.Popen(
        [sys.executable, str(EXPORTER), f"@{args}", "--port", str(port_probe.port)],
        stderr=subprocess.PIPE, text=True, env={**os.environ},
    )  # fmt: skip
    try:
        line = result.stderr.readline() if result.stderr else ""
        assert f"supernode metrics on http://[127.0.0.1]:{port_probe.port}/metrics" in line
    finally:
        result.terminate()
        result.wait(timeout=10)


def test_the_unit_verifies_and_runs_the_installed_exporter(tmp_path: Path) -> None:
    """systemd-analyze finds nothing to say about flower-metrics.service (ExecStart swapped for /bin/true:
    the venv is not on this host), and it starts the exporter where the images install it: the venv of
    images/provision/40-flower.sh, the bin directory 50-appliance.sh copies to /etc/one-appliance."""
    unit = (CONTEXT_DIR / "appliance" / "systemd" / "flower-metrics.service").read_text()
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    python, script, args = exec_start.removeprefix("ExecStart=").split()
    assert (python, script, args) == (
        "/opt/flower/venv/bin/python",
        "/etc/one-appliance/bin/flower-metrics",
        "@/etc/flower/metrics.args",
    )
    provision = REPO_ROOT / "images" / "provision"
    assert "venv=/opt/flower/venv" in (provision / "40-flower.sh").read_text()
    assert 'cp -a "${payload}/appliance/." /etc/one-appliance/' in (provision / "50-appliance.sh").read_text()
    copy = tmp_path / "flower-metrics.service"
    copy.write_text(unit.replace(exec_start, "ExecStart=/bin/true"))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60
    )  # fmt: skip
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr


def test_a_quiet_log_is_up_and_a_missing_one_is_down(tmp_path: Path) -> None:
    """The key sync logs nothing until a key changes: an open, empty log is a source that works."""
    quiet = tmp_path / "quiet.log"
    quiet.write_text("")
    for log, up in ((quiet, 1), (tmp_path / "missing.log", 0)):
        exporter = start_exporter("supernode", "--log", str(log), "--no-gpus")
        try:
            deadline = time.monotonic() + 10
            while True:
                found = samples(exporter.scrape())
                if (
                    found['flower_exporter_source_up{source="supernode_log"}'] == up
                    or time.monotonic() > deadline
                ):
                    break
                time.sleep(0.2)
        finally:
            exporter.stop()
        assert found['flower_exporter_source_up{source="supernode_log"}'] == up, log
        assert found['flower_supernode_connection_state{state="unknown"}'] == 1


# The tables of a SuperLink's state the exporter reads, with only the columns it reads, named as in Flower
# 1.41/1.42's linkstate_models.py and corestate_models.py.
STATE_TABLES = """
CREATE TABLE run (run_id BIGINT, primary_task_id BIGINT);
CREATE TABLE task (task_id BIGINT, run_id BIGINT, pending_at VARCHAR, starting_at VARCHAR,
                   running_at VARCHAR, finished_at VARCHAR, sub_status VARCHAR);
CREATE TABLE task_logs (timestamp FLOAT, task_id BIGINT, log VARCHAR);
CREATE TABLE node (node_id BIGINT, status VARCHAR, online_until FLOAT);
"""


def test_run_ids_are_the_unsigned_ids_flwr_shows(tmp_path: Path) -> None:
    """Flower stores a uint64 run id >= 2**63 as a negative int64 (flwr/supercore/utils.py
    uint64_to_int64); seen for real with run 13526230806941732539."""
    database = tmp_path / "state.db"
    with sqlite3.connect(database) as db:
        db.executescript(STATE_TABLES)
        signed = 13526230806941732539 - 2**64
        db.execute("INSERT INTO run VALUES (?, 5)", (signed,))
        db.execute(
            "INSERT INTO task VALUES (5, ?, '2026-12-02 04:30:30+00:00', '2026-12-02 04:30:31+00:00',"
            " '2026-12-02 04:30:35+00:00', NULL, '')",
            (signed,),
        )
        db.execute(
            "INSERT INTO task_logs VALUES (1, 5, ?)",
            (
                'FF-START {"rounds": 3}\nFF-ROUND '
                + json.dumps({"round": 1, "evaluate_metrics": {"eval_loss": 0.5}}),
            ),
        )
        db.execute("INSERT INTO node VALUES (1, 'online', ?)", (time.time() + 60,))
    exporter = start_exporter(
        "superlink", "--database", str(database), "--log", str(tmp_path / "none.log"), "--keysync-log", "none"
    )
    text = scrape_once(exporter)
    found = samples(text)
    run = 'run_id="13526230806941732539"'
    assert found[f"flower_superlink_run_active{{{run}}}"] == 1
    assert found[f"flower_superlink_run_rounds_planned{{{run}}}"] == 3
    assert found[f'flower_superlink_round_loss{{round="1",{run}}}'] == 0.5
    assert found['flower_superlink_runs{status="running"}'] == 1
    assert found["flower_superlink_supernodes_connected"] == 1


def test_runs_that_finished_close_together_keep_their_rounds(tmp_path: Path) -> None:
    """A job and the harness's canary finished seconds apart: both runs' rounds stay exported (keeping
    only the newest finished run lost the canary's last round between two scrapes), while a run that
    finished longer ago than the grace period is dropped."""
    database = tmp_path / "state.db"
    now = datetime.datetime.now(datetime.UTC)

    def stamp(seconds_ago: float) -> str:
        return str(now - datetime.timedelta(seconds=seconds_ago))

    with sqlite3.connect(database) as db:
        db.executescript(STATE_TABLES)
        for run_id, pending, finished in ((11, 3000, 2000), (12, 100, 5), (13, 90, 3)):
            db.execute("INSERT INTO run VALUES (?, ?)", (run_id, run_id))
            db.execute(
                "INSERT INTO task VALUES (?, ?, ?, ?, ?, ?, 'completed')",
                (run_id, run_id, stamp(pending), stamp(pending), stamp(pending), stamp(finished)),
            )
            db.execute(
                "INSERT INTO task_logs VALUES (1, ?, ?)",
                (run_id, "FF-ROUND " + json.dumps({"round": 3, "evaluate_metrics": {"eval_loss": run_id}})),
            )
    exporter = start_exporter(
        "superlink", "--database", str(database), "--log", str(tmp_path / "none.log"), "--keysync-log", "none"
    )
    found = samples(scrape_once(exporter))
    assert found['flower_superlink_round_loss{round="3",run_id="12"}'] == 12  # finished 2 s before 13
    assert found['flower_superlink_round_loss{round="3",run_id="13"}'] == 13
    assert 'flower_superlink_round_loss{round="3",run_id="11"}' not in found  # 2000 s ago
