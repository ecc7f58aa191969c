"""Scoring multiple-choice questions by summed answer-token log-probabilities, steered or not.

Each question's prompt is run once; its KV cache is repeated for the choices, whose tokens are then scored in
one batch. Steering (a :class:`~matsteer.intervention.SteeringHandle`) acts on the calls made through it; with
``positions="prompt"`` only the query tokens are edited, as the paper does ("f is applied to the activations of
tokens in the query"), and with ``positions="all"`` the answer tokens too. ``steering=None`` is the plain model,
with no hooks at all.

**Protected positions.** The first token of a text (an attention sink whose activation has several times the
typical norm) and special tokens (BOS, EOS, chat markers) are never steered by default: training never sees
them (features come from answer tokens), and an edit there changes every later token's attention.
``steer_special=True`` steers them too (an ablation).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .errors import ConfigError
from .extract import _cache_kwarg, site_activations
from .sites import Site, decoder_layers


def special_token_ids(tokenizer: Any) -> list[int]:
    """The ids of the tokenizer's special tokens (BOS, EOS, pad, chat markers...), sorted."""
    return sorted({int(i) for i in (getattr(tokenizer, "all_special_ids", None) or [])})


def protected_positions(ids: torch.Tensor, valid: torch.Tensor | None, special: Sequence[int] | torch.Tensor,
                        first: bool = True) -> torch.Tensor:
    """Positions ``[B, L]`` (bool) that steering leaves alone by default: special tokens and, with ``first``, the
    first real token of each row (position 0 under right padding; the first unpadded one under left padding).

    ids: ``[B, L]`` token ids; valid: ``[B, L]`` real-token mask (None: every position is real).
    """
    valid = torch.ones_like(ids, dtype=torch.bool) if valid is None else valid.bool()
    special_t = torch.as_tensor(list(special) if not isinstance(special, torch.Tensor) else special,
                                dtype=ids.dtype, device=ids.device)
    out = torch.isin(ids, special_t) if special_t.numel() else torch.zeros_like(valid)
    if first:
        out = out | (valid & (valid.long().cumsum(1) == 1))
    return out & valid


@functools.cache
def _protecting_context() -> type:
    """The intervention's call context with protected positions removed from its real-token mask, so that a
    pyvene-steered call edits what the cached scorer edits (see :func:`protected_positions`). Built on first use:
    importing pyvene takes seconds and plain scoring does not need it."""
    from .intervention import CallContext

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
def protect_special(steering: Any, tokenizer: Any, steer_special: bool = False) -> Iterator[None]:
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


def split_prompt(text: str, answer_start: int) -> tuple[str, str]:
    """Context and continuation as lm-eval does: ``"Q: x A:"`` + ``" y"`` (the space starts the continuation)."""
    context = text[:answer_start].rstrip()
    return context, text[len(context):]


def _call(model: Any, steering: Any, **inputs: Any) -> Any:
    return model(**inputs) if steering is None else steering(**inputs)


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
    first = torch.log_softmax(out.logits[0, -1], -1, dtype=torch.float32)  # predicts each continuation's first token
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
    logp = torch.log_softmax(out.logits, -1, dtype=torch.float32)  # [K, width, V]: position j predicts token j + 1
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
    steer_special: bool = False,
) -> list[torch.Tensor]:
    """Per question, the summed log-prob of each choice ``[K_q]`` (``MCQuestion`` objects; ``choices`` names the
    attribute holding the answers, e.g. ``"mc1_choices"`` for TruthfulQA MC1). A steering handle leaves the
    first token and special tokens unedited unless ``steer_special`` (module docstring)."""
    scores = []
    with torch.inference_mode(), protect_special(steering, tokenizer, steer_special):
        for q in tqdm(questions, desc=desc, disable=not progress, leave=False):
            context, conts = _prompt_and_continuations(q, list(getattr(q, choices)))
            scores.append(continuation_logprobs(model, tokenizer, context, conts, steering).cpu())
    return scores


