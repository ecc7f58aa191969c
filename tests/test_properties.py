"""Property tests: malformed data files, steerer folders, feature folders (manifests, tensor files, shards) and notebook
parameters either load or raise a matsteer error, nothing else."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import nbformat
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from matsteer.activations.extraction import ActivationRows
from matsteer.activations.features import FeatureSet, extract_to_folder, load_features
from matsteer.activations.models import LoadedModel, weight_fingerprint
from matsteer.activations.sites import Site
from matsteer.app.parameters import _parse_parameters, check_parameters, notebook_parameters
from matsteer.app.runner import NOTEBOOKS
from matsteer.core.steerer import Steerer
from matsteer.data import Example, load_examples
from matsteer.errors import MatSteerError
from matsteer.files import write_tensors
from matsteer.store.artifacts import load_steerer, save_steerer

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
    _examples_or_refusal(dataset, path)


def _examples_or_refusal(dataset: str, path: Path) -> None:
    """Loading ``path`` either raises the project's error or gives well-formed records: text prompts and answers,
    label 1 (desirable) or 0."""
    try:
        examples = load_examples(dataset, "all", source=path)
    except MatSteerError:
        return
    for e in examples:
        assert isinstance(e, Example) and isinstance(e.prompt, str) and isinstance(e.answer, str)
        assert e.label in (0, 1)


@SETTINGS
@given(text=st.text(max_size=300), dataset=st.sampled_from(["toxigen", "paradetox", "truthfulqa"]),
       suffix=st.sampled_from([".csv", ".tsv", ".json", ".jsonl"]))
def test_loaders_on_arbitrary_text(tmp_path_factory, text, dataset, suffix):
    path = tmp_path_factory.mktemp("data") / f"input{suffix}"
    path.write_text(text, encoding="utf-8")
    _examples_or_refusal(dataset, path)


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


def _mutated_copy(src: Path, tmp: Path, key: str, value: object, drop: bool) -> Path:
    """A copy of a folder whose manifest has one entry replaced by ``value`` (or dropped)."""
    folder = _copy(src, tmp)
    manifest = json.loads((folder / "manifest.json").read_text())
    keys = sorted(manifest)
    target = key if key in manifest else keys[len(key) % len(keys)]
    if drop:
        manifest.pop(target, None)
    else:
        manifest[target] = value
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def _damage(file: Path, offset: int, data: bytes, truncate: bool) -> None:
    """Cut ``file`` at ``offset`` or overwrite bytes there with ``data``."""
    blob = bytearray(file.read_bytes())
    at = offset % len(blob)
    file.write_bytes(bytes(blob[:at] if truncate else blob[:at] + data + blob[at + len(data):]))


@SETTINGS
@given(key=st.text(max_size=12), value=json_values, drop=st.booleans())
def test_artifact_loader_on_mutated_manifest(tmp_path_factory, steerer_dir, key, value, drop):
    folder = _mutated_copy(steerer_dir, tmp_path_factory.mktemp("m"), key, value, drop)
    _original_or_refusal(folder, steerer_dir)


def _original_or_refusal(folder: Path, original: Path) -> None:
    """Loading the damaged ``folder`` either raises the project's error or gives back the original steerer's
    tensors exactly."""
    try:
        got = load_steerer(folder)[0]
    except MatSteerError:
        return
    want = load_steerer(original)[0]
    assert got.attributes == want.attributes
    assert all(torch.equal(a, b) for a, b in zip(got.state_dict().values(), want.state_dict().values()))


@SETTINGS
@given(offset=st.integers(min_value=0), data=st.binary(min_size=1, max_size=16), truncate=st.booleans())
def test_artifact_loader_on_corrupted_tensors(tmp_path_factory, steerer_dir, offset, data, truncate):
    folder = _copy(steerer_dir, tmp_path_factory.mktemp("t"))
    _damage(folder / "steerer.safetensors", offset, data, truncate)
    _original_or_refusal(folder, steerer_dir)


# ----------------------------------------------------------------------------------------------------------------
# Feature folders: malformed manifests, corrupted or odd tensor files, corrupted shards of an interrupted run


@pytest.fixture(scope="module")
def loaded_tiny(tiny_llama, tokenizer) -> LoadedModel:
    return LoadedModel(tiny_llama, tokenizer, "tiny", weight_fingerprint(tiny_llama))


EXAMPLES = load_examples("truthfulqa", "train", limit=3)


SHARD_TEXTS = 4


def _extract(loaded: LoadedModel, out: Path) -> FeatureSet:
    return extract_to_folder(loaded, EXAMPLES, Site(1), out, tokens="answer", dataset="truthfulqa", split="train",
                             shard_texts=SHARD_TEXTS, progress=False)


@pytest.fixture(scope="module")
def feature_dir(tmp_path_factory, loaded_tiny) -> Path:
    path = tmp_path_factory.mktemp("features") / "f"
    _extract(loaded_tiny, path)
    return path


def _same_rows(a: FeatureSet, b: FeatureSet) -> bool:
    return all(torch.equal(getattr(a, k), getattr(b, k)) for k in ("activations", "labels", "text_index", "token_index"))


@SETTINGS
@given(key=st.text(max_size=12), value=json_values, drop=st.booleans())
def test_feature_loader_on_mutated_manifest(tmp_path_factory, feature_dir, key, value, drop):
    folder = _mutated_copy(feature_dir, tmp_path_factory.mktemp("fm"), key, value, drop)
    try:
        fs = load_features(folder)
    except MatSteerError:
        return
    assert isinstance(fs.attribute, str) and isinstance(fs.positive_side, str) and isinstance(fs.site, Site)


@SETTINGS
@given(offset=st.integers(min_value=0), data=st.binary(min_size=1, max_size=16), truncate=st.booleans())
def test_feature_loader_on_corrupted_tensors(tmp_path_factory, feature_dir, offset, data, truncate):
    folder = _copy(feature_dir, tmp_path_factory.mktemp("ft"))
    _damage(folder / "activations.safetensors", offset, data, truncate)
    try:
        fs = load_features(folder)
    except MatSteerError:
        return
    assert _same_rows(fs, load_features(feature_dir))  # whatever loads is the original, never altered rows


_DTYPES = st.sampled_from([torch.float32, torch.float16, torch.int64, torch.int32, torch.bool, torch.uint8])
_SHAPES = st.lists(st.integers(min_value=0, max_value=4), max_size=3)


@SETTINGS
@given(tensors=st.dictionaries(st.sampled_from(["activations", "labels", "text_index", "token_index", "extra"]),
                               st.tuples(_SHAPES, _DTYPES), max_size=5),
       rows=st.integers(min_value=0, max_value=4), with_digest=st.booleans())
def test_feature_loader_on_wellformed_files_of_wrong_content(tmp_path_factory, feature_dir, tensors, rows, with_digest):
    """A valid safetensors file with the right cache key but any tensors (shapes, dtypes, some missing)."""
    from matsteer.activations.features import _rows_digest

    folder = _copy(feature_dir, tmp_path_factory.mktemp("fw"))
    manifest = json.loads((folder / "manifest.json").read_text())
    made = {name: torch.zeros(shape, dtype=dtype) for name, (shape, dtype) in tensors.items()}
    meta = {"cache_key": manifest["cache_key"]}
    if with_digest and all(k in made for k in ("activations", "labels", "text_index", "token_index")):
        meta["sha256"] = _rows_digest(made)
    write_tensors(folder / "activations.safetensors", made, metadata=meta)
    manifest["rows"] = rows
    (folder / "manifest.json").write_text(json.dumps(manifest))
    try:
        fs = load_features(folder)
    except MatSteerError:
        return
    assert fs.activations.dim() == 2 and fs.labels.shape == fs.text_index.shape == (fs.activations.shape[0],)


@settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(offset=st.integers(min_value=0), data=st.binary(min_size=1, max_size=8), truncate=st.booleans())
def test_resume_from_corrupted_shard(tmp_path_factory, feature_dir, loaded_tiny, offset, data, truncate):
    """An interrupted run's shard, damaged afterwards: resuming re-extracts it and gives the clean rows."""
    from matsteer.activations.features import _load_rows, _save_rows

    clean = load_features(feature_dir)
    key = clean.manifest["cache_key"]
    out = tmp_path_factory.mktemp("fr") / "f"
    shard = out / f".partial-{key[:16]}" / "shard-00000.safetensors"
    shard.parent.mkdir(parents=True)
    rows = _load_rows(feature_dir / "activations.safetensors", key)
    first = rows.text_index < SHARD_TEXTS  # the rows of shard 0's texts
    _save_rows(shard, ActivationRows(rows.activations[first], rows.text_index[first], rows.token_index[first],
                                     rows.labels[first]), key)
    _damage(shard, offset, data, truncate)
    try:
        resumed = _extract(loaded_tiny, out)
    except MatSteerError:
        return
    assert _same_rows(resumed, clean)


