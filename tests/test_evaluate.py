"""The evaluator on a tiny model: forced-off steering scores equal no steering exactly; MC1 reuses MC2 scores."""

from __future__ import annotations

import torch

from matsteer.evaluate import Evaluator, Method
from matsteer.models import LoadedModel
from matsteer.scoring import score_mc
from matsteer.sites import Site
from matsteer.steerer import Steerer


def _evaluator(tiny_llama, tokenizer):
    loaded = LoadedModel(tiny_llama, tokenizer, "tiny", "0")
    return Evaluator(loaded, Site(1), "dev", {"truthfulqa": 3, "toxigen": 3, "bbq": 3}, neutral=4, progress=False)


def test_forced_off_equals_no_steering_and_mc1_from_mc2(tiny_llama, tokenizer):
    ev = _evaluator(tiny_llama, tokenizer)
    torch.manual_seed(0)
    steerer = Steerer(["truthfulness", "toxicity", "bias"], d=32)
    none = ev.evaluate(Method("none"))
    off = ev.evaluate(Method("off", steerer, force=dict.fromkeys(steerer.attributes, False)))
    for task in ("truthfulqa", "toxigen", "bbq"):
        assert none[task]["per_item"] == off[task]["per_item"]
    assert off["side_effects"]["kl"] == 0.0
    on = ev.evaluate(Method("on", steerer, global_multiplier=4.0))
    assert on["side_effects"]["kl"] > 0.0
    # MC1 from the MC2 scores equals scoring the MC1 choices directly.
    qs = ev.questions["truthfulqa"]
    direct = score_mc(tiny_llama, tokenizer, qs, choices="mc1_choices", progress=False)
    mc2 = score_mc(tiny_llama, tokenizer, qs, progress=False)
    for got, want in zip(ev._mc1_scores("truthfulqa", Method("none"), mc2), direct):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
