"""A steerer attribute as a llama.cpp control vector: read back with gguf's reader, checked against the format
llama.cpp loads (general.architecture "controlvector", one 1-D F32 tensor "direction.{layer}", layer >= 1)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader

from matsteer.activations.sites import Site
from matsteer.app.cli import main
from matsteer.core.steerer import Steerer
from matsteer.errors import ConfigError
from matsteer.store.artifacts import save_steerer
from matsteer.store.export import export_control_vector, export_steerer_folder

RESIDUAL_14 = Site(14, "residual")


def _folder(tmp_path, site=RESIDUAL_14, name="s"):
    steerer = Steerer(["truthfulness", "toxicity", "bias"], 32, ["truthful", "non-toxic", "unbiased"],
                      generator=torch.Generator().manual_seed(0))
    return steerer, save_steerer(tmp_path / name, steerer, site=site, model_name="smollm2-135m-instruct",
                                 model_hash="abc123")


def _field(reader: GGUFReader, key: str):
    return reader.get_field(key).contents()


def test_control_vector_file_matches_llama_cpp_format(tmp_path):
    steerer, folder = _folder(tmp_path)
    with pytest.warns(UserWarning, match="gate is not carried"):
        done = export_steerer_folder(folder, "toxicity", tmp_path / "tox.gguf", multiplier=1.5)
    assert done.tensor == "direction.14" and done.layer == 14
    reader = GGUFReader(tmp_path / "tox.gguf")
    assert _field(reader, "general.architecture") == "controlvector"
    assert _field(reader, "controlvector.model_hint") == "smollm2-135m-instruct"
    assert _field(reader, "controlvector.layer_count") == 1
    (tensor,) = reader.tensors
    # llama.cpp's loader: name "direction.N" with N >= 1, F32, one dimension of n_embd; added to block N's output,
    # which is our Site(N, "residual").
    assert tensor.name == "direction.14" and tensor.tensor_type == GGMLQuantizationType.F32
    assert list(tensor.shape) == [32]
    expected = (1.5 * steerer.theta.detach()[1]).numpy()
    np.testing.assert_array_equal(np.asarray(tensor.data, dtype=np.float32).reshape(-1), expected.astype(np.float32))
    # The caveats are in the file too.
    assert _field(reader, "matsteer.gates_carried") is False and _field(reader, "matsteer.norm_preserved") is False
    assert "gate is not carried" in _field(reader, "general.description")
    assert _field(reader, "matsteer.attribute") == "toxicity" and _field(reader, "matsteer.layer") == 14


@pytest.mark.parametrize("component", ["attn_output", "attn_heads"])
def test_other_sites_are_refused(tmp_path, component):
    _, folder = _folder(tmp_path, Site(14, component))
    with pytest.raises(ConfigError, match="residual stream"):
        export_steerer_folder(folder, "toxicity", tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


def test_bad_inputs_name_the_fix(tmp_path):
    steerer, folder = _folder(tmp_path, Site(0, "residual"))
    with pytest.raises(ConfigError, match="block 0"):
        export_steerer_folder(folder, "toxicity", tmp_path / "x.gguf")
    _, folder = _folder(tmp_path, name="s14")
    with pytest.raises(ConfigError, match="Unknown attribute 'honesty'.*'toxicity'"):
        export_steerer_folder(folder, "honesty", tmp_path / "x.gguf")
    manifest = {"site": {"layer": 3, "component": "residual"}, "model": {"name": "m", "hash": "h"}}
    with pytest.raises(ConfigError, match="finite"):
        export_control_vector(steerer, manifest, "bias", tmp_path / "x.gguf", multiplier=float("nan"))
    assert not (tmp_path / "x.gguf").exists()


def test_cli_export_control_vector(tmp_path, capsys):
    _, folder = _folder(tmp_path)
    out = tmp_path / "bias.gguf"
    assert main(["export-control-vector", "--steerer", str(folder), "--attribute", "bias", "--out", str(out),
                 "--multiplier", "2", "--model-hint", "llama"]) == 0
    captured = capsys.readouterr()
    assert "warning: The 'bias' gate is not carried" in captured.err and "direction.14" in captured.out
    assert _field(GGUFReader(out), "controlvector.model_hint") == "llama"
    _, other = _folder(tmp_path, Site(14, "attn_output"), name="heads")
    assert main(["export-control-vector", "--steerer", str(other), "--attribute", "bias", "--out",
                 str(tmp_path / "no.gguf")]) == 2
    assert "residual stream" in capsys.readouterr().err and not (tmp_path / "no.gguf").exists()
