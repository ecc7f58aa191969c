"""Property tests: malformed data files and steerer folders either load or raise a matsteer error, nothing else."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from matsteer.artifacts import load_steerer, save_steerer
from matsteer.data import load_examples
from matsteer.errors import MatSteerError
from matsteer.sites import Site
from matsteer.steerer import Steerer

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


@SETTINGS
@given(rows=st.lists(json_values, max_size=5), dataset=st.sampled_from(["truthfulqa", "toxigen", "bbq", "hh_rlhf"]),
       suffix=st.sampled_from([".json", ".jsonl"]))
def test_loaders_on_malformed_json(tmp_path_factory, rows, dataset, suffix):
    path = tmp_path_factory.mktemp("data") / f"input{suffix}"
    text = json.dumps(rows) if suffix == ".json" else "\n".join(json.dumps(r) for r in rows)
    path.write_text(text, encoding="utf-8")
    try:
        load_examples(dataset, "all", source=path)
    except MatSteerError:
        pass


@SETTINGS
@given(text=st.text(max_size=300), dataset=st.sampled_from(["toxigen", "paradetox", "truthfulqa"]),
       suffix=st.sampled_from([".csv", ".tsv", ".json", ".jsonl"]))
def test_loaders_on_arbitrary_text(tmp_path_factory, text, dataset, suffix):
    path = tmp_path_factory.mktemp("data") / f"input{suffix}"
    path.write_text(text, encoding="utf-8")
    try:
        load_examples(dataset, "all", source=path)
    except MatSteerError:
        pass


@pytest.fixture(scope="module")
def steerer_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("steerer") / "s"
    save_steerer(path, Steerer(["truthfulness", "toxicity"], d=8), site=Site(1), model_name="tiny", model_hash="0" * 64)
    return path


def _copy(src: Path, tmp: Path) -> Path:
    dst = tmp / "copy"
    shutil.copytree(src, dst)
    return dst


@SETTINGS
@given(key=st.text(max_size=12), value=json_values, drop=st.booleans())
def test_artifact_loader_on_mutated_manifest(tmp_path_factory, steerer_dir, key, value, drop):
    folder = _copy(steerer_dir, tmp_path_factory.mktemp("m"))
    manifest = json.loads((folder / "manifest.json").read_text())
    keys = sorted(manifest)
    target = key if key in manifest else keys[len(key) % len(keys)]
    if drop:
        manifest.pop(target, None)
    else:
        manifest[target] = value
    (folder / "manifest.json").write_text(json.dumps(manifest))
    try:
        load_steerer(folder)
    except MatSteerError:
        pass


@SETTINGS
@given(offset=st.integers(min_value=0), data=st.binary(min_size=1, max_size=16), truncate=st.booleans())
def test_artifact_loader_on_corrupted_tensors(tmp_path_factory, steerer_dir, offset, data, truncate):
    folder = _copy(steerer_dir, tmp_path_factory.mktemp("t"))
    blob = bytearray((folder / "steerer.safetensors").read_bytes())
    at = offset % len(blob)
    blob = blob[:at] if truncate else blob[:at] + data + blob[at + len(data):]
    (folder / "steerer.safetensors").write_bytes(bytes(blob))
    try:
        load_steerer(folder)
    except MatSteerError:
        pass
