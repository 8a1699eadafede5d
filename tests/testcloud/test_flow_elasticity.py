"""OneFlow elasticity (hostkit/elasticity.py) held to upstream: the expression grammar and the cron
schedule are checked side by side with OpenNebula's own compiled grammar (grammar.rb, run by Ruby's treetop)
and the parse-cron gem; the policy arithmetic, periods and cooldown against tables taken from vmrole.rb."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from typing import Any

import pytest

from hostkit import elasticity as el
from hostkit import upstream

# The oracle: upstream's OCA (service_template.rb, grammar.rb) and parse-cron, as OneFlow loads them
# (scripts/setup.sh installs ruby-treetop, ruby-parse-cron, ruby-nokogiri...). Cases in on stdin, results
# out as JSON. 'time' is loaded as oneflow-server's Sinatra loads it (Time.parse).
ORACLE = r"""
require 'json'
require 'time'
$LOAD_PATH.unshift(ARGV[0])
require 'opennebula'
require 'opennebula/flow'

class OracleRole
  def initialize(nodes)
    @nodes = nodes
  end

  def info_nodes(_vm_pool)
    @nodes
  end
end

cases = JSON.parse($stdin.read)
expressions = cases['expressions'].map do |c|
  parser = ElasticityGrammarParser.new
  tree = parser.parse(c['text'])
  if tree.nil?
    { 'ok' => false, 'reason' => parser.failure_reason, 'index' => parser.failure_index }
  else
    value, text = tree.result(OracleRole.new(c['nodes']), nil)
    { 'ok' => true, 'value' => value, 'text' => text }
  end
end
crons = cases['crons'].map do |c|
  begin
    CronParser.new(c['spec']).next(Time.at(c['from'])).to_i
  rescue StandardError
    nil
  end
end
roles = cases['roles'].map do |r|
  begin
    OpenNebula::ServiceTemplate.validate_vmvalues(r, ElasticityGrammarParser.new)
    nil
  rescue Validator::ParseException => e
    e.message
  end
end
times = cases['times'].map do |t|
  begin
    t.match(/^\d+$/) ? t.to_i : Time.parse(t).to_i
  rescue ArgumentError
    nil
  end
end
puts JSON.dump({ 'expressions' => expressions, 'crons' => crons, 'roles' => roles, 'times' => times })
"""


def vm(state: int = 3, lcm: int = 3, **user: Any) -> dict[str, Any]:
    """A node as Role#info_nodes gives it: attribute values are strings, as in OpenNebula's XML."""
    return {
        "vm_info": {
            "VM": {
                "ID": "7",
                "STATE": str(state),
                "LCM_STATE": str(lcm),
                "USER_TEMPLATE": user,
                "MONITORING": {"CPU": "12.5", "MEMORY": "2048"},
                "TEMPLATE": {"VCPU": "2", "NIC": [{"IP": "10.0.0.1"}]},
            }
        }
    }


TWO = [vm(CONNECTED="1"), vm(CONNECTED="2", CPU="90")]
NODES = [
    vm(ONEAPP_FL_CONNECTED_NODES="1", ONEAPP_FL_MIN_NODES="2", LOAD="0.125"),
    vm(ONEAPP_FL_CONNECTED_NODES="2", ONEAPP_FL_MIN_NODES="2", LOAD="0.13"),
    vm(state=3, lcm=2, ONEAPP_FL_CONNECTED_NODES="40", ONEAPP_FL_MIN_NODES="2"),  # PROLOG: not counted
    vm(ODD="12abc", VEC={"A": "1"}, LIST=["1", "2"], EMPTY="", UNDER="1_000", EXP="1e3", DOT=".5"),
]

