"""Publishing rules and formats (files only, no marketplace connection): what is published, what blocks it,
and that the appliance YAMLs follow OpenNebula's marketplace format (../shared/samples/marketplace)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from factory.errors import FactoryError
from factory.manifest import digests
from factory.paths import SHARED_DIR
from factory.publish import ChecksumMismatch, plan, publish
from factory.results import FAILED, PairResult, load_results, write_result

from .conftest import RUN, make_pair_result

SAMPLES = SHARED_DIR / "samples" / "marketplace"


def _release_pair(root: Path) -> PairResult:
    return next(
        r for r in load_results(RUN, root) if r.pair == "pair-sl1.42.0-sn1.42.0-debian12-cpu-standard-sklearn"
    )


@pytest.fixture
def run_root(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    root = tmp_path / "results"
    write_result(make_pair_result(images, "1.42.0", "1.42.0"), root)  # publishable
    write_result(make_pair_result(images, "1.42.0", "1.41.0"), root)  # cross-version: report only
    write_result(make_pair_result(images, "1.41.0", "1.41.0", status=FAILED), root)  # failed: never published
    return root


def test_only_passing_release_pairs_are_chosen(run_root: Path) -> None:
    chosen = plan(load_results(RUN, run_root), RUN)
    assert [result.pair for result in chosen.pairs] == [
        "pair-sl1.42.0-sn1.42.0-debian12-cpu-standard-sklearn"
    ]
    assert {image.variant for image in chosen.images} == {
        "superlink-1.42.0-debian12-cpu-standard-sklearn-x86_64",
        "supernode-1.42.0-debian12-cpu-standard-sklearn-x86_64",
    }
    reasons = "\n".join(chosen.skipped)
    assert "sl1.41.0-sn1.41.0" in reasons and "failed" in reasons
    assert "cross-version" in reasons


def test_a_pair_with_one_failed_test_is_not_published(run_root: Path, tmp_path: Path) -> None:
    again = make_pair_result(tmp_path / "images", "1.42.0", "1.42.0", status=FAILED)
    again.security = "tls"
    results = [*load_results(RUN, run_root), again]
    assert plan(results, RUN).pairs == []


def test_publish_writes_marketplace_and_certification_files(run_root: Path) -> None:
    publication = publish(RUN, cloud=None, release=2, results_root=run_root)
    directory = run_root / RUN / "publish"
    assert publication.directory == directory and publication.apps == []
    documents = [
        yaml.safe_load(path.read_text()) for path in sorted((directory / "marketplace").glob("*.yaml"))
    ]
    assert len(documents) == 3  # SuperLink image, SuperNode image, the service
    images = [doc for doc in documents if doc.get("type") != "SERVICE_TEMPLATE"]
    service = next(doc for doc in documents if doc.get("type") == "SERVICE_TEMPLATE")
    sample = yaml.safe_load((SAMPLES / "marketplace_service_vllm-x86_64.yaml").read_text())
    for document in images:
        assert set(sample) - {"logo"} <= set(document), set(sample) - set(document)
        assert set(sample["opennebula_template"]) - {"cpu_model", "logo"} <= set(
            document["opennebula_template"]
        )
        assert document["version"].startswith("1.42.0-2-")
        image = document["images"][0]
        assert set(image) == set(sample["images"][0])
        assert image["checksum"]["sha256"] == digests(run_root.parent / "images" / image["url"])[0]
        inputs = document["opennebula_template"]["user_inputs"]
        assert all(key == key.lower() and value.count("|") == 4 for key, value in inputs.items())
        order = document["opennebula_template"]["inputs_order"].split(",")
        assert [name.lower() for name in order] == list(inputs)
        assert document["opennebula_template"]["context"]["oneapp_fl_tls"] == "$ONEAPP_FL_TLS"
    assert set(service["roles"]) == {"superlink", "supernode"}
    assert service["roles"]["superlink"] in {doc["name"] for doc in images}
    assert [role["name"] for role in service["opennebula_template"]["roles"]] == ["superlink", "supernode"]
    assert service["opennebula_template"]["roles"][1]["parents"] == ["superlink"]
    assert service["images"] == []
    certification = [path for path in (directory / "certification").rglob("*") if path.is_file()]
    assert len(certification) == 6  # metadata.yaml, tests.yaml, tests/00-*.rb for each image
    metadata = (directory / "certification").glob("flower-superlink-*/metadata.yaml")
    text = next(metadata).read_text()
    assert text.startswith("---\n:app:\n") and "    :prefixed: true" in text
    published = json.loads((directory / "published.json").read_text())
    assert published["pairs"] == ["pair-sl1.42.0-sn1.42.0-debian12-cpu-standard-sklearn"]


def test_a_checksum_mismatch_blocks_everything(run_root: Path) -> None:
    image = Path(_release_pair(run_root).supernodes.image["path"])
    image.write_bytes(image.read_bytes() + b"tampered")
    with pytest.raises(ChecksumMismatch, match="differs from the tested image"):
        publish(RUN, cloud=None, results_root=run_root)
    assert not (run_root / RUN / "publish").exists()
    assert not list((run_root / RUN).glob(".publish-*")), "no staging directory left behind"


def test_a_missing_image_blocks_too(run_root: Path) -> None:
    Path(_release_pair(run_root).superlink.image["path"]).unlink()
    with pytest.raises(ChecksumMismatch, match="missing"):
        publish(RUN, cloud=None, results_root=run_root)


def test_nothing_to_publish_is_an_error_that_says_why(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    root = tmp_path / "results"
    write_result(make_pair_result(images, "1.42.0", "1.42.0", status=FAILED), root)
    with pytest.raises(FactoryError, match=r"(?s)nothing to publish.*failed"):
        publish(RUN, cloud=None, results_root=root)
