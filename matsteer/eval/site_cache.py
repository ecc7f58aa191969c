"""Questions and texts run once up to the steered site, their activations kept for every method to edit.

Activations below the steered site do not depend on the steering method, so each question's choices are run
once up to the site (early exit) and cached; every method then edits the cached activations with the same
steering function the pyvene intervention uses and runs only the layers above the site. Above the site the
choices of one question share their prompt: the prompt runs once (filling a KV cache for the upper layers) and
only the answer tokens run per choice, and single-token answers (ToxiGen's Yes/No) need no second pass at all.
This needs a residual site of a Llama-style model whose ``inputs_embeds`` enter the decoder layers unchanged
(Llama, Mistral, Qwen2); other sites and architectures use :func:`matsteer.eval.scoring.score_mc` through pyvene.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from matsteer.activations.extraction import site_activations
from matsteer.activations.models import Tokenizer, model_device
from matsteer.activations.sites import Site
from matsteer.data import MCQuestion
from matsteer.errors import ConfigError
from matsteer.eval.scoring import prompt_and_continuations, protected_positions, special_token_ids

#: Model types whose decoder layers take ``inputs_embeds`` unchanged: the layers above a site can run alone.
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


def supports_upper_pass(model: nn.Module, site: Site) -> bool:
    """Whether cached scoring works for ``model`` at ``site`` (a residual site of a :data:`UPPER_PASS_MODELS` model)."""
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


def stack_padded(rows: Sequence[torch.Tensor], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad ``[n_i, ...]`` tensors to ``[len(rows), width, ...]`` plus a mask ``[len(rows), width]``."""
    out = rows[0].new_zeros((len(rows), width, *rows[0].shape[1:]))
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : r.shape[0]] = r[:width]
        mask[i, : min(r.shape[0], width)] = 1
    return out, mask


def _site_rows(model: nn.Module, site: Site, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    device = model_device(model)
    positions = torch.arange(ids.shape[1], device=device).expand(ids.shape)
    return site_activations(model, site, ids.to(device), mask.to(device), positions)


def token_batches(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Indices grouped by length (sorted) so that ``len(batch) * longest`` stays within ``budget`` tokens."""
    batches: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if batches and (len(batches[-1]) + 1) * lengths[i] <= budget:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def sub_cache(cache: Any, index: torch.Tensor) -> Any:
    """A new KV cache holding the rows ``index`` of ``cache`` (rows may repeat)."""
    from transformers import DynamicCache

    return DynamicCache(ddp_cache_data=[(layer.keys.index_select(0, index), layer.values.index_select(0, index))
                                        for layer in cache.layers])


def answer_chunks(lengths: Sequence[int], budget: int) -> list[torch.Tensor]:
    """Answer rows grouped by length (padding stays small; answers of one question may land in different chunks)."""
    return [torch.tensor(c) for c in token_batches(lengths, budget)]


def _cache_batch(model: nn.Module, site: Site, prompts: Sequence[list[int]], answers: Sequence[list[list[int]]],
                 budget: int, special: Sequence[int] = ()) -> list[CachedQuestion]:
    """The lower pass for a batch of questions, prompts shared as above: the prompts once (filling the KV cache of
    the blocks up to the site), then the answers, grouped by length, against their own prompt's cache rows."""
    from transformers import DynamicCache

    device = model_device(model)
    lengths = torch.tensor([len(p) for p in prompts])
    pids, pmask = (t.to(device) for t in _padded(prompts))
    cache = DynamicCache()
    phidden = site_activations(model, site, pids, pmask, torch.arange(pids.shape[1], device=device).expand(pids.shape),
                               cache=cache)
    flat = [x for a in answers for x in a]
    owner = torch.repeat_interleave(torch.arange(len(prompts)), torch.tensor([len(a) for a in answers]))
    hidden: list[torch.Tensor | None] = [None] * len(flat)
    for chunk in answer_chunks([len(x) for x in flat], budget):
        aids, amask = (t.to(device) for t in _padded([flat[i] for i in chunk]))
        q = owner[chunk].to(device)
        out = site_activations(model, site, aids, torch.cat([pmask[q], amask], 1),
                               lengths.to(device)[q][:, None] + torch.arange(aids.shape[1], device=device),
                               cache=sub_cache(cache, q))
        for j, i in enumerate(chunk.tolist()):
            hidden[i] = out[j, : len(flat[i])]
    result, start = [], 0
    for i, p in enumerate(prompts):
        k = len(answers[i])
        ahidden, amask = stack_padded(hidden[start:start + k], max(len(x) for x in answers[i]))  # type: ignore[arg-type]
        aids, _ = _padded(answers[i])
        ids = torch.tensor(p)
        result.append(CachedQuestion(phidden[i, : len(p)].clone(), ids, ahidden, aids, amask,
                                     protected_positions(ids[None], None, special)[0],
                                     protected_positions(aids, amask, special, first=False)))
        start += k
    return result


def cache_questions(
    model: nn.Module, tokenizer: Tokenizer, questions: Sequence[MCQuestion], site: Site, *, choices: str = "choices",
    progress: bool = True, batch_tokens: int = 2048,
) -> list[CachedQuestion]:
    """Run each question's prompt and answers up to ``site`` once and keep the activations (questions batched by
    prompt length, about ``batch_tokens`` padded prompt tokens per batch)."""
    if not supports_upper_pass(model, site):
        raise ConfigError(f"Cached scoring needs a residual site on a {'/'.join(UPPER_PASS_MODELS)} model; "
                          "use score_mc with a steering handle instead.")
    prompts, answers = [], []
    for q in questions:
        context, conts = prompt_and_continuations(q, list(getattr(q, choices)))
        prompts.append(tokenizer(context, add_special_tokens=True)["input_ids"])
        answers.append([tokenizer(c, add_special_tokens=False)["input_ids"] for c in conts])
        if any(len(a) == 0 for a in answers[-1]):
            raise ConfigError(f"A choice of {context[:60]!r} is empty after tokenization.")
    out: list[CachedQuestion | None] = [None] * len(questions)
    special = special_token_ids(tokenizer)
    with torch.inference_mode():
        for batch in tqdm(token_batches([len(p) for p in prompts], batch_tokens), desc="cache",
                          disable=not progress, leave=False):
            for i, cq in zip(batch, _cache_batch(model, site, [prompts[i] for i in batch], [answers[i] for i in batch],
                                                 batch_tokens, special)):
                out[i] = cq
    return out  # type: ignore[return-value]


def cache_texts(model: nn.Module, tokenizer: Tokenizer, texts: Sequence[str], site: Site) -> CachedTexts:
    """Neutral texts as one cached batch (every token but the first is scored; which are steered is the
    position policy's choice, see :func:`matsteer.eval.cached_scoring.text_logits`)."""
    ids, mask = _padded([tokenizer(t, add_special_tokens=True)["input_ids"] for t in texts])
    with torch.inference_mode():
        return CachedTexts(_site_rows(model, site, ids, mask), ids, mask,
                           protected_positions(ids, mask, special_token_ids(tokenizer)))
