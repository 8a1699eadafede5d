"""OneFlow scales the SuperNode role during a train-on-deploy job (issue 12, "The factory proves it"): a real
appliance pair in the local test cloud (debian12 1.42.0 edge images, TLS and node authentication) whose
SuperLink runs a job from its context (ONEAPP_FL_APP=numpy, no `flwr run` from here), and whose SuperNode
role carries two scheduled policies tuned for the test (CHANGE +2, then CHANGE -2, a few minutes apart,
inside min_vms 2 / max_vms 4). The test cloud's OneFlow evaluates them as upstream's autoscaler does
(hostkit/elasticity.py, docs/elasticity.md): no call from here scales anything.

What it proves: the new SuperNodes' keys are enrolled by the key sync and they train in the following
rounds (4 training replies a round); on the scale-down OneFlow removes two VMs, their keys are
unregistered, and the job goes on with its minimum (2 replies a round) without failing; the per-round
node count the compatibility report shows (factory/release/report.py ``nodes_per_round``) is the rounds'
``train_replies``. The run is stopped once it has shown that, rather than waiting for every round.

Needs root, systemd-nspawn and the test bridge (marker ``cloud``); about ten minutes (``slow``).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest
from scratch import scratch_dir

from e2e.test_faults import Pair
from factory.harness import appliance_templates
from factory.harness.campaign import find_pair_specs, local_image
from factory.harness.deployment import Deployment
from factory.harness.federation import RoundRecord, parse_report_lines
from factory.harness.flwrenv import FlowerEnv
from factory.one import OneCloud, load_settings
from factory.release.report import nodes_per_round
from hostkit import elasticity
from hostkit.errors import FactoryError
from hostkit.progress import Progress

pytestmark = [pytest.mark.cloud, pytest.mark.slow]

PAIR = "pair-sl1.42.0-sn1.42.0-debian12-cpu-edge-numpy"
ROUNDS = 80  # more than the test needs: it stops the run once the scale-down has been seen through
# The job, as a user asks for it in the SuperLink's context. A round waits at most 150 s for a removed
# node's reply (Flower answers "Node Unavailable" once its heartbeats lapse, about a minute).
JOB = {
    "ONEAPP_FL_APP": "numpy",
    "ONEAPP_FL_ROUNDS": str(ROUNDS),
    "ONEAPP_FL_MIN_NODES": "2",
    "ONEAPP_FL_RUN_CONFIG": "round-timeout=150",
}
# Seconds after the template is created. The service is RUNNING and the job in its first rounds about
# 90 s in; new SuperNodes boot, enrol and connect within about a minute; the grown federation then has
# a few rounds before the scale-down.
UP_AFTER, DOWN_AFTER = 150, 330
ROUNDS_AFTER_DOWN = 3  # rounds with the remaining SuperNodes that show the job goes on


@dataclass
class Seen:
    """What the test observed, seconds from the template's creation."""

    created: float
    supernodes: dict[float, list[int]] = field(default_factory=dict)  # every change of the role's VMs
    states: dict[float, str] = field(default_factory=dict)  # every change of the service's state
    run_id: int | None = None

    def at(self) -> float:
        return round(time.time() - self.created, 1)


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OneCloud]:
    from testcloud.launcher import start

    with scratch_dir(tmp_path_factory, "cloud") as state, start(state, "auto"):
        yield OneCloud(load_settings(environ={}, cloud_dir=state), Progress())


def _service_body(superlink: int, supernode: int, now: int) -> dict[str, Any]:
    body = appliance_templates.service_template(
        "flower-elastic", superlink, supernode, 2, "tls-auth", extra_context={"superlink": JOB}
    )
    role = next(role for role in body["roles"] if role["name"] == "supernode")
    role.update(
        min_vms=2,
        max_vms=4,
        cooldown=10,
        elasticity_policies=[],
        scheduled_policies=[
            {"type": "CHANGE", "adjust": 2, "start_time": str(now + UP_AFTER)},
            {"type": "CHANGE", "adjust": -2, "start_time": str(now + DOWN_AFTER)},
        ],
    )
    elasticity.validate_template(body)  # what OneFlow (and the factory's checks) run on it
    return body


def _rounds(pair: Pair, run_id: int) -> list[RoundRecord]:
    try:
        with pair.control("elastic") as cli:
            return parse_report_lines(cli.run_log(run_id))[1]
    except FactoryError:
        return []


def _keysync(pair: Pair) -> str:
    return pair.sh(pair.superlink(), "journalctl -t flower-keysync --no-pager -o cat")


def test_scheduled_policies_scale_the_supernodes_during_a_job(
    cloud: OneCloud, tmp_path_factory: pytest.TempPathFactory, flower_current: FlowerEnv
) -> None:
    workdir = tmp_path_factory.mktemp("elastic")
    workdir.chmod(0o700)
    spec = find_pair_specs([PAIR])[0]
    sides = {"superlink": spec.superlink, "supernode": spec.supernode}
    deployment = Deployment(cloud, "elastic", workdir / "pair", Progress())
    pair = Pair(deployment, flower_current)
    template_id: int | None = None
    try:
        with deployment:
            refs = deployment.import_images(
                {role: local_image(side.variant) for role, side in sides.items()},
                {role: f"flower-{side.variant}" for role, side in sides.items()},
            )
            vm_templates = [
                deployment.vm_template(role, refs[role].id, side.arch) for role, side in sides.items()
            ]
            now = int(time.time())
            template_id = cloud.create_service_template(_service_body(*vm_templates, now))
            seen = Seen(created=now)
            try:
                deployment.launch(template_id, 900)
            except FactoryError as error:
                raise AssertionError(f"{error}\n{pair.logs()}") from None
            _observe_and_check(pair, seen, workdir)
    finally:
        if template_id is not None:
            cloud.delete_service_template(template_id)


