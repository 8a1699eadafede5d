"""What the factory publishes, used the way a user uses it with pyone against the local test cloud (oned's
dummy driver; the guests' READY is reported through OneGate as one-context does):

- every IMAGE app exported with pyone's own ``marketapp.export`` helper (it appends ``NAME``/``DISK`` in ONE
  syntax to the decoded ``VMTEMPLATE64``) becomes an image and a VM template;
- the SERVICE_TEMPLATE app exported the way OpenNebula's CLI does it (``export_service_template`` of
  ``src/oca/ruby/opennebula/marketplaceapp_ext.rb``: export every app a ROLE names, set the role's
  ``vm_template``, validate and allocate the body as a type-101 document) becomes a service template that
  deploys with the network the user picks (``networks_values``) and the user inputs' defaults
  (``user_inputs_values``) and reaches RUNNING behind the ready gate;
- bad input is refused with a clear error and leaves nothing behind.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyone
import pytest

from factory.harness import appliance_templates
from factory.one import OneCloud, ServiceDeployment, load_settings
from factory.release.publish import ChecksumMismatch, Publication, publish
from factory.release.results import write_result
from hostkit.errors import FactoryError
from hostkit.progress import Progress
from testcloud.flow import schema as flow_schema

from .conftest import RUN, make_pair_result
from .test_one_driver import Guests

SERVICE_TEMPLATE_DOCUMENT = 101


@pytest.fixture(scope="module")
def cloud_state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[OneCloud, Path]]:
    from testcloud import launcher

    state = tmp_path_factory.mktemp("testcloud")
    with launcher.start(state, ports="auto", driver="dummy"):
        yield OneCloud(load_settings(environ={}, cloud_dir=state), Progress()), state


def _results(tmp_path: Path, flower: str = "1.42.0") -> Path:
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    root = tmp_path / "results"
    write_result(make_pair_result(images, flower, flower), root)
    return root


def _counts(one: Any) -> tuple[int, int, int, int]:
    """(images, VM templates, marketplace apps, documents): what a failure must not leave behind."""
    return (
        len(one.imagepool.info(-2, -1, -1).IMAGE),
        len(one.templatepool.info(-2, -1, -1).VMTEMPLATE),
        len(one.marketapppool.info(-2, -1, -1).MARKETPLACEAPP),
        len(one.documentpool.info(-2, -1, -1, SERVICE_TEMPLATE_DOCUMENT).DOCUMENT),
    )


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def export_service_app(one: Any, app_id: int, name: str, datastore: int) -> dict[str, Any]:
    """``export_service_template`` with pyone: each app a ROLE names is exported once, as
    ``<name>-<role>-<n>`` (image and VM template; ``export_recursive`` counts exported apps and lets a later
    ROLE naming the same app reuse it), the role's ``vm_template`` set, the body validated (OneFlow's
    validator, which converts the roles to ``template_id``) and allocated as a service template document.
    Undone on failure."""
    app = one.marketapp.info(app_id)
    roles = _as_list(app.TEMPLATE["ROLE"])
    pool = {str(item.NAME): int(item.ID) for item in one.marketapppool.info(-2, -1, -1).MARKETPLACEAPP}
    exported: dict[str, dict[str, int]] = {}
    by_app: dict[str, dict[str, int]] = {}
    try:
        for role in roles:
            app_name = str(role["APP"])
            if app_name not in by_app:
                index = len(by_app)
                by_app[app_name] = one.marketapp.export(
                    pool[app_name],
                    datastore,
                    f"{name}-{role['NAME']}-{index}",
                    f"{name}-{role['NAME']}-{index}",
                )
            exported[str(role["NAME"])] = by_app[app_name]
        body = json.loads(base64.b64decode(app.TEMPLATE["APPTEMPLATE64"]))
        body["name"] = name
        for role in body["roles"]:
            role["vm_template"] = exported[role["name"]]["vmtemplate"]
        flow_schema.validate(body)
        body["registration_time"] = int(time.time())
        document = f"<TEMPLATE><NAME>{name}</NAME><BODY><![CDATA[{json.dumps(body)}]]></BODY></TEMPLATE>"
        template_id = one.document.allocate(document, SERVICE_TEMPLATE_DOCUMENT)
    except BaseException:
        for ids in by_app.values():
            one.template.delete(ids["vmtemplate"])
        raise
    return {"service_template": template_id, "exported": exported}


def _defaults(inputs: dict[str, str]) -> dict[str, str]:
    """What Sunstone pre-fills and ``oneflow-template instantiate`` takes on enter: each input's default."""
    return {key: spec.split("|")[4] for key, spec in inputs.items()}


