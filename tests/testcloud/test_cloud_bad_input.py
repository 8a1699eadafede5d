"""Bad input gets oned's error (or the protocol's fault), changes nothing, and never takes the cloud down."""

from __future__ import annotations

import random
import socket
import threading
import xmlrpc.client
from collections.abc import Iterator
from typing import Any

import pyone
import pytest
import requests
from cloudtest_helpers import FAST, flow

from testcloud import launcher
from testcloud.api.xmlrpc import METHODS


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One cloud for the checks that change nothing."""
    handle = launcher.start(tmp_path_factory.mktemp("bad-input") / "cloud", driver="dummy", timings=FAST)
    yield handle
    handle.stop()


def post_rpc(cloud: Any, body: bytes, headers: dict[str, str] | None = None) -> requests.Response:
    return requests.post(cloud.endpoints["xmlrpc"], data=body, headers=headers or {}, timeout=30)


def still_answers(cloud: Any) -> None:
    assert pyone.OneServer(cloud.endpoints["xmlrpc"], session=cloud.auth).system.version() == "7.3.80"


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not xml at all",
        b"<methodCall><methodName>one.vm.info</methodName><params><param>",
        b"<methodResponse/>",
        b"<a>" * 5000 + b"</a>" * 5000,
        b"<methodCall><methodName>one.vm.info</methodName><params><param><value><int>x</int></value></param>"
        b"</params></methodCall>",
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa">'
        b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
        b'<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">]>'
        b"<methodCall><methodName>&d;</methodName></methodCall>",
        "<methodCall><methodName>one.vm.info</methodName><params><param><value><string>\udcff</string>".encode(
            "utf-8", "surrogatepass"
        ),
    ],
    ids=["empty", "text", "truncated", "response", "deep", "bad-int", "entities", "bad-utf8"],
)
def test_malformed_calls_are_faults(shared: Any, body: bytes) -> None:
    reply = post_rpc(shared, body)
    assert reply.status_code == 200
    with pytest.raises(xmlrpc.client.Fault):
        xmlrpc.client.loads(reply.content)
    still_answers(shared)


def test_oversized_body_is_refused(cloud: Any) -> None:
    with socket.create_connection(
        ("127.0.0.1", int(cloud.endpoints["xmlrpc"].split(":")[2].split("/")[0]))
    ) as sock:
        sock.sendall(b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999999\r\n\r\n")
        answer = b""
        while chunk := sock.recv(4096):  # the server answers, then closes the connection
            answer += chunk
    assert b"XML-RPC request too large" in answer
    still_answers(cloud)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_checks_its_parameter_types(shared: Any, method: str) -> None:
    """Each parameter replaced by a value of another type gives a fault, never an answer or a crash."""
    spec = METHODS[method].params.replace("|", "")
    good = {"i": 0, "s": "NAME=x", "b": False}
    wrong = {"i": "zero", "s": 7, "b": "yes"}
    proxy = xmlrpc.client.ServerProxy(shared.endpoints["xmlrpc"])
    for index, kind in enumerate(spec):
        params = [good[k] for k in spec]
        params[index] = wrong[kind]
        with pytest.raises(xmlrpc.client.Fault) as fault:
            getattr(proxy, method)(shared.auth, *params)
        assert fault.value.faultCode == -501, (method, index)
    still_answers(shared)


def test_random_templates_never_crash_and_change_nothing_on_error(cloud: Any, one: Any) -> None:
    rng = random.Random(20251128)
    alphabet = 'AB_=[],"#\n \\<>]CDATA' + "é"
    accepted = 0
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
        try:
            one.template.allocate(f'NAME="r{_}"\n' + text)
            accepted += 1
        except pyone.OneException as error:
            assert str(error).startswith("[one.template.allocate] ")
    assert len(one.templatepool.info(-2, -1, -1).VMTEMPLATE) == accepted
    still_answers(cloud)


def test_large_values_round_trip(one: Any) -> None:
    big = "x" * 2_000_000
    template_id = one.template.allocate(f'NAME="big"\nPAYLOAD="{big}"')
    assert one.template.info(template_id).TEMPLATE["PAYLOAD"] == big


def test_control_characters_and_cdata_ends_do_not_break_answers(cloud: Any, one: Any) -> None:
    """A guest may send anything through OneGate; the XML answers must stay well-formed."""
    vm_id = one.vm.allocate('NAME="c"\nCPU="1"\nMEMORY="64"', True)
    cloud.cloud.vms.vm_update(vm_id, 'NOTE="bell\x07 and \x01"', 1)
    one.vm.update(vm_id, "<TEMPLATE><END>a]]&gt;b</END></TEMPLATE>", 1)  # XML syntax can carry ]]>
    user_template = one.vm.info(vm_id).USER_TEMPLATE
    assert user_template["NOTE"].startswith("bell") and user_template["END"] == "a]]>b"


def test_concurrent_allocations_get_unique_ids_and_addresses(cloud: Any) -> None:
    results: list[int] = []
    errors: list[Exception] = []

    def worker() -> None:
        client = pyone.OneServer(cloud.endpoints["xmlrpc"], session=cloud.auth)
        try:
            for _ in range(5):
                results.append(
                    client.vm.allocate('NAME=""\nCPU="1"\nMEMORY="64"\nNIC=[NETWORK_ID="0"]', True)
                )
        except Exception as error:
            errors.append(error)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(results) == list(range(40))
    one = pyone.OneServer(cloud.endpoints["xmlrpc"], session=cloud.auth)
    ips = [vm.TEMPLATE["NIC"]["IP"] for vm in one.vmpool.info(-2, -1, -1, -1).VM]
    assert len(set(ips)) == 40


def test_exhausted_address_range(cloud: Any, one: Any) -> None:
    for number in range(253):
        one.vm.allocate(f'NAME="n{number}"\nCPU="1"\nMEMORY="8"\nNIC=[NETWORK_ID="0"]', True)
    with pytest.raises(pyone.OneException, match=r"Cannot get IP/MAC lease from virtual network 0\."):
        one.vm.allocate('NAME="one-too-many"\nCPU="1"\nMEMORY="8"\nNIC=[NETWORK_ID="0"]', True)
    assert len(one.vmpool.info(-2, -1, -1, -1).VM) == 253


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/service_template", "[]"),
        ("POST", "/service_template", "42"),
        ("POST", "/service_template", '{"name": "x", "roles": [1, 2]}'),
        ("POST", "/service_template/0/action", "{}"),
        ("POST", "/service_template/0/action", '{"action": "instantiate"}'),
        ("POST", "/service/0/scale", "[]"),
        ("POST", "/service/abc/scale", "{}"),
        ("PUT", "/service_template/0", "null"),
        ("GET", "/nowhere", ""),
    ],
)
def test_oneflow_never_crashes(cloud: Any, method: str, path: str, body: str) -> None:
    user, password = cloud.auth.split(":", 1)
    reply = requests.request(
        method, cloud.endpoints["oneflow"] + path, data=body, auth=(user, password), timeout=10
    )
    assert 400 <= reply.status_code < 600
    assert flow(cloud, "GET", "/service").status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("PUT", "/vm", "\x00\x01"),
        ("POST", "/vms/0/action", "{"),
        ("PUT", "/service/role/x", "nope"),
        ("GET", "/", ""),
    ],
)
def test_onegate_never_crashes(cloud: Any, method: str, path: str, body: str) -> None:
    headers = {"X-ONEGATE-TOKEN": "x" * 10_000, "X-ONEGATE-VMID": "0"}
    reply = requests.request(
        method, cloud.endpoints["onegate"] + path, data=body, headers=headers, timeout=10
    )
    assert reply.status_code == 401
    still_answers(cloud)