def _observe_and_check(pair: Pair, seen: Seen, workdir: Path) -> None:
    service = pair.deployment.service
    first = sorted(vm.id for vm in pair.supernodes())
    assert len(first) == 2
    keys_before = _keysync(pair)
    last_vms: list[int] = []
    last_state = ""
    rounds: list[RoundRecord] = []
    down_done: float | None = None
    deadline = time.time() + DOWN_AFTER + 900
    while time.time() < deadline:
        vms = sorted(vm.id for vm in pair.supernodes())
        state = service.state()
        if vms != last_vms:
            seen.supernodes[seen.at()] = vms
            last_vms = vms
        if state != last_state:
            seen.states[seen.at()] = state
            last_state = state
        superlink = pair.superlink().user_template
        if seen.run_id is None and str(superlink.get("ONEAPP_FL_RUN_ID", "")).isdigit():
            seen.run_id = int(superlink["ONEAPP_FL_RUN_ID"])
        assert superlink.get("ONEAPP_FL_RUN_STATUS") != "failed", (superlink, seen)
        grown = any(len(ids) == 4 for ids in seen.supernodes.values())
        if grown and down_done is None and len(vms) == 2 and state == "RUNNING":
            down_done = time.time()
        if down_done is not None and seen.run_id is not None:
            rounds = _rounds(pair, seen.run_id)
            after = [r for r in rounds if r.finished > down_done]
            if len(after) >= ROUNDS_AFTER_DOWN:
                break
        time.sleep(3)
    assert seen.run_id is not None, seen
    rounds = _rounds(pair, seen.run_id)
    keys_after = _keysync(pair)
    with pair.control("elastic-stop") as cli:
        status = str(cli.run_status(seen.run_id).get("status", ""))
        cli.stop_run(seen.run_id)
    replies = [r.train_replies for r in rounds]
    scaled_up_at = next(at for at, ids in seen.supernodes.items() if len(ids) == 4)
    new = sorted(set(seen.supernodes[scaled_up_at]) - set(first))
    last = next(ids for at, ids in reversed(seen.supernodes.items()))
    removed = sorted(set(seen.supernodes[scaled_up_at]) - set(last))
    created = seen.created
    first_with_4 = next((r for r in rounds if r.train_replies == 4), None)
    record = {
        "supernodes": seen.supernodes,
        "states": seen.states,
        "run": seen.run_id,
        "status_before_stop": status,
        "rounds": [(r.round, r.train_replies, round(r.finished - created, 1), r.errors) for r in rounds],
        "first_round_with_4_at": round(first_with_4.finished - created, 1) if first_with_4 else None,
        "down_done_at": round(down_done - created, 1) if down_done else None,
        "new": new,
        "removed": removed,
    }
    (workdir / "elasticity.json").write_text(json.dumps(record, indent=1, default=str))
    print(json.dumps(record, default=str))
    # OneFlow grew the role by 2 at the first policy's time (not before), then shrank it by 2
    assert scaled_up_at >= UP_AFTER and len(new) == 2, record
    assert down_done is not None and down_done - created >= DOWN_AFTER and len(removed) == 2, record
    assert len(last) == 2, record
    # the key sync pinned and registered the new SuperNodes' keys, and released and unregistered the
    # removed ones' (its own log lines, flower-keysync)
    for vm in new:
        assert f"to VM {vm} (trust on first use)" in keys_after, (record, keys_after[-3000:])
    for vm in removed:
        assert f"SuperNode VM {vm} left the service" in keys_after, (record, keys_after[-3000:])
    registered = re.findall(r"(?<!un)registered SuperNode key", keys_after)
    assert len(registered) >= 4 > len(re.findall(r"(?<!un)registered SuperNode key", keys_before)), record
    assert len(re.findall(r"unregistered SuperNode key", keys_after)) >= 2, (record, keys_after[-3000:])
    # the grown federation trained: rounds with 4 training replies, after the scale-up only
    assert first_with_4 is not None, record
    assert first_with_4.finished - created > scaled_up_at, record
    # after the scale-down the job went on with its minimum, every round answered by the 2 remaining
    after = [r for r in rounds if down_done and r.finished > down_done]
    assert len(after) >= ROUNDS_AFTER_DOWN and after[-1].train_replies == 2, record
    assert all(r.train_replies <= 2 for r in after[1:]), record
    assert status == "running", record
    assert [r.round for r in rounds] == list(range(1, len(rounds) + 1)), record
    # the report's per-round node count is the rounds' train_replies, and shows both steps
    shown = nodes_per_round([asdict(r) for r in rounds])
    assert shown == replies, record
    assert 2 in shown[: shown.index(4)] and shown[-1] == 2, record