@pytest.fixture
def cloud(cloud_state: tuple[OneCloud, Path]) -> OneCloud:
    return cloud_state[0]


@pytest.fixture
def publication(cloud: OneCloud, tmp_path: Path) -> Publication:
    """The test run published into the module's cloud."""
    return publish(RUN, cloud, results_root=_results(tmp_path))


def test_every_published_app_exports_and_the_service_deploys(
    cloud_state: tuple[OneCloud, Path], publication: Publication
) -> None:
    cloud, state = cloud_state
    one = cloud.one
    datastore = cloud.image_datastore_id()
    for app in publication.apps:
        if app["type"] != "IMAGE":
            continue
        result = one.marketapp.export(app["id"], datastore, f"pyone-{app['id']}", f"pyone-{app['id']}")
        image = one.image.info(result["image"])
        assert image.TEMPLATE["FROM_APP_MD5"] == one.marketapp.info(app["id"]).MD5
        template = one.template.info(result["vmtemplate"]).TEMPLATE
        assert template["DISK"] == {"IMAGE_ID": str(result["image"])}
        assert template["NIC"] == {"NETWORK_MODE": "auto"}
        assert template["CONTEXT"]["SSH_PUBLIC_KEY"] == "$USER[SSH_PUBLIC_KEY]"
        assert template["USER_INPUTS"]["ONEAPP_FL_TLS"].endswith("|YES")
    service_app = next(app for app in publication.apps if app["type"] == "SERVICE_TEMPLATE")
    made = export_service_app(one, service_app["id"], "flower-federation", datastore)
    assert sorted(made["exported"]) == ["monitoring", "superlink", "supernode"]
    body = cloud.flow.service_template(made["service_template"])["TEMPLATE"]["BODY"]
    body = json.loads(body) if isinstance(body, str) else body
    assert [role["template_id"] for role in body["roles"]] == [
        made["exported"][role]["vmtemplate"] for role in ("superlink", "supernode", "monitoring")
    ]
    # the monitoring role (cardinality 0) reuses the SuperLink's export: the app is exported once
    assert made["exported"]["monitoring"] == made["exported"]["superlink"]
    monitoring = next(role for role in body["roles"] if role["name"] == "monitoring")
    assert monitoring["cardinality"] == 0
    network = cloud.network_id()
    merge = {
        "name": "flower-from-market",
        "networks_values": [{appliance_templates.NETWORK: {"id": str(network)}}],
        "user_inputs_values": _defaults(body["user_inputs"]),
    }
    with Guests(state, {"READY": "YES", "ONEAPP_FL_STATUS": "ready"}):
        service_id = cloud.flow.instantiate(made["service_template"], merge)
        deployment = ServiceDeployment(cloud, service_id, "flower-from-market", time.monotonic())
        deployment.wait_running(120)
    vms = deployment.vms()
    assert sorted(vm.role for vm in vms) == ["superlink", "supernode", "supernode"]
    for vm in vms:
        info = one.vm.info(vm.id)
        assert info.TEMPLATE["NIC"]["NETWORK_ID"] == str(network)  # the network the user picked
        context = info.TEMPLATE["CONTEXT"]
        assert (context["NETWORK"], context["TOKEN"], context["REPORT_READY"]) == ("YES", "YES", "YES")
        assert context["ONEAPP_FL_TLS"] == "YES"  # the input's default reached the guest
        disk = info.TEMPLATE["DISK"]
        assert int(disk["IMAGE_ID"]) == made["exported"][vm.role]["image"]
    assert deployment.role_vms("superlink")[0].user_template["ONEAPP_FL_STATUS"] == "ready"
    deployment.delete()


