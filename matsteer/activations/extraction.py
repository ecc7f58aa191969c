"""Batched, padding-aware activation extraction at one ``Site``, stopping the forward pass at that site.

Rows never include pad tokens. Token selection:
- ``all``: every token of the text (prompt + answer, as the paper), except special tokens the tokenizer adds
  (BOS and the like) and the sequence's first position: that position is an attention sink whose residual norm
  is an outlier (about 9x the others at layer 14 of SmolLM2, which has no BOS), and it would dominate the kernel
  distances of training;
- ``answer``: the tokens that overlap the answer's character span;
- ``last``: the last token of the text (the reference code's choice).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from matsteer.activations.models import Tokenizer, model_device, pad_token_id
from matsteer.activations.sites import Site
from matsteer.errors import ConfigError, DataError

TOKEN_SELECTIONS: tuple[str, ...] = ("all", "answer", "last")


class _StopForward(Exception):
    """Raised from the site's hook once the activation is captured, so the layers above never run."""


@dataclass
class Encoded:
    """One tokenized text: ids ``[n]`` and the positions (indices into ids) to keep."""

    input_ids: list[int]
    keep: list[int]


@dataclass
class ActivationRows:
    """Extracted rows. activations ``[M, d]`` float32; text_index, token_index, labels ``[M]`` int64."""

    activations: torch.Tensor
    text_index: torch.Tensor
    token_index: torch.Tensor
    labels: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))

    def __len__(self) -> int:
        return int(self.activations.shape[0])


def encode_texts(
    tokenizer: Tokenizer,
    texts: Sequence[str],
    tokens: str = "all",
    answer_spans: Sequence[tuple[int, int]] | None = None,
    max_length: int | None = None,
) -> list[Encoded]:
    """Tokenize ``texts`` and choose the positions to keep for the token selection."""
    if tokens not in TOKEN_SELECTIONS:
        raise ConfigError(f"Unknown token selection {tokens!r}; choose one of {', '.join(TOKEN_SELECTIONS)}.")
    if tokens == "answer" and answer_spans is None:
        raise ConfigError("tokens='answer' needs the answer's character span of every text (answer_spans).")
    if answer_spans is not None and len(answer_spans) != len(texts):
        raise ConfigError(f"Got {len(answer_spans)} answer spans for {len(texts)} texts.")
    need_offsets = tokens == "answer"
    if need_offsets and not getattr(tokenizer, "is_fast", False):
        raise ConfigError("tokens='answer' needs a fast tokenizer (character offsets); use tokens='all' or 'last'.")
    enc = tokenizer(
        list(texts),
        add_special_tokens=True,
        return_special_tokens_mask=True,
        return_offsets_mapping=need_offsets,
        truncation=max_length is not None,
        max_length=max_length,
    )
    out: list[Encoded] = []
    for i, ids in enumerate(enc["input_ids"]):
        special = enc["special_tokens_mask"][i]
        # Position 0 is the attention sink (see the module docstring); keep it only if it is all there is.
        content = [j for j in range(len(ids)) if not special[j] and j > 0] or [j for j in range(len(ids)) if not special[j]]
        if not content:
            raise DataError(f"Text {i} ({texts[i][:40]!r}) has no tokens after tokenization; remove empty texts.")
        if tokens == "all":
            keep = content
        elif tokens == "last":
            keep = [content[-1]]
        else:
            start, end = answer_spans[i]  # type: ignore[index]
            offsets = enc["offset_mapping"][i]
            keep = [j for j in content if offsets[j][0] < end and offsets[j][1] > start]
            if not keep:
                raise DataError(
                    f"Text {i} ({texts[i][:40]!r}): no token overlaps its answer span {answer_spans[i]}; "  # type: ignore[index]
                    "the answer is empty or was truncated (raise max_length)."
                )
        out.append(Encoded(list(ids), keep))
    return out


