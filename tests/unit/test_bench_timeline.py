"""bench_e2e's timeline: the appliance log and journal lines that show where the time to the first round
went, in seconds after the instantiation (the journal's lines carry no year)."""

from __future__ import annotations

import calendar
import time

from benchmarks.bench_e2e import timeline


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
