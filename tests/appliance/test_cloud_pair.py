"""A real pair on the local test cloud: 1 SuperLink + 2 SuperNodes booted by the container driver through
a OneFlow service (straight deployment, ready gate), checked from outside (OneGate attributes, OneFlow)
and inside (pytest-testinfra over SSH): services, ports, users, file modes, certificates, MOTD,
registration, the Control API kept off the network, a SuperLink reboot, scaling, and the security cases
(unregistered node, wrong CA) next to it.
"""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from appliance_cloud import ApplianceCloud, Pair, wait_for
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from metrics_helpers import promtool_check, samples

pytestmark = pytest.mark.cloud


@pytest.fixture(scope="module")
def pair(appliance_cloud: ApplianceCloud):
    with appliance_cloud.booted_pair("pair") as booted:
        yield booted


def online_nodes(pair: Pair) -> list[dict]:
    return [node for node in pair.cloud.flwr_nodes(pair.superlink) if node["status"] == "online"]


def wait_online(pair: Pair, count: int, timeout: float = 240) -> list[dict]:
    try:
        return wait_for(
            lambda: len(nodes := online_nodes(pair)) == count and nodes, timeout, what=f"{count} online"
        )
    except AssertionError as error:
        reports = "\n".join(pair.cloud.diagnose(vm) for vm in [pair.superlink, *pair.supernodes])
        raise AssertionError(f"{error}: {pair.cloud.flwr_nodes(pair.superlink)}\n{reports}") from None


# --- OneGate / OneFlow view ---------------------------------------------------------------------------


def test_every_vm_is_ready_only_after_bootstrap(pair: Pair) -> None:
    for vm in [pair.superlink, *pair.supernodes]:
        attributes = pair.cloud.user_template(vm)
        assert attributes.get("READY") == "YES", pair.cloud.diagnose(vm)
        assert attributes.get("ONEAPP_FL_STATUS") == "ready"
        assert not attributes.get("ONEAPP_FL_ERROR")
        assert (
            pair.cloud.host(vm).file("/etc/one-appliance/status").content_string.strip()
            == "bootstrap_success"
        )


def test_superlink_publishes_endpoint_ca_fingerprint_and_version(pair: Pair) -> None:
    attributes = pair.cloud.user_template(pair.superlink)
    assert attributes["ONEAPP_FL_ENDPOINT"] == f"{pair.superlink_ip}:9092"
    assert attributes["ONEAPP_FL_FLOWER_VERSION"] == "1.42.0"
    assert attributes["ONEAPP_FL_NODE_AUTH"] == "YES"
    published = base64.b64decode(attributes["ONEAPP_FL_CA_CERT"])
    in_guest = pair.cloud.host(pair.superlink).file("/etc/flower/tls/ca.pem").content
    assert published == in_guest
    fingerprint = x509.load_pem_x509_certificate(published).fingerprint(hashes.SHA256()).hex(":").upper()
    assert attributes["ONEAPP_FL_CA_FINGERPRINT"] == fingerprint


def test_supernodes_publish_their_public_key_and_compatibility(pair: Pair) -> None:
    for vm in pair.supernodes:
        attributes = pair.cloud.user_template(vm)
        key = pair.cloud.host(vm).file("/var/lib/flower/keys/supernode.pub").content_string.strip()
        assert attributes["ONEAPP_FL_NODE_PUBKEY"] == key
        assert key.startswith("ecdsa-sha2-nistp384 ")
        assert attributes["ONEAPP_FL_COMPAT"] == "compatible"
        assert attributes["ONEAPP_FL_FLOWER_VERSION"] == "1.42.0"


# --- inside the SuperLink ----------------------------------------------------------------------------


def test_superlink_services_run_as_the_flower_user(pair: Pair) -> None:
    host = pair.cloud.host(pair.superlink)
    for unit in ("flower-superlink", "flower-fleet-proxy", "flower-keysync", "ssh"):
        assert host.service(unit).is_running, unit
    flower = host.user("flower")
    assert flower.exists and flower.uid != 0 and flower.shell.endswith("nologin")
    for process in ("flower-superlink", "nginx"):
        users = {entry.user for entry in host.process.filter(comm=process[:15])}
        assert users == {"flower"}, (process, users)
    sandbox = host.run("systemctl show -p NoNewPrivileges -p ProtectSystem -p User flower-superlink").stdout
    assert "NoNewPrivileges=yes" in sandbox and "ProtectSystem=strict" in sandbox and "User=flower" in sandbox


