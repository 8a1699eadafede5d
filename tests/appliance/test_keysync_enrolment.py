"""The enrolment signal (issue 13, first round sooner): the SuperLink's key sync publishes the keys it
registered (ONEAPP_FL_NODES_ENROLLED), polls fast while a SuperNode of the service is expected and missing
and slowly once all are enrolled; a SuperNode waits (bounded) for its key there before it starts, instead of
failing its activation and backing off. On this host with the test cloud's real OneGate (dummy driver) and
the stand-in ``flwr`` of the pinning tests."""

from __future__ import annotations

import hashlib
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from appliance_cloud import wait_for
from dummy_service import start_dummy_service
from test_keysync_pinning import B64_HEAD, REAL, KeySync, gate, identity, onegate_put

from hostkit.paths import CONTEXT_DIR

APPLIANCE_DIR = CONTEXT_DIR / "appliance"
OTHER = f"ecdsa-sha2-nistp384 {B64_HEAD}{'C' * 128}== supernode@second"


def key_hash(key: str) -> str:
    """fl_node_key_hash: the sha256 of "type base64" and a newline (awk's print)."""
    return hashlib.sha256((identity(key) + "\n").encode()).hexdigest()


@pytest.fixture(scope="module")
def running(dummy_cloud: Any) -> Any:
    return start_dummy_service(dummy_cloud, "enrol", supernodes=2)


@pytest.fixture
def service(dummy_cloud: Any, running: Any) -> Any:
    """One SuperLink and two SuperNodes that published no key yet, and no enrolled keys published."""
    for vm in running.supernodes:
        assert onegate_put(gate(dummy_cloud, vm), "/vm", "ONEAPP_FL_NODE_PUBKEY=").ok
    assert onegate_put(gate(dummy_cloud, running.superlink), "/vm", "ONEAPP_FL_NODES_ENROLLED=").ok
    return running


def superlink_template(service: Any) -> dict[str, str]:
    return dict(service.one.vm.info(service.superlink).USER_TEMPLATE)


def test_the_key_sync_publishes_what_it_enrolled_and_what_is_missing(
    make_sandbox, dummy_cloud, service, tmp_path: Path
) -> None:
    first, second = service.supernodes
    sync = KeySync(tmp_path, make_sandbox, gate(dummy_cloud, service.superlink))
    pending = sync.sandbox.state / "keysync" / "pending"

    # No SuperNode published a key yet: both expected and missing, nothing enrolled.
    result = sync()
    assert result.returncode == 0, result.stderr
    assert pending.read_text().split() == ["YES", "0", "2"]
    assert superlink_template(service).get("ONEAPP_FL_NODES_ENROLLED") in ("", None)

    assert onegate_put(gate(dummy_cloud, first), "/vm", f"ONEAPP_FL_NODE_PUBKEY={REAL}").ok
    assert sync().returncode == 0
    assert pending.read_text().split() == ["YES", "1", "2"]
    assert superlink_template(service)["ONEAPP_FL_NODES_ENROLLED"] == key_hash(REAL)

    assert onegate_put(gate(dummy_cloud, second), "/vm", f"ONEAPP_FL_NODE_PUBKEY={OTHER}").ok
    assert sync().returncode == 0
    assert pending.read_text().split() == ["NO", "2", "2"]
    published = superlink_template(service)["ONEAPP_FL_NODES_ENROLLED"].split()
    assert published == sorted([key_hash(REAL), key_hash(OTHER)])
    assert sorted(sync.registered()) == sorted([identity(REAL), identity(OTHER)])


