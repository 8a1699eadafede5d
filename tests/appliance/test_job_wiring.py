"""Train on deploy wired into the appliances, on this host (sandbox, no systemd): the SuperLink's configure
writes flower-job's environment from the ONEAPP_FL_* job parameters (or nothing when ONEAPP_FL_APP is
empty), a bad job parameter is the job's failure and not the appliance's, and a SuperNode's ONEAPP_FL_DATA
reaches its node config as data-path only when the file is there and readable."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from hostkit.paths import CONTEXT_DIR

RUNNER = CONTEXT_DIR / "appliance" / "bin" / "flower-job"
LINE = re.compile(r'^([A-Z][A-Z0-9_]*)="((?:[^"\\]|\\.)*)"$')


def read_env_file(path: Path) -> dict[str, str]:
    """systemd's EnvironmentFile reading of the lines configure writes (KEY="value", \\ escapes; comments)."""
    values = {}
    for line in path.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        match = LINE.match(line)
        assert match, f'not a KEY="value" line: {line!r}'
        values[match.group(1)] = re.sub(r"\\(.)", r"\1", match.group(2))
    return values


def test_configure_writes_the_job_environment(make_sandbox) -> None:
    sandbox = make_sandbox("superlink")
    config = 'local-epochs=2 tag="v1"\nlearning-rate=0.01'
    sandbox.configured(
        ETH0_IP="10.231.64.50",
        ONEAPP_FL_APP="tabular",
        ONEAPP_FL_ROUNDS="2",
        ONEAPP_FL_RUN_CONFIG=config,
        ONEAPP_FL_CHECKPOINT_DIR=str(sandbox.root / "ckpt"),
    )
    values = read_env_file(sandbox.etc / "job.env")
    assert values["ONEAPP_FL_APP"] == "tabular"
    assert values["ONEAPP_FL_ROUNDS"] == "2"
    assert values["ONEAPP_FL_STRATEGY"] == "fedavg"  # the declared default
    assert values["ONEAPP_FL_RUN_CONFIG"] == config.replace("\n", " ")
    assert values["FL_JOB_MAX_NODES"] == ""  # no OneGate here
    assert (sandbox.etc / "job.env").stat().st_mode & 0o077 == 0
    assert (sandbox.root / "ckpt").is_dir()
    assert not (sandbox.etc / "job.problem").exists()
    # what flower-job reads from it passes its own check
    check = subprocess.run(
        ["bash", "-c", f'set -a; . "{sandbox.etc / "job.env"}"; exec "{RUNNER}" --check'],
        env=sandbox.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 0, check.stderr


def test_no_app_no_job(make_sandbox) -> None:
    sandbox = make_sandbox("superlink")
    sandbox.configured(ETH0_IP="10.231.64.50", ONEAPP_FL_APP="numpy")
    assert (sandbox.etc / "job.env").exists()
    sandbox.configured(ETH0_IP="10.231.64.50", ONEAPP_FL_APP="")
    assert not (sandbox.etc / "job.env").exists()


def test_a_bad_job_parameter_fails_the_job_not_the_appliance(make_sandbox) -> None:
    sandbox = make_sandbox("superlink")
    sandbox.configured(
        ETH0_IP="10.231.64.50", ONEAPP_FL_APP="jax", ONEAPP_FL_CHECKPOINT_DIR=str(sandbox.root / "ckpt")
    )
    assert sandbox.status == "configure_success"
    problem = (sandbox.etc / "job.problem").read_text()
    assert "ONEAPP_FL_APP: 'jax' is not a bundled use case" in problem
    assert "train on deploy: ONEAPP_FL_APP: 'jax'" in sandbox.log("configure")
    assert not (sandbox.root / "ckpt").exists()  # nothing prepared for a job that cannot run


def test_a_declared_list_value_is_checked_by_configure(make_sandbox) -> None:
    sandbox = make_sandbox("superlink")
    result = sandbox.service("configure", ETH0_IP="10.231.64.50", ONEAPP_FL_LOG_LEVEL="LOUD")
    assert result.returncode != 0
    assert "ONEAPP_FL_LOG_LEVEL" in sandbox.reason


def test_a_job_list_value_out_of_its_options_fails_the_job_not_the_appliance(make_sandbox) -> None:
    """ONEAPP_FL_STRATEGY and ONEAPP_FL_DP are lists (OneFlow offers their options), but a value given
    in the context directly is the job's to refuse (flower-job --check, published as the job's failure),
    as every other job parameter: found by tests/e2e/test_cloud_jobs.py, where an unknown strategy
    failed the SuperLink's whole reconfiguration instead."""
    for name, value, reason in (
        ("ONEAPP_FL_STRATEGY", "fedbogus", "ONEAPP_FL_STRATEGY: unknown strategy 'fedbogus'"),
        ("ONEAPP_FL_DP", "local", "ONEAPP_FL_DP: unknown mode 'local'"),
        ("ONEAPP_FL_ROUNDS", "many", "ONEAPP_FL_ROUNDS: must be an integer within 1..100000, got 'many'"),
    ):
        sandbox = make_sandbox("superlink")
        sandbox.configured(
            ETH0_IP="10.231.64.50",
            ONEAPP_FL_APP="numpy",
            ONEAPP_FL_CHECKPOINT_DIR=str(sandbox.root / "ckpt"),
            **{name: value},
        )
        assert sandbox.status == "configure_success", (name, sandbox.log("configure"))
        assert reason in (sandbox.etc / "job.problem").read_text()
        assert f"{name}: " in sandbox.log("configure") and "left to its own check" in sandbox.log("configure")
        assert not (sandbox.root / "ckpt").exists()


def test_node_data_reaches_the_node_config(make_sandbox, tmp_path: Path) -> None:
    sandbox = make_sandbox("supernode")
    data = tmp_path / "data" / "train.csv"
    data.parent.mkdir()
    data.write_text("a,b,label\n1,2,0\n")
    result = sandbox.bash(
        'supernode_check_data; supernode_data_node_config "partition-id=0 num-partitions=2"',
        ONEAPP_FL_DATA=str(data),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == f'partition-id=0 num-partitions=2 data-path="{data}"'
    empty = sandbox.bash('supernode_data_node_config "partition-id=1 num-partitions=2"', ONEAPP_FL_DATA="")
    assert empty.stdout.strip() == "partition-id=1 num-partitions=2"


def test_node_data_that_is_not_there_fails_configure_with_the_reason(make_sandbox, tmp_path: Path) -> None:
    cases = {
        str(tmp_path / "missing.csv"): "does not exist or is not a file",
        "relative/data.csv": "must be an absolute path",
        "/home/alice/data.csv": "ProtectHome",
        str(tmp_path / "data.txt"): "neither .csv nor .npz",
    }
    (tmp_path / "data.txt").write_text("x\n")
    for path, reason in cases.items():
        sandbox = make_sandbox("supernode")
        result = sandbox.service("configure", ONEAPP_FL_TLS="NO", ONEAPP_FL_DATA=path)
        assert result.returncode != 0, path
        assert "ONEAPP_FL_DATA" in sandbox.reason and reason in sandbox.reason, sandbox.reason


def test_the_job_publishes_through_onegate_with_the_context_credentials(tmp_path: Path) -> None:
    """flower-job as its unit runs it: the job's values from its environment (job.env), OneGate's endpoint,
    VM id and token from one-context's env file (and nothing else from there), each value URL-encoded in
    the PUT /vm body as upstream's onegate client sends it."""
    import http.server
    import threading
    import urllib.parse

    received: list[tuple[str, str, str, dict[str, list[str]]]] = []

    class OneGate(http.server.BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"])).decode()
            token = self.headers.get("X-ONEGATE-TOKEN", "")
            received.append(
                (self.path, token, self.headers.get("X-ONEGATE-VMID", ""), urllib.parse.parse_qs(body))
            )
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), OneGate)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env_file = tmp_path / "one_env"
        env_file.write_text(
            f'export ONEGATE_ENDPOINT="http://127.0.0.1:{server.server_address[1]}"\n'
            'export VMID="5"\nexport TOKENTXT="token-5"\nexport ONEAPP_FL_APP="numpy"\n'
        )
        environment = {
            "PATH": "/usr/bin:/bin",
            "FL_APPLIANCE_DIR": str(CONTEXT_DIR / "appliance"),
            "FL_STATE": str(tmp_path / "state"),
            "FL_LOG_DIR": str(tmp_path / "log"),
            "FL_RUN": str(tmp_path / "run"),
            "ENV_FILE": str(env_file),
            "ONEAPP_FL_APP": "jax&ONEAPP_FL_RUN_STATUS=finished",
        }
        result = subprocess.run(
            ["bash", str(RUNNER)], env=environment, capture_output=True, text=True, timeout=60, check=False
        )
    finally:
        server.shutdown()
    assert result.returncode == 1, result.stdout + result.stderr
    # first the attributes of an earlier job emptied (the job begins clean), then its failure
    assert len(received) == 2, received
    emptied = received[0][3]["data"][0].splitlines()
    assert emptied[0] == "ONEAPP_FL_RUN_STATUS=" and all(line.endswith("=") for line in emptied), emptied
    path, token, vmid, form = received[1]
    assert (path, token, vmid) == ("/vm", "token-5", "5") == received[0][:3]
    lines = form["data"][0].splitlines()
    assert lines[0] == "ONEAPP_FL_RUN_STATUS=failed"
    assert lines[1].startswith("ONEAPP_FL_RUN_REASON=ONEAPP_FL_APP: 'jax&ONEAPP_FL_RUN_STATUS=finished'")
    assert set(form) == {"data"}  # the '&' stayed inside the value
