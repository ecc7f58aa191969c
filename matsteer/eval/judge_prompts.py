"""What a chat judge is asked and how its reply is read: the rating request and :func:`parse_scores`."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from matsteer.eval.judges import JudgeError, check_attributes, check_scale, describe_attribute

__all__ = ["SYSTEM_PROMPT", "judge_prompt", "parse_scores"]


SYSTEM_PROMPT = "You are a careful, impartial evaluator of AI assistant responses."


def judge_prompt(
    prompt: str,
    response: str,
    attributes: Sequence[str],
    scale: tuple[float, float] = (0, 4),
    descriptions: Mapping[str, str] | None = None,
) -> str:
    """The user message sent to a chat judge: attribute definitions, the dialogue, and the JSON answer format."""
    lo, hi = (int(x) if float(x).is_integer() else x for x in scale)
    descriptions = descriptions or {}
    lines = [f"- {a}: {describe_attribute(a, descriptions)}" for a in attributes]
    shape = ", ".join(f'"{a}": <score>' for a in attributes)
    return (
        f"Rate the response below on each attribute with a whole number from {lo} (lowest) to {hi} (highest).\n\n"
        "Attributes:\n" + "\n".join(lines) + "\n\n"
        f"[Prompt]\n{prompt}\n\n[Response]\n{response}\n\n"
        f"Answer with only a JSON object of the form {{{shape}}}."
    )


_FENCE = re.compile(r"```(?:json)?", re.IGNORECASE)


def _norm_key(key: str) -> str:
    return re.sub(r"[\s_\-]+", "", str(key)).lower()


def _number(value: Any) -> float | None:
    if isinstance(value, Mapping):  # {"score": 3, "reason": ...}
        value = value.get("score", value.get("rating"))
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    match = re.fullmatch(r"\s*(-?\d+(?:\.\d+)?)\s*(?:/\s*\d+(?:\.\d+)?)?\s*", str(value))  # "3" or "3/4"
    return float(match.group(1)) if match else None


def _from_mapping(obj: Mapping[str, Any], attributes: Sequence[str]) -> dict[str, float] | None:
    keys = {_norm_key(k): v for k, v in obj.items()}
    out: dict[str, float] = {}
    for a in attributes:
        value = _number(keys.get(_norm_key(a)))
        if value is None:
            break
        out[a] = value
    else:
        return out
    for v in obj.values():  # nested, e.g. {"scores": {...}}
        if isinstance(v, Mapping):
            found = _from_mapping(v, attributes)
            if found is not None:
                return found
    return None


def parse_scores(
    text: str, attributes: Sequence[str], scale: tuple[float, float] = (0, 4)
) -> dict[str, float]:
    """Read ``{attribute: score}`` from a judge's reply.

    Accepts the JSON object alone, inside code fences or surrounding prose, nested one level (e.g.
    ``{"scores": {...}}``), keys in any case with ``_``/``-``/spaces ignored, and numbers given as
    strings or ``"3/4"``. Falls back to ``attribute: score`` lines when no JSON object has every
    attribute. Raises :class:`JudgeError` when an attribute is missing or a score is outside ``scale``.
    """
    names = check_attributes(attributes)
    lo, hi = check_scale(scale)
    cleaned = _FENCE.sub("", text or "")
    found: dict[str, float] | None = None
    decoder = json.JSONDecoder()
    for start in [m.start() for m in re.finditer(r"\{", cleaned)]:
        try:
            obj, _ = decoder.raw_decode(cleaned, start)
        except ValueError:
            continue
        if isinstance(obj, Mapping):
            found = _from_mapping(obj, names)
            if found is not None:
                break
    if found is None:  # plain "helpfulness: 3" lines
        found = {}
        for a in names:
            pattern = r'["\']?' + re.escape(a) + r'["\']?\s*[:=]\s*(-?\d+(?:\.\d+)?)'
            match = re.search(pattern, cleaned, re.IGNORECASE)
            if match is None:
                snippet = cleaned.strip().replace("\n", " ")[:200]
                raise JudgeError(f"no score for {a!r} in the judge's reply: {snippet!r}")
            found[a] = float(match.group(1))
    bad = {a: v for a, v in found.items() if not (math.isfinite(v) and lo <= v <= hi)}
    if bad:
        raise JudgeError(f"scores outside the scale [{lo:g}, {hi:g}]: {bad}")
    return found