# Expressions and the VM sets they run over; each is run through upstream's grammar.rb too.
EXPRESSIONS: list[tuple[str, list[dict[str, Any]]]] = [
    ("ONEAPP_FL_CONNECTED_NODES < 2", NODES),
    ("ONEAPP_FL_CONNECTED_NODES < ONEAPP_FL_MIN_NODES", NODES),
    ("ONEAPP_FL_CONNECTED_NODES<ONEAPP_FL_MIN_NODES", NODES),
    ("oneapp_fl_connected_nodes >= 1.5", NODES),
    ("CPU > 80 && MEMORY > 500", TWO),
    ("CPU > 80 & MEMORY > 500", TWO),
    ("CPU > 12 || MISSING > 1", TWO),
    ("MISSING < 1 && CPU > 50 || VCPU == 2", TWO),  # right-associative: MISSING < 1 && (... || ...)
    ("MISSING < 1", TWO),
    ("!MISSING < 1", TWO),
    ("! CPU > 50 && VCPU = 2", TWO),
    ("(CPU > 50) && (VCPU <> 3)", TWO),
    ("( CPU > 50 || VCPU != 2 ) && MEMORY <= 2048", TWO),
    ("  CPU >= 12.5  ", TWO),
    ("LOAD == 0.13", NODES),
    ("HALF == 0.13 && NEG == -0.13", [vm(HALF="0.125", NEG="-0.125")]),  # halves round away from zero
    ("ODD == 12 && EMPTY == 0 && UNDER == 1000 && EXP == 1000 && DOT > 0.4", NODES),
    ("VEC > 0 || LIST > 0", NODES),
    ("-1 < -0.5", []),
    ("007 == 7.0", []),
    ("1.10 > 1.1", []),
    ('"CPU" > 1', TWO),
    ("'CPU' > 1", TWO),
    ("X1_y > 0", [vm(X1_Y="3")]),
    ("NAME == 0", [vm()]),
    ("CPU > 1", [vm(state=8, lcm=0, CPU="99")]),
    # what upstream refuses
    ("", []),
    ("   ", []),
    ("CPU", []),
    ("CPU >", []),
    ("CPU > 80 )", []),
    ("(CPU > 1", []),
    ("CPU => 1", []),
    ("CPU > 1 &&& B < 2", []),
    ("CPU > 1 and MEMORY < 2", []),
    ("1CPU > 1", []),
    ("CPU > 1.", []),
    ("CPU > 1\n", []),
    ("CPU > 1 && \nB < 2", []),
    ("_CPU > 1", []),
    ("CPU.X > 1", []),
    ('"CPU > 1', []),
    ("CPU > - 1", []),
    ("CPU\t> 1", []),
]

CRONS: list[tuple[str, str]] = [
    ("*/5 * * * *", "2026-12-02 05:03:10"),
    ("0 9 * * mon-fri", "2026-12-04 10:00:00"),
    ("30 2 1 * *", "2026-12-31 23:59:00"),
    ("0 0 31 * *", "2027-01-31 23:00:00"),  # the gem's quirk: February has no 31st, it answers Feb 1st
    ("15 10 * jan,jul *", "2026-12-02 05:00:00"),
    ("0 0 13 * 5", "2026-12-02 05:00:00"),  # day 13 or any Friday (Vixie cron)
    ("0 12 * * 7", "2026-12-02 05:00:00"),
    ("1-10/3 * * * *", "2026-12-02 05:09:00"),
    ("@hourly", "2026-12-02 05:00:00"),
    ("@daily", "2026-12-02 05:00:00"),
    ("0 0 29 2 *", "2026-12-02 05:00:00"),
    ("0 0 * * * 2026", "2026-12-02 05:00:00"),
    ("* * * *", "2026-12-02 05:00:00"),
    ("5/10 * * * *", "2026-12-02 05:00:00"),
    ("*/0 * * * *", "2026-12-02 05:00:00"),
    ("99 * * * *", "2026-12-02 05:00:00"),
    ("0 0 * 13 *", "2026-12-02 05:00:00"),
    ("@reboot", "2026-12-02 05:00:00"),
    ("x * * * *", "2026-12-02 05:00:00"),
]


