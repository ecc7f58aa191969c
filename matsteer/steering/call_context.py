"""What the intervention needs to know about each forward call: the non-pad mask and whether the KV cache is filled.

A forward pre-hook on the model (:meth:`CallContext.pre_hook`, registered for one steered call by
:func:`context_hook`) reads the call's attention mask and cache length before pyvene's hooks run.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from matsteer.errors import ConfigError

Phase = Literal["prompt", "generated"]

# Keys of a model call that are per-row tensors (they go into pyvene's ``base`` dict; the first one sets the batch size).
INPUT_KEYS = ("input_ids", "inputs_embeds", "attention_mask", "position_ids", "token_type_ids")


@dataclass
class CallContext:
    """Filled by a forward pre-hook on the model before each forward call, cleared after the steered call.

    valid: ``[B, cur]`` bool, True at non-pad positions of the tokens fed in this call (None: no mask given).
    past_len: number of tokens already in the KV cache (0 in the prompt pass).
    """

    captured: bool = False
    valid: torch.Tensor | None = None
    past_len: int = 0

    def clear(self) -> None:
        self.captured, self.valid, self.past_len = False, None, 0

    def pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """``register_forward_pre_hook(..., with_kwargs=True)`` callback: read the mask and the cache length."""
        x = kwargs.get("input_ids")
        if x is None:
            x = kwargs.get("inputs_embeds")
        if x is None and args and isinstance(args[0], torch.Tensor):
            x = args[0]
        cur = int(x.shape[1]) if isinstance(x, torch.Tensor) and x.dim() >= 2 else None
        mask = kwargs.get("attention_mask")
        if mask is None and len(args) > 1 and isinstance(args[1], torch.Tensor):
            mask = args[1]
        cache = kwargs.get("cache", kwargs.get("past_key_values"))  # transformers >= 5.2x calls it `cache`
        past: int | None = None
        if cache is not None:
            if hasattr(cache, "get_seq_length"):
                past = int(cache.get_seq_length())
            elif isinstance(cache, (tuple, list)) and cache and isinstance(cache[0], (tuple, list)):
                past = int(cache[0][0].shape[-2])  # legacy tuple cache
        valid = None
        if isinstance(mask, torch.Tensor) and mask.dim() == 2 and cur is not None and mask.shape[1] >= cur:
            valid = mask[:, mask.shape[1] - cur :].bool()
            if past is None:
                past = int(mask.shape[1]) - cur
        self.captured, self.valid, self.past_len = True, valid, past or 0

    def lookup(self, batch: int, seq: int) -> tuple[torch.Tensor | None, Phase]:
        """Non-pad mask ``[B, seq]`` (or None = all positions) and the phase of the current call.

        Without a captured context (pyvene called directly, without :func:`~matsteer.steering.session.steer`), every position counts as
        non-pad and a call with ``seq > 1`` counts as the prompt pass.
        """
        if not self.captured:
            return None, ("prompt" if seq > 1 else "generated")
        valid = self.valid
        if valid is not None and tuple(valid.shape) != (batch, seq):
            valid = None  # e.g. pyvene gathered a sub-selection of positions: the mask no longer lines up
        return valid, ("generated" if self.past_len > 0 else "prompt")


def split_inputs(inputs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split call kwargs into pyvene's ``base`` (per-row tensors, batch-defining key first) and the rest."""
    base = {k: inputs[k] for k in INPUT_KEYS if k in inputs and inputs[k] is not None}
    rest = {k: v for k, v in inputs.items() if k not in base}
    if not base or not isinstance(next(iter(base.values())), torch.Tensor):
        raise ConfigError("Pass the model inputs as keyword tensors, e.g. input_ids=... and attention_mask=....")
    return base, rest


@contextmanager
def context_hook(model: nn.Module, context: CallContext) -> Iterator[None]:
    """Register the call-context pre-hook on ``model`` for one steered call; always removed and cleared after."""
    handle = model.register_forward_pre_hook(context.pre_hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
        context.clear()
