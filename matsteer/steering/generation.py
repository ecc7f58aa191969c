"""Greedy continuations, unsteered or steered: one way to encode prompts, generate and decode.

The CLI, the demo, the gate analyses and the tuner all generate through these functions, so a prompt is formatted,
padded and decoded the same way everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from matsteer.activations.models import LoadedModel, Tokenizer, model_device, pad_token_id
from matsteer.activations.sites import Site
from matsteer.core.steerer import Steerer
from matsteer.data.prompts import format_prompt, has_chat_template
from matsteer.errors import ConfigError
from matsteer.steering.session import SteeringHandle, steer


def encode_prompts(tokenizer: Tokenizer, prompts: Sequence[str], device: torch.device,
                   chat: bool = True) -> dict[str, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` ``[batch, seq]`` of ``prompts`` on ``device``, left-padded.

    chat: wrap each prompt in the tokenizer's chat template when it has one (then no special tokens are added:
    the template holds them). The tokenizer's ``padding_side`` is left as it was.
    """
    chat = chat and has_chat_template(tokenizer)
    texts = [format_prompt(tokenizer, p, chat) for p in prompts]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation continues from the last position: pad on the left
    try:
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not chat)
    finally:
        tokenizer.padding_side = side
    return {k: enc[k].to(device) for k in ("input_ids", "attention_mask")}


def generate_greedy(model: nn.Module, tokenizer: Tokenizer, enc: Mapping[str, torch.Tensor], max_new_tokens: int,
                    handle: SteeringHandle | None = None, **options: Any) -> torch.Tensor:
    """Greedy token ids ``[batch, seq + new]``: steered through ``handle`` (from :func:`~matsteer.steering.session.steer`), else the plain model.

    options: passed on to ``generate`` (e.g. a ``streamer``).
    """
    run = handle.generate if handle is not None else cast(Callable[..., torch.Tensor], model.generate)
    with torch.inference_mode():
        return run(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_token_id(tokenizer),
                   **options)


def decode_continuations(tokenizer: Tokenizer, ids: torch.Tensor, width: int) -> list[str]:
    """The text each row of ``ids`` ``[batch, seq]`` adds after its first ``width`` (prompt) tokens."""
    return [str(tokenizer.decode(row[width:], skip_special_tokens=True)).strip() for row in ids]


#: The steer() settings that hold one entry per prompt (sliced with the prompts into batches).
_ROW_KEYS = ("row_multipliers", "row_force")


@dataclass
class Generation:
    """One prompt's greedy continuation without and with steering."""

    prompt: str
    unsteered: str
    steered: str


def generate_texts(
    loaded: LoadedModel,
    prompts: Sequence[str],
    *,
    steerer: Steerer | None = None,
    site: Site | None = None,
    max_new_tokens: int = 48,
    chat: bool = True,
    batch_size: int | None = None,
    **steering: Any,
) -> list[str]:
    """Greedy continuations of ``prompts``, unsteered or (with ``steerer``) inside :func:`~matsteer.steering.session.steer` with ``steering``
    (multipliers, global_multiplier, force, preserve_norm, positions, and per-prompt ``row_multipliers`` /
    ``row_force``: one mapping per prompt). Left-padded batches of ``batch_size``."""
    tok, model = loaded.tokenizer, loaded.model
    size = batch_size or max(1, len(prompts))
    per_row = [k for k in _ROW_KEYS if steering.get(k) is not None]
    for key in per_row:
        if len(steering[key]) != len(prompts):
            raise ConfigError(f"{key} has {len(steering[key])} entries for {len(prompts)} prompts; give one per prompt.")
    device = model_device(model)
    out: list[str] = []
    for i in range(0, len(prompts), size):
        enc = encode_prompts(tok, prompts[i:i + size], device, chat)
        if steerer is None:
            ids = generate_greedy(model, tok, enc, max_new_tokens)
        else:
            # Each batch of prompts takes its own rows of the per-prompt settings.
            chunk = {**steering, **{k: list(steering[k][i:i + size]) for k in per_row}}
            with steer(model, steerer, site=site, **chunk) as handle:
                ids = generate_greedy(model, tok, enc, max_new_tokens, handle)
        out += decode_continuations(tok, ids, enc["input_ids"].shape[1])
    return out


def compare_generations(
    loaded: LoadedModel,
    steerer: Steerer,
    site: Site,
    prompts: Sequence[str],
    *,
    multipliers: Mapping[str, float] | None = None,
    global_multiplier: float = 1.0,
    max_new_tokens: int = 48,
    chat: bool = True,
    positions: str = "all",
) -> list[Generation]:
    """Greedy unsteered and steered continuations of ``prompts`` (one left-padded batch each)."""
    plain = generate_texts(loaded, prompts, max_new_tokens=max_new_tokens, chat=chat)
    steered = generate_texts(loaded, prompts, steerer=steerer, site=site, max_new_tokens=max_new_tokens, chat=chat,
                             multipliers=multipliers, global_multiplier=global_multiplier, positions=positions)
    return [Generation(p, u, s) for p, u, s in zip(prompts, plain, steered)]
