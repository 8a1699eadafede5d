"""Publishing rules and formats (files only, no marketplace connection): what is published, what blocks it,
and that the appliance YAMLs follow OpenNebula's marketplace format (a marketplace sample, upstream)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from factory.harness.pair import FAILED, PairResult
from factory.model.manifest import digests
from factory.release.publish import ChecksumMismatch, framework_result, plan, publish
from factory.release.results import load_results, write_result
from hostkit import upstream
from hostkit.errors import FactoryError

from .conftest import RUN, make_pair_result


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
        yaml.safe_load(path.read_text())
        for path in sorted((directory / "marketplace" / "appliances" / "service").glob("*.yaml"))
    ]
    assert len(documents) == 3  # SuperLink image, SuperNode image, the service
    images = [doc for doc in documents if doc.get("type") != "SERVICE_TEMPLATE"]
    service = next(doc for doc in documents if doc.get("type") == "SERVICE_TEMPLATE")
    sample = yaml.safe_load(upstream.marketplace_sample("marketplace_service_vllm-x86_64.yaml").read_text())
    for document in images:
        assert set(sample) - {"logo"} <= set(document), set(sample) - set(document)
        assert set(sample["opennebula_template"]) - {"cpu_model", "logo"} <= set(
            document["opennebula_template"]
        )
        assert document["version"].startswith("1.42.0-2-")
        assert "2 rounds of numpy (tls-auth)" in document["description"]  # the task runs the pair recorded
        image = document["images"][0]
        assert set(image) == set(sample["images"][0])
        assert image["name"].startswith("service_flower_")  # as the marketplace's service appliances
        assert image["checksum"]["sha256"] == digests(run_root.parent / "images" / image["url"])[0]
        inputs = document["opennebula_template"]["user_inputs"]
        assert all(key == key.lower() and value.count("|") == 4 for key, value in inputs.items())
        order = document["opennebula_template"]["inputs_order"].split(",")
        assert [name.lower() for name in order] == list(inputs)
        assert document["opennebula_template"]["context"]["oneapp_fl_tls"] == "$ONEAPP_FL_TLS"
        assert document["opennebula_template"]["nic"] == {"network_mode": "auto"}
    assert set(service["roles"]) == {"superlink", "supernode", "monitoring"}
    assert service["roles"]["superlink"] in {doc["name"] for doc in images}
    assert service["roles"]["monitoring"] == service["roles"]["superlink"]  # no monitoring image yet
    roles = service["opennebula_template"]["roles"]
    assert [role["name"] for role in roles] == ["superlink", "supernode", "monitoring"]
    assert roles[1]["parents"] == ["superlink"]
    assert roles[1]["elasticity_policies"][0]["expression"] == (
        "ONEAPP_FL_CONNECTED_NODES < ONEAPP_FL_MIN_NODES"
    )
    assert (roles[2]["cardinality"], roles[2]["min_vms"], roles[2]["max_vms"]) == (0, 0, 1)
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


def _yamls(root: Path) -> list[dict]:
    directory = root / RUN / "publish" / "marketplace" / "appliances" / "service"
    return [yaml.safe_load(path.read_text()) for path in sorted(directory.glob("*.yaml"))]


def test_one_yaml_per_published_app_with_ids_unique_across_versions_and_releases(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    root = tmp_path / "results"
    write_result(make_pair_result(images, "1.42.0", "1.42.0"), root)
    old = make_pair_result(images, "1.41.0", "1.41.0")
    write_result(old, root)
    publish(RUN, cloud=None, release=1, results_root=root)
    first = _yamls(root)
    assert len(first) == 6  # per Flower version: 2 IMAGE apps and 1 SERVICE_TEMPLATE
    assert len({document["id"] for document in first}) == 6
    assert {document["version"].split("-")[0] for document in first} == {"1.41.0", "1.42.0"}
    publish(RUN, cloud=None, release=1, results_root=root)
    assert {d["id"] for d in _yamls(root)} == {d["id"] for d in first}, "the same release keeps its ids"
    publish(RUN, cloud=None, release=2, results_root=root)
    assert not {d["id"] for d in _yamls(root)} & {d["id"] for d in first}, "a new release has new ids"


def test_a_published_file_without_its_manifest_is_refused(run_root: Path) -> None:
    image = Path(_release_pair(run_root).superlink.image["path"])
    image.with_name(f"{image.stem}.manifest.json").unlink()
    with pytest.raises(ChecksumMismatch, match=r"manifest .*\.manifest\.json is missing"):
        publish(RUN, cloud=None, results_root=run_root)
    assert not (run_root / RUN / "publish").exists()


def _cli_export_vm_template(text: str, name: str, image_id: int) -> str:
    """What marketplaceapp_ext.rb ``export_image`` sends to one.template.allocate: the decoded
    VMTEMPLATE64 with its heredoc (``<<-EOT`` keeps the indentation) appended."""
    return (
        text
        + "\n"
        + f'                    NAME = "{name}"\n'
        + f'                    DISK = [ IMAGE_ID = "{image_id}" ]\n'
    )


def test_vmtemplate64_is_one_syntax_that_the_exporters_extend(run_root: Path) -> None:
    import base64

    from factory.release.publish import appliance_yaml, image_app_template, plan
    from testcloud.core.template import Template

    chosen = plan(load_results(RUN, run_root), RUN)
    for image in chosen.images:
        document = appliance_yaml(image, "1.42.0-1-20261202", "", 0.0, chosen.pairs[0], 1)
        app = image_app_template(image, "Flower", "1.42.0-1-20261202", 7, document["opennebula_template"])
        text = base64.b64decode(app["VMTEMPLATE64"]).decode()
        assert not text.lstrip().startswith("<"), "ONE syntax, not XML"
        cli = Template.parse(_cli_export_vm_template(text, "my flower", 12))
        pyone_text = text + '\nNAME="from-pyone"\nDISK=[ IMAGE_ID = 12 ]'  # what pyone's helper appends
        for template, name in ((cli, "my flower"), (Template.parse(pyone_text), "from-pyone")):
            assert template.get("NAME") == name
            assert template.get_vector("DISK") == {"IMAGE_ID": "12"}
            assert template.get_vector("NIC") == {"NETWORK_MODE": "auto"}
            context = template.get_vector("CONTEXT")
            assert context is not None
            assert {k: context[k] for k in ("NETWORK", "TOKEN", "REPORT_READY")} == dict.fromkeys(
                ("NETWORK", "TOKEN", "REPORT_READY"), "YES"
            )
            assert context["SSH_PUBLIC_KEY"] == "$USER[SSH_PUBLIC_KEY]"
            inputs = template.get_vector("USER_INPUTS")
            # every value survives, quotes included, and each input has its default (5th field)
            expected = {k.upper(): v for k, v in document["opennebula_template"]["user_inputs"].items()}
            assert inputs == expected
            assert all(len(spec.split("|")) == 5 for spec in inputs.values())
            assert template.get("INPUTS_ORDER") == document["opennebula_template"]["inputs_order"]
        image_text = base64.b64decode(app["APPTEMPLATE64"]).decode()
        image_template = Template.parse(image_text + '\nNAME="x"\nFROM_APP="3"')
        assert (image_template.get("TYPE"), image_template.get("DEV_PREFIX")) == ("OS", "vd")


def test_a_quote_in_a_value_round_trips_and_a_trailing_backslash_is_refused() -> None:
    from factory.one import onetemplate
    from testcloud.core.template import Template

    text = onetemplate.render({"A": 'say "hi"', "V": {"B": 'x="1"'}, "R": ["1", "2"]})
    template = Template.parse(text)
    assert template.get("A") == 'say "hi"' and template.get_vector("V") == {"B": 'x="1"'}
    assert [a.value for a in template.get_all("R")] == ["1", "2"]
    with pytest.raises(ValueError, match="backslash"):
        onetemplate.render({"A": "C:\\"})


def test_the_service_app_declares_its_network_and_inputs_with_defaults(run_root: Path) -> None:
    from factory.harness import appliance_templates

    publish(RUN, cloud=None, results_root=run_root)
    service = next(d for d in _yamls(run_root) if d.get("type") == "SERVICE_TEMPLATE")
    body = service["opennebula_template"]
    network = appliance_templates.NETWORK
    assert list(body["networks"]) == [network]
    flag, kind, _, _, default = body["networks"][network].split("|")  # 5 fields, as oneflow-template reads
    assert (flag, kind, default) == ("M", "network", "id:")
    for role in body["roles"]:
        assert role["template_contents"]["NIC"] == [{"NETWORK_ID": f"${network}"}]
        assert "template_id" not in role  # the exporter sets it from the role's app
    inputs = body["user_inputs"]
    assert {"ONEAPP_FL_TLS", "ONEAPP_FL_FLEET_PORT", "ONEAPP_FL_SUPERLINK"} <= set(inputs)
    assert all(len(spec.split("|")) == 5 for spec in inputs.values())
    assert inputs["ONEAPP_FL_TLS"].endswith("|YES") and inputs["ONEAPP_FL_FLEET_PORT"].endswith("|9092")


def test_build_py_publish_writes_the_tree(run_root: Path) -> None:
    """``build.py publish --no-market`` end to end, as a user runs it."""
    import os
    import subprocess
    import sys

    from hostkit.paths import REPO_ROOT

    result = subprocess.run(
        [sys.executable, "build.py", "publish", "--run", RUN, "--release", "2", "--no-market"],
        cwd=REPO_ROOT,
        env=dict(os.environ, FLOWER_FACTORY_RESULTS=str(run_root)),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "not published: pair-sl1.41.0-sn1.41.0" in result.stdout
    assert len(_yamls(run_root)) == 3
    assert all(document["version"].startswith("1.42.0-2-") for document in _yamls(run_root))


def test_the_description_says_what_the_framework_task_reached(tmp_path: Path) -> None:
    result = make_pair_result(tmp_path, "1.42.0", "1.42.0")
    assert framework_result(result) == ""  # the numpy canary alone says nothing of the sklearn image
    result.framework_task = "sklearn"
    result.federations.append(
        {
            "task": "sklearn",
            "metric": "eval_accuracy",
            "floor": 0.85,
            "rounds": [
                {"evaluate_metrics": {"eval_accuracy": 0.91}},
                {"evaluate_metrics": {"eval_accuracy": 0.947}},
            ],
        }
    )
    assert framework_result(result) == "sklearn task: final eval_accuracy 0.947 (floor 0.85)"


# -- issue 13: a large image unchanged since it was hashed is not read again ------------------------------


@pytest.fixture
def digest_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every file is "large", changes count at once, the cache lives in tmp_path; returns the files hashed."""
    import hostkit.paths
    from factory.release import publish as publishing

    monkeypatch.setattr(hostkit.paths, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.setattr(publishing, "DIGEST_CACHE_MIN_SIZE", 0)
    monkeypatch.setattr(publishing, "DIGEST_CACHE_SETTLE_NS", 0)
    hashed: list[Path] = []
    real = publishing.digests

    def counting(path: Path) -> tuple[str, str]:
        hashed.append(path)
        return real(path)

    monkeypatch.setattr(publishing, "digests", counting)
    return hashed


def test_an_unchanged_image_is_hashed_once(digest_cache: list[Path], tmp_path: Path) -> None:
    from factory.release.publish import file_digests

    image = tmp_path / "image.img"
    image.write_bytes(b"tested content" * 1000)
    first, reused = file_digests(image)
    assert not reused and first == digests(image)
    again, reused = file_digests(image)
    assert reused and again == first and digest_cache == [image]


def test_an_image_changed_in_place_with_its_mtime_set_back_is_hashed_again(
    digest_cache: list[Path], tmp_path: Path
) -> None:
    from factory.release.publish import file_digests

    image = tmp_path / "image.img"
    image.write_bytes(b"tested content" * 1000)
    tested, _ = file_digests(image)
    stat = image.stat()
    with image.open("r+b") as stream:  # same size, other bytes, mtime restored: only ctime tells
        stream.write(b"TAMPERED")
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    changed, reused = file_digests(image)
    assert not reused and changed != tested and changed == digests(image)
    replacement = tmp_path / "other.img"  # another file moved into its place: another inode
    replacement.write_bytes(b"tested content" * 1000)
    replacement.replace(image)
    assert file_digests(image) == (tested, False)


def test_a_file_just_written_gets_no_entry(
    digest_cache: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from factory.release import publish as publishing

    monkeypatch.setattr(publishing, "DIGEST_CACHE_SETTLE_NS", 3600 * 10**9)
    image = tmp_path / "image.img"
    image.write_bytes(b"tested content" * 1000)
    assert publishing.file_digests(image)[1] is False
    assert publishing.file_digests(image)[1] is False
    assert digest_cache == [image, image]