def left_pad(batch: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-pad id lists -> (input_ids ``[B, L]``, attention_mask ``[B, L]``, position_ids ``[B, L]``).

    Position ids count real tokens only, so a left-padded row sees the same positions as when run alone
    (this matters for absolute position embeddings such as GPT-2's).
    """
    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for r, ids in enumerate(batch):
        input_ids[r, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
        mask[r, width - len(ids):] = 1
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    return input_ids, mask, position_ids


def _capture_hook(site: Site, model: nn.Module, store: dict[str, torch.Tensor]) -> torch.utils.hooks.RemovableHandle:
    resolved = site.resolve(model)

    def grab(value: Any) -> None:
        store["value"] = value[0] if isinstance(value, tuple) else value
        raise _StopForward

    if resolved.io == "input":
        return resolved.module.register_forward_pre_hook(lambda _m, args: grab(args[0]))
    return resolved.module.register_forward_hook(lambda _m, _args, output: grab(output))


def site_activations(
    model: nn.Module, site: Site, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
    cache: Any = None,
) -> torch.Tensor:
    """Run ``model`` up to ``site`` only and return the activation there, ``[B, L, d]``.

    cache: a transformers KV cache to fill (the blocks up to the site) and attend to; then ``attention_mask``
    covers the cached tokens too (``[B, cached + L]``).
    """
    store: dict[str, torch.Tensor] = {}
    handle = _capture_hook(site, model, store)
    # A batch without padding needs no mask: attention then takes its plain causal path, which is faster.
    mask = None if cache is None and bool(attention_mask.all()) else attention_mask
    kwargs = {} if cache is None else {cache_kwarg(model): cache}
    try:
        model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, use_cache=cache is not None,
              **kwargs)
    except _StopForward:
        pass
    finally:
        handle.remove()
    if "value" not in store:
        raise ConfigError(f"The forward pass never reached {site}; is the site inside this model's forward?")
    return store["value"]


def cache_kwarg(model: nn.Module) -> str:
    """transformers >= 5.2x names the KV cache argument ``cache``; earlier 5.x releases ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _batches(encoded: Sequence[Encoded], order: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    for start in range(0, len(order), batch_size):
        yield list(order[start:start + batch_size])


def extract_encoded(
    model: nn.Module,
    encoded: Sequence[Encoded],
    site: Site,
    *,
    pad_id: int,
    batch_size: int = 16,
    index_offset: int = 0,
    progress: bool = True,
    desc: str = "extract",
) -> ActivationRows:
    """Extract the kept positions of already-encoded texts; rows are ordered by (text, token)."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}.")
    device = model_device(model)
    # Length-sorted batches waste little on padding; rows are put back in text order at the end.
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
    acts: list[torch.Tensor] = []
    text_idx: list[int] = []
    tok_idx: list[int] = []
    bar = tqdm(total=sum(len(e.input_ids) for e in encoded), unit="tok", desc=desc, disable=not progress, leave=False)
    with torch.inference_mode():
        for batch in _batches(encoded, order, batch_size):
            ids, mask, pos = left_pad([encoded[i].input_ids for i in batch], pad_id)
            hidden = site_activations(model, site, ids.to(device), mask.to(device), pos.to(device))
            width = ids.shape[1]
            rows: list[int] = []
            cols: list[int] = []
            for r, i in enumerate(batch):
                shift = width - len(encoded[i].input_ids)
                rows.extend([r] * len(encoded[i].keep))
                cols.extend(shift + j for j in encoded[i].keep)
                text_idx.extend([index_offset + i] * len(encoded[i].keep))
                tok_idx.extend(encoded[i].keep)
            acts.append(hidden[torch.tensor(rows), torch.tensor(cols)].float().cpu())
            bar.update(int(mask.sum()))
    bar.close()
    if acts:
        activations = torch.cat(acts)
    else:
        config: Any = model.config  # a transformers config: the width of an empty result
        activations = torch.empty(0, config.hidden_size)
    text_index = torch.tensor(text_idx, dtype=torch.long)
    token_index = torch.tensor(tok_idx, dtype=torch.long)
    perm = torch.argsort(text_index * (1 << 20) + token_index)
    return ActivationRows(activations[perm], text_index[perm], token_index[perm])


def extract_activations(
    model: nn.Module,
    tokenizer: Tokenizer,
    texts: Sequence[str],
    site: Site,
    *,
    tokens: str = "all",
    answer_spans: Sequence[tuple[int, int]] | None = None,
    labels: Sequence[int] | None = None,
    batch_size: int = 16,
    max_length: int | None = None,
    progress: bool = True,
) -> ActivationRows:
    """Activations of ``texts`` at ``site``: ``[M, d]`` rows for the selected tokens, pad tokens never included."""
    site.resolve(model)  # fail early on a bad layer/site, before tokenizing
    encoded = encode_texts(tokenizer, texts, tokens, answer_spans, max_length)
    rows = extract_encoded(model, encoded, site, pad_id=pad_token_id(tokenizer), batch_size=batch_size, progress=progress)
    if labels is not None:
        if len(labels) != len(texts):
            raise ConfigError(f"Got {len(labels)} labels for {len(texts)} texts.")
        rows.labels = torch.tensor(list(labels), dtype=torch.long)[rows.text_index]
    return rows
