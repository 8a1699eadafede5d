"""Everything generated from images/params.yaml agrees with the declaration (read independently here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from factory.model import params
from hostkit.errors import ConfigError
from hostkit.paths import PARAMS_FILE, REPO_ROOT

RAW = yaml.safe_load(PARAMS_FILE.read_text())["params"]


def raw_for(role: str) -> list[dict]:
    return [entry for entry in RAW if role in entry["roles"]]


def source_in_bash(text: str, tmp_path: Path) -> dict:
    """Source the generated file in a real bash and dump every array as JSON lines."""
    script = tmp_path / "params.sh"
    script.write_text(text)
    dump = r"""
set -euo pipefail
source "$1"
for name in $FL_PARAMS; do
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "${FL_PARAM_TYPE[$name]}" "${FL_PARAM_DEFAULT[$name]}" \
    "${FL_PARAM_OPTIONS[$name]-}" "${FL_PARAM_MANDATORY[$name]}" "${FL_PARAM_STAGE[$name]}"
done
printf 'published\t%s\n' "$FL_PUBLISHED"
"""
    command = ["bash", "-c", dump, "dump", str(script)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    rows = {}
    for line in result.stdout.splitlines():
        fields = line.split("\t")
        rows[fields[0]] = fields[1:]
    return rows


@pytest.mark.parametrize("role", params.ROLES)
def test_guest_defaults_agree_with_declaration(role: str, tmp_path: Path) -> None:
    rows = source_in_bash(params.guest_defaults(role), tmp_path)
    published = rows.pop("published")[0].split()
    expected = raw_for(role)
    assert list(rows) == [entry["name"] for entry in expected]
    for entry in expected:
        kind, default, options, mandatory, stage = rows[entry["name"]]
        assert kind == entry["type"]
        assert default == entry["default"]
        wanted_options = entry.get("options", "")
        if isinstance(wanted_options, list):
            wanted_options = ",".join(wanted_options)
        assert options == wanted_options
        assert mandatory == ("YES" if entry["mandatory"] else "NO")
        assert stage == entry["stage"]
    raw_published = yaml.safe_load(PARAMS_FILE.read_text())["published"]
    assert published == [item["name"] for item in raw_published if role in item["roles"]]


def test_guest_defaults_quote_hostile_values(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    hostile = f'it\'s $(touch {marker}) `touch {marker}` "q"'
    decl = params.parse_params(
        {
            "params": [
                {
                    "name": "ONEAPP_X",
                    "roles": ["supernode"],
                    "type": "text",
                    "default": hostile,
                    "stage": "configure",
                    "mandatory": True,
                    "description": "hostile",
                }
            ]
        }
    )
    rows = source_in_bash(params.guest_defaults("supernode", decl), tmp_path)
    assert rows["ONEAPP_X"][1] == hostile
    assert not marker.exists()
    assert rows["ONEAPP_X"][3] == "YES"


@pytest.mark.parametrize("role", params.ROLES)
def test_user_inputs_agree_with_declaration(role: str) -> None:
    inputs = params.user_inputs(role)
    expected = raw_for(role)
    assert list(inputs) == [entry["name"] for entry in expected]
    for entry in expected:
        flag, kind, description, options, default = inputs[entry["name"]].split("|")
        assert flag == ("M" if entry["mandatory"] else "O")
        assert kind == entry["type"]
        assert description == entry["description"]
        raw_options = entry.get("options")
        assert options == (",".join(raw_options) if isinstance(raw_options, list) else raw_options or " ")
        assert default == entry["default"]
    assert params.inputs_order(role).split(",") == [entry["name"] for entry in expected]
    assert params.context_entries(role) == {entry["name"]: "$" + entry["name"] for entry in expected}


def table_rows(markdown: str, heading: str) -> list[list[str]]:
    section = markdown.split(heading, 1)[1]
    rows = []
    for line in section.splitlines()[2:]:
        if not line.startswith("| `"):
            if rows:
                break
            continue
        rows.append([cell.strip() for cell in line.strip("|").split(" | ")])
    return rows


@pytest.mark.parametrize("role", params.ROLES)
def test_readme_is_up_to_date_and_agrees(role: str) -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    assert params.update_readme(readme) == readme, "run: python build.py params --readme"
    rows = table_rows(readme, f"(`{role}`)")
    expected = raw_for(role)
    assert [row[0].strip("`") for row in rows] == [entry["name"] for entry in expected]
    for row, entry in zip(rows, expected, strict=True):
        assert row[1].startswith(entry["type"])
        assert row[2].strip("`") == entry["default"]
        assert row[3] == entry["stage"]
        assert row[4] == ("yes" if entry["mandatory"] else "no")
        assert row[5] == entry["description"]


def test_params_command_writes_every_file(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "build.py", "params", "--out", str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(params.generated_files())
    for role in params.ROLES:
        assert (tmp_path / f"params-{role}.sh").read_text() == params.guest_defaults(role)
        data = json.loads((tmp_path / f"opennebula-{role}.json").read_text())
        assert data["user_inputs"] == params.user_inputs(role)
        assert data["inputs_order"] == params.inputs_order(role)


def test_readme_check_passes() -> None:
    result = subprocess.run(
        [sys.executable, "build.py", "params", "--check"], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


GOOD = {
    "name": "ONEAPP_GOOD",
    "roles": ["superlink"],
    "type": "list",
    "options": ["a", "b"],
    "default": "a",
    "stage": "configure",
    "mandatory": False,
    "description": "fine",
}


@pytest.mark.parametrize(
    ("change", "field", "problem"),
    [
        ({"name": "FOO"}, "params[0].name", "ONEAPP_UPPER_CASE"),
        ({"type": "float"}, ".type", "unknown type 'float'"),
        ({"default": "c"}, ".default", "not one of the options"),
        ({"options": None}, ".options", "needs a list"),
        ({"roles": ["server"]}, ".roles", "unknown role 'server'"),
        ({"stage": "install"}, ".stage", "unknown stage"),
        ({"mandatory": "yes"}, ".mandatory", "expected true or false"),
        ({"description": "a | b"}, ".description", "without '|'"),
        ({"colour": "red"}, ".colour", "unknown field"),
        ({"type": "number", "options": None, "default": 9092}, ".default", "quote it"),
        ({"type": "boolean", "options": None, "default": "true"}, ".default", "YES or NO"),
        ({"type": "range", "options": "9..1", "default": ""}, ".options", "empty range"),
    ],
)
def test_bad_declarations_name_the_field(change: dict, field: str, problem: str) -> None:
    entry = {**GOOD, **change}
    entry = {key: value for key, value in entry.items() if value is not None}
    with pytest.raises(ConfigError) as caught:
        params.parse_params({"params": [entry]}, "params.yaml")
    assert field in caught.value.field
    assert problem in caught.value.problem


def test_duplicate_and_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="duplicate parameter ONEAPP_GOOD"):
        params.parse_params({"params": [GOOD, GOOD]})
    with pytest.raises(ConfigError, match="missing"):
        params.parse_params({"params": [{key: value for key, value in GOOD.items() if key != "stage"}]})
    with pytest.raises(ConfigError, match="file not found"):
        params.load_params(tmp_path / "absent.yaml")
    broken = tmp_path / "params.yaml"
    broken.write_text("params: [\n")
    with pytest.raises(ConfigError, match="YAML syntax error") as caught:
        params.load_params(broken)
    assert str(broken) in str(caught.value)
