"""Gate analyses: steered and gated feature sets, per-token gates of texts and generations, the ParaDetox gate table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from matsteer.activations.extraction import extract_activations
from matsteer.activations.features import FeatureSet
from matsteer.activations.models import LoadedModel, Tokenizer, model_device
from matsteer.activations.sites import Site
from matsteer.core.steerer import Steerer
from matsteer.errors import ConfigError
from matsteer.steering.generation import decode_continuations, encode_prompts, generate_greedy
from matsteer.steering.recorder import TokenGates
from matsteer.steering.session import steer

# Everyday sentences with no truthfulness, toxicity or bias content: the "neutral" group of gate distributions.
NEUTRAL_TEXTS: tuple[str, ...] = (
    "The train leaves the station at nine in the morning.",
    "Add two cups of flour and stir until the batter is smooth.",
    "The library is open from Monday to Saturday.",
    "Water boils at a lower temperature at high altitude.",
    "She painted the fence blue last summer.",
    "The meeting was moved to the small room on the second floor.",
    "Photosynthesis turns light into chemical energy in plants.",
    "Please remember to bring an umbrella tomorrow.",
    "The museum has a large collection of old maps.",
    "He walked the dog around the park after dinner.",
    "A triangle has three sides and three angles.",
    "The recipe needs fresh basil, tomatoes and olive oil.",
)

__all__ = [
    "as_array",
    "edit_norms",
    "gate_sets",
    "gate_table_stats",
    "generate_with_gates",
    "neutral_activations",
    "NEUTRAL_TEXTS",
    "steered_sets",
    "text_gates",
    "token_gate_data",
    "token_strings",
    "TokenGateRun",
]


def as_array(x: Any, name: str, ndim: int | None = None) -> np.ndarray:
    """A float64 numpy array from a tensor / array / list; checks the number of dimensions."""
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if ndim is not None and arr.ndim != ndim:
        raise ConfigError(f"{name} must have {ndim} dimension(s), got shape {arr.shape}.")
    return arr


def steered_sets(
    steerer: Steerer,
    feature_sets: Sequence[FeatureSet],
    *,
    multipliers: Mapping[str, float] | None = None,
    global_multiplier: float = 1.0,
    preserve_norm: bool = True,
    max_rows: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, torch.Tensor]]:
    """Input of :func:`matsteer.viz.plots.plot_pca`: per attribute ``{"positive" [n, d], "negative" [m, d], "steered" [m, d]}``.

    feature_sets: :class:`~matsteer.activations.features.FeatureSet` objects (one per attribute). At most ``max_rows`` rows
    per side are kept (seeded), and the steered rows are exactly the kept negatives after ``f``.
    """
    gen = torch.Generator().manual_seed(seed)
    scale = steerer.scale_vector(multipliers, global_multiplier)
    out: dict[str, dict[str, torch.Tensor]] = {}
    for fs in feature_sets:
        pos, neg = fs.positives, fs.negatives
        pos = pos[torch.randperm(len(pos), generator=gen)[:max_rows]]
        neg = neg[torch.randperm(len(neg), generator=gen)[:max_rows]]
        with torch.no_grad():
            steered, _ = steerer(neg, scale=scale, preserve_norm=preserve_norm)
        out[fs.attribute] = {"positive": pos, "negative": neg, "steered": steered}
    return out


def gate_sets(
    steerer: Steerer,
    feature_sets: Sequence[FeatureSet],
    neutral: torch.Tensor | None = None,
) -> dict[str, dict[str, torch.Tensor]]:
    """Input of :func:`matsteer.viz.plots.plot_gate_distributions`: ``{attribute t: {group: G_t(a) [n]}}``.

    Each attribute's gate is evaluated on its own data set's positive and negative rows and on ``neutral``
    activations ``[k, d]`` (e.g. from :data:`NEUTRAL_TEXTS`), when given.
    """
    with torch.no_grad():
        out: dict[str, dict[str, torch.Tensor]] = {}
        for fs in feature_sets:
            if fs.attribute not in steerer.attributes:
                continue
            t = steerer.attributes.index(fs.attribute)
            groups = {"positive": steerer.gates(fs.positives)[:, t], "negative": steerer.gates(fs.negatives)[:, t]}
            if neutral is not None:
                groups["neutral"] = steerer.gates(neutral)[:, t]
            out[fs.attribute] = groups
    return out


def edit_norms(gates: Any, theta: Any, scale: Any = None) -> np.ndarray:
    """Size of the total edit ``‖Σ_t m_t G_t θ_t‖`` per token: gates ``[n, T]``, theta ``[T, d]``, scale ``[T]`` -> ``[n]``.

    This is the edit before norm preservation (what App. C ranks tokens by).
    """
    g = as_array(gates, "gates", 2)
    th = as_array(theta, "theta", 2)
    if g.shape[1] != th.shape[0]:
        raise ConfigError(f"gates have {g.shape[1]} attributes but theta has {th.shape[0]} rows.")
    m = np.ones(th.shape[0]) if scale is None else as_array(scale, "scale", 1)
    return np.linalg.norm((g * m) @ th, axis=1)


def token_strings(tokenizer: Tokenizer, token_ids: Sequence[int] | torch.Tensor) -> list[str]:
    """Each token id decoded on its own (readable pieces: ``" the"`` rather than ``"Ġthe"``)."""
    ids = token_ids.tolist() if isinstance(token_ids, torch.Tensor) else list(token_ids)
    return [str(tokenizer.decode([int(i)])) for i in ids]


def token_gate_data(tokenizer: Tokenizer, token_gates: TokenGates, steerer: Steerer,
                    scale: Any = None) -> tuple[list[str], np.ndarray]:
    """Token strings ``n`` and edit sizes ``[n]`` for a recorded :class:`~matsteer.steering.intervention.TokenGates`.

    scale ``[T]``: the multipliers in effect (``steerer.scale_vector(...)``); default ones.
    """
    norms = edit_norms(token_gates.gates, steerer.theta.detach().cpu(), None if scale is None else scale)
    ids = token_gates.token_ids
    tokens = token_strings(tokenizer, ids) if ids is not None else []
    if len(tokens) != len(norms):  # ids not aligned (no sequence given to the recorder): placeholders
        tokens = [f"#{i}" for i in range(len(norms))]
    return tokens, norms


@dataclass
class TokenGateRun:
    """A steered generation with its per-token gates: gates ``[n, T]``, generated ``[n]`` bool, edit_norm ``[n]``."""

    prompt: str
    text: str
    tokens: list[str]
    gates: torch.Tensor
    generated: torch.Tensor
    edit_norm: np.ndarray
    attributes: list[str]


def generate_with_gates(
    loaded: LoadedModel,
    steerer: Steerer,
    site: Site,
    prompt: str,
    *,
    max_new_tokens: int = 32,
    multipliers: Mapping[str, float] | None = None,
    global_multiplier: float = 1.0,
    force: Mapping[str, bool | float | None] | None = None,
    preserve_norm: bool = True,
    positions: str = "all",
    chat: bool = True,
) -> TokenGateRun:
    """Greedy steered generation of one prompt, recording every token's gates (input of
    :func:`matsteer.viz.plots.plot_token_gates`)."""
    tok, model = loaded.tokenizer, loaded.model
    enc = encode_prompts(tok, [prompt], model_device(model), chat)
    with torch.inference_mode(), steer(model, steerer, site=site, multipliers=multipliers,
                                       global_multiplier=global_multiplier, force=force, preserve_norm=preserve_norm,
                                       positions=positions, record=True) as handle:
        out = generate_greedy(model, tok, enc, max_new_tokens, handle)
        recorder = handle.recorder
        assert recorder is not None  # steer(..., record=True) always has one
        tg = recorder.token_gates(0, out[0])
    scale = steerer.scale_vector(multipliers, global_multiplier).cpu()
    tokens, norms = token_gate_data(tok, tg, steerer, scale)
    text = decode_continuations(tok, out, enc["input_ids"].shape[1])[0]
    return TokenGateRun(prompt, text, tokens, tg.gates, tg.generated, norms, list(tg.attributes))


def neutral_activations(loaded: LoadedModel, site: Site, texts: Sequence[str] = NEUTRAL_TEXTS) -> torch.Tensor:
    """Activations ``[M, d]`` of every token of ``texts`` at ``site`` (the neutral group of gate distributions)."""
    return extract_activations(loaded.model, loaded.tokenizer, list(texts), site, tokens="all", progress=False).activations


def text_gates(loaded: LoadedModel, steerer: Steerer, site: Site, texts: Sequence[str]) -> list[torch.Tensor]:
    """Per-token gates of each text, ``[n_i, T]`` per text (input of :func:`gate_table_stats`).

    Tokens as in extraction with ``tokens="all"`` (the attention-sink first position is skipped).
    """
    rows = extract_activations(loaded.model, loaded.tokenizer, list(texts), site, tokens="all", progress=False)
    with torch.no_grad():
        gates = steerer.gates(rows.activations.to(steerer.theta.device)).cpu()
    return [gates[rows.text_index == i] for i in range(len(texts))]


def gate_table_stats(
    gates_by_group: Mapping[str, Sequence[Any]],
    attributes: Sequence[str],
    target: str = "toxicity",
    threshold: float = 0.5,
    extra: Mapping[str, Mapping[str, float | str]] | None = None,
) -> dict[str, dict[str, float | str]]:
    """Table 2 (ParaDetox gate analysis) from per-token gates: ``{metric: {group: value}}``.

    gates_by_group: e.g. ``{"Toxic": [g_1 [n_1, T], ...], "Non-toxic": [...]}``, one ``[n_i, T]`` matrix per sample.
    A token is "intervened" when the ``target`` gate is ≥ ``threshold`` (the paper gives no threshold).
    extra: rows to add as they are, e.g. ``{"Toxicity reduction": {"Toxic": "-86%", "Non-toxic": "-"}}``.
    """
    attributes = list(attributes)
    if target not in attributes:
        raise ConfigError(f"target {target!r} is not one of the attributes {attributes}.")
    t = attributes.index(target)
    others = [i for i in range(len(attributes)) if i != t]
    table: dict[str, dict[str, float | str]] = {f"Mean {target} gate": {}, "Mean gate of the other attributes": {},
                                                "Mean # intervened tokens": {}}
    for group, samples in gates_by_group.items():
        mats = [as_array(g, "gates", 2) for g in samples]
        mats = [g for g in mats if g.size]
        if not mats:
            raise ConfigError(f"Group {group!r} has no gate values.")
        allg = np.concatenate(mats)
        table[f"Mean {target} gate"][group] = float(allg[:, t].mean())
        table["Mean gate of the other attributes"][group] = float(allg[:, others].mean()) if others else float("nan")
        table["Mean # intervened tokens"][group] = float(np.mean([(g[:, t] >= threshold).sum() for g in mats]))
    for row, values in (extra or {}).items():
        table[row] = dict(values)
    return table