def answer_lengths(tokenizer: Any, questions: Sequence[Any], choices: str = "choices") -> list[torch.Tensor]:
    """Per question, the number of tokens ``[K_q]`` of each choice's continuation, tokenized as the scorers do
    (for per-token mean log-probs)."""
    out = []
    for q in questions:
        _, conts = _prompt_and_continuations(q, list(getattr(q, choices)))
        out.append(torch.tensor([len(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in conts]))
    return out


def _prompt_and_continuations(q: Any, answers: Sequence[str]) -> tuple[str, list[str]]:
    """The question's shared context and each answer's continuation (see :func:`split_prompt`)."""
    from .data import fill_template

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


# ---------------------------------------------------------------------------------------------------------------
# Scoring many methods from one pass below the site
#
# Activations below the steered site do not depend on the steering method, so each question's choices are run
# once up to the site (early exit) and cached; every method then edits the cached activations with the same
# steering function the pyvene intervention uses and runs only the layers above the site. Above the site the
# choices of one question share their prompt: the prompt runs once (filling a KV cache for the upper layers) and
# only the answer tokens run per choice, and single-token answers (ToxiGen's Yes/No) need no second pass at all.
# This needs a residual site of a Llama-style model whose ``inputs_embeds`` enter the decoder layers unchanged
# (Llama, Mistral, Qwen2); other sites and architectures use :func:`score_mc` through pyvene.

UPPER_PASS_MODELS = ("llama", "mistral", "qwen2", "qwen3")


@dataclass
class CachedQuestion:
    """One question at the site: the shared prompt ``prompt [P, d]`` (token ids ``prompt_ids [P]``) and the
    answers ``answers [K, W, d]``, right-padded, with ids and mask ``answer_ids``/``answer_mask`` ``[K, W]``.
    ``prompt_protected [P]`` / ``answer_protected [K, W]`` mark the positions left unsteered by default (the
    first prompt token and special tokens; None: none)."""

    prompt: torch.Tensor
    prompt_ids: torch.Tensor
    answers: torch.Tensor
    answer_ids: torch.Tensor
    answer_mask: torch.Tensor
    prompt_protected: torch.Tensor | None = None
    answer_protected: torch.Tensor | None = None


@dataclass
class CachedTexts:
    """Independent texts at the site (no shared prompt): hidden ``[N, W, d]``, ids and mask ``[N, W]``, and the
    positions left unsteered by default ``protected [N, W]`` (None: none)."""

    hidden: torch.Tensor
    input_ids: torch.Tensor
    mask: torch.Tensor
    protected: torch.Tensor | None = None


def supports_upper_pass(model: Any, site: Site) -> bool:
    return site.component == "residual" and getattr(model.config, "model_type", "") in UPPER_PASS_MODELS


def _padded(rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and mask ``[N, W]`` (pads are id 0 under mask 0)."""
    width = max(len(r) for r in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, : len(row)] = torch.tensor(row)
        mask[r, : len(row)] = 1
    return ids, mask


def _stack(rows: Sequence[torch.Tensor], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad ``[n_i, ...]`` tensors to ``[len(rows), width, ...]`` plus a mask ``[len(rows), width]``."""
    out = rows[0].new_zeros((len(rows), width, *rows[0].shape[1:]))
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : r.shape[0]] = r[:width]
        mask[i, : min(r.shape[0], width)] = 1
    return out, mask


def _site_rows(model: Any, site: Site, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    device = next(model.parameters()).device
    positions = torch.arange(ids.shape[1], device=device).expand(ids.shape)
    return site_activations(model, site, ids.to(device), mask.to(device), positions)


def _token_batches(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Indices grouped by length (sorted) so that ``len(batch) * longest`` stays within ``budget`` tokens."""
    batches: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if batches and (len(batches[-1]) + 1) * lengths[i] <= budget:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def _sub_cache(cache: Any, index: torch.Tensor) -> Any:
    """A new KV cache holding the rows ``index`` of ``cache`` (rows may repeat)."""
    from transformers import DynamicCache

    return DynamicCache(ddp_cache_data=[(layer.keys.index_select(0, index), layer.values.index_select(0, index))
                                        for layer in cache.layers])


def _answer_chunks(lengths: Sequence[int], budget: int) -> list[torch.Tensor]:
    """Answer rows grouped by length (padding stays small; answers of one question may land in different chunks)."""
    return [torch.tensor(c) for c in _token_batches(lengths, budget)]


def _cache_batch(model: Any, site: Site, prompts: Sequence[list[int]], answers: Sequence[list[list[int]]],
                 budget: int, special: Sequence[int] = ()) -> list[CachedQuestion]:
    """The lower pass for a batch of questions, prompts shared as above: the prompts once (filling the KV cache of
    the blocks up to the site), then the answers, grouped by length, against their own prompt's cache rows."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    lengths = torch.tensor([len(p) for p in prompts])
    pids, pmask = (t.to(device) for t in _padded(prompts))
    cache = DynamicCache()
    phidden = site_activations(model, site, pids, pmask, torch.arange(pids.shape[1], device=device).expand(pids.shape),
                               cache=cache)
    flat = [x for a in answers for x in a]
    owner = torch.repeat_interleave(torch.arange(len(prompts)), torch.tensor([len(a) for a in answers]))
    hidden: list[torch.Tensor | None] = [None] * len(flat)
    for chunk in _answer_chunks([len(x) for x in flat], budget):
        aids, amask = (t.to(device) for t in _padded([flat[i] for i in chunk]))
        q = owner[chunk].to(device)
        out = site_activations(model, site, aids, torch.cat([pmask[q], amask], 1),
                               lengths.to(device)[q][:, None] + torch.arange(aids.shape[1], device=device),
                               cache=_sub_cache(cache, q))
        for j, i in enumerate(chunk.tolist()):
            hidden[i] = out[j, : len(flat[i])]
    result, start = [], 0
    for i, p in enumerate(prompts):
        k = len(answers[i])
        ahidden, amask = _stack(hidden[start:start + k], max(len(x) for x in answers[i]))  # type: ignore[arg-type]
        aids, _ = _padded(answers[i])
        ids = torch.tensor(p)
        result.append(CachedQuestion(phidden[i, : len(p)].clone(), ids, ahidden, aids, amask,
                                     protected_positions(ids[None], None, special)[0],
                                     protected_positions(aids, amask, special, first=False)))
        start += k
    return result


def cache_questions(
    model: Any, tokenizer: Any, questions: Sequence[Any], site: Site, *, choices: str = "choices",
    progress: bool = True, batch_tokens: int = 2048,
) -> list[CachedQuestion]:
    """Run each question's prompt and answers up to ``site`` once and keep the activations (questions batched by
    prompt length, about ``batch_tokens`` padded prompt tokens per batch)."""
    if not supports_upper_pass(model, site):
        raise ConfigError(f"Cached scoring needs a residual site on a {'/'.join(UPPER_PASS_MODELS)} model; "
                          "use score_mc with a steering handle instead.")
    prompts, answers = [], []
    for q in questions:
        context, conts = _prompt_and_continuations(q, list(getattr(q, choices)))
        prompts.append(tokenizer(context, add_special_tokens=True)["input_ids"])
        answers.append([tokenizer(c, add_special_tokens=False)["input_ids"] for c in conts])
        if any(len(a) == 0 for a in answers[-1]):
            raise ConfigError(f"A choice of {context[:60]!r} is empty after tokenization.")
    out: list[CachedQuestion | None] = [None] * len(questions)
    special = special_token_ids(tokenizer)
    with torch.inference_mode():
        for batch in tqdm(_token_batches([len(p) for p in prompts], batch_tokens), desc="cache",
                          disable=not progress, leave=False):
            for i, cq in zip(batch, _cache_batch(model, site, [prompts[i] for i in batch], [answers[i] for i in batch],
                                                 batch_tokens, special)):
                out[i] = cq
    return out  # type: ignore[return-value]


def cache_texts(model: Any, tokenizer: Any, texts: Sequence[str], site: Site) -> CachedTexts:
    """Neutral texts as one cached batch (every token but the first is scored; which are steered is the
    position policy's choice, see :func:`text_logits`)."""
    ids, mask = _padded([tokenizer(t, add_special_tokens=True)["input_ids"] for t in texts])
    with torch.inference_mode():
        return CachedTexts(_site_rows(model, site, ids, mask), ids, mask,
                           protected_positions(ids, mask, special_token_ids(tokenizer)))


@contextmanager
def _layers_above(model: Any, layer: int) -> Iterator[None]:
    """Temporarily give the base model only the decoder blocks above ``layer``, renumbered from 0 so that a KV
    cache sees them as a whole model (all restored on exit)."""
    layers, path = decoder_layers(model)
    parent = model.get_submodule(path.rsplit(".", 1)[0]) if "." in path else model
    name = path.rsplit(".", 1)[-1]
    upper = list(layers)[layer + 1:]
    numbered = [(m, m.layer_idx) for block in upper for m in block.modules() if isinstance(getattr(m, "layer_idx", None), int)]
    setattr(parent, name, nn.ModuleList(upper))
    for m, idx in numbered:
        m.layer_idx = idx - (layer + 1)
    try:
        yield
    finally:
        for m, idx in numbered:
            m.layer_idx = idx
        setattr(parent, name, layers)


def _edited(hidden: torch.Tensor, where: torch.Tensor | None, edit: Any) -> torch.Tensor:
    """``hidden [..., d]`` with ``edit`` applied at ``where [...]`` (all positions when None)."""
    if edit is None:
        return hidden
    if where is None:
        return edit(hidden.reshape(-1, hidden.shape[-1])).reshape(hidden.shape)
    hidden = hidden.clone()
    hidden[where] = edit(hidden[where])
    return hidden


#: Which tokens the cached scorer edits: the prompt (the paper), every token, the last prompt token, or a seeded
#: random half of the prompt tokens (the last two are the paper's Table 4 controls).
CACHED_POSITIONS = ("prompt", "all", "last", "random")


def _check_positions(positions: str) -> None:
    if positions not in CACHED_POSITIONS:
        raise ConfigError(f"Cached scoring steers one of {CACHED_POSITIONS} positions, got {positions!r}.")


def _policy_mask(rows: Sequence[torch.Tensor], allowed: torch.Tensor, positions: str) -> torch.Tensor:
    """Which tokens ``[B, L]`` a position policy edits among the ``allowed [B, L]`` ones (real, unprotected);
    ``rows[i]`` holds row i's real token ids. ``"last"``: the last allowed token of each row (what the pyvene
    intervention edits once protected positions are out of its mask). ``"random"``: each row's half drawn from a
    generator seeded by the row's token ids, so the choice does not depend on how rows are batched."""
    if positions in ("prompt", "all"):
        return allowed
    where = torch.zeros_like(allowed)
    for i, ids in enumerate(rows):
        n = int(ids.shape[0])
        if positions == "last":
            idx = allowed[i, :n].nonzero()
            if idx.numel():
                where[i, int(idx[-1])] = True
        else:
            g = torch.Generator().manual_seed(int(ids.sum()) * 7919 + n)
            where[i, :n] = (torch.rand(n, generator=g) < 0.5).to(where.device) & allowed[i, :n]
    return where


def _prompt_edit_mask(batch: Sequence[CachedQuestion], lengths: torch.Tensor, pmask: torch.Tensor,
                      positions: str, steer_special: bool = False) -> torch.Tensor:
    """Which prompt tokens ``[B, P]`` to edit (see :func:`_policy_mask`; protected positions only with
    ``steer_special``)."""
    allowed = pmask.bool()
    if not steer_special:
        protected = [c.prompt_protected if c.prompt_protected is not None
                     else torch.zeros(c.prompt.shape[0], dtype=torch.bool) for c in batch]
        allowed = allowed & ~_stack(protected, pmask.shape[1])[0].to(allowed.device)
    return _policy_mask([c.prompt_ids for c in batch], allowed, positions)


def upper_logprobs(model: Any, site: Site, batch: Sequence[CachedQuestion], edit: Any = None,
                   positions: str = "prompt", batch_tokens: int = 2048,
                   steer_special: bool = False) -> list[torch.Tensor]:
    """Summed answer-token log-probs ``[K_q]`` of each question in ``batch``, after editing the cached activations
    and running only the layers above the site: the batch's prompts once (right-padded, filling a KV cache), then
    the answers, grouped by length, against their own prompt's cache rows.

    edit: None (unsteered) or a function ``[n, d] -> [n, d]`` applied to the tokens named by ``positions`` (see
    :data:`CACHED_POSITIONS`; ``"all"`` also edits the answer tokens), never the protected positions unless
    ``steer_special``. The vocabulary projection runs only where an answer token is predicted: with a 49k
    vocabulary it would otherwise cost more than the decoder layers.
    """
    from transformers import DynamicCache

    _check_positions(positions)
    device = next(model.parameters()).device
    head, base = model.get_output_embeddings(), model.base_model
    lengths = torch.tensor([c.prompt.shape[0] for c in batch])
    prompts, pmask = _stack([c.prompt for c in batch], int(lengths.max()))
    prompts, pmask = prompts.to(device), pmask.to(device)
    prompts = _edited(prompts, _prompt_edit_mask(batch, lengths, pmask, positions, steer_special).to(device), edit)
    counts = [c.answer_ids.shape[0] for c in batch]
    owner = torch.repeat_interleave(torch.arange(len(batch)), torch.tensor(counts))  # answer row -> its question
    flat = [(c, r) for c in batch for r in range(c.answer_ids.shape[0])]
    alen = [int(c.answer_mask[r].sum()) for c, r in flat]
    with _layers_above(model, site.layer):
        cache = DynamicCache()
        final = base(inputs_embeds=prompts, attention_mask=pmask,
                     position_ids=torch.arange(prompts.shape[1], device=device).expand(pmask.shape), use_cache=True,
                     **{_cache_kwarg(base): cache}).last_hidden_state
        last = final[torch.arange(len(batch), device=device), lengths.to(device) - 1]  # [B, d]
        first = torch.log_softmax(head(last), -1, dtype=torch.float32)  # predicts every answer's first token
        totals = first[owner.to(device), torch.tensor([int(c.answer_ids[r, 0]) for c, r in flat], device=device)]
        # Answer token j predicts token j + 1: only the first len - 1 tokens of each answer need to run.
        longer = torch.tensor([i for i, n in enumerate(alen) if n > 1], dtype=torch.long)
        for chunk in _answer_chunks([alen[i] - 1 for i in longer.tolist()], batch_tokens):
            rows = longer[chunk].tolist()
            answers, run_mask = _stack([flat[i][0].answers[flat[i][1], : alen[i] - 1] for i in rows],
                                       max(alen[i] for i in rows) - 1)
            ids, _ = _stack([flat[i][0].answer_ids[flat[i][1], : alen[i]] for i in rows], answers.shape[1] + 1)
            answers, run_mask, ids = answers.to(device), run_mask.to(device), ids.to(device)
            editable = run_mask.bool()
            if not steer_special:
                protected = [flat[i][0].answer_protected[flat[i][1], : alen[i] - 1]
                             if flat[i][0].answer_protected is not None else torch.zeros(alen[i] - 1, dtype=torch.bool)
                             for i in rows]
                editable = editable & ~_stack(protected, answers.shape[1])[0].to(device)
            answers = _edited(answers, editable, edit if positions == "all" else None)
            q = owner[rows].to(device)
            hidden = base(inputs_embeds=answers, attention_mask=torch.cat([pmask[q], run_mask], 1),
                          position_ids=lengths.to(device)[q][:, None] + torch.arange(answers.shape[1], device=device),
                          use_cache=True, **{_cache_kwarg(base): _sub_cache(cache, q)}).last_hidden_state
            scored = run_mask.bool()  # position j (a real token) predicts answer token j + 1
            logp = torch.log_softmax(head(hidden[scored]), -1, dtype=torch.float32)  # [m, V]
            picked = logp.gather(-1, ids[:, 1:][scored][:, None])[:, 0]
            row_of = torch.tensor(rows, device=device)[:, None].expand_as(scored)[scored]
            totals = totals.index_add(0, row_of, picked.to(totals.dtype))
    return list(totals.cpu().split(counts))


def text_edit_mask(cached: CachedTexts, positions: str = "all", steer_special: bool = False) -> torch.Tensor:
    """Which tokens ``[N, W]`` of cached texts a position policy edits. A text is one prompt pass, so
    ``"prompt"`` and ``"all"`` edit every real token, ``"last"`` the last one and ``"random"`` a seeded half;
    protected positions (first token, special tokens) only with ``steer_special``."""
    _check_positions(positions)
    allowed = cached.mask.bool()
    if not steer_special and cached.protected is not None:
        allowed = allowed & ~cached.protected.bool()
    rows = [cached.input_ids[i, : int(n)] for i, n in enumerate(cached.mask.sum(1))]
    return _policy_mask(rows, allowed, positions)


def text_logits(model: Any, site: Site, cached: CachedTexts, edit: Any = None, positions: str = "all",
                steer_special: bool = False) -> torch.Tensor:
    """Logits ``[N, W, V]`` of cached texts after editing the tokens :func:`text_edit_mask` names and running the
    layers above."""
    device = next(model.parameters()).device
    where = text_edit_mask(cached, positions, steer_special) if edit is not None else cached.mask.bool()
    hidden = _edited(cached.hidden.to(device), where.to(device), edit)
    k, width = cached.input_ids.shape
    with _layers_above(model, site.layer):
        final = model.base_model(inputs_embeds=hidden, attention_mask=cached.mask.to(device),
                                 position_ids=torch.arange(width, device=device).expand(k, width),
                                 use_cache=False).last_hidden_state
    return model.get_output_embeddings()(final)


def steering_edit(steerer: Any, scale: torch.Tensor | None = None, forced: torch.Tensor | None = None,
                  preserve_norm: bool = True) -> Any:
    """The intervention's edit as a plain function ``[n, d] -> [n, d]`` (same math, no hooks)."""

    def edit(a: torch.Tensor) -> torch.Tensor:
        return steerer(a, scale=scale, forced=forced, preserve_norm=preserve_norm)[0]

    return edit


def score_cached(model: Any, site: Site, cached: Sequence[CachedQuestion], edit: Any = None,
                 positions: str = "prompt", progress: bool = False, desc: str = "score",
                 batch_tokens: int = 2048, steer_special: bool = False) -> list[torch.Tensor]:
    """:func:`upper_logprobs` for every cached question, in batches of similar prompt length of about
    ``batch_tokens`` padded tokens (small CPU matmuls waste most of the cores' throughput)."""
    batches = _token_batches([c.prompt.shape[0] for c in cached], batch_tokens)
    out: list[torch.Tensor | None] = [None] * len(cached)
    with torch.inference_mode():
        for b in tqdm(batches, desc=desc, disable=not progress, leave=False):
            for i, scores in zip(b, upper_logprobs(model, site, [cached[i] for i in b], edit, positions,
                                                   batch_tokens, steer_special)):
                out[i] = scores
    return out  # type: ignore[return-value]