def test_superlink_ports_keep_the_control_api_on_loopback(pair: Pair) -> None:
    host = pair.cloud.host(pair.superlink)
    assert host.socket("tcp://127.0.0.1:9093").is_listening
    assert not host.socket("tcp://0.0.0.0:9093").is_listening
    assert host.socket("tcp://0.0.0.0:9092").is_listening
    listening = host.run("ss -Hltn").stdout
    assert f"{pair.superlink_ip}:9093" not in listening and "*:9093" not in listening


def test_superlink_key_files_and_certificate(pair: Pair) -> None:
    host = pair.cloud.host(pair.superlink)
    server_key = host.file("/etc/flower/tls/server.key")
    assert server_key.mode == 0o600 and server_key.user == "flower"
    ca_key = host.file("/etc/flower/tls/ca.key")
    assert ca_key.mode == 0o600 and ca_key.user == "root"
    assert host.file("/var/lib/flower/state.db").user == "flower"
    certificate = x509.load_pem_x509_certificate(host.file("/etc/flower/tls/server.pem").content)
    extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    addresses = {str(address) for address in extension.get_values_for_type(x509.IPAddress)}
    names = set(extension.get_values_for_type(x509.DNSName))
    assert {pair.superlink_ip, "127.0.0.1"} <= addresses
    assert host.run("hostname").stdout.strip() in names


def test_the_onegate_token_is_for_root_only(pair: Pair) -> None:
    """No file the ``flower`` user (and so a ServerApp or ClientApp) can read holds the VM's OneGate token:
    with it, guest code could rewrite the attributes of every VM of its service (issue 9)."""
    for vm in [pair.superlink, pair.supernodes[0]]:
        host = pair.cloud.host(vm)
        token = host.run("cat /context/token.txt").stdout.strip()
        assert token, f"VM {vm}: no token in /context"
        readable = host.run(
            f"runuser -u flower -- grep -rlsF -- '{token}' /context /run /etc /var/lib /var/log /tmp /home"
        )
        assert readable.rc != 0 and not readable.stdout.strip(), f"VM {vm}: flower reads {readable.stdout}"


def test_superlink_motd_and_logs(pair: Pair) -> None:
    host = pair.cloud.host(pair.superlink)
    assert "All set and ready to serve" in host.file("/etc/motd").content_string
    for stage in ("install", "configure", "bootstrap"):
        assert host.file(f"/var/log/one-appliance/{stage}.log").exists, stage
    journal = host.run("journalctl -u flower-superlink -o short-iso --no-pager").stdout
    assert "Starting Flower SuperLink" in journal
    assert "\x1b[" not in journal  # Flower's colour codes are stripped


def test_the_appliance_is_installed_as_laid_out_and_renders_its_templates(pair: Pair) -> None:
    """/etc/one-appliance is context/appliance as laid out (role hooks, shared lib, templates), and the
    configuration the stages wrote came from the templates with every placeholder filled."""
    for vm, role in [(pair.superlink, "superlink"), (pair.supernodes[0], "supernode")]:
        host = pair.cloud.host(vm)
        for path in (f"roles/{role}.sh", "lib/checks.sh", "templates/nginx.conf", "templates/flower.env"):
            assert host.file(f"/etc/one-appliance/{path}").exists, (role, path)
        assert "{{" not in host.file("/etc/flower/flower.env").content_string, role
    proxy = pair.cloud.host(pair.superlink).file("/etc/flower/proxy/nginx.conf").content_string
    assert "{{" not in proxy and "ssl_certificate /etc/flower/tls/" in proxy
    assert "location /v1/fleet/" in proxy and "deny all;" in proxy


# --- inside the SuperNodes ---------------------------------------------------------------------------


