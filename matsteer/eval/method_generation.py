"""Generating with any way of answering: the plain model, an evaluator Method (a steerer and its settings, an ICL
prefix, a fine-tuned model), a Steerer with settings, a steering handle, or a context that steers.

The generation tasks (TruthfulQA's open-ended answers, the toxicity continuations) build a
:class:`GenerationPlan` once (:func:`generation_plan`) and run it over their prompts
(:func:`plan_continuations`): the same model, prefix and steering for every batch, with protected positions (the
first token, special tokens) left unsteered unless ``steer_special``.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn
from tqdm.auto import tqdm

from matsteer.activations.models import Tokenizer, model_device
from matsteer.activations.sites import Site
from matsteer.core.steerer import Steerer
from matsteer.errors import ConfigError
from matsteer.eval.evaluator import Method
from matsteer.eval.scoring import protect_special
from matsteer.steering.generation import decode_continuations, encode_prompts, generate_greedy
from matsteer.steering.session import steer

__all__ = ["GenerationPlan", "entered", "generation_plan", "plan_continuations"]


@dataclass
class GenerationPlan:
    """What generates: the model and tokenizer, the prompt prefix, the steering context, and a description."""

    model: nn.Module
    tokenizer: Tokenizer
    prefix: str
    context: Callable[[], contextlib.AbstractContextManager[Any]]
    steer_special: bool
    described: str


def _no_steering() -> contextlib.AbstractContextManager[Any]:
    return contextlib.nullcontext(None)


def generation_plan(
    model: nn.Module,
    tokenizer: Tokenizer,
    steering: Any,
    site: Site | Mapping[str, Any] | None,
    settings: Mapping[str, Any] | None,
    positions: str,
    prefix: str,
    steer_special: bool,
    task: str = "",
) -> GenerationPlan:
    """How each kind of ``steering`` generates (module docstring); a Method's ICL prefix is its ``prefix[task]``."""
    if settings and not isinstance(steering, Steerer):
        raise ConfigError("settings apply to a Steerer only; a Method carries its own, a handle or a context is "
                          "already configured")
    if steering is None:
        return GenerationPlan(model, tokenizer, prefix, _no_steering, steer_special, "none")
    if isinstance(steering, Method):
        loaded = steering.model
        m, tok = (loaded.model, loaded.tokenizer) if loaded is not None else (model, tokenizer)
        pre = steering.prefix.get(task, "") + prefix
        kind = "fine-tuned model" if loaded is not None else "ICL prefix" if pre else "none"
        if steering.steerer is None:
            return GenerationPlan(m, tok, pre, _no_steering, steering.steer_special, f"method {steering.name} ({kind})")
        method_steerer = steering.steerer
        opts = steering.steering(steering.positions or positions)
        return GenerationPlan(m, tok, pre, functools.partial(steer, m, method_steerer, site=site, **opts),
                     steering.steer_special, f"method {steering.name} (steerer at {opts['positions']})")
    if isinstance(steering, Steerer):
        opts = {"positions": positions, **dict(settings or {})}
        return GenerationPlan(model, tokenizer, prefix, functools.partial(steer, model, steering, site=site, **opts),
                     steer_special, f"steerer {steering.attributes} at {opts['positions']}")
    if callable(getattr(steering, "generate", None)):  # a handle from steer(), already entered
        return GenerationPlan(model, tokenizer, prefix, lambda: contextlib.nullcontext(steering), steer_special, "handle")
    if callable(steering):
        return GenerationPlan(model, tokenizer, prefix, steering, steer_special, "context")
    raise ConfigError(f"steering must be None, a Method, a Steerer, a steering handle or a callable returning a "
                      f"context manager; got {type(steering).__name__}")


@contextlib.contextmanager
def entered(plan: GenerationPlan) -> Iterator[Any]:
    """The plan's steering context, entered, with protected positions left unsteered (unless ``steer_special``)."""
    with plan.context() as handle:
        if handle is not None and not callable(getattr(handle, "generate", None)):
            raise ConfigError(f"the steering context yielded a {type(handle).__name__}; it must yield a handle with "
                              "generate() (as steer() does) or None")
        with protect_special(handle, plan.tokenizer, plan.steer_special):
            yield handle


def plan_continuations(plan: GenerationPlan, prompts: Sequence[str], chat: bool, max_new_tokens: int,
                       batch_size: int, progress: bool = False, desc: str = "generation") -> list[str]:
    """Greedy continuations ``[len(prompts)]`` of ``prompts`` (the plan's prefix already in them) under the plan's
    steering, in left-padded batches of ``batch_size``; ``chat``: through the tokenizer's chat template."""
    raw: list[str] = []
    device = model_device(plan.model)
    with entered(plan) as handle:
        for i in tqdm(range(0, len(prompts), batch_size), desc=desc, disable=not progress, leave=False):
            enc = encode_prompts(plan.tokenizer, prompts[i:i + batch_size], device, chat)
            ids = generate_greedy(plan.model, plan.tokenizer, enc, max_new_tokens, handle)
            raw += decode_continuations(plan.tokenizer, ids, enc["input_ids"].shape[1])
    return raw
