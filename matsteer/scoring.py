"""Scoring multiple-choice questions by summed answer-token log-probabilities, steered or not.

Each question's prompt is run once; its KV cache is repeated for the choices, whose tokens are then scored in
one batch. Steering (a :class:`~matsteer.intervention.SteeringHandle`) acts on the calls made through it; with
``positions="prompt"`` only the query tokens are edited, as the paper does ("f is applied to the activations of
tokens in the query"), and with ``positions="all"`` the answer tokens too. ``steering=None`` is the plain model,
with no hooks at all.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .errors import ConfigError
from .extract import site_activations
from .sites import Site, decoder_layers


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


# ---------------------------------------------------------------------------------------------------------------
# Scoring many methods from one pass below the site
#
# Activations below the steered site do not depend on the steering method, so each question's choices are run
# once up to the site (early exit) and cached; every method then edits the cached activations with the same
# steering function the pyvene intervention uses and runs only the layers above the site. This needs a residual
# site of a Llama-style model whose ``inputs_embeds`` enter the decoder layers unchanged (Llama, Mistral, Qwen2);
# other sites and architectures use :func:`score_mc` through pyvene.

UPPER_PASS_MODELS = ("llama", "mistral", "qwen2", "qwen3")


@dataclass
class CachedQuestion:
    """One question's choices at the site: hidden ``[K, W, d]`` (right-padded), ids/mask ``[K, W]``,
    ``query [K, W]`` True at prompt (query) tokens, ``answer [K, W]`` True at answer tokens."""

    hidden: torch.Tensor
    input_ids: torch.Tensor
    mask: torch.Tensor
    query: torch.Tensor
    answer: torch.Tensor


def supports_upper_pass(model: Any, site: Site) -> bool:
    return site.component == "residual" and getattr(model.config, "model_type", "") in UPPER_PASS_MODELS


def cache_questions(
    model: Any, tokenizer: Any, questions: Sequence[Any], site: Site, *, choices: str = "choices",
    progress: bool = True,
) -> list[CachedQuestion]:
    """Run each question's (prompt + choice) rows up to ``site`` once and keep the activations."""
    if not supports_upper_pass(model, site):
        raise ConfigError(f"Cached scoring needs a residual site on a {'/'.join(UPPER_PASS_MODELS)} model; "
                          "use score_mc with a steering handle instead.")
    device = next(model.parameters()).device
    out = []
    with torch.inference_mode():
        for q in tqdm(questions, desc="cache", disable=not progress, leave=False):
            rows, n_ctx = [], []
            for a in getattr(q, choices):
                text, start, _ = _fill(q, a)
                context, cont = split_prompt(text, start)
                ctx = tokenizer(context, add_special_tokens=True)["input_ids"]
                rows.append(ctx + tokenizer(cont, add_special_tokens=False)["input_ids"])
                n_ctx.append(len(ctx))
            k, width = len(rows), max(len(r) for r in rows)
            ids = torch.zeros((k, width), dtype=torch.long)
            mask = torch.zeros((k, width), dtype=torch.long)
            query = torch.zeros((k, width), dtype=torch.bool)
            for r, row in enumerate(rows):
                ids[r, : len(row)] = torch.tensor(row)
                mask[r, : len(row)] = 1
                query[r, : n_ctx[r]] = True
            positions = torch.arange(width).expand(k, width)
            hidden = site_activations(model, site, ids.to(device), mask.to(device), positions.to(device))
            out.append(CachedQuestion(hidden, ids, mask, query, mask.bool() & ~query))
    return out


def cache_texts(model: Any, tokenizer: Any, texts: Sequence[str], site: Site) -> CachedQuestion:
    """Neutral texts as one cached batch: every token is query (steered) and every token but the first is scored."""
    rows = [tokenizer(t, add_special_tokens=True)["input_ids"] for t in texts]
    k, width = len(rows), max(len(r) for r in rows)
    ids = torch.zeros((k, width), dtype=torch.long)
    mask = torch.zeros((k, width), dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, : len(row)] = torch.tensor(row)
        mask[r, : len(row)] = 1
    device = next(model.parameters()).device
    with torch.inference_mode():
        hidden = site_activations(model, site, ids.to(device), mask.to(device),
                                  torch.arange(width, device=device).expand(k, width))
    answer = mask.bool().clone()
    answer[:, 0] = False
    return CachedQuestion(hidden, ids, mask, mask.bool(), answer)