def test_supernodes_run_with_their_key_the_pinned_ca_and_distinct_partitions(pair: Pair) -> None:
    wait_online(pair, 2)  # until its key is registered a SuperNode exits and restarts (backoff)
    superlink_ca = pair.cloud.host(pair.superlink).file("/etc/flower/tls/ca.pem").content
    partitions = set()
    for vm in pair.supernodes:
        host = pair.cloud.host(vm)
        assert host.service("flower-supernode").is_running
        assert {entry.user for entry in host.process.filter(comm="flower-supernode"[:15])} == {"flower"}
        key = host.file("/var/lib/flower/keys/supernode")
        assert key.mode == 0o600 and key.user == "flower"
        assert host.file("/var/lib/flower/tls/superlink-ca.pem").content == superlink_ca
        args = host.file("/etc/flower/supernode.args").content_string.splitlines()
        assert args[args.index("--superlink") + 1] == f"{pair.superlink_ip}:9092"
        partitions.add(args[args.index("--node-config") + 1])
        assert "All set and ready to serve" in host.file("/etc/motd").content_string
    assert partitions == {"partition-id=0 num-partitions=2", "partition-id=1 num-partitions=2"}


def test_metrics_served_on_loopback_pass_promtool_on_both_roles(pair: Pair) -> None:
    """flower-metrics runs on every VM with the default ONEAPP_FL_METRICS_* (port 9101, loopback only), its
    exposition read on the VM passes `promtool check metrics`, and it serves its role's series."""
    wait_online(pair, 2)
    for vm, role in [(pair.superlink, "superlink"), *((node, "supernode") for node in pair.supernodes)]:
        host = pair.cloud.host(vm)
        assert host.service("flower-metrics").is_running, pair.cloud.diagnose(vm)
        assert host.run("systemctl show -p User --value flower-metrics").stdout.strip() == "flower"
        assert host.file("/etc/flower/metrics.args").content_string.splitlines()[:2] == [role, "--port=9101"]
        assert host.socket("tcp://127.0.0.1:9101").is_listening
        assert not host.socket("tcp://0.0.0.0:9101").is_listening
        text = wait_for(lambda host=host: _scrape(host), 60, what=f"VM {vm} metrics")
        promtool_check(text)
        series = samples(text)
        if role == "superlink":
            assert series['flower_exporter_source_up{source="state_db"}'] == 1.0
            assert series["flower_superlink_supernodes_connected"] == 2.0
        else:
            assert series['flower_exporter_source_up{source="supernode_log"}'] == 1.0
    # From another VM of the network the port is closed (loopback only by default).
    probe = pair.cloud.host(pair.supernodes[0]).run(
        f"curl --silent --max-time 5 http://{pair.superlink_ip}:9101/metrics"
    )
    assert probe.rc != 0 and "flower_" not in probe.stdout


def test_supernode_metrics_show_the_connection(pair: Pair) -> None:
    """Read from the SuperNode's journal inside the exporter's sandbox (flower-metrics: the newest boot, the
    SuperNode's own process), as a booted container shows it."""
    wait_online(pair, 2)
    for vm in pair.supernodes:
        host = pair.cloud.host(vm)
        text = wait_for(lambda host=host: _scrape(host), 60, what=f"VM {vm} metrics")
        assert samples(text)["flower_supernode_connected"] == 1.0


def _scrape(host) -> str:
    result = host.run("curl --silent --fail --max-time 10 http://127.0.0.1:9101/metrics")
    return result.stdout if result.rc == 0 and "flower_exporter_source_up" in result.stdout else ""


def test_node_counts_are_published_for_elasticity(pair: Pair) -> None:
    """The SuperLink publishes ONEAPP_FL_CONNECTED_NODES and ONEAPP_FL_MIN_NODES, every SuperNode copies
    them onto its own VM (what a SuperNode-role elasticity expression reads, docs/elasticity.md)."""
    wait_online(pair, 2)
    for vm in [pair.superlink, *pair.supernodes]:
        assert pair.cloud.host(vm).service("flower-nodecount").is_running, pair.cloud.diagnose(vm)

    def counts(vm: int) -> tuple[str, str] | None:
        attributes = pair.cloud.user_template(vm)
        found = (attributes.get("ONEAPP_FL_CONNECTED_NODES", ""), attributes.get("ONEAPP_FL_MIN_NODES", ""))
        return found if found == ("2", "2") else None

    for vm in [pair.superlink, *pair.supernodes]:
        wait_for(lambda vm=vm: counts(vm), 150, what=f"VM {vm} publishes 2 connected / 2 minimum")


