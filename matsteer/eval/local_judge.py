"""A small local causal LM as a (weak) judge, scored by the probability of the rating tokens."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from matsteer.activations.models import Tokenizer, model_device
from matsteer.data.prompts import format_prompt, has_chat_template
from matsteer.errors import ConfigError
from matsteer.eval.judges import Judge, check_attributes, check_scale, describe_attribute

__all__ = ["LocalHFJudge"]


class LocalHFJudge(Judge):
    """A local causal LM as a (weak) judge: one rating prompt per attribute, read off the next-token probabilities.

    For each attribute the model sees a rating request (through the tokenizer's chat template when it has
    one) and the score is the expected rating ``Σ_k k · p(k) / Σ_k p(k)`` over the rating tokens
    ``low..high`` (default 1-5; each rating's probability adds its ``"k"`` and ``" k"`` tokens when those
    are single tokens). Deterministic (no sampling). ``weak = True``: use it to exercise the pipeline,
    not to claim win rates.
    """

    weak = True

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Tokenizer,
        scale: tuple[int, int] = (1, 5),
        name: str | None = None,
        descriptions: Mapping[str, str] | None = None,
    ) -> None:
        lo, hi = check_scale(scale)
        if not (lo.is_integer() and hi.is_integer()) or hi - lo > 9 or lo < 0:
            raise ConfigError(
                f"LocalHFJudge rates with single digits; scale must be integers within 0-9, got {scale}."
            )
        self.model = model
        self.tokenizer = tokenizer
        self.scale = (lo, hi)
        self.descriptions = dict(descriptions or {})
        self.ratings = list(range(int(lo), int(hi) + 1))
        self._token_ids = [self._rating_tokens(str(k)) for k in self.ratings]
        base = name or _model_label(model)
        self.name = base if "weak judge" in base else f"{base} (weak judge)"

    def __repr__(self) -> str:
        return f"LocalHFJudge(name={self.name!r}, scale={self.scale})"

    def _rating_tokens(self, digit: str) -> list[int]:
        ids: set[int] = set()
        for text in (digit, " " + digit):
            enc = self.tokenizer.encode(text, add_special_tokens=False)
            if len(enc) == 1 and enc[0] != getattr(self.tokenizer, "unk_token_id", None):
                ids.add(int(enc[0]))
        if not ids:
            raise ConfigError(f"the judge's tokenizer has no single token for the rating {digit!r}.")
        return sorted(ids)

    def rating_prompt(self, prompt: str, response: str, attribute: str) -> str:
        """The text fed to the model for one attribute (chat-formatted when the tokenizer has a template)."""
        lo, hi = self.ratings[0], self.ratings[-1]
        request = (
            f"Rate the response for {attribute} ({describe_attribute(attribute, self.descriptions)}) "
            f"on a scale from {lo} (lowest) to {hi} (highest).\n\n"
            f"Prompt: {prompt}\n\nResponse: {response}\n\nReply with a single digit."
        )
        if has_chat_template(self.tokenizer):
            return format_prompt(self.tokenizer, request)
        return request + "\nRating:"

    @torch.no_grad()
    def rating_distribution(self, prompt: str, response: str, attribute: str) -> torch.Tensor:
        """``[K]`` probabilities of the ratings ``low..high``, renormalised over the rating tokens."""
        text = self.rating_prompt(prompt, response, attribute)
        templated = has_chat_template(self.tokenizer)
        enc = self.tokenizer(text, return_tensors="pt", add_special_tokens=not templated)
        device = model_device(self.model)
        logits = self.model(input_ids=enc["input_ids"].to(device)).logits[0, -1].float()
        logp = torch.log_softmax(logits, dim=-1)
        per_rating = torch.stack([torch.logsumexp(logp[ids], 0) for ids in self._token_ids])  # [K]
        return torch.softmax(per_rating, dim=0).cpu()

    def score(self, prompt: str, response: str, attributes: Sequence[str]) -> dict[str, float]:
        out: dict[str, float] = {}
        ratings = torch.tensor(self.ratings, dtype=torch.float32)
        for a in check_attributes(attributes):
            out[a] = float(self.rating_distribution(prompt, response, a) @ ratings)
        return out


def _model_label(model: nn.Module) -> str:
    """A short name for the judge: the model's checkpoint name, else its class."""
    path = str(getattr(getattr(model, "config", None), "name_or_path", "") or "")
    label = path.rstrip("/").split("/")[-1].lower()
    return label or type(model).__name__.lower()
