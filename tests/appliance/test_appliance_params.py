"""ONEAPP_* parameters: defaults from the declaration, and `configure` fails on a bad value naming it.

`service configure` runs here exactly as in the guest (paths redirected into a sandbox). A failure must
leave configure_failure in the status file, the reason in the MOTD and the stage log, and must never
echo a secret value.
"""

from __future__ import annotations

import pytest

BAD_SUPERLINK_VALUES = [
    ("ONEAPP_FL_TLS", "maybe", "is not YES or NO"),
    ("ONEAPP_FL_NODE_AUTH", "1", "is not YES or NO"),
    ("ONEAPP_FL_LOG_LEVEL", "VERBOSE", "is not one of INFO, DEBUG, WARNING, ERROR"),
    ("ONEAPP_FL_ISOLATION", "thread", "is not one of subprocess, process"),
    ("ONEAPP_FL_DATABASE", "disk", "is not one of persistent, memory"),
    ("ONEAPP_FL_FLEET_PORT", "90x2", "is not a whole number"),
    ("ONEAPP_FL_FLEET_PORT", "70000", "is not a port number"),
    ("ONEAPP_FL_API_PORT", "0", "is not a port number"),
    # bash arithmetic wraps 18446744073709560708 to 9092: it must be refused, not "fixed"
    ("ONEAPP_FL_FLEET_PORT", "18446744073709560708", "is too large"),
    ("ONEAPP_FL_API_PORT", "99999999999999999999999", "is too large"),
    ("ONEAPP_FL_FLEET_PORT", "65536", "is not a port number (1-65535)"),
    ("ONEAPP_FL_FLEET_PORT", "22", "is the SSH port"),
    ("ONEAPP_FL_API_PORT", "22", "is the SSH port"),
    ("ONEAPP_FL_API_PORT", "443", "is below 1024"),
    ("ONEAPP_FL_CONTROL_ALLOW", "10.0.0.0/33", "is not an IP address or CIDR"),
    ("ONEAPP_FL_CONTROL_ALLOW", "192.168.1.300", "is not an IP address or CIDR"),
]

BAD_SUPERNODE_VALUES = [
    ("ONEAPP_FL_DISCOVERY_TIMEOUT", "soon", "is not a whole number"),
    ("ONEAPP_FL_DISCOVERY_TIMEOUT", "-5", "must not be negative"),
    ("ONEAPP_FL_MAX_RETRIES", "-1", "must not be negative"),
    ("ONEAPP_FL_DISCOVERY_TIMEOUT", "18446744073709551617", "is too large"),
    ("ONEAPP_FL_SUPERLINK", "10.0.0.1:18446744073709560708", "is not HOST:PORT"),
    ("ONEAPP_FL_SUPERLINK", "10.0.0.1:0", "is not HOST:PORT"),
    ("ONEAPP_FL_VERSION_POLICY", "lenient", "is not one of warn, strict"),
    ("ONEAPP_FL_GPU", "yes", "is not one of auto, off"),
    ("ONEAPP_FL_SUPERLINK", "superlink-without-port", "is not HOST:PORT"),
    ("ONEAPP_FL_SUPERLINK", "10.0.0.1:99999", "is not HOST:PORT"),
    ("ONEAPP_FL_NODE_CONFIG", "partition-id", "is not key=value"),
]


@pytest.mark.parametrize(("name", "value", "problem"), BAD_SUPERLINK_VALUES)
def test_superlink_bad_value_fails_configure_naming_it(
    make_sandbox, name: str, value: str, problem: str
) -> None:
    sandbox = make_sandbox("superlink")
    sandbox.refused(name, problem, ETH0_IP="10.231.64.50", **{name: value})
    assert value in sandbox.reason


@pytest.mark.parametrize(("name", "value", "problem"), BAD_SUPERNODE_VALUES)
def test_supernode_bad_value_fails_configure_naming_it(
    make_sandbox, name: str, value: str, problem: str
) -> None:
    sandbox = make_sandbox("supernode")
    sandbox.refused(name, problem, **{name: value})


@pytest.mark.parametrize("name", ["ONEAPP_FL_SSL_KEY", "ONEAPP_FL_NODE_KEYS", "ONEAPP_FL_SSL_CERT"])
def test_secret_values_are_named_but_not_shown(make_sandbox, name: str) -> None:
    sandbox = make_sandbox("superlink")
    secret = "s3cr3t-PRIVATE-material!!"
    result = sandbox.refused(name, "is not valid base64", ETH0_IP="10.231.64.50", **{name: secret})
    for text in (sandbox.reason, sandbox.motd, sandbox.log("configure"), result.stdout, result.stderr):
        assert secret not in text