@contextmanager
def _layers_above(model: Any, layer: int) -> Iterator[None]:
    """Temporarily give the base model only the decoder blocks above ``layer`` (restored on exit)."""
    layers, path = decoder_layers(model)
    parent = model.get_submodule(path.rsplit(".", 1)[0]) if "." in path else model
    name = path.rsplit(".", 1)[-1]
    setattr(parent, name, nn.ModuleList(list(layers)[layer + 1:]))
    try:
        yield
    finally:
        setattr(parent, name, layers)


def _upper_hidden(model: Any, site: Site, cached: CachedQuestion, edit: Any, positions: str) -> torch.Tensor:
    """Final hidden states ``[K, W, d]`` (after the last norm) from the edited site activations."""
    if positions not in ("prompt", "all"):
        raise ConfigError(f"Cached scoring steers 'prompt' or 'all' positions, got {positions!r}.")
    device = next(model.parameters()).device
    hidden = cached.hidden
    if edit is not None:
        where = (cached.query if positions == "prompt" else cached.mask.bool()).to(hidden.device)
        hidden = hidden.clone()
        hidden[where] = edit(hidden[where])
    k, width = cached.input_ids.shape
    position_ids = torch.arange(width, device=device).expand(k, width)
    with _layers_above(model, site.layer):
        return model.base_model(inputs_embeds=hidden, attention_mask=cached.mask.to(device),
                                position_ids=position_ids, use_cache=False).last_hidden_state


def upper_logits(model: Any, site: Site, cached: CachedQuestion, edit: Any = None, positions: str = "prompt"
                 ) -> torch.Tensor:
    """Logits ``[K, W, V]`` after editing the cached activations and running only the layers above the site.

    edit: None (unsteered) or a function ``[n, d] -> [n, d]`` applied to the selected positions
    (``"prompt"``: query tokens, ``"all"``: every non-pad token).
    """
    return model.get_output_embeddings()(_upper_hidden(model, site, cached, edit, positions))


def upper_logprobs(model: Any, site: Site, cached: CachedQuestion, edit: Any = None, positions: str = "prompt"
                   ) -> torch.Tensor:
    """Summed answer-token log-probs ``[K]`` (see :func:`upper_logits`).

    The vocabulary projection runs only at positions that predict an answer token: with a 49k vocabulary it
    would otherwise cost more than the decoder layers.
    """
    final = _upper_hidden(model, site, cached, edit, positions)[:, :-1]  # position j predicts token j + 1
    scored = cached.answer[:, 1:].to(final.device)
    logp = torch.log_softmax(model.get_output_embeddings()(final[scored]).float(), -1)  # [n, V]
    picked = logp.gather(-1, cached.input_ids[:, 1:].to(final.device)[scored][:, None])[:, 0]
    rows = torch.arange(scored.shape[0], device=final.device)[:, None].expand_as(scored)[scored]
    return torch.zeros(scored.shape[0], dtype=picked.dtype, device=picked.device).index_add_(0, rows, picked).cpu()


def steering_edit(steerer: Any, scale: torch.Tensor | None = None, forced: torch.Tensor | None = None,
                  preserve_norm: bool = True) -> Any:
    """The intervention's edit as a plain function ``[n, d] -> [n, d]`` (same math, no hooks)."""

    def edit(a: torch.Tensor) -> torch.Tensor:
        return steerer(a, scale=scale, forced=forced, preserve_norm=preserve_norm)[0]

    return edit


def score_cached(model: Any, site: Site, cached: Sequence[CachedQuestion], edit: Any = None,
                 positions: str = "prompt", progress: bool = False, desc: str = "score") -> list[torch.Tensor]:
    """:func:`upper_logprobs` for every cached question."""
    with torch.inference_mode():
        return [upper_logprobs(model, site, c, edit, positions)
                for c in tqdm(cached, desc=desc, disable=not progress, leave=False)]
