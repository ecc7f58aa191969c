"""Scoring multiple-choice questions by summed answer-token log-probabilities, steered or not.

Each question's prompt is run once; its KV cache is repeated for the choices, whose tokens are then scored in
one batch. Steering (a :class:`~matsteer.steering.intervention.SteeringHandle`) acts on the calls made through it; with
``positions="prompt"`` only the query tokens are edited, as the paper does ("f is applied to the activations of
tokens in the query"), and with ``positions="all"`` the answer tokens too. ``steering=None`` is the plain model,
with no hooks at all. Many methods on one model are scored faster from one pass below the site
(:mod:`matsteer.eval.site_cache`, :mod:`matsteer.eval.cached_scoring`).

**Protected positions.** The first token of a text (an attention sink whose activation has several times the
typical norm) and special tokens (BOS, EOS, chat markers) are never steered by default: training never sees
them (features come from answer tokens), and an edit there changes every later token's attention.
``steer_special=True`` steers them too (an ablation).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from matsteer.activations.extraction import cache_kwarg
from matsteer.activations.models import (  # noqa: F401  (re-exported: the scorers import them from here)
    Tokenizer,
    model_device,
    pad_token_id,
    protected_positions,
    special_token_ids,
)
from matsteer.data import MCQuestion, fill_template
from matsteer.errors import ConfigError
from matsteer.steering.call_context import CallContext

#: A steering handle (:func:`matsteer.steering.intervention.steer`) or any callable run in place of the model.
Steering = Callable[..., Any]


@functools.cache
def _protecting_context() -> type:
    """The intervention's call context with protected positions removed from its real-token mask, so that a
    pyvene-steered call edits what the cached scorer edits (see :func:`protected_positions`). Built on first use:
    importing pyvene takes seconds and plain scoring does not need it."""

    class ProtectingContext(CallContext):
        def __init__(self, special: torch.Tensor) -> None:
            super().__init__()
            self.special = special

        def pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
            super().pre_hook(module, args, kwargs)
            ids = kwargs.get("input_ids")
            if ids is None and args and isinstance(args[0], torch.Tensor) and not args[0].is_floating_point():
                ids = args[0]
            if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
                return  # embeddings only: nothing says which tokens are special
            valid = self.valid if self.valid is not None else torch.ones_like(ids, dtype=torch.bool)
            if tuple(valid.shape) == tuple(ids.shape):
                self.valid = valid & ~protected_positions(ids, valid, self.special, first=self.past_len == 0)

    return ProtectingContext


@contextmanager
def protect_special(steering: Steering | None, tokenizer: Tokenizer, steer_special: bool = False) -> Iterator[None]:
    """Inside the block, calls through the steering handle leave protected positions unedited (unless
    ``steer_special``); a plain model or another callable is left as it is."""
    intervention = getattr(steering, "intervention", None)
    if steer_special or intervention is None or not hasattr(intervention, "context"):
        yield
        return
    old = intervention.context
    intervention.context = _protecting_context()(torch.tensor(special_token_ids(tokenizer), dtype=torch.long))
    try:
        yield
    finally:
        intervention.context = old


def tempered_log_softmax(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``log_softmax(logits / T)`` over the last axis ``[..., V]``, in float32. ``T == 1`` is the plain
    log-softmax bit for bit (no division runs); ``T > 1`` flattens the next-token distribution (the temperature
    control of the comparison)."""
    if temperature == 1.0:
        return torch.log_softmax(logits, -1, dtype=torch.float32)
    if not temperature > 0:
        raise ConfigError(f"A softmax temperature must be positive, got {temperature}.")
    return torch.log_softmax(logits.float() / temperature, -1)


def split_prompt(text: str, answer_start: int) -> tuple[str, str]:
    """Context and continuation as lm-eval does: ``"Q: x A:"`` + ``" y"`` (the space starts the continuation)."""
    context = text[:answer_start].rstrip()
    return context, text[len(context):]


def _call(model: nn.Module, steering: Steering | None, **inputs: Any) -> Any:
    return model(**inputs) if steering is None else steering(**inputs)