def test_defaults_fill_unset_parameters(make_sandbox) -> None:
    sandbox = make_sandbox("superlink")
    sandbox.configured(ETH0_IP="10.231.64.50")
    assert sandbox.status == "configure_success"
    args = sandbox.args("superlink")
    assert args[args.index("--port") + 1] == "9093"
    assert args[args.index("--host") + 1] == "127.0.0.1"
    assert "--enable-supernode-auth" in args
    assert "--disable-runtime-dependency-installation" in args
    assert args[args.index("--database") + 1] == str(sandbox.state / "state.db")
    assert "listen 9092 ssl;" in (sandbox.etc / "proxy" / "nginx.conf").read_text()


def test_booleans_are_case_insensitive_and_normalised(make_sandbox) -> None:
    sandbox = make_sandbox("superlink")
    sandbox.configured(ETH0_IP="10.231.64.50", ONEAPP_FL_NODE_AUTH="no", ONEAPP_FL_TLS="yes")
    assert "--enable-supernode-auth" not in sandbox.args("superlink")


def test_auth_without_tls_refuses_to_configure(make_sandbox) -> None:
    sandbox = make_sandbox("superlink")
    sandbox.refused(
        "ONEAPP_FL_NODE_AUTH", "needs ONEAPP_FL_TLS=YES", ETH0_IP="10.231.64.50", ONEAPP_FL_TLS="NO"
    )
    assert not (sandbox.etc / "superlink.args").exists()


def test_insecure_needs_auth_off_explicitly(make_sandbox) -> None:
    sandbox = make_sandbox("superlink")
    sandbox.configured(ETH0_IP="10.231.64.50", ONEAPP_FL_TLS="NO", ONEAPP_FL_NODE_AUTH="NO")
    args = sandbox.args("superlink")
    assert "--insecure" in args and "--ssl-certfile" not in args
    assert (
        "ssl"
        not in (sandbox.etc / "proxy" / "nginx.conf").read_text().split("server {")[1].split("location")[0]
    )


def test_control_allow_list_reaches_the_proxy(make_sandbox) -> None:
    sandbox = make_sandbox("superlink")
    sandbox.configured(ETH0_IP="10.231.64.50", ONEAPP_FL_CONTROL_ALLOW="10.231.64.0/24, 192.0.2.7")
    proxy = (sandbox.etc / "proxy" / "nginx.conf").read_text()
    control = proxy.split("location / {")[1]
    assert "allow 10.231.64.0/24;" in control and "allow 192.0.2.7;" in control
    assert control.index("allow") < control.index("deny all;")
    fleet = proxy.split("location /v1/fleet/ {")[1].split("}")[0]
    assert "allow" not in fleet and "deny" not in fleet


def test_control_api_closed_by_default(make_sandbox) -> None:
    sandbox = make_sandbox("superlink")
    sandbox.configured(ETH0_IP="10.231.64.50")
    proxy = (sandbox.etc / "proxy" / "nginx.conf").read_text()
    assert "allow" not in proxy
    assert "deny all;" in proxy.split("location / {")[1]


# The declaration format supports types our own parameters do not use yet: check them through the same
# validation function with a small declaration in the generated format.
SYNTHETIC_TYPES = {
    "P_RANGE": ("range", "5", "1..10", "NO"),
    "P_FLOAT": ("number-float", "0.5", "", "NO"),
    "P_MULTI": ("list-multiple", "a", "a,b,c", "NO"),
    "P_MANDATORY": ("text", "", "", "YES"),
    "P_RANGEF": ("range-float", "0.5", "0..1", "NO"),
}


def synthetic_declaration() -> str:
    """A declaration in the generated format (docs/architecture.md) with the types above."""

    def array(name: str, column: int) -> str:
        items = " ".join(f"[{key}]='{spec[column]}'" for key, spec in SYNTHETIC_TYPES.items() if spec[column])
        return f"declare -A {name}=({items})"

    stages = " ".join(f"[{key}]='configure'" for key in SYNTHETIC_TYPES)
    return "\n".join(
        [
            f"FL_PARAMS='{' '.join(SYNTHETIC_TYPES)}'",
            array("FL_PARAM_TYPE", 0),
            array("FL_PARAM_DEFAULT", 1),
            array("FL_PARAM_OPTIONS", 2),
            array("FL_PARAM_MANDATORY", 3),
            f"declare -A FL_PARAM_STAGE=({stages})",
        ]
    )


