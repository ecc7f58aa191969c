"""One Site, one tensor: extraction and pyvene steering see the same activations at every site."""

from __future__ import annotations

import pytest
import torch

from matsteer.activations.extraction import extract_activations
from matsteer.activations.sites import COMPONENTS, Site
from matsteer.core.steerer import Steerer
from matsteer.steering.session import steer


@pytest.mark.parametrize("component", COMPONENTS)
def test_extraction_and_steering_resolve_the_same_tensor(tiny_model, tokenizer, component):
    _, model = tiny_model
    site = Site(2, component)
    text = "q : what is the capital of france ? a : paris"
    rows = extract_activations(model, tokenizer, [text], site, tokens="all", progress=False)
    torch.manual_seed(0)
    d = rows.activations.shape[1]
    steerer = Steerer(["truthfulness", "bias"], d=d)
    enc = tokenizer([text], return_tensors="pt")
    with steer(model, steerer, site=site, record=True) as handle, torch.no_grad():
        handle(**enc)
        gates = handle.recorder.records[0].gates[0]  # [seq, T]: computed from the activation pyvene handed over
    # Extraction skips position 0 (attention sink); compare the rest.
    torch.testing.assert_close(gates[1:], steerer.gates(rows.activations), atol=1e-6, rtol=1e-6)


def test_resolution_paths_per_architecture(tiny_model):
    arch, model = tiny_model
    paths = {c: Site(1, c).resolve(model).pyvene_component for c in COMPONENTS}
    prefix = "transformer.h.1" if arch == "gpt2" else "model.layers.1"
    assert paths["residual"] == f"{prefix}.output"
    assert paths["attn_output"].startswith(prefix) and paths["attn_output"].endswith(".output")
    assert paths["attn_heads"].endswith(".input")
