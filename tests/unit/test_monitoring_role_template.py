"""The service template's monitoring role (factory/harness/appliance_templates.py), the factory's check of it
(factory/one/service_checks.py), the parameter that picks it (images/params.yaml), the campaign's choice
of the pair that runs it, the release check's parts that need no cloud (factory/harness/monitorcheck.py)
and its column in the compatibility report. The booted role: tests/e2e/test_cloud_monitoring_role.py."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

from factory.harness import appliance_templates, monitorcheck
from factory.harness.campaign import monitoring_pair_of
from factory.model import params
from factory.one import service_checks
from hostkit.errors import ConfigError, FactoryError


def _roles(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {role["name"]: role for role in body["roles"]}


def test_the_parameter_is_a_superlink_list_with_its_default() -> None:
    declared = {p.name: p for p in params.load_params().for_role("superlink")}["ONEAPP_FL_APPLIANCE_ROLE"]
    assert declared.default == "superlink" and list(declared.options) == ["superlink", "monitoring"]
    assert "ONEAPP_FL_APPLIANCE_ROLE" not in {p.name for p in params.load_params().for_role("supernode")}
    # a VM template of the SuperLink offers it; the service-level inputs do not (OneFlow would write their
    # values over the monitoring role's own CONTEXT)
    assert (
        "ONEAPP_FL_APPLIANCE_ROLE" in appliance_templates.vm_template("superlink", "x", 1, 0)["USER_INPUTS"]
    )
    assert "ONEAPP_FL_APPLIANCE_ROLE" not in appliance_templates.service_user_inputs()
    assert (
        "ONEAPP_FL_APPLIANCE_ROLE"
        not in appliance_templates.service_template("s", None, None, security=None)["user_inputs"]
    )


def test_the_role_has_no_vm_by_default() -> None:
    body = appliance_templates.service_template("s", 3, 4)
    role = _roles(body)["monitoring"]
    assert role["cardinality"] == 0 and role["template_id"] == 3
    assert role["template_contents"]["CONTEXT"] == {"ONEAPP_FL_APPLIANCE_ROLE": "monitoring"}
    assert "ONEAPP_FL_METRICS_ALLOW" not in _roles(body)["superlink"]["template_contents"]["CONTEXT"]
    service_checks.check_template(body)


def test_monitoring_on_boots_the_superlink_image_in_monitoring_mode() -> None:
    body = appliance_templates.service_template(
        "s", 3, 4, 2, "tls-auth",
        extra_context={"superlink": {"ONEAPP_FL_METRICS_TLS": "YES", "ONEAPP_FL_METRICS_PORT": "9111"}},
        monitoring=True, metrics_allow="10.231.64.0/24",
    )  # fmt: skip
    roles = _roles(body)
    role = roles["monitoring"]
    assert role["cardinality"] == 1 and role["template_id"] == roles["superlink"]["template_id"]
    assert role["parents"] == ["superlink"]  # deployed once the SuperLink runs (its CA is published)
    assert role["template_contents"]["CONTEXT"] == {
        "ONEAPP_FL_APPLIANCE_ROLE": "monitoring",
        "ONEAPP_FL_METRICS_TLS": "YES",
        "ONEAPP_FL_METRICS_PORT": "9111",
    }
    assert role["template_contents"]["NIC"] == [{"NETWORK_ID": "$Private"}]  # the service network
    for name in ("superlink", "supernode"):
        assert roles[name]["template_contents"]["CONTEXT"]["ONEAPP_FL_METRICS_ALLOW"] == "10.231.64.0/24"
    service_checks.check_template(body)


def test_monitoring_on_needs_the_network_to_admit() -> None:
    with pytest.raises(ValueError, match="metrics_allow"):
        appliance_templates.service_template("s", 3, 4, monitoring=True)


@pytest.mark.parametrize(
    ("context", "said"),
    [({}, "no ONEAPP_FL_APPLIANCE_ROLE"), ({"ONEAPP_FL_APPLIANCE_ROLE": "superlink"}, "'superlink'")],
)
def test_a_monitoring_vm_that_would_be_a_second_superlink_is_refused(
    context: dict[str, str], said: str
) -> None:
    body = appliance_templates.service_template("s", 3, 4, monitoring=True, metrics_allow="10.0.0.0/8")
    _roles(body)["monitoring"]["template_contents"]["CONTEXT"] = context
    with pytest.raises(FactoryError, match="another SuperLink") as raised:
        service_checks.check_template(body)
    assert said in str(raised.value)


def test_a_user_template_for_the_role_is_accepted() -> None:
    body = appliance_templates.service_template("s", 3, 4)
    _roles(body)["monitoring"].update(cardinality=1, template_id=9, template_contents={})
    service_checks.check_template(body)


def test_the_campaign_picks_one_monitoring_pair() -> None:
    specs = [SimpleNamespace(name="pair-a"), SimpleNamespace(name="pair-b")]
    assert monitoring_pair_of(specs, "first") == "pair-a"  # type: ignore[arg-type]
    assert monitoring_pair_of(specs, "pair-b") == "pair-b"  # type: ignore[arg-type]
    assert monitoring_pair_of(specs, "none") is None  # type: ignore[arg-type]
    assert monitoring_pair_of([], "first") is None
    with pytest.raises(ConfigError, match=r"--monitoring-pair.*'pair-c' is not a pair of this campaign"):
        monitoring_pair_of(specs, "pair-c")  # type: ignore[arg-type]
    # the campaign refuses it when made (before a cloud starts), and marks only the chosen pair
    from factory.harness.campaign import Campaign
    from factory.harness.pairtest import PairTestOptions

    with pytest.raises(ConfigError, match="--monitoring-pair"):
        Campaign(specs, "r", PairTestOptions(monitoring_pair="pair-c"), record=print)  # type: ignore[arg-type]
    campaign = Campaign(specs, "r", PairTestOptions(monitoring_pair="pair-b"), record=print)  # type: ignore[arg-type]
    assert [(run.spec.name, run.options.monitoring_role) for run in campaign.runs()] == [
        ("pair-a", False),
        ("pair-b", True),
    ]


# -- the release check, fed with Prometheus' answers ------------------------------------------------------


def test_every_dashboard_panel_query_is_read_from_the_committed_json() -> None:
    panels = monitorcheck.dashboard_panels()
    document = json.loads(monitorcheck.DASHBOARD.read_text())
    expected = [p["title"] for p in document["panels"] if p.get("targets")]
    assert [title for title, _ in panels] == expected and monitorcheck.LOSS_PANEL in expected
    assert set(expected) >= monitorcheck.MAY_BE_EMPTY
    sent = [monitorcheck.as_sent(q) for _, queries in panels for q in queries]
    assert not [q for q in sent if "$" in q]  # every Grafana variable replaced


def test_network_cidrs_cover_the_address_ranges() -> None:
    ranges = [SimpleNamespace(IP="10.231.64.2", SIZE="254"), SimpleNamespace(IP=None, SIZE=None)]
    network = SimpleNamespace(AR_POOL=SimpleNamespace(AR=ranges))
    cloud = SimpleNamespace(
        network_id=lambda: 0, one=SimpleNamespace(vn=SimpleNamespace(info=lambda _: network))
    )
    assert monitorcheck.network_cidrs(
        cloud
    ) == "10.231.64.2/31,10.231.64.4/30,10.231.64.8/29,10.231.64.16/28," + (
        "10.231.64.32/27,10.231.64.64/26,10.231.64.128/25"
    )
    network.AR_POOL = SimpleNamespace(AR=[])
    with pytest.raises(FactoryError, match="no IPv4 address range"):
        monitorcheck.network_cidrs(cloud)


FEDERATIONS = [
    {
        "task": "numpy",
        "run_id": 7,
        "submitted_at": 1000.0,
        "rounds": [
            {"round": 1, "evaluate_metrics": {"eval_loss": 2.5}},
            {"round": 2, "evaluate_metrics": {"eval_loss": 1.25}},
        ],
    },
    {"task": "broken", "run_id": None, "submitted_at": 1100.0, "rounds": []},
]


class FakePrometheus:
    """Prometheus' API answers: targets by VM id, the loss panel's series, the rest one series each."""

    def __init__(self, targets: dict[str, str], losses: dict[tuple[str, int], float]) -> None:
        self.targets, self.losses, self.asked = targets, losses, []

    def __call__(self, path: str, params: dict[str, str]) -> Any:
        self.asked.append((path, params))
        if path == "/api/v1/targets":
            return {
                "activeTargets": [
                    {"labels": {"one_vm_id": i}, "health": h, "scrapeUrl": f"http://{i}"}
                    for i, h in self.targets.items()
                ]
            }
        if "flower_superlink_round_loss" in params["query"]:
            return {"result": [
                {"metric": {"run_id": run, "round": str(number)}, "values": [[1, "9"], [2, str(loss)]]}
                for (run, number), loss in self.losses.items()
            ]}  # fmt: skip
        if "flower_gpu" in params["query"]:
            return {"result": []}
        return {"result": [{"metric": {}, "values": [[1, "1"]]}]}


def test_a_late_last_round_is_waited_for() -> None:
    """The last round ended after the last scrape: the first answer lacks it, a later one has it."""
    get = FakePrometheus({"1": "up"}, {("7", 1): 2.5})

    def clock() -> float:
        get.losses[("7", 2)] = 1.25  # the next scrape, after the first attempt
        return 2000.0

    first = monitorcheck.evaluate(get, {"1": "superlink"}, FEDERATIONS, lambda: 2000.0, settle=0)
    assert not first["passed"] and "rounds [1], results [1, 2]" in first["detail"]
    check = monitorcheck.evaluate(get, {"1": "superlink"}, FEDERATIONS, clock, settle=5, poll=0.01)
    assert check["passed"], check


def test_the_check_passes_when_targets_panels_and_losses_agree() -> None:
    get = FakePrometheus({"1": "up", "2": "up"}, {("7", 1): 2.5, ("7", 2): 1.25})
    check = monitorcheck.evaluate(
        get, {"1": "superlink", "2": "supernode"}, FEDERATIONS, lambda: 2000.0, settle=0
    )
    assert check["passed"], check
    assert check["name"] == "monitoring_role" and check["task"] == "monitoring"
    assert "2 round losses equal the results" in check["detail"] and "GPU utilisation" in check["detail"]
    window = next(params for path, params in get.asked if path == "/api/v1/query_range")
    start, end, step = float(window["start"]), float(window["end"]), int(window["step"])
    assert end == 2000.0 and start <= 1000.0 - 120 < start + step and (end - start) % step == 0


@pytest.mark.parametrize(
    ("targets", "losses", "said"),
    [
        ({"1": "up"}, {("7", 1): 2.5, ("7", 2): 1.25}, "VM 2 (supernode) is not a target"),
        (
            {"1": "up", "2": "down"},
            {("7", 1): 2.5, ("7", 2): 1.25},
            "VM 2 (supernode) target http://2 is down",
        ),
        (
            {"1": "up", "2": "up"},
            {("7", 1): 2.5},
            "run 7 (numpy): the panel shows rounds [1], results [1, 2]; targets now: VM 1 up 0.00 s, VM 2 up",
        ),
        (
            {"1": "up", "2": "up"},
            {("7", 1): 2.5, ("7", 2): 1.5},
            "run 7 (numpy) round 2: the panel shows loss 1.5",
        ),
        ({"1": "up", "2": "up"}, {}, "run 7 (numpy): the panel shows rounds []"),
    ],
)
def test_the_check_fails_naming_what_differs(targets: dict[str, str], losses: Any, said: str) -> None:
    check = monitorcheck.evaluate(
        FakePrometheus(targets, losses),
        {"1": "superlink", "2": "supernode"},
        FEDERATIONS,
        lambda: 2000.0,
        settle=0,
    )
    assert not check["passed"] and said in check["detail"], check


def test_an_empty_panel_that_every_pair_has_fails_the_check() -> None:
    class NoRuns(FakePrometheus):
        def __call__(self, path: str, params: dict[str, str]) -> Any:
            if path != "/api/v1/targets" and "flower_superlink_runs" in params["query"]:
                return {"result": []}
            return super().__call__(path, params)

    check = monitorcheck.evaluate(
        NoRuns({"1": "up"}, {("7", 1): 2.5, ("7", 2): 1.25}),
        {"1": "superlink"},
        FEDERATIONS,
        lambda: 2000.0,
        settle=0,
    )
    assert not check["passed"] and "panel 'Active runs' returned no data" in check["detail"]


def test_prometheus_errors_are_one_line() -> None:
    get = monitorcheck.curl_get(
        lambda command: (0, '{"status":"error","errorType":"bad_data","error":"parse"}', "")
    )
    with pytest.raises(FactoryError, match="bad_data: parse"):
        get("/api/v1/query", {"query": "up"})
    get = monitorcheck.curl_get(lambda command: (7, "", "Failed to connect"))
    with pytest.raises(FactoryError, match="curl exit 7: Failed to connect"):
        get("/api/v1/targets", {})
    seen: list[str] = []

    def execute(command: str) -> tuple[int, str, str]:
        seen.append(command)
        return 0, '{"status": "success", "data": {"result": []}}', ""

    assert monitorcheck.curl_get(execute)("/api/v1/query", {"query": 'up{a="b c"}'}) == {"result": []}
    url = "http://127.0.0.1:9090/api/v1/query?query=up%7Ba%3D%22b+c%22%7D"
    assert seen == [f"curl --silent --show-error --max-time 60 '{url}'"]


def test_the_report_names_the_check_or_says_not_run() -> None:
    from factory.release.report import describe_monitoring_role

    assert describe_monitoring_role({}) == "not run"
    cell = describe_monitoring_role({"monitoring_role": {"passed": True, "detail": "VM 9: 3 VMs up"}})
    assert cell == "passed (monitoring/monitoring_role): VM 9: 3 VMs up"


def test_the_monitoring_pair_with_flower_tls_serves_its_metrics_over_https() -> None:
    """What the harness adds to the monitoring pair's service (pairtest._deploy_and_run): with Flower TLS,
    METRICS_TLS=YES on both scraped roles, and the monitoring role scrapes with it."""
    assert monitorcheck.metrics_context(False) == {"superlink": {}, "supernode": {}}
    context = monitorcheck.metrics_context(True)
    assert context == {role: {"ONEAPP_FL_METRICS_TLS": "YES"} for role in ("superlink", "supernode")}
    body = appliance_templates.service_template(
        "s", 3, 4, 2, "tls-auth", extra_context=context, monitoring=True, metrics_allow="10.231.64.0/24"
    )
    for name, role in _roles(body).items():
        assert role["template_contents"]["CONTEXT"]["ONEAPP_FL_METRICS_TLS"] == "YES", name
    assert _roles(body)["supernode"]["template_contents"]["CONTEXT"]["ONEAPP_FL_TLS"] == "YES"
    service_checks.check_template(body)
    plain = appliance_templates.service_template(
        "s", 3, 4, 2, "insecure", extra_context=monitorcheck.metrics_context(False), monitoring=True,
        metrics_allow="10.231.64.0/24",
    )  # fmt: skip
    assert not any("ONEAPP_FL_METRICS_TLS" in r["template_contents"]["CONTEXT"] for r in plain["roles"])


def test_the_endpoint_check_scrapes_https_at_the_vm_address_with_its_ca() -> None:
    from factory.harness.pairtest import METRICS_CA, scrape_command

    assert scrape_command("supernode", "10.231.64.7", 9101, tls=False).endswith(
        " http://127.0.0.1:9101/metrics"
    )
    for role in ("superlink", "supernode"):
        command = scrape_command(role, "10.231.64.7", 9101, tls=True)
        assert f"--cacert {METRICS_CA[role]} https://10.231.64.7:9101/metrics" in command, command
        assert "--insecure" not in command and " -k" not in command
    assert METRICS_CA == {
        "superlink": "/etc/flower/tls/ca.pem",  # context/appliance/lib/tls.sh, roles/superlink.sh
        "supernode": "/var/lib/flower/tls/superlink-ca.pem",  # lib/metrics_tls.sh flower-metrics-cert --ca
    }


def test_a_target_scraped_over_http_fails_the_https_check() -> None:
    losses = {("7", 1): 2.5, ("7", 2): 1.25}
    expected = {"1": "superlink", "2": "supernode"}
    check = monitorcheck.evaluate(
        FakePrometheus({"1": "up", "2": "up"}, losses), expected, FEDERATIONS, lambda: 2000.0, settle=0,
        scheme="https",
    )  # fmt: skip
    assert (
        not check["passed"] and "VM 1 (superlink) is scraped at http://1, not over https" in check["detail"]
    )

    class Https(FakePrometheus):
        def __call__(self, path: str, params: dict[str, str]) -> Any:
            answer = super().__call__(path, params)
            for target in answer.get("activeTargets", []):
                target["scrapeUrl"] = target["scrapeUrl"].replace("http://", "https://")
            return answer

    check = monitorcheck.evaluate(
        Https({"1": "up", "2": "up"}, losses), expected, FEDERATIONS, lambda: 2000.0, settle=0, scheme="https"
    )
    assert check["passed"] and "2 VMs of the service up as targets over https" in check["detail"], check
