"""MC scoring: prompt-shared scoring equals brute-force per-choice scoring; forced-off steering equals none."""

from __future__ import annotations

import torch

from matsteer.activations.sites import Site
from matsteer.core.steerer import Steerer
from matsteer.data import MCQuestion
from matsteer.eval.scoring import continuation_logprobs, score_mc, split_prompt
from matsteer.steering.session import steer

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


def test_cached_upper_pass_equals_full_forward_and_pyvene(tokenizer):
    from conftest import tiny_model_for

    from matsteer.eval.cached_scoring import score_cached, steering_edit
    from matsteer.eval.site_cache import cache_questions

    model = tiny_model_for("llama")
    qs = _questions() + [MCQuestion(dataset="bbq", prompt="the old man and the young woman . who is kind ?",
                                    choices=["the old man", "unknown", "the young woman"], labels=[0, 1, 0],
                                    group="1", template="Q: {prompt} A: {answer}")]
    site = Site(1)
    cached = cache_questions(model, tokenizer, qs, site, progress=False)
    plain = score_mc(model, tokenizer, qs, progress=False)
    for got, want in zip(score_cached(model, site, cached), plain):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    torch.manual_seed(1)
    steerer = Steerer(["truthfulness", "toxicity"], d=32)
    with steer(model, steerer, site=site, positions="prompt") as h:
        via_pyvene = score_mc(model, tokenizer, qs, h, progress=False)
    fast = score_cached(model, site, cached, steering_edit(steerer), positions="prompt")
    for got, want in zip(fast, via_pyvene):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(fast[0], plain[0])
    # The model is whole again afterwards.
    assert len(model.model.layers) == 4


def test_cached_all_positions_and_single_token_answers_equal_pyvene(tokenizer):
    """positions="all" edits the answer tokens too; one-token answers take the prompt-only path."""
    from conftest import tiny_model_for

    from matsteer.eval.cached_scoring import score_cached, steering_edit
    from matsteer.eval.site_cache import cache_questions

    model = tiny_model_for("qwen2")
    qs = _questions() + [MCQuestion(dataset="toxigen", prompt="the old man is kind . is this toxic ?",
                                    choices=["yes", "no"], labels=[0, 1], group="2",
                                    template="Q: {prompt} A: {answer}")]
    site = Site(2)
    cached = cache_questions(model, tokenizer, qs, site, progress=False)
    assert cached[1].answer_ids.shape[1] == 1
    torch.manual_seed(2)
    steerer = Steerer(["truthfulness", "toxicity"], d=32)
    for positions in ("all", "prompt"):
        with steer(model, steerer, site=site, positions=positions) as h:
            want = score_mc(model, tokenizer, qs, h, progress=False)
        got = score_cached(model, site, cached, steering_edit(steerer), positions=positions)
        # Tiny token budgets: one question per batch, answers split over several chunks, same scores.
        small = score_cached(model, site, cache_questions(model, tokenizer, qs, site, progress=False, batch_tokens=3),
                             steering_edit(steerer), positions=positions, batch_tokens=3)
        for g, w, t in zip(got, want, small):
            torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(t, w, atol=1e-4, rtol=1e-4)
    assert [m.self_attn.layer_idx for m in model.model.layers] == list(range(len(model.model.layers)))


def test_answer_only_policy_never_touches_a_prompt_token(tokenizer):
    """positions="generated" (the answer-tokens-only protocol): the cached scorer equals pyvene's "generated"
    policy, and a one-token answer (scored from the prompt pass alone) is exactly unsteered."""
    from conftest import tiny_model_for

    from matsteer.eval.cached_scoring import score_cached, steering_edit, text_edit_mask
    from matsteer.eval.site_cache import cache_questions, cache_texts

    model = tiny_model_for("llama")
    qs = _questions() + [MCQuestion(dataset="toxigen", prompt="the old man is kind . is this toxic ?",
                                    choices=["yes", "no"], labels=[0, 1], group="2",
                                    template="Q: {prompt} A: {answer}")]
    site = Site(1)
    cached = cache_questions(model, tokenizer, qs, site, progress=False)
    torch.manual_seed(3)
    steerer = Steerer(["truthfulness", "toxicity"], d=32)
    with steer(model, steerer, site=site, positions="generated") as h:
        want = score_mc(model, tokenizer, qs, h, progress=False)
    got = score_cached(model, site, cached, steering_edit(steerer), positions="generated")
    plain = score_cached(model, site, cached)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)
    assert torch.equal(got[1], plain[1])  # one-token answers: nothing but the prompt pass, never edited
    assert not torch.allclose(got[0], plain[0])  # multi-token answers: their later tokens are steered
    texts = cache_texts(model, tokenizer, ["the sun is good .", "water"], site)
    assert torch.equal(text_edit_mask(texts, "generated"), text_edit_mask(texts, "all"))
