"""Scoring from cached site activations: each method edits them and only the layers above the site run.

:func:`score_cached` scores cached questions (:func:`matsteer.eval.site_cache.cache_questions`) under one edit,
:func:`text_logits` cached neutral texts; the position policies (:data:`CACHED_POSITIONS`) say which tokens are
edited, and protected positions (:mod:`matsteer.eval.scoring`) are left alone unless ``steer_special``.

:func:`score_cached_settings` and :func:`text_logits_settings` score one steerer at K settings (multipliers, global
multiplier, forced gates) in one pass: each batch runs as K copies of itself, copy k steered with row k of the
``[K, T]`` scale and forced gates (:meth:`~matsteer.core.steerer.Steerer.setting_rows`). Every copy has the padded
shapes and answer chunks of the one-setting pass and is edited and projected to the vocabulary on its own; only the
layers above the site see the K copies as one batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from matsteer.activations.extraction import cache_kwarg
from matsteer.activations.models import model_device
from matsteer.activations.sites import Site, decoder_layers
from matsteer.core.steerer import Steerer, row_settings_for, token_rows
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

#: An edit of tokens under several settings at once, ``(a [n, d], setting [n] long) -> [n, d]``: token i is edited
#: under setting ``setting[i]`` (see :func:`settings_edit`). A plain :data:`Edit` is its one-setting case.
SettingsEdit = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _one_setting(edit: Edit | None) -> SettingsEdit | None:
    """A plain edit as a :data:`SettingsEdit` (every token is under setting 0)."""
    if edit is None:
        return None
    return lambda a, _setting: edit(a)


def _copies(x: torch.Tensor, copies: int) -> torch.Tensor:
    """``x [B, ...]`` repeated ``copies`` times along the batch axis, copy-major: ``[copies * B, ...]``."""
    return x if copies == 1 else x.repeat(copies, *([1] * (x.dim() - 1)))


def _per_copy(fn: Callable[..., torch.Tensor], copies: int, *xs: torch.Tensor) -> torch.Tensor:
    """``fn`` applied block by block to the ``copies`` equal blocks of each ``x [copies * n, ...]``, concatenated
    (``n`` may be 0). Each copy then runs the very shapes of the one-setting pass (a product of a few rows rounds
    differently once it has K times more), and the vocabulary projection holds one copy's ``[n, V]`` at a time."""
    if copies == 1:
        return fn(*xs)
    return torch.cat([fn(*blocks) for blocks in zip(*(x.chunk(copies) for x in xs))])


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


def _edited(hidden: torch.Tensor, where: torch.Tensor, edit: SettingsEdit | None, setting: torch.Tensor | None = None,
            copies: int = 1) -> torch.Tensor:
    """``hidden [R, L, d]`` with ``edit`` applied at ``where [R, L]``, each row's tokens under its setting
    ``setting [R]`` (long; None: all under setting 0). With ``copies`` > 1 the rows are that many equal copy-major
    blocks (the same ``where`` in each), so the gathered tokens are too, and each block is edited on its own
    (:func:`_per_copy`)."""
    if edit is None:
        return hidden
    rows = token_rows(where)
    hidden = hidden.clone()
    hidden[where] = _per_copy(edit, copies, hidden[where], rows.new_zeros(rows.shape) if setting is None
                              else setting[rows])
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
    ``lengths[i]`` (its real tokens), ``owner [R]`` (its question's index in the batch), ``setting [R]`` (the
    setting it is scored under), and the prompts' mask ``pmask [B, P]`` and lengths ``prompt_lengths [B]`` (on the
    model's device). Under K settings the batch is K copies of the questions: R and B count every copy."""

    flat: list[tuple[CachedQuestion, int]]
    lengths: list[int]
    owner: torch.Tensor
    setting: torch.Tensor
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
    return _upper_logprobs(model, site, batch, _one_setting(edit), 1, positions, batch_tokens, steer_special,
                           temperature)[0]


