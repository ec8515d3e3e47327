"""Our Python description of Velero's CRDs (tests/support/kube/crds.py) against Velero's own YAML files.

The newest release: runs when ``shared/velero/crds`` sits beside the repository (as on the developers'
machines and in CI); skips with the reason otherwise. Every release in ``VELERO_VERSIONS`` (each of its
patch tags): runs when ``VELERO_REPO`` names a clone of github.com/vmware-tanzu/velero (bare or not, with
its tags); skips otherwise. Descriptions and printer columns are ignored; everything the server acts on is
compared: scope, names, versions, subresources and, for every schema node, the property names, type,
format, enum, required, nullable, additionalProperties, items, default, every ``x-kubernetes-*`` extension
and the value constraints (minItems, minimum, pattern, ...).

Backup's YAML is not among the files in ``shared/velero/crds``: its comparison with the newest release skips
until ``velero.io_backups.yaml`` is put there; every release is compared through ``VELERO_REPO``."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.kube import velero_crds
from tests.support.kube.crds import VELERO_VERSIONS

VELERO_CRDS = Path(__file__).resolve().parents[2] / "shared/velero/crds"
CONSTRAINTS = ("minItems", "maxItems", "minLength", "maxLength", "minimum", "maximum", "pattern", "uniqueItems")
COMPARED = ("type", "format", "enum", "required", "nullable", "default", *CONSTRAINTS)
PLURALS = ("datadownloads", "datauploads", "backupstoragelocations", "backups")
SHARED_PLURALS = ("datadownloads", "datauploads", "backupstoragelocations")
"""The CRDs whose YAML shared/velero/crds must hold."""
CRD_PATHS = {
    "datadownloads": "config/crd/v2alpha1/bases/velero.io_datadownloads.yaml",
    "datauploads": "config/crd/v2alpha1/bases/velero.io_datauploads.yaml",
    "backupstoragelocations": "config/crd/v1/bases/velero.io_backupstoragelocations.yaml",
    "backups": "config/crd/v1/bases/velero.io_backups.yaml",
}


def velero_file(plural: str) -> dict[str, Any]:
    if not VELERO_CRDS.is_dir():
        pytest.skip(f"Velero's CRD files are not available at {VELERO_CRDS}; nothing to compare with")
    path = VELERO_CRDS / f"velero.io_{plural}.yaml"
    if plural not in SHARED_PLURALS and not path.exists():
        pytest.skip(f"{path} is not among Velero's CRDs at hand; VELERO_REPO compares it with every release")
    assert path.exists(), f"{path} is missing from Velero's CRDs"
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded


def ours(plural: str, version: str = VELERO_VERSIONS[-1]) -> dict[str, Any]:
    return next(c for c in velero_crds(version, data_uploads=True) if c["spec"]["names"]["plural"] == plural)


def velero_repo() -> Path:
    named = os.environ.get("VELERO_REPO")
    if not named:
        pytest.skip("VELERO_REPO (a clone of Velero's git repository, with tags) is not set; nothing to compare with")
    return Path(named)


def release_tags(repo: Path, version: str) -> list[str]:
    listed = subprocess.run(
        ["git", "-C", str(repo), "tag", "--list", f"v{version}.*"], capture_output=True, text=True, check=True
    ).stdout.split()
    tags = [t for t in listed if re.fullmatch(rf"v{re.escape(version)}\.\d+", t)]
    assert tags, f"{repo} has no release tag of Velero {version}"
    return tags


def velero_release_file(repo: Path, tag: str, plural: str) -> dict[str, Any]:
    shown = subprocess.run(
        ["git", "-C", str(repo), "show", f"{tag}:{CRD_PATHS[plural]}"], capture_output=True, text=True, check=True
    )
    loaded: dict[str, Any] = yaml.safe_load(shown.stdout)
    return loaded


def schema_differences(mine: Any, theirs: Any, path: str = "") -> list[str]:
    """Every difference between two schema nodes, ignoring descriptions, as readable lines."""
    if not isinstance(mine, dict) or not isinstance(theirs, dict):
        return [] if mine == theirs else [f"{path or '<root>'}: {mine!r} != {theirs!r}"]
    found = [
        f"{path or '<root>'}.{key}: ours {mine.get(key)!r}, Velero's {theirs.get(key)!r}"
        for key in COMPARED
        if mine.get(key) != theirs.get(key)
    ]
    found += [
        f"{path or '<root>'}.{key}: ours {mine.get(key)!r}, Velero's {theirs.get(key)!r}"
        for key in sorted(set(mine) | set(theirs))
        if key.startswith("x-kubernetes-") and mine.get(key) != theirs.get(key)
    ]
    mine_props, their_props = mine.get("properties") or {}, theirs.get("properties") or {}
    if set(mine_props) != set(their_props):
        found.append(f"{path}: properties ours {sorted(mine_props)}, Velero's {sorted(their_props)}")
    for key in sorted(set(mine_props) & set(their_props)):
        found += schema_differences(mine_props[key], their_props[key], f"{path}.{key}" if path else key)
    for key in ("additionalProperties", "items"):
        if (key in mine) != (key in theirs):
            found.append(f"{path}: {key} ours {mine.get(key)!r}, Velero's {theirs.get(key)!r}")
        elif key in mine:
            found += schema_differences(mine[key], theirs[key], f"{path}[{key}]")
    return found


def test_schema_differences_sees_what_matters_and_ignores_descriptions() -> None:
    base = {"type": "object", "properties": {"a": {"type": "string", "description": "x"}}}
    assert schema_differences(base, {**base, "description": "other"}) == []
    changed = {"type": "object", "properties": {"a": {"type": "string", "format": "date-time"}}}
    assert schema_differences(base, changed) == ["a.format: ours None, Velero's 'date-time'"]
    extra = {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "string"}}}
    assert len(schema_differences(base, extra)) == 1
    constrained = {"type": "object", "properties": {"a": {"type": "array", "minItems": 1}}}
    unconstrained = {"type": "object", "properties": {"a": {"type": "array"}}}
    assert schema_differences(unconstrained, constrained) == ["a.minItems: ours None, Velero's 1"]
    listed = {"type": "object", "properties": {"a": {"type": "array", "x-kubernetes-list-type": "atomic"}}}
    assert schema_differences(unconstrained, listed) == ["a.x-kubernetes-list-type: ours None, Velero's 'atomic'"]


@pytest.mark.parametrize("plural", PLURALS)
def test_crd_matches_velero(plural: str) -> None:
    assert_same_crd(ours(plural), velero_file(plural))


@pytest.mark.parametrize("version", VELERO_VERSIONS)
@pytest.mark.parametrize("plural", PLURALS)
def test_crd_matches_every_velero_release(plural: str, version: str) -> None:
    repo = velero_repo()
    for tag in release_tags(repo, version):
        assert_same_crd(ours(plural, version), velero_release_file(repo, tag, plural), tag)


def assert_same_crd(mine: dict[str, Any], theirs: dict[str, Any], where: str = "") -> None:
    assert mine["apiVersion"] == theirs["apiVersion"]
    assert mine["kind"] == theirs["kind"]
    assert mine["metadata"]["name"] == theirs["metadata"]["name"]
    for key in ("group", "scope", "names"):
        assert mine["spec"][key] == theirs["spec"][key], key
    assert [v["name"] for v in mine["spec"]["versions"]] == [v["name"] for v in theirs["spec"]["versions"]]
    for my_version, their_version in zip(mine["spec"]["versions"], theirs["spec"]["versions"], strict=True):
        for key in ("served", "storage", "subresources"):
            assert my_version.get(key) == their_version.get(key), f"{my_version['name']}.{key}"
        differences = schema_differences(
            my_version["schema"]["openAPIV3Schema"], their_version["schema"]["openAPIV3Schema"]
        )
        assert differences == [], "\n".join([where, *differences])
