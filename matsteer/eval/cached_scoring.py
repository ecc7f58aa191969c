"""Scoring from cached site activations: each method edits them and only the layers above the site run.

:func:`score_cached` scores cached questions (:func:`matsteer.eval.site_cache.cache_questions`) under one edit,
:func:`text_logits` cached neutral texts; the position policies (:data:`CACHED_POSITIONS`) say which tokens are
edited, and protected positions (:mod:`matsteer.eval.scoring`) are left alone unless ``steer_special``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from matsteer.activations.extraction import _cache_kwarg
from matsteer.activations.models import model_device
from matsteer.activations.sites import Site, decoder_layers
from matsteer.core.steerer import Steerer
from matsteer.errors import ConfigError
from matsteer.eval.scoring import tempered_log_softmax
from matsteer.eval.site_cache import (
    CachedQuestion,
    CachedTexts,
    answer_chunks,
    stack_padded,
    sub_cache,
    token_batches,
)

#: An edit of site activations ``[n, d] -> [n, d]`` (see :func:`steering_edit`).
Edit = Callable[[torch.Tensor], torch.Tensor]


@contextmanager
def _layers_above(model: nn.Module, layer: int) -> Iterator[None]:
    """Temporarily give the base model only the decoder blocks above ``layer``, renumbered from 0 so that a KV
    cache sees them as a whole model (all restored on exit)."""
    layers, path = decoder_layers(model)
    parent = model.get_submodule(path.rsplit(".", 1)[0]) if "." in path else model
    name = path.rsplit(".", 1)[-1]
    upper = list(layers)[layer + 1:]
    numbered: list[tuple[Any, int]] = [(m, idx) for block in upper for m in block.modules()
                if isinstance(idx := getattr(m, "layer_idx", None), int)]
    setattr(parent, name, nn.ModuleList(upper))
    for m, idx in numbered:
        m.layer_idx = idx - (layer + 1)
    try:
        yield
    finally:
        for m, idx in numbered:
            m.layer_idx = idx
        setattr(parent, name, layers)


def _edited(hidden: torch.Tensor, where: torch.Tensor | None, edit: Edit | None) -> torch.Tensor:
    """``hidden [..., d]`` with ``edit`` applied at ``where [...]`` (all positions when None)."""
    if edit is None:
        return hidden
    if where is None:
        return edit(hidden.reshape(-1, hidden.shape[-1])).reshape(hidden.shape)
    hidden = hidden.clone()
    hidden[where] = edit(hidden[where])
    return hidden


#: Which tokens the cached scorer edits: the prompt (the paper), every token, the answer tokens only
#: ("generated", as the intervention's policy of that name edits only calls with a filled KV cache), the last prompt
#: token, or a seeded random half of the prompt tokens (the last two are the paper's Table 4 controls).
CACHED_POSITIONS = ("prompt", "all", "generated", "last", "random")

#: The policies that edit answer tokens (those fed after the prompt).
EDITS_ANSWERS = ("all", "generated")


def _check_positions(positions: str) -> None:
    if positions not in CACHED_POSITIONS:
        raise ConfigError(f"Cached scoring steers one of {CACHED_POSITIONS} positions, got {positions!r}.")


def _policy_mask(rows: Sequence[torch.Tensor], allowed: torch.Tensor, positions: str) -> torch.Tensor:
    """Which tokens ``[B, L]`` a position policy edits among the ``allowed [B, L]`` ones (real, unprotected);
    ``rows[i]`` holds row i's real token ids. ``"last"``: the last allowed token of each row (what the pyvene
    intervention edits once protected positions are out of its mask). ``"random"``: each row's half drawn from a
    generator seeded by the row's token ids, so the choice does not depend on how rows are batched.
    ``"generated"``: none (prompts are never edited under it)."""
    if positions in ("prompt", "all"):
        return allowed
    if positions == "generated":
        return torch.zeros_like(allowed)
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
        allowed = allowed & ~stack_padded(protected, pmask.shape[1])[0].to(allowed.device)
    return _policy_mask([c.prompt_ids for c in batch], allowed, positions)


@dataclass
class _AnswerRows:
    """The answers of a batch of cached questions, one row each: ``flat[i]`` (its question, its row there),
    ``lengths[i]`` (its real tokens), ``owner [R]`` (its question's index in the batch), and the prompts' mask
    ``pmask [B, P]`` and lengths ``prompt_lengths [B]`` (on the model's device)."""

    flat: list[tuple[CachedQuestion, int]]
    lengths: list[int]
    owner: torch.Tensor
    pmask: torch.Tensor
    prompt_lengths: torch.Tensor


def upper_logprobs(model: nn.Module, site: Site, batch: Sequence[CachedQuestion], edit: Edit | None = None,
                   positions: str = "prompt", batch_tokens: int = 2048,
                   steer_special: bool = False, temperature: float = 1.0) -> list[torch.Tensor]:
    """Summed answer-token log-probs ``[K_q]`` of each question in ``batch``, after editing the cached activations
    and running only the layers above the site: the batch's prompts once (right-padded, filling a KV cache), then
    the answers, grouped by length, against their own prompt's cache rows.

    edit: None (unsteered) or a function ``[n, d] -> [n, d]`` applied to the tokens named by ``positions`` (see
    :data:`CACHED_POSITIONS`; ``"all"`` also edits the answer tokens, ``"generated"`` only them), never the
    protected positions unless
    ``steer_special``. The vocabulary projection runs only where an answer token is predicted: with a 49k
    vocabulary it would otherwise cost more than the decoder layers. ``temperature`` divides the next-token
    logits before their log-softmax (:func:`~matsteer.eval.scoring.tempered_log_softmax`).
    """
    _check_positions(positions)
    device = model_device(model)
    lengths = torch.tensor([c.prompt.shape[0] for c in batch])
    prompts, pmask = stack_padded([c.prompt for c in batch], int(lengths.max()))
    prompts, pmask = prompts.to(device), pmask.to(device)
    prompts = _edited(prompts, _prompt_edit_mask(batch, lengths, pmask, positions, steer_special).to(device), edit)
    counts = [c.answer_ids.shape[0] for c in batch]
    owner = torch.repeat_interleave(torch.arange(len(batch)), torch.tensor(counts))  # answer row -> its question
    flat = [(c, r) for c in batch for r in range(c.answer_ids.shape[0])]
    alen = [int(c.answer_mask[r].sum()) for c, r in flat]
    rows = _AnswerRows(flat, alen, owner, pmask, lengths.to(device))
    with _layers_above(model, site.layer):
        cache, totals = _prompt_pass(model, prompts, rows, temperature)
        # Answer token j predicts token j + 1: only the first len - 1 tokens of each answer need to run.
        longer = torch.tensor([i for i, n in enumerate(alen) if n > 1], dtype=torch.long)
        for chunk in answer_chunks([alen[i] - 1 for i in longer.tolist()], batch_tokens):
            picked, row_of = _answer_pass(model, rows, longer[chunk].tolist(), cache,
                                          edit if positions in EDITS_ANSWERS else None, steer_special, temperature)
            totals = totals.index_add(0, row_of, picked.to(totals.dtype))
    return list(totals.cpu().split(counts))


def _prompt_pass(model: nn.Module, prompts: torch.Tensor, rows: _AnswerRows,
                 temperature: float = 1.0) -> tuple[Any, torch.Tensor]:
    """Run the (edited) prompts ``[B, P, d]`` through the layers above the site: their KV cache, and per answer
    row the log-prob ``[R]`` of its first token (predicted by its prompt's last position)."""
    from transformers import DynamicCache

    device = prompts.device
    lm: Any = model  # a Hugging Face causal LM: base_model, get_output_embeddings
    base = lm.base_model
    cache = DynamicCache()
    final = base(inputs_embeds=prompts, attention_mask=rows.pmask,
                 position_ids=torch.arange(prompts.shape[1], device=device).expand(rows.pmask.shape), use_cache=True,
                 **{_cache_kwarg(base): cache}).last_hidden_state
    last = final[torch.arange(prompts.shape[0], device=device), rows.prompt_lengths - 1]  # [B, d]
    first = tempered_log_softmax(lm.get_output_embeddings()(last), temperature)  # every first token
    firsts = torch.tensor([int(c.answer_ids[r, 0]) for c, r in rows.flat], device=device)
    return cache, first[rows.owner.to(device), firsts]


def _answer_pass(model: nn.Module, rows: _AnswerRows, chunk: list[int], cache: Any, edit: Edit | None,
                 steer_special: bool, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The answer rows ``chunk`` (all but their last token, edited by ``edit``) against their own prompt's cache
    rows: the log-prob ``[m]`` of each later answer token and the answer row ``[m]`` it belongs to."""
    device = rows.pmask.device
    flat, alen = rows.flat, rows.lengths
    answers, run_mask = stack_padded([flat[i][0].answers[flat[i][1], : alen[i] - 1] for i in chunk],
                                     max(alen[i] for i in chunk) - 1)
    ids, _ = stack_padded([flat[i][0].answer_ids[flat[i][1], : alen[i]] for i in chunk], answers.shape[1] + 1)
    answers, run_mask, ids = answers.to(device), run_mask.to(device), ids.to(device)
    editable = run_mask.bool()
    if not steer_special:
        protected = [_row_protected(flat[i][0], flat[i][1], alen[i] - 1) for i in chunk]
        editable = editable & ~stack_padded(protected, answers.shape[1])[0].to(device)
    answers = _edited(answers, editable, edit)
    q = rows.owner[chunk].to(device)
    lm: Any = model  # a Hugging Face causal LM: base_model, get_output_embeddings
    base = lm.base_model
    hidden = base(inputs_embeds=answers, attention_mask=torch.cat([rows.pmask[q], run_mask], 1),
                  position_ids=rows.prompt_lengths[q][:, None] + torch.arange(answers.shape[1], device=device),
                  use_cache=True, **{_cache_kwarg(base): sub_cache(cache, q)}).last_hidden_state
    scored = run_mask.bool()  # position j (a real token) predicts answer token j + 1
    logp = tempered_log_softmax(lm.get_output_embeddings()(hidden[scored]), temperature)  # [m, V]
    picked = logp.gather(-1, ids[:, 1:][scored][:, None])[:, 0]
    row_of = torch.tensor(chunk, device=device)[:, None].expand_as(scored)[scored]
    return picked, row_of


def _row_protected(cq: CachedQuestion, row: int, n: int) -> torch.Tensor:
    """The protected marks ``[n]`` of the first ``n`` tokens of answer ``row`` (none when not recorded)."""
    if cq.answer_protected is not None:
        return cq.answer_protected[row, :n]
    return torch.zeros(n, dtype=torch.bool)


def text_edit_mask(cached: CachedTexts, positions: str = "all", steer_special: bool = False) -> torch.Tensor:
    """Which tokens ``[N, W]`` of cached texts a position policy edits. A text is one prompt pass, so
    ``"prompt"`` and ``"all"`` edit every real token, ``"last"`` the last one and ``"random"`` a seeded half;
    ``"generated"`` edits every real token too (neutral text stands for what the model would generate under it,
    and every generated token is steered); protected positions (first token, special tokens) only with
    ``steer_special``."""
    _check_positions(positions)
    if positions == "generated":
        positions = "all"
    allowed = cached.mask.bool()
    if not steer_special and cached.protected is not None:
        allowed = allowed & ~cached.protected.bool()
    rows = [cached.input_ids[i, : int(n)] for i, n in enumerate(cached.mask.sum(1))]
    return _policy_mask(rows, allowed, positions)


def text_logits(model: nn.Module, site: Site, cached: CachedTexts, edit: Edit | None = None, positions: str = "all",
                steer_special: bool = False) -> torch.Tensor:
    """Logits ``[N, W, V]`` of cached texts after editing the tokens :func:`text_edit_mask` names and running the
    layers above."""
    device = model_device(model)
    where = text_edit_mask(cached, positions, steer_special) if edit is not None else cached.mask.bool()
    hidden = _edited(cached.hidden.to(device), where.to(device), edit)
    k, width = cached.input_ids.shape
    lm: Any = model  # a Hugging Face causal LM: base_model, get_output_embeddings
    with _layers_above(model, site.layer):
        final = lm.base_model(inputs_embeds=hidden, attention_mask=cached.mask.to(device),
                                 position_ids=torch.arange(width, device=device).expand(k, width),
                                 use_cache=False).last_hidden_state
    return lm.get_output_embeddings()(final)


def steering_edit(steerer: Steerer, scale: torch.Tensor | None = None, forced: torch.Tensor | None = None,
                  preserve_norm: bool = True) -> Edit:
    """The intervention's edit as a plain function ``[n, d] -> [n, d]`` (same math, no hooks)."""

    def edit(a: torch.Tensor) -> torch.Tensor:
        return steerer(a, scale=scale, forced=forced, preserve_norm=preserve_norm)[0]

    return edit


def score_cached(model: nn.Module, site: Site, cached: Sequence[CachedQuestion], edit: Edit | None = None,
                 positions: str = "prompt", progress: bool = False, desc: str = "score",
                 batch_tokens: int = 2048, steer_special: bool = False,
                 temperature: float = 1.0) -> list[torch.Tensor]:
    """:func:`upper_logprobs` for every cached question, in batches of similar prompt length of about
    ``batch_tokens`` padded tokens (small CPU matmuls waste most of the cores' throughput)."""
    batches = token_batches([c.prompt.shape[0] for c in cached], batch_tokens)
    out: list[torch.Tensor | None] = [None] * len(cached)
    with torch.inference_mode():
        for b in tqdm(batches, desc=desc, disable=not progress, leave=False):
            for i, scores in zip(b, upper_logprobs(model, site, [cached[i] for i in b], edit, positions,
                                                   batch_tokens, steer_special, temperature)):
                out[i] = scores
    return out  # type: ignore[return-value]
