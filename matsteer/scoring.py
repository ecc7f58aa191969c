"""Scoring multiple-choice questions by summed answer-token log-probabilities, steered or not.

Each question's prompt is run once; its KV cache is repeated for the choices, whose tokens are then scored in
one batch. Steering (a :class:`~matsteer.intervention.SteeringHandle`) acts on the calls made through it; with
``positions="prompt"`` only the query tokens are edited, as the paper does ("f is applied to the activations of
tokens in the query"), and with ``positions="all"`` the answer tokens too. ``steering=None`` is the plain model,
with no hooks at all.
"""

from __future__ import annotations

from collections.abc import Sequence
import inspect
from typing import Any

import torch
from tqdm.auto import tqdm

from .errors import ConfigError


def split_prompt(text: str, answer_start: int) -> tuple[str, str]:
    """Context and continuation as lm-eval does: ``"Q: x A:"`` + ``" y"`` (the space starts the continuation)."""
    context = text[:answer_start].rstrip()
    return context, text[len(context):]


def _call(model: Any, steering: Any, **inputs: Any) -> Any:
    return model(**inputs) if steering is None else steering(**inputs)


def _cache_kwarg(model: Any) -> str:
    """transformers >= 5.2x names the KV cache argument ``cache``; earlier 5.x releases ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def continuation_logprobs(
    model: Any,
    tokenizer: Any,
    context: str,
    continuations: Sequence[str],
    steering: Any = None,
) -> torch.Tensor:
    """Summed log-probabilities ``[K]`` of each continuation after ``context`` (one prompt pass, one batch of K)."""
    if not continuations:
        raise ConfigError(f"No choices to score for {context[:60]!r}.")
    device = next(model.parameters()).device
    ctx_ids = tokenizer(context, add_special_tokens=True, return_tensors="pt")["input_ids"].to(device)
    conts = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in continuations]
    if any(len(c) == 0 for c in conts):
        raise ConfigError(f"A choice of {context[:60]!r} is empty after tokenization.")
    k, n_ctx, width = len(conts), ctx_ids.shape[1], max(len(c) for c in conts)
    out = _call(model, steering, input_ids=ctx_ids, attention_mask=torch.ones_like(ctx_ids), use_cache=True)
    first = torch.log_softmax(out.logits[0, -1].float(), -1)  # predicts each continuation's first token
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    cache.batch_repeat_interleave(k)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((k, width), pad, dtype=torch.long, device=device)
    mask = torch.zeros((k, n_ctx + width), dtype=torch.long, device=device)
    mask[:, :n_ctx] = 1
    for r, c in enumerate(conts):  # right-padded: pads come after every real token, so they change nothing
        ids[r, : len(c)] = torch.tensor(c, device=device)
        mask[r, n_ctx : n_ctx + len(c)] = 1
    positions = torch.arange(n_ctx, n_ctx + width, device=device).expand(k, width)
    out = _call(model, steering, input_ids=ids, attention_mask=mask, position_ids=positions,
                use_cache=True, **{_cache_kwarg(model): cache})
    logp = torch.log_softmax(out.logits.float(), -1)  # [K, width, V]: position j predicts token j + 1
    totals = first[ids[:, 0]]
    if width > 1:
        nxt = logp[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]  # [K, width - 1]
        totals = totals + (nxt * mask[:, n_ctx + 1 :]).sum(-1)
    return totals


def score_mc(
    model: Any,
    tokenizer: Any,
    questions: Sequence[Any],
    steering: Any = None,
    *,
    choices: str = "choices",
    progress: bool = True,
    desc: str = "score",
) -> list[torch.Tensor]:
    """Per question, the summed log-prob of each choice ``[K_q]`` (``MCQuestion`` objects; ``choices`` names the
    attribute holding the answers, e.g. ``"mc1_choices"`` for TruthfulQA MC1)."""
    scores = []
    with torch.inference_mode():
        for q in tqdm(questions, desc=desc, disable=not progress, leave=False):
            answers = list(getattr(q, choices))
            text, start, _ = _fill(q, answers[0])
            context, _ = split_prompt(text, start)
            conts = []
            for a in answers:
                t, s, _ = _fill(q, a)
                ctx, cont = split_prompt(t, s)
                if ctx != context:
                    raise ConfigError(f"Choices of one question must share the prompt; template {q.template!r}.")
                conts.append(cont)
            scores.append(continuation_logprobs(model, tokenizer, context, conts, steering).cpu())
    return scores


def _fill(q: Any, answer: str) -> tuple[str, int, int]:
    from .data import fill_template

    return fill_template(q.template, q.prompt, answer)