def policy_role(**extra: Any) -> dict[str, Any]:
    return {"name": "supernode", "type": "vm", "cardinality": 3, "min_vms": 2, "max_vms": 6, **extra}


def elastic(expression: str) -> list[dict[str, Any]]:
    return [{"type": "CHANGE", "adjust": 1, "expression": expression}]


def scheduled(**when: str) -> list[dict[str, Any]]:
    return [{"type": "CHANGE", "adjust": 1, **when}]


# Roles for validate_vmvalues, upstream's and ours.
ROLES: list[dict[str, Any]] = [
    policy_role(elasticity_policies=elastic("ONEAPP_FL_CONNECTED_NODES < ONEAPP_FL_MIN_NODES")),
    policy_role(min_vms=4),
    policy_role(max_vms=2),
    policy_role(min_vms=5, max_vms=3),
    {"name": "supernode", "cardinality": 3, "min_vms": 2, "elasticity_policies": elastic("A > 1")},
    {"name": "supernode", "cardinality": 3, "max_vms": 4, "scheduled_policies": scheduled(start_time="1")},
    policy_role(elasticity_policies=elastic("")),
    policy_role(elasticity_policies=elastic("CPU >> 2")),
    policy_role(elasticity_policies=[*elastic("CPU > 2"), *elastic("MEMORY < ")]),
    policy_role(scheduled_policies=scheduled()),
    policy_role(scheduled_policies=scheduled(start_time="1", recurrence="@daily")),
    policy_role(scheduled_policies=scheduled(start_time="2026-12-24 18:00:00")),
    policy_role(scheduled_policies=scheduled(start_time="2026-13-24 18:00:00")),
    policy_role(scheduled_policies=scheduled(start_time="1766599200")),
    policy_role(scheduled_policies=scheduled(recurrence="0 20 * * 1-5")),
    policy_role(scheduled_policies=scheduled(recurrence="0 20 * *")),
    policy_role(scheduled_policies=scheduled(recurrence="0 20 * * * *")),
    policy_role(scheduled_policies=scheduled(recurrence="61 * * * *")),
    policy_role(scheduled_policies=scheduled(recurrence="*/0 * * * *")),
]  # fmt: skip

# start_time spellings this module reads; each must give Time.parse's instant (TZ=UTC).
TIMES = [
    "2026-12-24 18:00:00",
    "2026-12-24 18:00",
    "2026-12-24",
    "2026-12-24T18:00:00Z",
    "2026-12-24T18:00:00+02:00",
    "2026-12-24T18:00:00-0130",
    "2026-12-24 18:00:00 UTC",
    "2026-1-5 7:05:09",
    "1766599200",
]


def utc(text: str) -> int:
    return int(dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp())