def _upper_logprobs(model: nn.Module, site: Site, batch: Sequence[CachedQuestion], edit: SettingsEdit | None,
                    copies: int, positions: str, batch_tokens: int, steer_special: bool,
                    temperature: float) -> list[list[torch.Tensor]]:
    """:func:`upper_logprobs` of ``copies`` copies of ``batch`` in one pass, copy k edited under setting k:
    ``out[k][i]`` is question i's ``[K_q]`` summed log-probs. The copies share every padded shape and answer chunk
    of the one-copy pass (the chunks are cut on one copy, then run for all copies together), so each copy computes
    what the one-setting pass computes; only the batch axis is ``copies`` times longer."""
    _check_positions(positions)
    device = model_device(model)
    b = len(batch)
    lengths = torch.tensor([c.prompt.shape[0] for c in batch])
    prompts, pmask = stack_padded([c.prompt for c in batch], int(lengths.max()))
    prompts, pmask = prompts.to(device), pmask.to(device)
    where = _prompt_edit_mask(batch, lengths, pmask, positions, steer_special).to(device)
    prompts, pmask, where = _copies(prompts, copies), _copies(pmask, copies), _copies(where, copies)
    prompts = _edited(prompts, where, edit, torch.arange(copies * b, device=device) // b, copies)
    counts = [c.answer_ids.shape[0] for c in batch]
    owner = torch.repeat_interleave(torch.arange(b), torch.tensor(counts))  # answer row -> its question
    flat = [(c, r) for c in batch for r in range(c.answer_ids.shape[0])]
    alen = [int(c.answer_mask[r].sum()) for c, r in flat]
    n_rows = len(flat)
    rows = _AnswerRows(flat * copies, alen * copies, torch.cat([owner + k * b for k in range(copies)]),
                       torch.arange(copies).repeat_interleave(n_rows).to(device), pmask,
                       _copies(lengths, copies).to(device))
    with _layers_above(model, site.layer):
        cache, totals = _prompt_pass(model, prompts, rows, copies, temperature)
        # Answer token j predicts token j + 1: only the first len - 1 tokens of each answer need to run.
        longer = torch.tensor([i for i, n in enumerate(alen) if n > 1], dtype=torch.long)
        for chunk in answer_chunks([alen[i] - 1 for i in longer.tolist()], batch_tokens):
            picked, row_of = _answer_pass(model, rows, [int(i) + k * n_rows for k in range(copies)
                                                        for i in longer[chunk].tolist()], cache,
                                          edit if positions in EDITS_ANSWERS else None, copies, steer_special,
                                          temperature)
            totals = totals.index_add(0, row_of, picked.to(totals.dtype))
    return [list(block.split(counts)) for block in totals.cpu().split(n_rows)]


def _prompt_pass(model: nn.Module, prompts: torch.Tensor, rows: _AnswerRows, copies: int = 1,
                 temperature: float = 1.0) -> tuple[Any, torch.Tensor]:
    """Run the (edited) prompts ``[B, P, d]`` (``copies`` copies of the batch) through the layers above the site:
    their KV cache, and per answer row the log-prob ``[R]`` of its first token (predicted by its prompt's last
    position)."""
    from transformers import DynamicCache

    device = prompts.device
    lm: Any = model  # a Hugging Face causal LM: base_model, get_output_embeddings
    base = lm.base_model
    cache = DynamicCache()
    final = base(inputs_embeds=prompts, attention_mask=rows.pmask,
                 position_ids=torch.arange(prompts.shape[1], device=device).expand(rows.pmask.shape), use_cache=True,
                 **{cache_kwarg(base): cache}).last_hidden_state
    last = final[torch.arange(prompts.shape[0], device=device), rows.prompt_lengths - 1]  # [B, d]
    first = _per_copy(lambda x: tempered_log_softmax(lm.get_output_embeddings()(x), temperature), copies,
                      last)  # [B, V]: every first token
    firsts = torch.tensor([int(c.answer_ids[r, 0]) for c, r in rows.flat], device=device)
    return cache, first[rows.owner.to(device), firsts]


def _answer_pass(model: nn.Module, rows: _AnswerRows, chunk: list[int], cache: Any, edit: SettingsEdit | None,
                 copies: int, steer_special: bool, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The answer rows ``chunk`` (all but their last token, edited by ``edit`` under each row's setting) against
    their own prompt's cache rows: the log-prob ``[m]`` of each later answer token and the answer row ``[m]`` it
    belongs to. Under K settings, ``chunk`` is K equal copy-major blocks of the same answers."""
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
    answers = _edited(answers, editable, edit, rows.setting[chunk], copies)
    q = rows.owner[chunk].to(device)
    lm: Any = model  # a Hugging Face causal LM: base_model, get_output_embeddings
    base = lm.base_model
    hidden = base(inputs_embeds=answers, attention_mask=torch.cat([rows.pmask[q], run_mask], 1),
                  position_ids=rows.prompt_lengths[q][:, None] + torch.arange(answers.shape[1], device=device),
                  use_cache=True, **{cache_kwarg(base): sub_cache(cache, q)}).last_hidden_state
    scored = run_mask.bool()  # position j (a real token) predicts answer token j + 1

    def pick(h: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp = tempered_log_softmax(lm.get_output_embeddings()(h), temperature)  # [m, V]
        return logp.gather(-1, target[:, None])[:, 0]

    # Copy-major rows, so the m scored tokens are ``copies`` equal blocks: one [m / copies, V] projection each.
    picked = _per_copy(pick, copies, hidden[scored], ids[:, 1:][scored])
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
    lm: Any = model  # a Hugging Face causal LM: get_output_embeddings
    return lm.get_output_embeddings()(_text_final(model, site, cached, _one_setting(edit), 1, positions,
                                                  steer_special))


def text_logits_settings(model: nn.Module, site: Site, cached: CachedTexts, steerer: Steerer,
                         settings: Sequence[Mapping[str, Any]], positions: str = "all", *,
                         preserve_norm: bool = True, steer_special: bool = False) -> Iterator[torch.Tensor]:
    """:func:`text_logits` of one steerer at each of K ``settings`` (see :func:`score_cached_settings`), the layers
    above the site run once for all K copies of the texts: yields the logits ``[N, W, V]`` of setting 0, 1, ...
    in turn, projected to the vocabulary one setting at a time (K at once would hold K times ``[N, W, V]``).
    The upper pass runs at the call (call and consume it inside ``torch.inference_mode()``, as :func:`text_logits`
    is called); the projections run as the iterator is consumed."""
    scale, forced = steerer.setting_rows(settings)
    final = _text_final(model, site, cached, settings_edit(steerer, scale, forced, preserve_norm), len(settings),
                        positions, steer_special)
    lm: Any = model  # a Hugging Face causal LM: get_output_embeddings
    return (lm.get_output_embeddings()(block) for block in final.chunk(len(settings)))


def _text_final(model: nn.Module, site: Site, cached: CachedTexts, edit: SettingsEdit | None, copies: int,
                positions: str, steer_special: bool) -> torch.Tensor:
    """The last hidden states ``[copies * N, W, d]`` of ``copies`` copies of the cached texts (copy-major, copy k
    under setting k) after the edit and the layers above the site."""
    device = model_device(model)
    where = text_edit_mask(cached, positions, steer_special) if edit is not None else cached.mask.bool()
    n, width = cached.input_ids.shape
    hidden = _edited(_copies(cached.hidden.to(device), copies), _copies(where.to(device), copies), edit,
                     torch.arange(copies * n, device=device) // n, copies)
    lm: Any = model  # a Hugging Face causal LM: base_model
    with _layers_above(model, site.layer):
        return lm.base_model(inputs_embeds=hidden, attention_mask=_copies(cached.mask.to(device), copies),
                             position_ids=torch.arange(width, device=device).expand(copies * n, width),
                             use_cache=False).last_hidden_state


def steering_edit(steerer: Steerer, scale: torch.Tensor | None = None, forced: torch.Tensor | None = None,
                  preserve_norm: bool = True) -> Edit:
    """The intervention's edit as a plain function ``[n, d] -> [n, d]`` (same math, no hooks)."""

    def edit(a: torch.Tensor) -> torch.Tensor:
        return steerer(a, scale=scale, forced=forced, preserve_norm=preserve_norm)[0]

    return edit


def settings_edit(steerer: Steerer, scale: torch.Tensor, forced: torch.Tensor | None = None,
                  preserve_norm: bool = True) -> SettingsEdit:
    """:func:`steering_edit` under K settings at once: ``scale [K, T]`` and ``forced [K, T]`` (or None; from
    :meth:`~matsteer.core.steerer.Steerer.setting_rows`), token i edited with row ``setting[i]`` of each (gathered
    per token by :func:`~matsteer.core.steerer.row_settings_for`), in one steerer call over the tokens it is
    given. Row k's edit equals :func:`steering_edit` of setting k's ``[T]`` vectors (the same elementwise
    products)."""

    def edit(a: torch.Tensor, setting: torch.Tensor) -> torch.Tensor:
        return steerer(a, scale=row_settings_for(scale, setting), forced=row_settings_for(forced, setting),
                       preserve_norm=preserve_norm)[0]

    return edit


def score_cached(model: nn.Module, site: Site, cached: Sequence[CachedQuestion], edit: Edit | None = None,
                 positions: str = "prompt", progress: bool = False, desc: str = "score",
                 batch_tokens: int = 2048, steer_special: bool = False,
                 temperature: float = 1.0) -> list[torch.Tensor]:
    """:func:`upper_logprobs` for every cached question, in batches of similar prompt length of about
    ``batch_tokens`` padded tokens (small CPU matmuls waste most of the cores' throughput)."""
    return _score_batches(model, site, cached, _one_setting(edit), 1, positions, progress, desc, batch_tokens,
                          steer_special, temperature)[0]


def score_cached_settings(model: nn.Module, site: Site, cached: Sequence[CachedQuestion], steerer: Steerer,
                          settings: Sequence[Mapping[str, Any]], positions: str = "prompt", *,
                          preserve_norm: bool = True, progress: bool = False, desc: str = "score",
                          batch_tokens: int = 2048, steer_special: bool = False,
                          temperature: float = 1.0) -> list[list[torch.Tensor]]:
    """One steerer at K ``settings`` on every cached question, one pass per batch: ``out[k][i]`` is question i's
    ``[K_q]`` summed log-probs under setting k, what :func:`score_cached` with :func:`steering_edit` of that
    setting gives.

    settings: K mappings of ``multipliers``, ``global_multiplier``, ``force`` (each whole on its own; see
    :meth:`~matsteer.core.steerer.Steerer.setting_rows`; a global multiplier 0 is the unsteered model). The
    batches are those of :func:`score_cached` (``batch_tokens`` per setting), each run as K copies of itself with
    the per-row ``[K, T]`` settings, so a pass holds K times the activations of one (the vocabulary projection
    excepted: it runs copy by copy). Each copy runs the padded shapes of one setting alone and is edited on its
    own; only the upper layers' matrix products have K times more rows, which changes float32 rounding only
    where a product has a handful of rows (the CPU then picks a kernel of another blocking; measured at 2 ulps,
    see ``tests/test_row_settings.py``). With batches of the default size the results are bit-identical.
    """
    scale, forced = steerer.setting_rows(settings)
    return _score_batches(model, site, cached, settings_edit(steerer, scale, forced, preserve_norm), len(settings),
                          positions, progress, desc, batch_tokens, steer_special, temperature)


def _score_batches(model: nn.Module, site: Site, cached: Sequence[CachedQuestion], edit: SettingsEdit | None,
                   copies: int, positions: str, progress: bool, desc: str, batch_tokens: int,
                   steer_special: bool, temperature: float) -> list[list[torch.Tensor]]:
    """:func:`_upper_logprobs` of ``copies`` settings over every cached question, batched by prompt length:
    ``out[k][i]`` for setting k, question i."""
    batches = token_batches([c.prompt.shape[0] for c in cached], batch_tokens)
    out: list[list[torch.Tensor | None]] = [[None] * len(cached) for _ in range(copies)]
    with torch.inference_mode():
        for b in tqdm(batches, desc=desc, disable=not progress, leave=False):
            per_copy = _upper_logprobs(model, site, [cached[i] for i in b], edit, copies, positions, batch_tokens,
                                       steer_special, temperature)
            for k, scores in enumerate(per_copy):
                for i, s in zip(b, scores):
                    out[k][i] = s
    return out  # type: ignore[return-value]