def test_an_export_into_a_missing_datastore_creates_nothing(
    cloud: OneCloud, publication: Publication
) -> None:
    one = cloud.one
    app = next(app for app in publication.apps if app["type"] == "IMAGE")
    before = _counts(one)
    with pytest.raises(pyone.OneNoExistsException, match=r"Error getting datastore \[99\]"):
        one.marketapp.export(app["id"], 99, "nowhere", "nowhere")
    service = next(app for app in publication.apps if app["type"] == "SERVICE_TEMPLATE")
    with pytest.raises(pyone.OneNoExistsException, match=r"datastore \[99\]"):
        export_service_app(one, service["id"], "nowhere", 99)
    assert _counts(one) == before


def test_a_service_with_a_bad_network_id_is_refused_before_anything_is_made(
    cloud: OneCloud,
) -> None:
    one = cloud.one
    link = cloud.create_vm_template(appliance_templates.vm_template("superlink", "badnet-sl", 0, None))
    node = cloud.create_vm_template(appliance_templates.vm_template("supernode", "badnet-sn", 0, None))
    template_id = cloud.create_service_template(
        appliance_templates.service_template("badnet", link, node, 1, "tls-auth")
    )
    services = len(one.documentpool.info(-2, -1, -1, 100).DOCUMENT)
    vms = len(one.vmpool.info(-2, -1, -1, -1).VM)
    merge = {"networks_values": [{appliance_templates.NETWORK: {"id": "4242"}}]}
    with pytest.raises(FactoryError, match=r"'Private': virtual network id '4242' does not exist"):
        cloud.launch_service(template_id, "badnet-1", merge)
    assert len(one.documentpool.info(-2, -1, -1, 100).DOCUMENT) == services
    assert len(one.vmpool.info(-2, -1, -1, -1).VM) == vms
    cloud.delete_service_template(template_id)
    for template in (link, node):
        cloud.delete_vm_template(template)


def test_an_image_whose_content_changed_after_the_test_is_not_published(
    cloud: OneCloud, tmp_path: Path
) -> None:
    """A cloud image that carries the tested sha256 attribute but other content: refused, nothing made."""
    one = cloud.one
    root = _results(tmp_path, "1.40.0")
    result = next(iter((root / RUN).glob("*.json")))
    tested = json.loads(result.read_text())["superlink"]["image"]
    decoy = tmp_path / "decoy.img"
    decoy.write_bytes(b"not what was tested" * 100)
    from factory.one.cloud import CHECKSUM_ATTRIBUTE

    decoy_id = one.image.allocate(
        f'NAME="decoy"\nPATH="{decoy}"\nTYPE="OS"\n{CHECKSUM_ATTRIBUTE}="{tested["sha256"]}"',
        cloud.image_datastore_id(),
    )
    cloud.wait_image(decoy_id, 60)
    before = _counts(one)
    with pytest.raises(
        FactoryError, match=rf"image {decoy_id} \(decoy\) carries .* has sha256 [0-9a-f]{{64}}"
    ):
        publish(RUN, cloud, results_root=root)
    assert _counts(one) == before
    assert not (root / RUN / "publish").exists()
    one.image.delete(decoy_id)


def test_an_app_of_the_same_name_with_other_content_is_refused(cloud: OneCloud, tmp_path: Path) -> None:
    """Found by name, checked by content: the MD5 the marketplace computed must be the tested file's."""
    one = cloud.one
    first = publish(RUN, cloud, results_root=_results(tmp_path, "1.39.0"))
    link = next(app for app in first.apps if app["type"] == "IMAGE")
    for app in first.apps:  # an older publication's apps are gone; one app of the same name is not ours
        cloud.delete_marketapp(app["id"])
    other = tmp_path / "other.img"
    other.write_bytes(b"other content" * 100)
    other_id = cloud.ensure_image(other, "other", "f" * 64, "raw").id
    impostor = cloud.create_marketapp({"NAME": link["name"], "TYPE": "IMAGE", "ORIGIN_ID": str(other_id)})
    before = _counts(one)
    with pytest.raises(ChecksumMismatch, match=rf"marketplace app {impostor} .*: md5 [0-9a-f]{{32}} differs"):
        publish(RUN, cloud, results_root=tmp_path / "results")
    assert _counts(one) == before
    cloud.delete_marketapp(impostor)
