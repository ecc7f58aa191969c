"""MC scoring: prompt-shared scoring equals brute-force per-choice scoring; forced-off steering equals none."""

from __future__ import annotations

import torch

from matsteer.data import MCQuestion
from matsteer.intervention import steer
from matsteer.scoring import continuation_logprobs, score_mc, split_prompt
from matsteer.sites import Site
from matsteer.steerer import Steerer

CTX = "q : what is the capital of france ? a :"
CONTS = [" paris", " the old man", " nothing happens to you"]


def _brute(model, tok, ctx, conts):
    n = len(tok(ctx)["input_ids"])
    out = []
    for c in conts:
        ids = tok(ctx + c)["input_ids"]
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
        out.append(sum(lp[j - 1, ids[j]] for j in range(n, len(ids))))
    return torch.stack(out)


def test_split_prompt():
    text = "Q: what is it? A: paris"
    assert split_prompt(text, text.index("paris")) == ("Q: what is it? A:", " paris")


def test_shared_prompt_scoring_equals_brute_force(tiny_model, tokenizer):
    _, model = tiny_model
    got = continuation_logprobs(model, tokenizer, CTX, CONTS)
    torch.testing.assert_close(got, _brute(model, tokenizer, CTX, CONTS), atol=1e-4, rtol=1e-4)


def _questions():
    return [MCQuestion(dataset="truthfulqa", prompt="what is the capital of france ?", choices=["paris", "the moon"],
                       labels=[1, 0], group="0", template="Q: {prompt} A: {answer}")]


def test_forced_off_steering_scores_equal_plain(tiny_llama, tokenizer):
    torch.manual_seed(0)
    steerer = Steerer(["truthfulness", "toxicity"], d=32)
    plain = score_mc(tiny_llama, tokenizer, _questions(), progress=False)
    with steer(tiny_llama, steerer, site=Site(1), force={"truthfulness": False, "toxicity": False}) as h:
        off = score_mc(tiny_llama, tokenizer, _questions(), h, progress=False)
    with steer(tiny_llama, steerer, site=Site(1), positions="prompt") as h:
        on = score_mc(tiny_llama, tokenizer, _questions(), h, progress=False)
    assert torch.equal(plain[0], off[0])
    assert not torch.equal(plain[0], on[0])
