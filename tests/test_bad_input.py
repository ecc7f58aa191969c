"""Bad input, layer by layer: each case raises its specific matsteer error with a message naming the problem and the
fix, and the CLI exits 2 with that message on stderr and no traceback.

One table-driven test per layer (models, sites, data, features, training, artifacts, steering, notebooks, CLI).
A case is ``(call, error type, problem regex, fix regex)``; ``call`` gets the shared :class:`Ctx` of tiny inputs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import tiny_model_for

from matsteer.activations.extraction import ActivationRows
from matsteer.activations.features import _save_rows, extract_to_folder, load_features
from matsteer.activations.models import LoadedModel, load_model, weight_fingerprint
from matsteer.activations.sites import Site
from matsteer.app.cli import main as cli_main
from matsteer.app.notebooks import main as notebooks_main
from matsteer.app.parameters import check_parameters, notebook_parameters
from matsteer.core.attributes import AttributeData
from matsteer.core.config import TrainConfig
from matsteer.core.steerer import Steerer
from matsteer.core.training import train_steerer
from matsteer.data import load_examples
from matsteer.errors import ArtifactError, ConfigError, DataError, MatSteerError, ModelError, TrainingError
from matsteer.files import write_json
from matsteer.steering.session import steer
from matsteer.store.artifacts import check_compatible, load_steerer, save_steerer

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "02_train_steering.ipynb"
NO_CUDA = not torch.cuda.is_available()


@dataclass
class Case:
    call: Callable[[Any], Any]
    error: type[MatSteerError]
    problem: str  # regex: what is wrong
    fix: str  # regex: what to do about it


def check(case: Case, ctx: Any) -> None:
    with pytest.raises(case.error) as info:
        case.call(ctx)
    message = str(info.value)
    assert re.search(case.problem, message, re.S), f"problem not named: {message}"
    assert re.search(case.fix, message, re.S), f"fix not named: {message}"


# --------------------------------------------------------------------------------------------------------------
# Shared inputs: a tiny Llama folder, its features, steerers, and broken copies of each


def feature_folder(path: Path, acts: torch.Tensor, labels: torch.Tensor, *, attribute: str = "truthfulness",
                   model: str = "tiny", **manifest: Any) -> Path:
    """A hand-made feature folder (as extract_to_folder writes it) with ``acts [M, d]`` and ``labels [M]``."""
    key = f"key-{path.name}"
    m = len(labels)
    path.mkdir(parents=True)
    _save_rows(path / "activations.safetensors",
               ActivationRows(acts, torch.arange(m), torch.zeros(m, dtype=torch.long), labels), key)
    write_json(path / "manifest.json", {
        "format_version": 1, "cache_key": key, "model": {"name": model, "weight_hash": "0" * 64},
        "site": {"layer": 1, "component": "residual"}, "tokens": "answer", "dataset": "truthfulqa", "split": "train",
        "texts_sha256": "0" * 64, "attribute": attribute, "positive_side": "truthful", "rows": m, "texts": m,
        "positives": int((labels == 1).sum()), "negatives": int((labels == 0).sum()), "d": int(acts.shape[1]),
        **manifest,
    })
    return path


def _edit_json(path: Path, **changes: Any) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


class Ctx:
    """Everything the cases need, built once per module under ``root``."""

    def __init__(self, root: Path, tiny_dir: Path) -> None:
        self.root, self.tiny_dir = root, tiny_dir
        self.loaded = load_model(str(tiny_dir), progress=False)
        self.model = self.loaded.model
        g = torch.Generator().manual_seed(0)
        labels = torch.tensor([1, 0] * 24)
        # Features: one real extraction, and hand-made folders for what extraction would never write.
        self.tqa = extract_to_folder(self.loaded, load_examples("truthfulqa", "train", limit=4), Site(1),
                                     root / "tqa", tokens="answer", dataset="truthfulqa", split="train",
                                     progress=False).path
        self.one_class = extract_to_folder(self.loaded, load_examples("toxigen", "train", limit=1), Site(1),
                                           root / "tox1", tokens="answer", dataset="toxigen", split="train",
                                           progress=False).path
        self.good = feature_folder(root / "good", torch.randn(48, 8, generator=g), labels)
        self.nan = feature_folder(root / "nan", torch.randn(48, 8, generator=g).index_fill_(0, torch.tensor([3]), float("nan")),
                                  labels)
        self.huge = feature_folder(root / "huge", 1e22 * torch.randn(48, 8, generator=g), labels)
        self.other_d = feature_folder(root / "other_d", torch.randn(48, 6, generator=g), labels, attribute="bias")
        self.newer = _copy(self.good, root / "newer")
        _edit_json(self.newer / "manifest.json", format_version=99)
        self.bad_field = _copy(self.good, root / "bad_field")
        _edit_json(self.bad_field / "manifest.json", format_version="1")
        self.bad_json = _copy(self.good, root / "bad_json")
        (self.bad_json / "manifest.json").write_text('{"format_version": 1,')
        self.truncated = _copy(self.good, root / "truncated")
        blob = (self.truncated / "activations.safetensors").read_bytes()
        (self.truncated / "activations.safetensors").write_bytes(blob[: len(blob) // 2])
        self.flipped = _copy(self.good, root / "flipped")
        blob = bytearray((self.flipped / "activations.safetensors").read_bytes())
        blob[-3] ^= 0xFF  # a byte of tensor data: the file still parses
        (self.flipped / "activations.safetensors").write_bytes(bytes(blob))
        self.partial = root / "partial"
        (self.partial / ".partial-0123456789abcdef").mkdir(parents=True)
        # Steerers: one that fits the tiny model (d = 32, layer 1) and broken or mismatched copies.
        fits = Steerer(["truthfulness", "bias"], 32, generator=torch.Generator().manual_seed(0))
        name, digest = self.loaded.name, self.loaded.weight_hash
        self.steerer = save_steerer(root / "st", fits, site=Site(1), model_name=name, model_hash=digest)
        self.narrow = save_steerer(root / "st_d6", Steerer(["t"], 6), site=Site(1), model_name=name, model_hash=digest)
        self.far = save_steerer(root / "st_far", fits, site=Site(99), model_name=name, model_hash=digest)
        self.foreign = save_steerer(root / "st_other", fits, site=Site(1), model_name="someone/else", model_hash="1" * 64)
        self.st_truncated = _copy(self.steerer, root / "st_truncated")
        blob = (self.st_truncated / "steerer.safetensors").read_bytes()
        (self.st_truncated / "steerer.safetensors").write_bytes(blob[:-40])
        self.st_newer = _copy(self.steerer, root / "st_newer")
        _edit_json(self.st_newer / "manifest.json", format_version=2)
        self.st_bad_json = _copy(self.steerer, root / "st_bad_json")
        (self.st_bad_json / "manifest.json").write_text("{not json")
        self.st_bad_field = _copy(self.steerer, root / "st_bad_field")
        _edit_json(self.st_bad_field / "manifest.json", d=-3)
        # Data folders for MATSTEER_DATA_DIR: an empty one, and one with a malformed / empty TruthfulQA file.
        self.no_data = root / "data_empty"
        (self.no_data / "truthfulqa").mkdir(parents=True)
        self.bad_data = root / "data_bad"
        (self.bad_data / "truthfulqa").mkdir(parents=True)
        (self.bad_data / "truthfulqa" / "mc_task.json").write_text('[\n{"question": "q"},\n{"question": \n')
        self.blank_data = root / "data_blank"
        (self.blank_data / "truthfulqa").mkdir(parents=True)
        (self.blank_data / "truthfulqa" / "mc_task.json").write_text("")
        # A model whose block 0 has no attention (Jamba: Mamba and attention layers alternate).
        self.jamba_dir = root / "tiny-jamba"
        jamba().save_pretrained(self.jamba_dir)
        self.loaded.tokenizer.save_pretrained(self.jamba_dir)

    def data(self, **rows: int) -> list[AttributeData]:
        """Two attributes of 48 + 48 rows (d = 8); ``rows`` shrinks a side, e.g. ``a0_negatives=0``."""
        g = torch.Generator().manual_seed(1)
        out = []
        for t in range(2):
            pos, neg = torch.randn(48, 8, generator=g) + t, torch.randn(48, 8, generator=g) - t
            out.append(AttributeData(f"a{t}", pos[: rows.get(f"a{t}_positives", 48)],
                                     neg[: rows.get(f"a{t}_negatives", 48)]))
        return out


def jamba() -> torch.nn.Module:
    from transformers import JambaConfig, JambaForCausalLM

    torch.manual_seed(0)
    cfg = JambaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2,
                      expert_layer_offset=1, num_experts=2, mamba_d_state=4, mamba_expand=2, mamba_dt_rank=4,
                      pad_token_id=0, bos_token_id=2, eos_token_id=3)
    return JambaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, tiny_dir) -> Ctx:
    return Ctx(tmp_path_factory.mktemp("bad-input"), tiny_dir)


# --------------------------------------------------------------------------------------------------------------
# Models


MODEL_CASES = {
    "unknown model name, offline": Case(
        lambda c: load_model("no-such-model-xyz", progress=False), ModelError,
        r"Cannot load model 'no-such-model-xyz'", r"use a local folder or the default model"),
    "hub id, offline": Case(
        lambda c: load_model("someorg/some-model", progress=False), ModelError,
        r"Cannot load model 'someorg/some-model'.*No model hub is reachable", r"smollm2-135m-instruct"),
    "missing local path": Case(
        lambda c: load_model("./no/such/model", progress=False), ModelError,
        r"'./no/such/model' does not exist", r"Pass an existing folder"),
    "folder that is not a model": Case(
        lambda c: load_model(str(c.no_data), progress=False), ModelError,
        r"Cannot load model", r"must hold a transformers causal LM: config.json"),
    "unknown dtype": Case(
        lambda c: load_model(str(c.tiny_dir), dtype="float8", progress=False), ModelError,
        r"Unknown dtype 'float8'", r"choose one of auto, float32, float16, bfloat16"),
    "device and device_map": Case(
        lambda c: load_model(str(c.tiny_dir), device="cpu", device_map="auto", progress=False), ModelError,
        r"either device or device_map, not both", r"device_map='auto'"),
    "no such device": Case(
        lambda c: load_model(str(c.tiny_dir), device="cuda:7" if not NO_CUDA else "cuda", progress=False), ConfigError,
        r"CUDA is not available|has \d+ CUDA device", r"use device='cpu'|use cuda:0"),
}


@pytest.mark.parametrize("name", MODEL_CASES)
def test_model_layer(name, ctx):
    check(MODEL_CASES[name], ctx)


# --------------------------------------------------------------------------------------------------------------
# Sites


SITE_CASES = {
    "layer out of range": Case(
        lambda c: Site(99).resolve(c.model), ConfigError,
        r"Layer 99 is out of range: this model has 4 layers \(0\.\.3\)", r"Pick a layer in that range"),
    "negative layer": Case(
        lambda c: Site(-1), ConfigError, r"non-negative integer, got -1", r"0-based decoder block index"),
    "unknown component": Case(
        lambda c: Site(1, "mlp"), ConfigError, r"Unknown site component 'mlp'",
        r"choose one of residual, attn_output, attn_heads"),
    "site the architecture lacks": Case(
        lambda c: Site(0, "attn_output").resolve(jamba()), ModelError,
        r"needs the attention output projection.*JambaMambaDecoderLayer", r"'residual' component"),
    "no decoder layers at all": Case(
        lambda c: Site(0).resolve(torch.nn.Linear(2, 2)), ModelError,
        r"Cannot find the decoder layers of Linear", r"supports Llama, Mistral, Qwen2"),
    "extraction at a missing layer": Case(
        lambda c: extract_to_folder(c.loaded, load_examples("truthfulqa", "train", limit=1), Site(4), c.root / "x",
                                    dataset="truthfulqa", split="train", progress=False), ConfigError,
        r"Layer 4 is out of range", r"Pick a layer"),
}


@pytest.mark.parametrize("name", SITE_CASES)
def test_site_layer(name, ctx):
    check(SITE_CASES[name], ctx)


# --------------------------------------------------------------------------------------------------------------
# Data files


def _write(c: Ctx, name: str, text: str) -> Path:
    path = c.root / "files" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


DATA_CASES = {
    "missing file": Case(
        lambda c: load_examples("truthfulqa", source=c.root / "nope.json"), DataError,
        r"nope\.json: file not found", r"Fix: check the path"),
    "empty file": Case(
        lambda c: load_examples("hh_rlhf", source=_write(c, "empty.jsonl", "  \n")), DataError,
        r"empty\.jsonl: file is empty", r"Fix: correct the file"),
    "malformed JSON line": Case(
        lambda c: load_examples("hh_rlhf", source=_write(c, "bad.jsonl", '{"chosen": "a", "rejected": "b"}\n{oops\n')),
        DataError, r"bad\.jsonl, line 2: invalid JSON", r"Fix: correct the file at that place"),
    "malformed CSV record": Case(
        lambda c: load_examples("toxigen", source=_write(
            c, "tox.csv", "text,target_group,toxicity_ai,toxicity_human\nhi,asian,1,1\nyo,asian,high,1\n")),
        DataError, r"tox\.csv, line 3: field 'toxicity_ai' must be a number", r"Fix:"),
    "record lacks a field": Case(
        lambda c: load_examples("hh_rlhf", source=_write(c, "hh.jsonl", '{"chosen": "x"}\n')), DataError,
        r"hh\.jsonl, line 1: record lacks field\(s\) \['rejected'\]", r"Fix:"),
    "shipped file missing": Case(
        lambda c: load_examples("truthfulqa", data_dir=c.no_data), DataError,
        r"mc_task\.json: file not found", r"git checkout -- data/"),
    "no data folder": Case(
        lambda c: load_examples("truthfulqa", data_dir=c.root / "nowhere"), DataError,
        r"data directory .*nowhere not found", r"MATSTEER_DATA_DIR"),
    "hub id, offline": Case(
        lambda c: load_examples("truthfulqa", source="someorg/tqa"), DataError,
        r"cannot load 'someorg/tqa' from the Hugging Face hub: offline", r"pass a local path"),
    "unknown dataset": Case(
        lambda c: load_examples("truthful"), ConfigError, r"unknown dataset 'truthful'", r"valid choices: truthfulqa"),
    "unknown split": Case(
        lambda c: load_examples("bbq", "validation"), ConfigError, r"unknown split 'validation'",
        r"valid choices: train, dev, test, all"),
}


@pytest.mark.parametrize("name", DATA_CASES)
def test_data_layer(name, ctx, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    check(DATA_CASES[name], ctx)


# --------------------------------------------------------------------------------------------------------------
# Feature folders


def _nan_model(c: Ctx) -> LoadedModel:
    """The tiny Llama with block 0 emitting NaN (a numerically broken model or dtype)."""
    model = tiny_model_for("llama")
    model.model.layers[0].register_forward_hook(lambda _m, _a, out: out * float("nan"))
    return LoadedModel(model, c.loaded.tokenizer, "nan-llama", weight_fingerprint(model))


FEATURE_CASES = {
    "missing folder": Case(lambda c: load_features(c.root / "none"), ArtifactError,
                           r"Feature folder not found: .*none", r"extract features there"),
    "folder without manifest": Case(lambda c: load_features(c.no_data), ArtifactError,
                                    r"feature manifest not found: .*data_empty/manifest.json", r"re-create it"),
    "truncated tensors": Case(lambda c: load_features(c.truncated), ArtifactError,
                              r"activations\.safetensors is truncated or corrupted", r"Delete it and re-create it"),
    "flipped tensor byte": Case(lambda c: load_features(c.flipped), ArtifactError,
                                r"activations\.safetensors is corrupted", r"Delete it and extract again"),
    "corrupted manifest": Case(lambda c: load_features(c.bad_json), ArtifactError,
                               r"manifest\.json is not valid JSON", r"Delete it and re-create it"),
    "malformed manifest field": Case(lambda c: load_features(c.bad_field), ArtifactError,
                                     r"Malformed feature manifest .*format_version must be an integer", r"Extract again"),
    "newer format version": Case(lambda c: load_features(c.newer), ArtifactError,
                                 r"written by a newer matsteer \(format 99 > 1\)", r"upgrade matsteer"),
    "interrupted extraction": Case(lambda c: load_features(c.partial), ArtifactError,
                                   r"holds an unfinished extraction", r"Run the same extraction again to resume"),
    "NaN in stored activations": Case(lambda c: load_features(c.nan), DataError,
                                      r"activations contain NaN or Inf", r"Extract again in float32"),
    "NaN while extracting": Case(
        lambda c: extract_to_folder(_nan_model(c), load_examples("truthfulqa", "train", limit=1), Site(1),
                                    c.root / "nan_out", dataset="truthfulqa", split="train", progress=False),
        DataError, r"truthfulqa/train at layer 1 residual contain NaN or Inf", r"try dtype float32"),
}


@pytest.mark.parametrize("name", FEATURE_CASES)
def test_feature_layer(name, ctx):
    check(FEATURE_CASES[name], ctx)


# --------------------------------------------------------------------------------------------------------------
# Training


def _train(c: Ctx, data: list[AttributeData] | None = None, **config: Any) -> Any:
    settings = {"epochs": 2, "sigma": "median", "batch_per_side": 8, **config}
    return train_steerer(c.data() if data is None else data, TrainConfig(**settings), progress=False)


def _huge(c: Ctx) -> list[AttributeData]:
    data = c.data()
    data[0].positives = data[0].positives * 1e22  # finite inputs whose squared distances overflow float32
    return data


def _nan_rows(c: Ctx) -> list[AttributeData]:
    data = c.data()
    data[1].negatives[5, 2] = float("inf")
    return data


TRAINING_CASES = {
    "sigma = 0": Case(lambda c: _train(c, sigma=0.0), ConfigError, r"sigma must be > 0 .*got 0\.0",
                      r"sigma=2\.0 or sigma='median'"),
    "sigma < 0": Case(lambda c: _train(c, sigma=-1.0), ConfigError, r"sigma must be > 0", r"sigma='median'"),
    "sigma not a number": Case(lambda c: _train(c, sigma="wide"), ConfigError,
                               r"sigma must be a positive number or 'median', got 'wide'", r"'median'"),
    "negative lambda": Case(lambda c: _train(c, lambda_sparse=-0.5), ConfigError,
                            r"lambda_sparse must be a finite number ≥ 0, got -0\.5", r"pass a weight ≥ 0"),
    "batch larger than the data": Case(
        lambda c: _train(c, batch_per_side=64), ConfigError,
        r"batch_per_side=64 but attribute 'a0' has only 48 positives", r"Lower batch_per_side to ≤ 48"),
    "zero epochs": Case(lambda c: _train(c, epochs=0), ConfigError, r"epochs must be an integer ≥ 1, got 0",
                        r"epochs=100"),
    "non-positive lr": Case(lambda c: _train(c, lr=0.0), ConfigError, r"lr must be a positive number", r"lr=1e-3"),
    "no negatives": Case(lambda c: _train(c, c.data(a1_negatives=0)), DataError,
                         r"attribute 'a1' negatives is empty", r"Check its labels / split, or drop the attribute"),
    "no positives": Case(lambda c: _train(c, c.data(a0_positives=0)), DataError,
                         r"attribute 'a0' positives is empty", r"both positive and negative examples"),
    "NaN/Inf in activations": Case(lambda c: _train(c, _nan_rows(c)), DataError,
                                   r"'a1' negatives contain NaN/Inf in 1 of 48 rows \(first at row 5\)",
                                   r"Re-extract the activations"),
    "NaN in a training loss": Case(lambda c: _train(c, _huge(c), sigma=2.0), TrainingError,
                                   r"diverged at epoch 1, step \d+: the mmd.* loss term\(s\) became NaN/Inf",
                                   r"Lower lr, use a larger sigma"),
    "activations of two sites": Case(
        lambda c: _train(c, [c.data()[0], AttributeData("b", torch.randn(20, 5), torch.randn(20, 5))]), DataError,
        r"have d=5 but earlier activations have d=8", r"same model and site"),
    "unknown setting": Case(lambda c: TrainConfig.from_dict({"epoch": 3}), ConfigError,
                            r"Unknown training settings \['epoch'\]", r"known: \["),
}


@pytest.mark.filterwarnings("ignore:sigma=.* is far below")  # the NaN case's σ is degenerate on purpose
@pytest.mark.parametrize("name", TRAINING_CASES)
def test_training_layer(name, ctx):
    check(TRAINING_CASES[name], ctx)


# --------------------------------------------------------------------------------------------------------------
# Steerer folders and their compatibility with a model


def _compatible(c: Ctx, folder: Path, **target: Any) -> Any:
    _, manifest = load_steerer(folder)
    args = {"model_name": c.loaded.name, "model_hash": c.loaded.weight_hash, "d": 32, "site": Site(1), **target}
    return check_compatible(manifest, **args)


ARTIFACT_CASES = {
    "missing folder": Case(lambda c: load_steerer(c.root / "nothing"), ArtifactError,
                           r"Steerer folder not found", r"train and save a steerer there"),
    "truncated tensors": Case(lambda c: load_steerer(c.st_truncated), ArtifactError,
                              r"does not match the sha256 .*corrupted", r"Re-save the steerer"),
    "truncated tensors, unhashed": Case(lambda c: load_steerer(c.st_truncated, verify_hash=False), ArtifactError,
                                        r"truncated or corrupted", r"Delete it and re-create it"),
    "corrupted manifest": Case(lambda c: load_steerer(c.st_bad_json), ArtifactError,
                               r"Steerer manifest .*is not valid JSON", r"Delete it and re-create it"),
    "malformed manifest": Case(lambda c: load_steerer(c.st_bad_field), ArtifactError,
                               r"Malformed steerer manifest .*'d' must be a positive integer", r"Re-save the steerer"),
    "newer format version": Case(lambda c: load_steerer(c.st_newer), ArtifactError,
                                 r"format_version 2, newer than this matsteer supports \(1\)", r"Upgrade matsteer"),
    "d mismatch": Case(lambda c: _compatible(c, c.narrow), ArtifactError,
                       r"hidden size d=6 but the target has d=32", r"Train a steerer on this model's activations"),
    "site mismatch": Case(lambda c: _compatible(c, c.steerer, site=Site(2, "attn_heads")), ArtifactError,
                          r"trained at site 'layer 1 residual' but is being applied at 'layer 2 attn_heads'",
                          r"Apply it at layer 1 residual"),
    "model mismatch": Case(lambda c: _compatible(c, c.foreign), ArtifactError,
                           r"trained on a different model \(model name 'someone/else'", r"allow_model_mismatch=True"),
}


@pytest.mark.parametrize("name", ARTIFACT_CASES)
def test_artifact_layer(name, ctx):
    check(ARTIFACT_CASES[name], ctx)


# --------------------------------------------------------------------------------------------------------------
# Steering a model (refused before any forward pass)


def _steer(c: Ctx, steerer: Steerer | None = None, site: Site | None = None, **settings: Any) -> None:
    steerer = steerer or load_steerer(c.steerer)[0]
    with steer(c.model, steerer, site=site or Site(1), **settings):
        raise AssertionError("steer() accepted bad settings")


STEERING_CASES = {
    "multiplier for an unknown attribute": Case(
        lambda c: _steer(c, multipliers={"toxicity": 2.0}), ConfigError,
        r"Multipliers given for unknown attributes \['toxicity'\]", r"this steerer has \['truthfulness', 'bias'\]"),
    "forced gate of an unknown attribute": Case(
        lambda c: _steer(c, force={"tox": True}), ConfigError, r"Gates forced for unknown attributes \['tox'\]",
        r"Use those names"),
    "non-finite multiplier": Case(lambda c: _steer(c, global_multiplier=float("inf")), ConfigError,
                                  r"Multipliers must be finite numbers", r"pass finite values"),
    "unknown positions policy": Case(lambda c: _steer(c, positions="middle"), ConfigError,
                                     r"Unknown positions policy 'middle'", r"choose one of all"),
    "steerer of another width": Case(lambda c: _steer(c, load_steerer(c.narrow)[0]), ConfigError,
                                     r"steerer has d=6 but the activations at layer 1 residual .*have d=32",
                                     r"hidden size the steerer was trained on"),
    "layer the model lacks": Case(lambda c: _steer(c, site=Site(9)), ConfigError, r"Layer 9 is out of range",
                                  r"Pick a layer in that range"),
}


@pytest.mark.parametrize("name", STEERING_CASES)
def test_steering_layer(name, ctx):
    check(STEERING_CASES[name], ctx)


# --------------------------------------------------------------------------------------------------------------
# Notebook parameters


def _params(values: dict[str, Any]) -> dict[str, Any]:
    return check_parameters(notebook_parameters(NOTEBOOK), values, NOTEBOOK)


NOTEBOOK_CASES = {
    "str for an int": Case(lambda c: _params({"layer": "14"}), ConfigError,
                           r"parameter 'layer' must be int, got str '14'", r"\(default 14\)"),
    "bool for an int": Case(lambda c: _params({"layer": True}), ConfigError, r"'layer' must be int, got bool",
                            r"default 14"),
    "float for int | None": Case(lambda c: _params({"epochs": 2.5}), ConfigError,
                                 r"'epochs' must be int \| None, got float", r"default None"),
    "list for float | str": Case(lambda c: _params({"sigma": [2.0]}), ConfigError, r"'sigma' must be float \| str",
                                 r"got list"),
    "unknown parameter": Case(lambda c: _params({"layers": 3}), ConfigError, r"Unknown parameter\(s\) \['layers'\]",
                              r"it declares \['model', 'layer'"),
}


@pytest.mark.parametrize("name", NOTEBOOK_CASES)
def test_notebook_layer(name, ctx):
    check(NOTEBOOK_CASES[name], ctx)


# --------------------------------------------------------------------------------------------------------------
# The command line: exit code 2, the message on stderr, no traceback


@dataclass
class CliCase:
    argv: Callable[[Ctx], list[str]]
    problem: str
    fix: str
    env: Callable[[Ctx], dict[str, str]] | None = None


def _extract(c: Ctx, *extra: str, model: str | None = None) -> list[str]:
    return ["extract", "--model", model or str(c.tiny_dir), "--dataset", "truthfulqa", "--layer", "1", "--limit", "2",
            "--out", str(c.root / "cli_out"), *extra]


def _train_cli(c: Ctx, *features: Path, extra: tuple[str, ...] = ()) -> list[str]:
    return ["train", "--features", *map(str, features), "--out", str(c.root / "cli_steerer"), "--epochs", "1",
            "--batch-per-side", "2", "--sigma", "median", *extra]


def _generate(c: Ctx, folder: Path, *extra: str) -> list[str]:
    return ["generate", "--steerer", str(folder), "--model", str(c.tiny_dir), "--prompt", "the sun is",
            "--max-new-tokens", "2", "--raw", *extra]


def _eval(c: Ctx, folder: Path, *extra: str) -> list[str]:
    return ["eval", "--steerer", str(folder), "--model", str(c.tiny_dir), "--tasks", "truthfulqa", "--limit", "1",
            *extra]


CLI_CASES = {
    "extract: unknown model name": CliCase(lambda c: _extract(c, model="no-such-model-xyz"),
                                           r"Cannot load model 'no-such-model-xyz'", r"use a local folder"),
    "extract: hub id offline": CliCase(lambda c: _extract(c, model="someorg/some-model"),
                                       r"No model hub is reachable", r"smollm2-135m-instruct"),
    "extract: layer out of range": CliCase(lambda c: _extract(c, "--layer", "99"), r"Layer 99 is out of range",
                                           r"Pick a layer in that range"),
    "extract: site the architecture lacks": CliCase(
        lambda c: [*_extract(c, model=str(c.jamba_dir)), "--layer", "0", "--site", "attn_output"],
        r"needs the attention output projection", r"--site residual"),
    "extract: CUDA on a CPU machine": CliCase(lambda c: _extract(c, "--device", "cuda" if NO_CUDA else "cuda:99"),
                                              r"CUDA", r"use device='cpu'|use cuda:0"),
    "extract: missing data file": CliCase(lambda c: _extract(c), r"mc_task\.json: file not found",
                                          r"git checkout -- data/", env=lambda c: {"MATSTEER_DATA_DIR": str(c.no_data)}),
    "extract: malformed data file": CliCase(lambda c: _extract(c), r"mc_task\.json, line 4: invalid JSON", r"Fix:",
                                            env=lambda c: {"MATSTEER_DATA_DIR": str(c.bad_data)}),
    "extract: empty data file": CliCase(lambda c: _extract(c), r"mc_task\.json: file is empty", r"Fix:",
                                        env=lambda c: {"MATSTEER_DATA_DIR": str(c.blank_data)}),
    "train: missing features": CliCase(lambda c: _train_cli(c, c.root / "absent"), r"Feature folder not found",
                                       r"matsteer extract \.\.\. --out"),
    "train: truncated features": CliCase(lambda c: _train_cli(c, c.truncated), r"truncated or corrupted",
                                         r"Delete it and re-create it"),
    "train: newer feature format": CliCase(lambda c: _train_cli(c, c.newer), r"newer matsteer", r"upgrade matsteer"),
    "train: NaN in activations": CliCase(lambda c: _train_cli(c, c.nan), r"contain NaN or Inf", r"Extract again"),
    "train: split with one class only": CliCase(lambda c: _train_cli(c, c.tqa, c.one_class),
                                                r"has no (positives|negatives) for toxicity",
                                                r"holds both labels"),
    "train: features of two models": CliCase(lambda c: _train_cli(c, c.tqa, c.other_d),
                                             r"Feature folders disagree on model", r"one model at one site"),
    "train: sigma = 0": CliCase(lambda c: [*_train_cli(c, c.good), "--sigma", "0"], r"sigma must be > 0",
                                r"sigma='median'"),
    "train: sigma not a number": CliCase(lambda c: [*_train_cli(c, c.good), "--sigma", "wide"],
                                         r"--sigma must be a positive number or 'median', got 'wide'", r"'median'"),
    "train: negative lambda": CliCase(lambda c: [*_train_cli(c, c.good), "--lambda_mmd", "-1"],
                                      r"lambda_mmd must be a finite number ≥ 0", r"pass a weight ≥ 0"),
    "train: batch larger than the data": CliCase(lambda c: [*_train_cli(c, c.good), "--batch-per-side", "500"],
                                                 r"batch_per_side=500 but attribute 'truthfulness' has only 24",
                                                 r"Lower batch_per_side"),
    "train: loss becomes NaN": CliCase(lambda c: [*_train_cli(c, c.huge), "--sigma", "2"],
                                       r"diverged at epoch 1, step 1: the mmd", r"Lower lr"),
    "generate: truncated steerer": CliCase(lambda c: _generate(c, c.st_truncated), r"does not match the sha256",
                                           r"Re-save the steerer"),
    "generate: corrupted manifest": CliCase(lambda c: _generate(c, c.st_bad_json), r"is not valid JSON",
                                            r"Delete it and re-create it"),
    "generate: newer steerer format": CliCase(lambda c: _generate(c, c.st_newer), r"newer than this matsteer",
                                              r"Upgrade matsteer"),
    "generate: steerer of another width": CliCase(lambda c: _generate(c, c.narrow), r"hidden size d=6 .* d=32",
                                                  r"Train a steerer on this model's activations"),
    "generate: steerer's layer missing": CliCase(lambda c: _generate(c, c.far), r"Layer 99 is out of range",
                                                 r"Pick a layer"),
    "generate: steerer of another model": CliCase(lambda c: _generate(c, c.foreign), r"different model",
                                                  r"--allow-model-mismatch"),
    "generate: multiplier for an unknown attribute": CliCase(
        lambda c: _generate(c, c.steerer, "--multiplier", "toxicity=2"),
        r"unknown attributes \['toxicity'\]", r"this steerer has \['truthfulness', 'bias'\]"),
    "eval: truncated steerer": CliCase(lambda c: _eval(c, c.st_truncated), r"does not match the sha256",
                                       r"Re-save the steerer"),
    "eval: steerer of another width": CliCase(lambda c: _eval(c, c.narrow), r"hidden size d=6 .* d=32",
                                              r"Train a steerer on this model's activations"),
    "eval: multiplier for an unknown attribute": CliCase(lambda c: _eval(c, c.steerer, "--multiplier", "tox=1"),
                                                         r"unknown attributes \['tox'\]", r"Use those names"),
    "winrates: no comparison yet": CliCase(lambda c: ["winrates", "--from-eval", str(c.root / "absent.json")],
                                           r"absent\.json does not exist", r"run `matsteer compare` first"),
    "winrates: endpoint without a model name": CliCase(lambda c: ["winrates", "--judge-url", "http://127.0.0.1:9/v1"],
                                                       r"--judge-url needs --judge-model", r"the model name"),
    "generate: malformed multiplier": CliCase(lambda c: _generate(c, c.steerer, "--multiplier", "bias=lots"),
                                              r"Bad --multiplier 'bias=lots'", r"NAME=NUMBER"),
}


@pytest.mark.filterwarnings("ignore:sigma=.* is far below")
@pytest.mark.parametrize("name", CLI_CASES)
def test_cli_layer(name, ctx, capsys, monkeypatch):
    case = CLI_CASES[name]
    for key, value in (case.env(ctx) if case.env else {}).items():
        monkeypatch.setenv(key, value)
    argv = case.argv(ctx)
    assert cli_main(argv) == 2
    err = capsys.readouterr().err  # progress bars may come first (a closed bar ends in a carriage return)
    assert re.search(f"(?:^|\r| )matsteer {argv[0]}: error: ", err, re.M) and "Traceback" not in err, err
    assert re.search(case.problem, err, re.S), f"problem not named: {err}"
    assert re.search(case.fix, err, re.S), f"fix not named: {err}"


def test_notebooks_cli_wrong_parameter_type(ctx, capsys):
    # A bad parameter is refused before any kernel starts. (This runner exits 1, not the matsteer CLI's 2.)
    assert notebooks_main(["--only", "02", "--set", "layer='14'", "--out", str(ctx.root / "nb")]) != 0
    err = capsys.readouterr().err
    assert re.search(r"parameter 'layer' must be int, got str '14'", err) and "Traceback" not in err, err
    assert not (ctx.root / "nb").exists()


@pytest.mark.slow  # a fresh interpreter importing torch and transformers: ~6 s
def test_real_entry_point_exits_2_without_traceback(ctx):
    """``python -m matsteer`` (what the ``matsteer`` script runs) in a fresh process."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "matsteer", *_extract(ctx, "--layer", "99")], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert re.search(r"^matsteer extract: error: Layer 99 is out of range.*Pick a layer", proc.stderr, re.S | re.M)


def test_run_all_checks_every_notebook_before_running_any(tmp_path):
    from matsteer.app.runner import run_all

    with pytest.raises(ConfigError, match="must be"):
        run_all(parameters={"results_dir": 3}, out_dir=tmp_path)  # only 04 declares it; refused before 01 runs
    with pytest.raises(ConfigError, match="No selected notebook declares"):
        run_all(parameters={"no_such_parameter": 1}, out_dir=tmp_path)
    assert not any(tmp_path.iterdir())