@pytest.mark.parametrize(
    ("assignments", "expected"),
    [
        ({"P_MANDATORY": "x"}, "OK P_RANGE=5 P_FLOAT=0.5 P_MULTI=a"),
        ({"P_MANDATORY": "x", "P_RANGE": "11"}, "P_RANGE: '11' is outside the range 1..10"),
        ({"P_MANDATORY": "x", "P_RANGE": "2.5"}, "P_RANGE: '2.5' is not a whole number"),
        ({"P_MANDATORY": "x", "P_FLOAT": "abc"}, "P_FLOAT: 'abc' is not a number"),
        ({"P_MANDATORY": "x", "P_MULTI": "a,d"}, "P_MULTI: 'd' is not one of a, b, c"),
        ({"P_MANDATORY": "x", "P_RANGEF": "1.5"}, "P_RANGEF: '1.5' is outside the range 0..1"),
        ({}, "P_MANDATORY: mandatory parameter is not set"),
    ],
)
def test_declaration_types(make_sandbox, tmp_path, assignments: dict[str, str], expected: str) -> None:
    declaration = tmp_path / "declaration.sh"
    declaration.write_text(synthetic_declaration())
    sandbox = make_sandbox("superlink")
    script = (
        f'. "{declaration}"\n'
        "if (fl_params_apply); then\n"
        '    fl_params_apply; echo "OK P_RANGE=$P_RANGE P_FLOAT=$P_FLOAT P_MULTI=$P_MULTI"\n'
        'else cat "$FL_REASON_FILE"; fi\n'
    )
    result = sandbox.bash(script, **assignments)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected


@pytest.mark.parametrize(
    ("fleet", "api", "reason"),
    [
        ("22", "9093", "ONEAPP_FL_FLEET_PORT: 22 is the SSH port"),
        ("9092", "022", "ONEAPP_FL_API_PORT: 22 is the SSH port"),
        ("9093", "0009093", "ONEAPP_FL_FLEET_PORT and ONEAPP_FL_API_PORT must differ (both are 9093)"),
        ("9100", "9100", "ONEAPP_FL_FLEET_PORT and ONEAPP_FL_API_PORT must differ (both are 9100)"),
        # bash arithmetic would wrap it to 9092
        ("18446744073709560708", "9093", "ONEAPP_FL_FLEET_PORT: '18446744073709560708' is too large"),
    ],
)
def test_bad_ports_are_refused_with_the_real_reason_before_anything_is_written(
    make_sandbox, fleet: str, api: str, reason: str
) -> None:
    sandbox = make_sandbox("superlink")
    sandbox.refused(reason, ETH0_IP="10.231.64.50", ONEAPP_FL_FLEET_PORT=fleet, ONEAPP_FL_API_PORT=api)
    assert not (sandbox.etc / "superlink.args").exists()
    assert not (sandbox.etc / "proxy" / "nginx.conf").exists()


def test_leading_zeros_are_decimal(make_sandbox) -> None:
    """09093 is 9093 (bash arithmetic would read it as a bad octal number)."""
    sandbox = make_sandbox("superlink")
    result = sandbox.service(
        "configure", ETH0_IP="10.231.64.50", ONEAPP_FL_API_PORT="09093", ONEAPP_FL_FLEET_PORT="009100"
    )
    assert result.returncode == 0, result.stderr + sandbox.reason
    args = sandbox.args("superlink")
    assert args[args.index("--port") + 1] == "9093"
    assert "listen 9100 ssl;" in (sandbox.etc / "proxy" / "nginx.conf").read_text()


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("ONEAPP_FL_DISCOVERY_TIMEOUT", "08", "8"),
        ("ONEAPP_FL_DISCOVERY_TIMEOUT", "000", "0"),
        ("ONEAPP_FL_MAX_RETRIES", "-0", "0"),
        ("ONEAPP_FL_MAX_RETRIES", "010", "10"),
    ],
)
def test_supernode_numbers_are_decimal(make_sandbox, name: str, value: str, expected: str) -> None:
    sandbox = make_sandbox("supernode")
    result = sandbox.bash(f'fl_params_apply\nsupernode_validate\nprintf "%s" "${name}"', **{name: value})
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected
