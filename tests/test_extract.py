"""Extraction: exact rows, padding invariance, early exit, token selection, the on-disk cache."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from matsteer.activations.extraction import encode_texts, extract_activations, left_pad
from matsteer.activations.features import extract_to_folder, load_features
from matsteer.activations.models import LoadedModel, weight_fingerprint
from matsteer.activations.sites import COMPONENTS, Site
from matsteer.errors import ArtifactError, ConfigError

TEXTS = [
    "Q: what is the capital of france ? A: paris",
    "Q: what happens if you eat watermelon seeds ? A: nothing happens",
    "the sun is good",
    "Q: who is old ? A: can't be determined",
]


def _full_forward_capture(model, site, text, tokenizer):
    """Activation at ``site`` from an ordinary full forward of one text, captured with a plain hook."""
    resolved = site.resolve(model)
    store = {}
    if resolved.io == "input":
        h = resolved.module.register_forward_pre_hook(lambda m, a: store.setdefault("v", a[0]))
    else:
        h = resolved.module.register_forward_hook(
            lambda m, a, o: store.setdefault("v", o[0] if isinstance(o, tuple) else o))
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        model(input_ids=ids)
    h.remove()
    return store["v"][0]


@pytest.mark.parametrize("component", COMPONENTS)
def test_rows_equal_hooked_module_output_and_early_exit(tiny_model, tokenizer, component):
    _, model = tiny_model
    site = Site(2, component)
    for text in TEXTS:
        rows = extract_activations(model, tokenizer, [text], site, tokens="all", batch_size=1, progress=False)
        full = _full_forward_capture(model, site, text, tokenizer)[1:]  # position 0 (attention sink) is skipped
        assert rows.activations.shape == full.shape
        assert torch.equal(rows.activations, full.float())
        assert rows.token_index.tolist() == list(range(1, full.shape[0] + 1))


@pytest.mark.parametrize("component", COMPONENTS)
def test_left_padded_batch_matches_one_by_one(tiny_model, tokenizer, component):
    _, model = tiny_model
    site = Site(1, component)
    batched = extract_activations(model, tokenizer, TEXTS, site, tokens="all", batch_size=4, progress=False)
    single = [extract_activations(model, tokenizer, [t], site, tokens="all", batch_size=1, progress=False) for t in TEXTS]
    expected = torch.cat([s.activations for s in single])
    assert batched.activations.shape == expected.shape
    torch.testing.assert_close(batched.activations, expected, atol=1e-5, rtol=1e-5)
    assert batched.text_index.tolist() == [i for i, s in enumerate(single) for _ in range(len(s))]


def test_pad_tokens_never_appear(tiny_llama, tokenizer):
    rows = extract_activations(tiny_llama, tokenizer, TEXTS, Site(0), tokens="all", batch_size=4, progress=False)
    n_tokens = sum(len(tokenizer(t)["input_ids"]) - 1 for t in TEXTS)  # all but the attention-sink position
    assert len(rows) == n_tokens


def test_token_selection_positions(tokenizer):
    text = "Q: what is the capital of france ? A: paris"
    start = text.index("paris")
    (all_,) = encode_texts(tokenizer, [text], "all")
    (last,) = encode_texts(tokenizer, [text], "last")
    (ans,) = encode_texts(tokenizer, [text], "answer", [(start, len(text))])
    n = len(all_.input_ids)
    assert all_.keep == list(range(1, n))
    assert last.keep == [n - 1]
    assert ans.keep == [n - 1]
    (two,) = encode_texts(tokenizer, ["Q: who ? A: the old man"], "answer", [(12, 23)])
    assert tokenizer.convert_ids_to_tokens([two.input_ids[j] for j in two.keep]) == ["the", "old", "man"]


def test_left_pad_positions():
    ids, mask, pos = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert pos.tolist() == [[0, 1, 2], [0, 0, 0]]


def test_bad_layer_and_selection(tiny_llama, tokenizer):
    with pytest.raises(ConfigError, match="out of range"):
        extract_activations(tiny_llama, tokenizer, TEXTS, Site(99), progress=False)
    with pytest.raises(ConfigError, match="token selection"):
        extract_activations(tiny_llama, tokenizer, TEXTS, Site(0), tokens="middle", progress=False)
    with pytest.raises(ConfigError, match="component"):
        Site(0, "mlp")


@dataclass(frozen=True)
class _Ex:
    text: str
    answer_span: tuple[int, int]
    label: int
    group: str
    attribute: str = "truthfulness"
    template: str = "Q: {prompt} A: {answer}"


def _examples():
    return [_Ex(t, (t.rfind(":") + 2 if "A:" in t else 0, len(t)), i % 2, str(i)) for i, t in enumerate(TEXTS)]


def test_cache_roundtrip_reuse_and_stale(tmp_path, tiny_llama, tokenizer):
    loaded = LoadedModel(tiny_llama, tokenizer, "tiny", weight_fingerprint(tiny_llama))
    out = tmp_path / "feats"
    fs = extract_to_folder(loaded, _examples(), Site(1), out, tokens="all", dataset="toy", split="train", progress=False)
    again = load_features(out)
    assert torch.equal(fs.activations, again.activations) and torch.equal(fs.labels, again.labels)
    assert again.manifest["rows"] == len(fs.activations) and again.manifest["site"] == {"layer": 1, "component": "residual"}
    # Same settings: reused without recomputation (file untouched).
    mtime = (out / "activations.safetensors").stat().st_mtime_ns
    extract_to_folder(loaded, _examples(), Site(1), out, tokens="all", dataset="toy", split="train", progress=False)
    assert (out / "activations.safetensors").stat().st_mtime_ns == mtime
    # Another token selection: the stale cache is replaced, not reused.
    last = extract_to_folder(loaded, _examples(), Site(1), out, tokens="last", dataset="toy", split="train", progress=False)
    assert len(last.activations) == len(TEXTS) and load_features(out).manifest["tokens"] == "last"


def test_resume_from_shards_and_refuse_partial(tmp_path, tiny_llama, tokenizer):
    loaded = LoadedModel(tiny_llama, tokenizer, "tiny", weight_fingerprint(tiny_llama))
    out = tmp_path / "feats"
    full = extract_to_folder(loaded, _examples(), Site(1), out, dataset="toy", split="train", shard_texts=2, progress=False)
    # Simulate a kill after the first shard: keep one shard, drop the final files.
    key = full.manifest["cache_key"]
    (out / "manifest.json").unlink()
    with pytest.raises(ArtifactError):
        load_features(out)
    partial = out / f".partial-{key[:16]}"
    partial.mkdir()
    from matsteer.activations.extraction import ActivationRows
    from matsteer.activations.features import _save_rows

    first = full.text_index < 2
    _save_rows(partial / "shard-00000.safetensors",
               ActivationRows(full.activations[first], full.text_index[first], full.token_index[first], full.labels[first]), key)
    resumed = extract_to_folder(loaded, _examples(), Site(1), out, dataset="toy", split="train", shard_texts=2, progress=False)
    assert torch.equal(resumed.activations, full.activations)
    assert not partial.exists()


def test_corrupted_activation_file_is_refused(tmp_path, tiny_llama, tokenizer):
    loaded = LoadedModel(tiny_llama, tokenizer, "tiny", weight_fingerprint(tiny_llama))
    out = tmp_path / "feats"
    extract_to_folder(loaded, _examples(), Site(1), out, dataset="toy", split="train", progress=False)
    data = (out / "activations.safetensors").read_bytes()
    (out / "activations.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="truncated or corrupted"):
        load_features(out)
