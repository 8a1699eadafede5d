"""flower-metrics counts the key sync's events from the lines the real flower-keysync writes: the key sync
runs here against the test cloud's OneGate (dummy driver) with a stand-in ``flwr`` (as in
test_keysync_pinning.py), its log goes to a file, and the exporter reads that file as it reads journald."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from appliance_cloud import wait_for
from dummy_service import start_dummy_service
from metrics_helpers import promtool_check, samples, scrape_until, start_exporter
from test_keysync_pinning import REAL, ROGUE, KeySync, gate, identity, onegate_put


def test_key_events_of_a_real_key_sync(make_sandbox: Any, dummy_cloud: Any, tmp_path: Path) -> None:
    service = start_dummy_service(dummy_cloud, "fl-metrics", supernodes=1)
    one, node = service.one, service.supernodes[0]
    outsider = one.template.instantiate(service.template, "outsider")
    wait_for(lambda: one.vm.info(outsider).LCM_STATE == 3, 60, interval=0.2, what="outsider VM RUNNING")
    sync = KeySync(tmp_path, make_sandbox, gate(dummy_cloud, service.superlink))
    log = tmp_path / "keysync.log"

    def run_pass(*arguments: str) -> None:
        result = sync(*arguments)
        assert result.returncode == 0, result.stderr
        with open(log, "a") as handle:
            handle.write(result.stderr)

    assert onegate_put(gate(dummy_cloud, node), "/vm", f"ONEAPP_FL_NODE_PUBKEY={REAL}").ok
    run_pass()  # pinned + registered
    assert sync.registered() == [identity(REAL)]
    outsider_gate = gate(dummy_cloud, outsider)
    assert onegate_put(outsider_gate, "/vm", f" SERVICE_ID={service.service}\n").ok
    assert onegate_put(outsider_gate, f"/vms/{node}", f"ONEAPP_FL_NODE_PUBKEY={ROGUE}").ok
    run_pass()  # refused (logged once)
    run_pass()  # nothing new
    run_pass("--forget", str(node))
    run_pass()  # the rogue key is pinned now and registered, the real one unregistered
    assert sync.registered() == [identity(ROGUE)]

    exporter = start_exporter(
        "superlink", "--database", str(tmp_path / "none.db"), "--log", str(tmp_path / "none.log"),
        "--keysync-log", str(log),
    )  # fmt: skip
    text = scrape_until(
        exporter, lambda seen: seen.get('flower_keysync_key_events_total{event="unregistered"}')
    )
    found = samples(text)
    promtool_check(text)
    assert found['flower_keysync_key_events_total{event="pinned"}'] == 2
    assert found['flower_keysync_key_events_total{event="registered"}'] == 2
    assert found['flower_keysync_key_events_total{event="refused"}'] == 1
    assert found['flower_keysync_key_events_total{event="unregistered"}'] == 1
