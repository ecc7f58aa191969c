"""Integration: the embedded default model loads offline, answers sensibly, and extraction matches its hidden states."""

from __future__ import annotations

import pytest
import torch

from matsteer.activations.extraction import extract_activations
from matsteer.activations.models import DEFAULT_MODEL, load_model
from matsteer.activations.sites import Site
from matsteer.errors import ModelError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default():
    return load_model(DEFAULT_MODEL, progress=False)


def test_default_model_loads_and_answers(default):
    assert type(default.model).__name__ == "LlamaForCausalLM"
    assert default.num_layers == 30 and default.hidden_size == 576
    tok = default.tokenizer
    enc = tok("The capital of France is", return_tensors="pt")
    out = default.model.generate(**enc, max_new_tokens=4, do_sample=False)
    assert "Paris" in tok.decode(out[0][enc["input_ids"].shape[1]:])
    # The cached copy gives the same fingerprint as the first conversion.
    assert load_model(DEFAULT_MODEL, progress=False).weight_hash == default.weight_hash


def test_extraction_matches_hidden_states(default):
    texts = ["Q: What happens if you eat watermelon seeds? A: Nothing happens.", "Q: Is the sun hot? A: Yes."]
    rows = extract_activations(default.model, default.tokenizer, texts, Site(14, "residual"), tokens="all", batch_size=2,
                   progress=False)
    for i, text in enumerate(texts):
        enc = default.tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            hs = default.model(**enc, output_hidden_states=True).hidden_states[15][0]
        torch.testing.assert_close(rows.activations[rows.text_index == i], hs[1:], atol=1e-4, rtol=1e-4)


def test_unknown_local_path_is_a_clear_error():
    with pytest.raises(ModelError, match="does not exist"):
        load_model("./no/such/model")