# ----------------------------------------------------------------------------------------------------------------
# Notebook parameters: checked values either pass (and are plain literals of a declared type) or raise ConfigError

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
DECLARED = {name: notebook_parameters(NOTEBOOK_DIR / name) for name in NOTEBOOKS}

parameter_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10) | st.binary(max_size=4)
    | st.builds(Path, st.text(max_size=8)),
    lambda inner: st.lists(inner, max_size=3) | st.tuples(inner, inner) | st.dictionaries(st.text(max_size=5), inner,
                                                                                          max_size=3),
    max_leaves=8,
)


@SETTINGS
@given(notebook=st.sampled_from(NOTEBOOKS), values=st.dictionaries(
    st.one_of(st.sampled_from(sorted({k for d in DECLARED.values() for k in d})), st.text(max_size=8)),
    parameter_values, max_size=4))
def test_notebook_parameter_checking(notebook, values):
    declared = DECLARED[notebook]
    try:
        checked = check_parameters(declared, values, NOTEBOOK_DIR / notebook)
    except MatSteerError:
        return
    for name, value in checked.items():
        param = declared[name]
        assert param.types is None or isinstance(value, param.types), (name, value)
        assert ast.literal_eval(repr(value)) == value


_ANNOTATIONS = ["", ": int", ": float", ": str", ": bool", ": int | None", ": float | str", ": list[str]", ": dict",
                ": Path", ": None", ": 'int'", ": Foo", ": 3", ": int[str] | None"]


@SETTINGS
@given(lines=st.lists(st.one_of(
    st.tuples(st.from_regex(r"[a-z_][a-z0-9_]{0,6}", fullmatch=True), st.sampled_from(_ANNOTATIONS),
              json_values.map(repr) | st.sampled_from(["1 + 1", "f(x)", "[x]", "{1, 2}", "b'x'", "-3", "...", ""])
              ).map(lambda t: f"{t[0]}{t[1]} = {t[2]}"),
    st.text(max_size=20)), max_size=5))
def test_notebook_parameters_cell_parsing(tmp_path_factory, lines):
    path = tmp_path_factory.mktemp("nb") / "n.ipynb"
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("\n".join(lines))
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell]
    nbformat.write(nb, str(path))
    try:
        declared = notebook_parameters(path)
    except MatSteerError:
        return
    for param in declared.values():  # every declared default passes its own check
        try:
            param.check(param.default)
        except MatSteerError:
            pass  # a default of another type than its annotation (`x: int = 'a'`) is refused when passed back


@pytest.mark.parametrize("source", ['x: "(" = 1', 'x: "" = 1'])
def test_malformed_string_annotation_is_a_config_error(source):
    with pytest.raises(MatSteerError):
        _parse_parameters(source, "p.ipynb")
