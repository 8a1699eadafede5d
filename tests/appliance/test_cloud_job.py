"""Train on deploy on the local test cloud: a OneFlow service whose SuperLink context asks for a job
(ONEAPP_FL_APP and friends, nothing else: no tunnel, no `flwr run` from here) runs it to the end, and its
progress is followed where an OpenNebula user looks, the SuperLink VM's OneGate attributes; a bad job
parameter (an unknown use case) is reported as the job's failure with the reason, and no run starts.

The follower and the checks are the factory's own (factory/harness/jobcheck.py), reading the VM through a
pyone connection of their own.
"""

from __future__ import annotations

import json

import pyone
import pytest
from appliance_cloud import ApplianceCloud

from factory.harness.jobcheck import JobFollower, JobPlan, job_checks

pytestmark = pytest.mark.cloud

PLAN = JobPlan("tabular", rounds=2, min_nodes=2)  # the sklearn pair's use case (jobcheck.use_case_for)


def superlink_reader(cloud: ApplianceCloud, service: int):
    own = pyone.OneServer(cloud.handle.endpoints["xmlrpc"], session=cloud.handle.auth)

    def read() -> dict[str, str] | None:
        superlinks = cloud.role_vms(service, "superlink")  # OneFlow over HTTP: a request per call
        return dict(own.vm.info(superlinks[0]).USER_TEMPLATE or {}) if superlinks else None

    return read


def job_events(cloud: ApplianceCloud, vm: int) -> list[dict]:
    result = cloud.sh(vm, "cat /var/log/one-appliance/flower-job.jsonl 2>/dev/null || true")
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def test_a_job_from_context_runs_to_the_end(appliance_cloud: ApplianceCloud) -> None:
    cloud = appliance_cloud
    service = cloud.service("job", superlink_context=PLAN.context())
    follower = JobFollower(superlink_reader(cloud, service)).start()
    try:
        cloud.wait_service_running(service)
        observation = follower.wait(900)
        superlink = cloud.role_vms(service, "superlink")[0]
        checks = job_checks(observation, PLAN)
        failed = [check for check in checks if not check["passed"]]
        assert not failed, (failed, observation.to_dict(), cloud.diagnose(superlink))
        # what the checks saw: waiting -> running -> finished, rounds 1..2 with their metrics
        assert observation.statuses == ["waiting-for-nodes", "running", "finished"]
        assert sorted(observation.rounds) == [1, 2] and observation.run_id.isdigit()
        # inside: the job's own log, the model and the checkpoints, written as the service user
        cloud.wait_ssh(superlink)
        events = [event["event"] for event in job_events(cloud, superlink)]
        assert events[0] == "waiting" and "start" in events and events[-1] == "finished", events
        assert events.count("round") == PLAN.rounds
        model = cloud.host(superlink).file(observation.model)
        assert model.exists and model.user == "flower", observation.model
        unit = cloud.sh(superlink, "systemctl is-enabled flower-job.service").stdout.strip()
        assert unit == "enabled"
    finally:
        follower.stop()
        cloud.delete_service(service)


def test_an_unknown_use_case_fails_the_job_with_the_reason(appliance_cloud: ApplianceCloud) -> None:
    cloud = appliance_cloud
    vm = cloud.instantiate("superlink", "job-unknown-use-case", {"ONEAPP_FL_APP": "jax"})
    try:
        status = cloud.wait_attribute(vm, "ONEAPP_FL_RUN_STATUS", lambda value: value == "failed", 600)
        assert status == "failed"
        attributes = cloud.user_template(vm)
        assert "ONEAPP_FL_APP: 'jax' is not a bundled use case" in attributes.get("ONEAPP_FL_RUN_REASON", "")
        assert not attributes.get("ONEAPP_FL_RUN_ID")
        # the appliance itself is fine: the SuperLink serves `flwr run` as without a job
        cloud.wait_ready(vm)
        assert attributes.get("ONEAPP_FL_STATUS") in {"ready", "bootstrapping"}
        cloud.wait_ssh(vm)
        assert [event["event"] for event in job_events(cloud, vm)] == ["failed"]
        runs = cloud.sh(vm, "/opt/flower/venv/bin/flwr list --format json")
        assert json.loads(runs.stdout).get("runs") == [], runs.stdout
        problem = cloud.sh(vm, "cat /etc/flower/job.problem").stdout
        assert "'jax'" in problem
    finally:
        cloud.terminate(vm)
