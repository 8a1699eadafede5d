"""The http marketplace: apps from images, LOCKED then READY, files served over HTTP with their checksums,
and pyone's own ``marketapp.export`` helper working against it."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

import pyone
import pytest
import requests
from cloudtest_helpers import make_qcow2, make_raw, ready_image, wait_for


def test_app_from_image_is_copied_served_and_checksummed(slow_cloud: Any, tmp_path: Path) -> None:
    one = pyone.OneServer(slow_cloud.endpoints["xmlrpc"], session=slow_cloud.auth)
    source = make_qcow2(tmp_path / "appliance.qcow2", "50M")
    image_id = ready_image(one, source, "appliance")
    apptemplate = base64.b64encode(b'DEV_PREFIX="vd"\nTYPE="OS"').decode()
    app_id = one.marketapp.allocate(
        f'NAME="Flower SuperLink"\nORIGIN_ID="{image_id}"\nVERSION="1.42.0"\nDESCRIPTION="d"\n'
        f'APPTEMPLATE64="{apptemplate}"',
        1,
    )
    app = one.marketapp.info(app_id)
    assert (app.STATE, app.TYPE, app.MARKETPLACE_ID, app.MARKETPLACE) == (
        2,
        1,
        1,
        "testcloud",
    )  # LOCKED, IMAGE
    wait_for(lambda: one.marketapp.info(app_id).STATE == 1)
    app = one.marketapp.info(app_id)
    assert (str(image_id), "1.42.0", "qcow2", 50) == (app.ORIGIN_ID, app.VERSION, app.FORMAT, app.SIZE)
    assert app.SOURCE.startswith(slow_cloud.endpoints["market"])
    reply = requests.get(app.SOURCE, timeout=30)
    assert reply.status_code == 200
    assert reply.content == source.read_bytes()
    assert hashlib.md5(reply.content).hexdigest() == app.MD5
    assert hashlib.sha256(reply.content).hexdigest() == app.TEMPLATE["SHA256"]
    sums = requests.get(app.SOURCE + ".sha256", timeout=30).text
    assert sums.split()[0] == app.TEMPLATE["SHA256"]
    head = requests.head(app.SOURCE, timeout=30)
    assert int(head.headers["Content-Length"]) == source.stat().st_size
    part = requests.get(app.SOURCE, headers={"Range": "bytes=0-99"}, timeout=30)
    assert part.status_code == 206 and part.content == source.read_bytes()[:100]
    assert [a.ID for a in one.marketapppool.info(-2, -1, -1).MARKETPLACEAPP] == [app_id]
    assert [app_id] == one.market.info(1).MARKETPLACEAPPS.ID


def test_pyone_marketapp_export(one: Any, tmp_path: Path) -> None:
    source = make_raw(tmp_path / "fs.img", 4 * 2**20)
    image_id = ready_image(one, source, "original")
    vmtemplate = base64.b64encode(b'CPU="1"\nMEMORY="128"').decode()
    app_id = one.marketapp.allocate(
        f'NAME="exported"\nORIGIN_ID="{image_id}"\nAPPTEMPLATE64="{base64.b64encode(b"TYPE=OS").decode()}"\n'
        f'VMTEMPLATE64="{vmtemplate}"',
        1,
    )
    wait_for(lambda: one.marketapp.info(app_id).STATE == 1)
    result = one.marketapp.export(app_id, None, "from-market", "from-market-tmpl")  # dsid None: "default"
    wait_for(lambda: one.image.info(result["image"]).STATE == 1)
    image = one.image.info(result["image"])
    assert image.NAME == "from-market"
    assert image.TEMPLATE["FROM_APP"] == str(app_id)
    assert image.TEMPLATE["FROM_APP_MD5"] == one.marketapp.info(app_id).MD5
    assert Path(image.SOURCE).read_bytes() == source.read_bytes()
    template = one.template.info(result["vmtemplate"])
    assert template.NAME == "from-market-tmpl"
    assert template.TEMPLATE["DISK"] == {"IMAGE_ID": str(result["image"])}


def test_public_marketplace_refuses_creation(one: Any, tmp_path: Path) -> None:
    image_id = ready_image(one, make_qcow2(tmp_path / "d.qcow2"))
    with pytest.raises(pyone.OneActionException) as error:
        one.marketapp.allocate(f'NAME="x"\nORIGIN_ID="{image_id}"', 0)
    assert str(error.value) == "[one.marketapp.allocate] Create disabled for market: OpenNebula Public"


def test_marketapp_errors_create_nothing(one: Any, cloud: Any, tmp_path: Path) -> None:
    image_id = ready_image(one, make_qcow2(tmp_path / "d.qcow2"))
    with pytest.raises(pyone.OneException) as error:
        one.marketapp.allocate('NAME="x"', 1)
    assert str(error.value) == (
        "[one.marketapp.allocate] Error allocating a new marketplaceapp. "
        "Missing ORIGIN_ID for the MARKETPLACEAPP"
    )
    with pytest.raises(pyone.OneNoExistsException, match=r"Error getting marketplace \[7\]"):
        one.marketapp.allocate(f'NAME="x"\nORIGIN_ID="{image_id}"', 7)
    with pytest.raises(pyone.OneInternalException, match=r"Image does not exist\."):
        one.marketapp.allocate('NAME="x"\nORIGIN_ID="42"', 1)
    with pytest.raises(
        pyone.OneNoExistsException, match=r"\[one.marketapp.info\] Error getting marketplaceapp \[3\]"
    ):
        one.marketapp.info(3)
    assert one.marketapppool.info(-2, -1, -1).MARKETPLACEAPP == []
    assert list((cloud.state_dir / "market").iterdir()) == []


def test_market_server_serves_only_app_files(cloud: Any) -> None:
    base = cloud.endpoints["market"]
    assert requests.get(base + "missing", timeout=10).status_code == 404
    assert requests.get(base + "..%2Fone_auth", timeout=10).status_code == 404
    assert requests.get(base + "../one_auth", timeout=10).status_code == 404