def test_the_supernodes_register_and_go_online(pair: Pair) -> None:
    nodes = wait_online(pair, 2)
    assert len({node["node-id"] for node in nodes}) == 2


def test_control_api_is_unreachable_from_a_supernode_host(pair: Pair) -> None:
    wait_online(pair, 2)  # the Fleet API itself works through the proxy
    host = pair.cloud.host(pair.supernodes[0])
    ca = "/var/lib/flower/tls/superlink-ca.pem"
    base = f"https://{pair.superlink_ip}"
    for route in ("/v1/control/list-runs", "/v1/control/start-run", "/"):
        code = host.run(f"curl -s -o /dev/null -w '%{{http_code}}' --cacert {ca} -X POST {base}:9092{route}")
        assert code.stdout == "403", (route, code.stdout)
    direct = host.run(f"curl -s -o /dev/null -w '%{{http_code}}' --connect-timeout 5 -k {base}:9093/health")
    assert direct.rc != 0 and direct.stdout == "000"  # nothing listens there for other hosts
    health = host.run(f"curl -s -o /dev/null -w '%{{http_code}}' --cacert {ca} {base}:9092/health")
    assert health.stdout == "200"
    config = (
        f'[superlink]\ndefault = "x"\n[superlink.x]\naddress = "{pair.superlink_ip}:9092"\n'
        f'root-certificates = "{ca}"\n'
    )
    host.run(f"mkdir -p /tmp/flwr && cat > /tmp/flwr/config.toml <<'EOF'\n{config}EOF")
    listing = host.run("FLWR_HOME=/tmp/flwr /opt/flower/venv/bin/flwr ls --format json")
    assert '"success": true' not in listing.stdout, listing.stdout


def test_nothing_secret_in_logs_or_onegate(pair: Pair) -> None:
    token_marker = "TOKENTXT"
    for vm in [pair.superlink, *pair.supernodes]:
        host = pair.cloud.host(vm)
        token = host.run(". /var/run/one-context/one_env && printf '%s' \"$TOKENTXT\"").stdout
        assert len(token) > 10
        logs = host.run("cat /var/log/one-appliance/*.log; journalctl --no-pager -o cat").stdout
        assert "PRIVATE KEY" not in logs
        assert token not in logs
        for private in ("/etc/flower/tls/server.key", "/var/lib/flower/keys/supernode"):
            material = host.run(f"test -f {private} && sed -n 2p {private}").stdout.strip()
            if material:
                assert material not in logs
        published = json.dumps(pair.cloud.user_template(vm))
        assert "PRIVATE" not in published and token not in published and token_marker not in published


# --- lifecycle ----------------------------------------------------------------------------------------


def test_superlink_reboot_keeps_ca_and_state_and_the_supernodes_reconnect(pair: Pair) -> None:
    cloud = pair.cloud
    wait_online(pair, 2)
    before_ca = cloud.host(pair.superlink).file("/etc/flower/tls/ca.pem").content
    before_nodes = {node["node-id"] for node in cloud.flwr_nodes(pair.superlink)}
    # /run is a tmpfs: the marker is gone once the guest has really restarted.
    assert cloud.host(pair.superlink).run("touch /run/fl-test-before-reboot").rc == 0
    cloud.one.vm.action("reboot", pair.superlink)
    wait_for(
        lambda: _bootstrapped_after_reboot(cloud, pair.superlink),
        600,
        what="SuperLink bootstrap after the reboot",
    )
    host = cloud.wait_ssh(pair.superlink)
    assert host.file("/etc/flower/tls/ca.pem").content == before_ca
    nodes = wait_online(pair, 2, timeout=300)
    assert {node["node-id"] for node in nodes} == before_nodes  # registrations survived in the database