@pytest.fixture(scope="module")
def oracle() -> dict[str, Any]:
    # Without the upstream OCA this fails with the one message saying how to get it.
    upstream.path("one", "src", "oca", "ruby", "opennebula", "flow", "grammar.rb")
    cases = {
        "expressions": [{"text": text, "nodes": nodes} for text, nodes in EXPRESSIONS],
        "crons": [{"spec": spec, "from": utc(start)} for spec, start in CRONS],
        "roles": ROLES,
        "times": TIMES,
    }
    done = subprocess.run(
        ["ruby", "-e", ORACLE, str(upstream.path("one", "src", "oca", "ruby"))],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        timeout=60,
        env={"TZ": "UTC", "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        check=True,
    )
    return json.loads(done.stdout)


def views(nodes: list[dict[str, Any]]) -> list[el.VmView]:
    return [el.VmView.from_vm_hash(node["vm_info"]) for node in nodes]


@pytest.mark.parametrize("number", range(len(EXPRESSIONS)), ids=[repr(e[0]) for e in EXPRESSIONS])
def test_expression_matches_upstream_grammar(oracle: dict[str, Any], number: int) -> None:
    text, nodes = EXPRESSIONS[number]
    expected = oracle["expressions"][number]
    if expected["ok"]:
        value, logged = el.parse_expression(text).evaluate(views(nodes))
        assert (value, logged) == (bool(expected["value"]), expected["text"])
    else:
        with pytest.raises(el.ExpressionError) as error:
            el.parse_expression(text)
        assert (error.value.reason, error.value.position) == (expected["reason"], expected["index"])


@pytest.mark.parametrize("number", range(len(CRONS)), ids=[c[0] for c in CRONS])
def test_cron_matches_parse_cron(oracle: dict[str, Any], number: int) -> None:
    spec, start = CRONS[number]
    expected = oracle["crons"][number]
    if expected is None:
        with pytest.raises(ValueError):
            el.CronSchedule(spec).next_after(utc(start), dt.UTC)
    else:
        assert el.CronSchedule(spec).next_after(utc(start), dt.UTC) == expected


@pytest.mark.parametrize("number", range(len(ROLES)))
def test_validation_matches_upstream(oracle: dict[str, Any], number: int) -> None:
    expected = oracle["roles"][number]
    if expected is None:
        el.validate_role(ROLES[number])
    else:
        with pytest.raises(el.PolicyError) as error:
            el.validate_role(ROLES[number])
        assert str(error.value) == expected


@pytest.mark.parametrize("text", TIMES)
def test_start_time_matches_ruby_time_parse(oracle: dict[str, Any], text: str) -> None:
    assert el.parse_start_time(text, 0, dt.UTC) == oracle["times"][TIMES.index(text)]


# ------------------------------------------------------------------------------------------ fixed tables
@pytest.mark.parametrize(
    ("text", "value", "logged"),
    [
        ("ONEAPP_FL_CONNECTED_NODES < 2", True, "ONEAPP_FL_CONNECTED_NODES[1.5] < 2"),
        (
            "ONEAPP_FL_CONNECTED_NODES < ONEAPP_FL_MIN_NODES",
            True,
            "ONEAPP_FL_CONNECTED_NODES[1.5] < ONEAPP_FL_MIN_NODES[2.0]",
        ),
        ("LOAD > 0.12", True, "LOAD[0.13] > 0.12"),  # (0.125 + 0.13) / 2 = 0.1275, two decimals, half up
        ("MISSING < 1", False, "MISSING[--] < 1"),
        # right-associative, no precedence: MISSING < 1 && (CPU > 1 || LOAD > 0)
        ("MISSING < 1 && CPU > 1 || LOAD > 0", False, "MISSING[--] < 1 && CPU[12.5] > 1 || LOAD[0.13] > 0"),
    ],
)
def test_expression_table(text: str, value: bool, logged: str) -> None:
    assert el.parse_expression(text).evaluate(views(NODES)) == (value, logged)


def test_parse_error_names_the_position() -> None:
    with pytest.raises(el.ExpressionError) as error:
        el.parse_expression("CPU > 80 )")
    assert error.value.position == 9
    assert "at line 1, column 10 (byte 10)" in error.value.reason
    assert "'&&'" in error.value.reason


@pytest.mark.parametrize(
    ("value", "text"),
    [(2.0, "2.0"), (0.5, "0.5"), (80.33, "80.33"), (1e16, "1.0e+16"), (1e15, "1000000000000000.0"),
     (1e-5, "1.0e-05"), (0.0001, "0.0001"), (-0.0, "-0.0"), (float("inf"), "Infinity")],
)  # fmt: skip
def test_float_text_is_rubys(value: float, text: str) -> None:
    assert el.ruby_float_str(value) == text


# ------------------------------------------------------------------------------------------ cardinality
def role(**extra: Any) -> dict[str, Any]:
    return {"name": "supernode", "cardinality": 4, "min_vms": 2, "max_vms": 6, "cooldown": 120, **extra}


@pytest.mark.parametrize(
    ("policy", "base", "target"),
    [
        ({"type": "CHANGE", "adjust": 1}, {}, 5),
        ({"type": "CHANGE", "adjust": 5}, {}, 6),  # stops at max_vms
        ({"type": "CHANGE", "adjust": -5}, {}, 2),  # stops at min_vms
        ({"type": "CHANGE", "adjust": 2}, {"cardinality": 8}, 8),  # above max (forced): no further
        ({"type": "CARDINALITY", "adjust": 3}, {}, 3),
        ({"type": "CARDINALITY", "adjust": 9}, {}, 6),
        ({"type": "CARDINALITY", "adjust": 0}, {}, 0),  # adjust 0 is not clamped
        ({"type": "PERCENTAGE_CHANGE", "adjust": 50}, {}, 6),  # 4 * 50% = 2
        ({"type": "PERCENTAGE_CHANGE", "adjust": 10}, {}, 5),  # 0.4 rounds up to 1
        ({"type": "PERCENTAGE_CHANGE", "adjust": 30}, {"cardinality": 5}, 6),  # 1.5 truncates to 1
        ({"type": "PERCENTAGE_CHANGE", "adjust": 10, "min_adjust_step": 2}, {}, 6),
        ({"type": "PERCENTAGE_CHANGE", "adjust": -25, "min_adjust_step": 3}, {"cardinality": 6}, 3),
        ({"type": "PERCENTAGE_CHANGE", "adjust": 0}, {}, 3),  # a 0% change counts as -1 upstream
        ({"type": "change", "adjust": 1}, {}, 5),  # upcased
        ({"type": "OTHER", "adjust": 1}, {}, 4),
    ],
)
def test_new_cardinality(policy: dict[str, Any], base: dict[str, Any], target: int) -> None:
    assert el.new_cardinality(role(**base), policy) == target


# ------------------------------------------------------------------------------------------ periods
class Federation:
    """A role and its VMs over a simulated clock, with the engine's part (write back, scale, SCALING)."""

    def __init__(self, policies: list[dict[str, Any]], connected: str, **extra: Any) -> None:
        self.role = role(elasticity_policies=policies, **extra)
        self.connected = connected
        self.scaled: list[tuple[int, int]] = []

    def vms(self) -> list[el.VmView]:
        count = int(self.role["cardinality"])
        return [
            el.VmView(i, 3, 3, {"ONEAPP_FL_CONNECTED_NODES": self.connected, "ONEAPP_FL_MIN_NODES": "4"})
            for i in range(count)
        ]

    def tick(self, now: int) -> el.RoleDecision:
        decision = el.evaluate_role(self.role, self.vms(), now)
        decision.write_to(self.role)
        if decision.cardinality is not None:
            self.scaled.append((now, decision.cardinality))
            self.role["cardinality"] = decision.cardinality
            el.clear_true_evals(self.role)
        return decision


def test_period_number_true_evaluations_in_a_row_trigger() -> None:
    policy = {
        "type": "CHANGE",
        "adjust": 1,
        "expression": "ONEAPP_FL_CONNECTED_NODES < ONEAPP_FL_MIN_NODES",
        "period": 60,
        "period_number": 3,
    }
    fed = Federation([policy], connected="3")
    t0 = 1_800_000_000
    first = fed.tick(t0)
    assert (first.diff, first.cooldown) == (0, None)
    assert fed.role["elasticity_policies"][0]["true_evals"] == 1
    assert fed.role["elasticity_policies"][0]["expression_evaluated"] == (
        "ONEAPP_FL_CONNECTED_NODES[3.0] < ONEAPP_FL_MIN_NODES[4.0]"
    )
    fed.tick(t0 + 30)  # inside the period: not evaluated
    assert fed.role["elasticity_policies"][0]["true_evals"] == 1
    fed.tick(t0 + 60)
    assert fed.role["elasticity_policies"][0]["true_evals"] == 2
    third = fed.tick(t0 + 120)
    assert (third.diff, third.cardinality, third.cooldown) == (1, 5, 120)  # the role's cooldown
    assert ("I", "Role supernode needs to scale 1 nodes") in third.messages
    assert any("elasticy policy ONEAPP_FL_CONNECTED_NODES[3.0] < ONEAPP_FL_MIN_NODES[4.0] triggered" in m
               for _, m in third.messages)  # fmt: skip
    assert "true_evals" not in fed.role["elasticity_policies"][0]  # SCALING cleared it
    assert fed.scaled == [(t0 + 120, 5)]


def test_a_false_evaluation_resets_the_count() -> None:
    policy = {"type": "CHANGE", "adjust": 1, "expression": "ONEAPP_FL_CONNECTED_NODES < 4", "period": 10,
              "period_number": 2}  # fmt: skip
    fed = Federation([policy], connected="3")
    fed.tick(100)
    fed.connected = "4"
    fed.tick(110)
    assert fed.role["elasticity_policies"][0]["true_evals"] == 0
    fed.connected = "3"
    fed.tick(120)
    assert fed.scaled == []
    fed.tick(130)
    assert fed.scaled == [(130, 5)]


def test_period_number_zero_triggers_at_once_and_policy_cooldown_sticks_to_the_role() -> None:
    policy = {"type": "CHANGE", "adjust": -1, "expression": "ONEAPP_FL_CONNECTED_NODES > 3", "cooldown": 45}
    fed = Federation([policy], connected="5")
    decision = fed.tick(1000)
    assert (decision.cardinality, decision.cooldown) == (3, 45)
    assert fed.role["cooldown"] == 45  # update_role_policies wrote it


def test_first_policy_that_triggers_wins_and_later_ones_are_not_evaluated() -> None:
    policies = [
        {"type": "CHANGE", "adjust": 1, "expression": "ONEAPP_FL_CONNECTED_NODES < 4"},
        {"type": "CHANGE", "adjust": 2, "expression": "ONEAPP_FL_CONNECTED_NODES < 4"},
    ]
    fed = Federation(policies, connected="1")
    decision = fed.tick(500)
    assert decision.cardinality == 5
    assert "last_eval" not in fed.role["elasticity_policies"][1]


def test_implicit_min_vms_rule_has_no_cooldown() -> None:
    fed = Federation([], connected="1", cardinality=1)
    decision = fed.tick(10)
    assert (decision.diff, decision.cooldown) == (1, 0)


def test_nothing_to_do_leaves_cooldown_alone() -> None:
    fed = Federation([{"type": "CHANGE", "adjust": 1, "expression": "MISSING > 1"}], connected="1")
    decision = fed.tick(10)
    assert (decision.diff, decision.cardinality, decision.cooldown) == (0, None, None)
    assert fed.role["cooldown"] == 120
    assert fed.role["elasticity_policies"][0]["expression_evaluated"] == "MISSING[--] > 1"


def test_a_policy_that_does_not_parse_never_triggers() -> None:
    fed = Federation([{"type": "CHANGE", "adjust": 1, "expression": "CPU >"}], connected="1")
    fed.tick(10)
    logged = fed.role["elasticity_policies"][0]["expression_evaluated"]
    assert logged.startswith("Parse error. 'CPU >': Expected one of")
    assert fed.scaled == []


def test_evaluate_role_does_not_modify_its_input() -> None:
    original = role(elasticity_policies=[{"type": "CHANGE", "adjust": 1, "expression": "CPU > 1"}])
    snapshot = json.dumps(original, sort_keys=True)
    el.evaluate_role(original, [el.VmView(1, 3, 3, {"CPU": "5"})], 100)
    assert json.dumps(original, sort_keys=True) == snapshot


# ------------------------------------------------------------------------------------------ scheduled
def test_scheduled_start_time_fires_once_between_two_passes() -> None:
    start = utc("2026-12-02 06:00:00")
    fed = Federation([], connected="4")
    fed.role["scheduled_policies"] = [
        {"type": "CARDINALITY", "adjust": 6, "start_time": "2026-12-02T06:00:00Z"}
    ]
    assert fed.tick(start - 200).diff == 0  # first pass: only records last_eval
    assert fed.tick(start - 100).diff == 0
    decision = fed.tick(start + 10)
    assert (decision.cardinality, decision.cooldown) == (6, None)  # scheduled: no cooldown given
    assert any("scheduled scalability for 2026-12-02 06:00:00 +0000 triggered" in m
               for _, m in decision.messages)  # fmt: skip
    assert fed.tick(start + 100).diff == 0


def test_scheduled_epoch_start_time_and_the_first_pass_ignores_the_past() -> None:
    fed = Federation([], connected="4")
    fed.role["scheduled_policies"] = [{"type": "CHANGE", "adjust": -1, "start_time": "1000"}]
    assert fed.tick(2000).diff == 0
    assert fed.tick(3000).diff == 0


def test_scheduled_recurrence() -> None:
    fed = Federation([], connected="4")
    fed.role["scheduled_policies"] = [{"type": "CHANGE", "adjust": 1, "recurrence": "0 * * * *"}]
    t0 = utc("2026-12-02 05:50:00")
    assert fed.tick(t0).diff == 0
    assert fed.tick(t0 + 300).diff == 0
    assert fed.tick(t0 + 600).cardinality == 5  # 06:00 fell in (05:55, 06:00]
    assert fed.tick(t0 + 900).diff == 0


def test_scheduled_policies_come_before_elasticity_policies() -> None:
    fed = Federation([{"type": "CHANGE", "adjust": 1, "expression": "ONEAPP_FL_CONNECTED_NODES < 9"}], "1")
    fed.role["scheduled_policies"] = [{"type": "CARDINALITY", "adjust": 2, "start_time": "150"}]
    fed.tick(100)  # elasticity triggers (scheduled: first pass)
    assert fed.scaled == [(100, 5)]
    fed.tick(200)
    assert fed.scaled[-1] == (200, 2)
    assert fed.role["elasticity_policies"][0]["last_eval"] == 100  # not evaluated at 200


# ------------------------------------------------------------------------------------------ validation
def good_role(**extra: Any) -> dict[str, Any]:
    return role(
        elasticity_policies=[
            {"type": "CHANGE", "adjust": 1, "expression": "ONEAPP_FL_CONNECTED_NODES < 2", "period": 60}
        ],
        scheduled_policies=[{"type": "CARDINALITY", "adjust": 2, "recurrence": "0 20 * * *"}],
        **extra,
    )


def test_a_good_role_passes() -> None:
    el.validate_role(good_role())
    el.validate_policy_fields(good_role())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"min_vms": 5, "max_vms": 3}, "'cardinality' must be greater than or equal to 'min_vms'"),
        ({"min_vms": 1, "max_vms": 3}, "'cardinality' must be lower than or equal to 'max_vms'"),
        ({"max_vms": None}, "must define both 'min_vms' and 'max_vms'"),
        ({"elasticity_policies": [{"type": "CHANGE", "adjust": 1, "expression": ""}]},
         "Role 'supernode', elasticity policy #0 'expression' cannot be empty"),
        ({"elasticity_policies": [{"type": "CHANGE", "adjust": 1, "expression": "CPU >> 2"}]},
         "Role 'supernode', elasticity policy #0 'expression' parse error: Expected one of ' ', '-', [0-9], "
         "'\"', '\\'', [a-zA-Z] at line 1, column 6 (byte 6) after CPU >"),
        ({"scheduled_policies": [{"type": "CHANGE", "adjust": 1}]},
         "Role 'supernode', scheduled policy #0 needs to define either 'start_time' or 'recurrence'"),
        ({"scheduled_policies": [{"type": "CHANGE", "adjust": 1, "start_time": "1", "recurrence": "@daily"}]},
         "scheduled policy #0 must define 'start_time' or 'recurrence', but not both"),
        ({"scheduled_policies": [{"type": "CHANGE", "adjust": 1, "start_time": "next tuesday"}]},
         "scheduled policy #0 'start_time' is not a valid Time. Try with YYYY-MM-DD hh:mm:ss"),
        ({"scheduled_policies": [{"type": "CHANGE", "adjust": 1, "recurrence": "0 25 * * *"}]},
         "Role 'supernode', scheduled policy #0 'recurrence' is not a valid cron expression"),
    ],
)  # fmt: skip
def test_validate_role_refuses(change: dict[str, Any], message: str) -> None:
    bad = good_role()
    bad.update(change)
    if change.get("max_vms", 0) is None:
        del bad["max_vms"]
    with pytest.raises(el.PolicyError) as error:
        el.validate_role(bad)
    assert message in str(error.value)


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({"type": "SOMETIMES", "adjust": 1, "expression": "CPU > 1"},
         "KEY: 'type' must be one of CHANGE, CARDINALITY, PERCENTAGE_CHANGE;"),
        ({"adjust": 1, "expression": "CPU > 1"},
         "Mandatory document key 'type (string)' is missing from {\"adjust\":1,\"expression\":\"CPU > 1\"}"),
        ({"type": "CHANGE", "adjust": "one", "expression": "CPU > 1"}, "KEY: 'adjust' must be an Integer;"),
        ({"type": "CHANGE", "adjust": 1, "expression": "CPU > 1", "min_adjust_step": 0},
         "KEY: 'min_adjust_step' must be greater than or equal to 1;"),
        ({"type": "CHANGE", "adjust": 1, "expression": "CPU > 1", "period": -1},
         "KEY: 'period' must be greater than or equal to 0;"),
        ({"type": "CHANGE", "adjust": 1, "expression": 5}, "KEY: 'expression' must be a String;"),
    ],
)  # fmt: skip
def test_validate_policy_fields_refuses(policy: dict[str, Any], message: str) -> None:
    with pytest.raises(el.PolicyError) as error:
        el.validate_policy_fields(role(elasticity_policies=[policy]))
    assert str(error.value) == message


def test_the_documented_flower_policy_is_valid_and_scales_up() -> None:
    """The default policy of docs/elasticity.md, read from the page itself."""
    from hostkit.paths import REPO_ROOT

    page = (REPO_ROOT / "docs" / "elasticity.md").read_text()
    snippet = page.split("```json\n", 1)[1].split("```", 1)[0]
    supernode = json.loads(snippet)
    supernode["cardinality"] = supernode["min_vms"]
    el.validate_policy_fields(supernode)
    el.validate_role(supernode)
    nodes = [
        el.VmView(i, 3, 3, {"ONEAPP_FL_CONNECTED_NODES": "1", "ONEAPP_FL_MIN_NODES": "2"})
        for i in range(supernode["cardinality"])
    ]
    now = 1_800_000_000
    decision = el.evaluate_role(supernode, nodes, now)
    for _ in range(10):
        if decision.cardinality is not None:
            break
        decision.write_to(supernode)
        now += el.AUTOSCALER_INTERVAL
        decision = el.evaluate_role(supernode, nodes, now)
    assert decision.cardinality == supernode["cardinality"] + 1


def test_validate_template_checks_vm_roles_only() -> None:
    bad = {"name": "x", "cardinality": 1, "type": "vm", "elasticity_policies": elastic("CPU >")}
    router = {**bad, "type": "vr"}
    el.validate_template({"roles": [router]})
    with pytest.raises(el.PolicyError, match="must define both 'min_vms' and 'max_vms'"):
        el.validate_template({"roles": [router, bad]})
    with pytest.raises(el.PolicyError, match="KEY: 'roles' must be an Array;"):
        el.validate_template({"roles": "supernode"})