def test_the_loop_polls_fast_while_a_supernode_is_missing_then_slowly(
    make_sandbox, dummy_cloud, service, tmp_path: Path
) -> None:
    first, second = service.supernodes
    sync = KeySync(tmp_path, make_sandbox, gate(dummy_cloud, service.superlink))
    assert onegate_put(gate(dummy_cloud, first), "/vm", f"ONEAPP_FL_NODE_PUBKEY={REAL}").ok
    environment = sync.sandbox.env(
        FL_VENV=str(sync.root / "flwr-venv"),
        FLWR_STUB_STATE=str(sync.root / "flwr-state"),
        FL_KEYSYNC_PIN_DIR=str(sync.pin_dir),
        FL_ONEGATE_DEADLINE="10",
        **sync.environment,
    )
    log = tmp_path / "loop.log"
    with log.open("w") as output:
        loop = subprocess.Popen(
            ["bash", str(APPLIANCE_DIR / "bin" / "flower-keysync"), "--loop", "600", "1"],
            env=environment, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        wait_for(lambda: "enrolled: 1 of 2; a pass every 1 s" in log.read_text(), 60, 0.2, "fast polling")
        # The second key arrives: a fast pass (not the 600 s one) enrols it, then the loop slows down.
        published_at = time.monotonic()
        assert onegate_put(gate(dummy_cloud, second), "/vm", f"ONEAPP_FL_NODE_PUBKEY={OTHER}").ok
        wait_for(lambda: "enrolled: 2 of 2; a pass every 600 s" in log.read_text(), 60, 0.2, "slow polling")
        assert time.monotonic() - published_at < 60
        assert sorted(sync.registered()) == sorted([identity(REAL), identity(OTHER)])
    finally:
        loop.terminate()
        loop.wait(timeout=30)


def test_the_fast_polling_ends_without_progress(make_sandbox, dummy_cloud, service, tmp_path: Path) -> None:
    """A member that never publishes a key does not keep the key sync polling every second."""
    sync = KeySync(tmp_path, make_sandbox, gate(dummy_cloud, service.superlink))
    result = sync.sandbox.bash(
        '. "$FL_APPLIANCE_DIR/bin/flower-keysync"\n'
        'mkdir -p "$(dirname "$PENDING")"; echo "YES 0 2" >"$PENDING"\n'
        "next_interval 30 1; echo first=$NEXT_INTERVAL\n"
        "next_interval 30 1; echo second=$NEXT_INTERVAL\n"
        "sleep 6; next_interval 30 1; echo later=$NEXT_INTERVAL\n",
        FL_KEYSYNC_FAST_WINDOW="5",
        FL_KEYSYNC_PIN_DIR=str(tmp_path / "pins"),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["first=1", "second=1", "later=30"], result.stdout
    assert "no progress for 5 s; a pass every 30 s" in result.stderr


def test_loop_needs_seconds(make_sandbox, dummy_cloud, service, tmp_path: Path) -> None:
    sync = KeySync(tmp_path, make_sandbox, gate(dummy_cloud, service.superlink))
    for arguments in (["--loop", "0"], ["--loop", "10", "x"], ["--loop", "-5"]):
        result = sync(*arguments)
        assert result.returncode == 2, (arguments, result.stderr)
        assert "--loop needs seconds" in result.stderr and "Traceback" not in result.stderr


# -- the SuperNode's side ---------------------------------------------------------------------------------


def wait_enrolled(sandbox: Any, environment: dict[str, str], superlink: int, **extra: str) -> Any:
    """supernode_wait_enrolled as bootstrap calls it, in a SuperNode VM of the service."""
    return sandbox.bash(
        f'FL_SL_VMID={superlink}; FL_SL_ENROLMENT="${{ENROLMENT}}"\n'
        'start=$(date +%s); supernode_wait_enrolled "${NODE_AUTH}"; echo "waited $(($(date +%s) - start))"\n',
        **{"ONEAPP_FL_TLS": "YES", "NODE_AUTH": "YES", "ENROLMENT": "keysync", **environment, **extra},
    )


def supernode_sandbox(make_sandbox) -> Any:
    sandbox = make_sandbox("supernode")
    keys = sandbox.state / "keys"
    keys.mkdir(parents=True)
    (keys / "supernode.pub").write_text(REAL + "\n")
    return sandbox


def test_a_supernode_waits_for_its_key_to_be_enrolled(make_sandbox, dummy_cloud, service) -> None:
    sandbox = supernode_sandbox(make_sandbox)
    node = gate(dummy_cloud, service.supernodes[0])
    link = gate(dummy_cloud, service.superlink)
    assert onegate_put(link, "/vm", f"ONEAPP_FL_NODES_ENROLLED={key_hash(OTHER)}").ok

    def enrol_later() -> None:
        time.sleep(3)
        both = f"{key_hash(OTHER)} {key_hash(REAL)}"
        assert onegate_put(link, "/vm", f"ONEAPP_FL_NODES_ENROLLED={both}").ok

    publisher = threading.Thread(target=enrol_later)
    publisher.start()
    result = wait_enrolled(sandbox, node, service.superlink, FL_ENROL_WAIT="60")
    publisher.join()
    assert result.returncode == 0, result.stderr
    waited = int(result.stdout.split()[-1])
    assert 3 <= waited < 30, result.stdout
    assert f"enrolled this node's key {key_hash(REAL)[:16]}" in result.stderr


def test_the_wait_is_bounded_and_never_fatal(make_sandbox, dummy_cloud, service) -> None:
    sandbox = supernode_sandbox(make_sandbox)
    node = gate(dummy_cloud, service.supernodes[0])
    assert onegate_put(gate(dummy_cloud, service.superlink), "/vm", "ONEAPP_FL_NODES_ENROLLED=").ok
    result = wait_enrolled(sandbox, node, service.superlink, FL_ENROL_WAIT="3")
    assert result.returncode == 0, result.stderr
    assert 3 <= int(result.stdout.split()[-1]) < 15
    assert "did not list this node's key" in result.stderr and "starting anyway" in result.stderr


@pytest.mark.parametrize(
    ("what", "extra"),
    [
        ("a SuperLink that does not publish the list", {"ENROLMENT": ""}),
        ("node authentication off", {"NODE_AUTH": "NO"}),
        ("TLS off", {"ONEAPP_FL_TLS": "NO"}),
    ],
)
def test_no_wait_where_there_is_nothing_to_wait_for(
    make_sandbox, dummy_cloud, service, what: str, extra: dict[str, str]
) -> None:
    sandbox = supernode_sandbox(make_sandbox)
    node = gate(dummy_cloud, service.supernodes[0])
    result = wait_enrolled(sandbox, node, service.superlink, FL_ENROL_WAIT="30", **extra)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1] == "0", (what, result.stdout, result.stderr)
    assert "enrolled" not in result.stderr, what


def test_the_superlink_key_hash_matches_the_supernode_one(make_sandbox) -> None:
    """Both sides compute the same identity (the comment is not part of it)."""
    sandbox = make_sandbox("supernode")
    result = sandbox.bash('fl_node_key_hash "$KEY"; fl_node_key_hash "${KEY% *} another@comment"', KEY=REAL)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [key_hash(REAL), key_hash(REAL)]