def _bootstrapped_after_reboot(cloud: ApplianceCloud, vm: int) -> bool:
    try:
        host = cloud.host(vm)
        status = host.file("/etc/one-appliance/status").content_string.strip()
        restarted = not host.file("/run/fl-test-before-reboot").exists
        return restarted and status == "bootstrap_success" and host.service("flower-superlink").is_running
    except Exception:  # the guest is going down or coming up
        return False


def test_scale_down_unregisters_and_scale_up_registers(pair: Pair) -> None:
    cloud = pair.cloud
    wait_online(pair, 2)
    cloud.scale(pair.service, "supernode", 1)
    wait_for(lambda: len(cloud.role_vms(pair.service, "supernode")) == 1, 300, what="scale down")
    wait_for(
        lambda: (
            len(
                [
                    n
                    for n in cloud.flwr_nodes(pair.superlink)
                    if n["status"] in ("online", "offline", "registered")
                ]
            )
            == 1
        ),
        120,
        what="the removed SuperNode's key unregistered",
    )
    cloud.wait_service_running(pair.service, 300)
    cloud.scale(pair.service, "supernode", 2)
    wait_for(lambda: len(cloud.role_vms(pair.service, "supernode")) == 2, 300, what="scale up")
    cloud.wait_service_running(pair.service, 600)
    pair.supernodes = cloud.role_vms(pair.service, "supernode")
    wait_online(pair, 2, timeout=300)


# --- security: outside the service ---------------------------------------------------------------------


def test_an_unregistered_supernode_is_rejected(pair: Pair) -> None:
    cloud = pair.cloud
    ca = base64.b64encode(cloud.host(pair.superlink).file("/etc/flower/tls/ca.pem").content).decode()
    vm = cloud.instantiate(
        "supernode",
        "stranger",
        {"ONEAPP_FL_SUPERLINK": f"{pair.superlink_ip}:9092", "ONEAPP_FL_SUPERLINK_CA": ca},
    )
    try:
        cloud.wait_ready(vm)  # its own setup is fine: TLS verifies, the SuperLink answers
        host = cloud.wait_ssh(vm)
        wait_for(
            lambda: (
                "Failed to activate" in host.run("journalctl -u flower-supernode --no-pager -o cat").stdout
            ),
            180,
            what="the SuperLink refusing the unregistered SuperNode",
        )
        stranger_key = host.file("/var/lib/flower/keys/supernode.pub").content_string.split()[1]
        registered = cloud.host(pair.superlink).run("cat /var/lib/flower/keysync/registered").stdout
        assert hashlib.sha256(f"ecdsa-sha2-nistp384 {stranger_key}\n".encode()).hexdigest() not in registered
        assert len(online_nodes(pair)) == len(pair.supernodes)
    finally:
        cloud.terminate(vm)


def test_a_supernode_given_the_wrong_ca_fails_closed(pair: Pair, tmp_path) -> None:
    import subprocess

    cloud = pair.cloud
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", str(tmp_path / "k"), "-out", str(tmp_path / "ca.pem"),
         "-subj", "/CN=Not the SuperLink CA", "-days", "2"],
        check=True, capture_output=True,
    )  # fmt: skip
    wrong = base64.b64encode((tmp_path / "ca.pem").read_bytes()).decode()
    vm = cloud.instantiate(
        "supernode",
        "wrong-ca",
        {"ONEAPP_FL_SUPERLINK": f"{pair.superlink_ip}:9092", "ONEAPP_FL_SUPERLINK_CA": wrong},
    )
    try:
        cloud.wait_status(vm, {"failed"})
        attributes = cloud.user_template(vm)
        assert attributes["ONEAPP_FL_STAGE"] == "bootstrap"
        assert "TLS verification of the SuperLink" in attributes["ONEAPP_FL_ERROR"]
        assert attributes.get("READY") != "YES"
        host = cloud.wait_ssh(vm)
        assert not host.service("flower-supernode").is_running
    finally:
        cloud.terminate(vm)