def continuation_logprobs(
    model: nn.Module,
    tokenizer: Tokenizer,
    context: str,
    continuations: Sequence[str],
    steering: Steering | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Summed log-probabilities ``[K]`` of each continuation after ``context`` (one prompt pass, one batch of K),
    from next-token logits divided by ``temperature`` (see :func:`tempered_log_softmax`)."""
    if not continuations:
        raise ConfigError(f"No choices to score for {context[:60]!r}.")
    device = model_device(model)
    ctx_ids = tokenizer(context, add_special_tokens=True, return_tensors="pt")["input_ids"].to(device)
    conts = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in continuations]
    if any(len(c) == 0 for c in conts):
        raise ConfigError(f"A choice of {context[:60]!r} is empty after tokenization.")
    k, n_ctx, width = len(conts), ctx_ids.shape[1], max(len(c) for c in conts)
    out = _call(model, steering, input_ids=ctx_ids, attention_mask=torch.ones_like(ctx_ids), use_cache=True)
    first = tempered_log_softmax(out.logits[0, -1], temperature)  # predicts each continuation's first token
    cache: Any = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    cache.batch_repeat_interleave(k)
    ids = torch.full((k, width), pad_token_id(tokenizer), dtype=torch.long, device=device)
    mask = torch.zeros((k, n_ctx + width), dtype=torch.long, device=device)
    mask[:, :n_ctx] = 1
    for r, c in enumerate(conts):  # right-padded: pads come after every real token, so they change nothing
        ids[r, : len(c)] = torch.tensor(c, device=device)
        mask[r, n_ctx : n_ctx + len(c)] = 1
    positions = torch.arange(n_ctx, n_ctx + width, device=device).expand(k, width)
    out = _call(model, steering, input_ids=ids, attention_mask=mask, position_ids=positions,
                use_cache=True, **{cache_kwarg(model): cache})
    logp = tempered_log_softmax(out.logits, temperature)  # [K, width, V]: position j predicts token j + 1
    totals = first[ids[:, 0]]
    if width > 1:
        nxt = logp[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]  # [K, width - 1]
        totals = totals + (nxt * mask[:, n_ctx + 1 :]).sum(-1)
    return totals


def score_mc(
    model: nn.Module,
    tokenizer: Tokenizer,
    questions: Sequence[MCQuestion],
    steering: Steering | None = None,
    *,
    choices: str = "choices",
    progress: bool = True,
    desc: str = "score",
    steer_special: bool = False,
    temperature: float = 1.0,
) -> list[torch.Tensor]:
    """Per question, the summed log-prob of each choice ``[K_q]`` (``MCQuestion`` objects; ``choices`` names the
    attribute holding the answers, e.g. ``"mc1_choices"`` for TruthfulQA MC1), from logits divided by
    ``temperature``. A steering handle leaves the first token and special tokens unedited unless
    ``steer_special`` (module docstring)."""
    scores = []
    with torch.inference_mode(), protect_special(steering, tokenizer, steer_special):
        for q in tqdm(questions, desc=desc, disable=not progress, leave=False):
            context, conts = prompt_and_continuations(q, list(getattr(q, choices)))
            scores.append(continuation_logprobs(model, tokenizer, context, conts, steering, temperature).cpu())
    return scores


def answer_lengths(tokenizer: Tokenizer, questions: Sequence[MCQuestion], choices: str = "choices") -> list[torch.Tensor]:
    """Per question, the number of tokens ``[K_q]`` of each choice's continuation, tokenized as the scorers do
    (for per-token mean log-probs)."""
    out = []
    for q in questions:
        _, conts = prompt_and_continuations(q, list(getattr(q, choices)))
        out.append(torch.tensor([len(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in conts]))
    return out


def prompt_and_continuations(q: MCQuestion, answers: Sequence[str]) -> tuple[str, list[str]]:
    """The question's shared context and each answer's continuation (see :func:`split_prompt`)."""
    context, conts = None, []
    for a in answers:
        text, start, _ = fill_template(q.template, q.prompt, a)
        ctx, cont = split_prompt(text, start)
        if context is not None and ctx != context:
            raise ConfigError(f"Choices of one question must share the prompt; template {q.template!r}.")
        context = ctx
        conts.append(cont)
    if context is None:
        raise ConfigError(f"Question {q.prompt[:60]!r} has no choices to score.")
    return context, conts
