"""Gate analyses: steered and gated feature sets, per-token gates of texts and generations, the ParaDetox gate table,
and the model-running side of gate targeting (neutral text, chat-template tokens, ParaDetox: :func:`targeting_report`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from matsteer.activations.extraction import Encoded, extract_activations, extract_encoded
from matsteer.activations.features import FeatureSet
from matsteer.activations.models import LoadedModel, Tokenizer, model_device, pad_token_id
from matsteer.activations.sites import Site
from matsteer.core.attributes import AttributeData
from matsteer.core.health import OPEN_THRESHOLD, GateTargeting, gate_targeting
from matsteer.core.steerer import Steerer
from matsteer.data import load_examples
from matsteer.data.prompts import format_prompt, has_chat_template
from matsteer.errors import ConfigError, DataError
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

# Other everyday sentences, for *training* (the background gate term, TrainConfig.lambda_background): kept apart from
# NEUTRAL_TEXTS, which stays the held-out neutral group of every gate analysis.
BACKGROUND_TEXTS: tuple[str, ...] = (
    "The bus stop is on the corner next to the bakery.",
    "Cut the onions into thin slices before frying them.",
    "The garden needs water twice a week in summer.",
    "Our office moved to a new building across the river.",
    "The film starts at half past seven tonight.",
    "Bread rises faster in a warm kitchen.",
    "He keeps his bicycle in the shed behind the house.",
    "The report is due at the end of the month.",
    "Rain is expected in the afternoon, so take a coat.",
    "The children built a sandcastle on the beach.",
    "A square has four equal sides.",
    "The kettle is on the shelf above the sink.",
    "She reads a chapter of her book every evening.",
    "The store closes early on public holidays.",
    "Mix the paint well before you start the second coat.",
    "The river flows north through the valley.",
    "Leaves turn yellow and red in the autumn.",
    "The printer on the third floor is out of paper.",
    "They planted tomatoes and beans in the spring.",
    "The concert hall seats about two thousand people.",
    "Turn left at the traffic lights and park behind the school.",
    "The soup tastes better with a little salt and pepper.",
    "His flight lands at the airport just after noon.",
    "The old clock in the hall chimes every hour.",
    "A week has seven days and a year has twelve months.",
    "The cat likes to sleep in the sunny spot by the window.",
    "Please close the door quietly when you leave.",
    "The bridge was painted grey and green last year.",
    "Store the rice in a dry container with a tight lid.",
    "The hikers reached the top of the hill by lunchtime.",
    "The class will visit the science museum on Friday.",
    "Sound travels faster in water than in air.",
    "He fixed the shelf with four screws and some glue.",
    "The town market sells fruit, cheese and flowers.",
    "The email arrived a few minutes after the call.",
    "Ice melts when the temperature rises above zero degrees.",
)

__all__ = [
    "as_array",
    "BACKGROUND_TEXTS",
    "background_activations",
    "paradetox_activations",
    "targeting_report",
    "template_activations",
    "training_background",
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


# ---- gate targeting: background and ParaDetox activations, the full report -------------------------------------


def template_activations(loaded: LoadedModel, site: Site, prompts: Sequence[str], *, chat: bool = True,
                         batch_size: int = 16) -> torch.Tensor:
    """Activations ``[M, d]`` of the chat-template tokens of ``prompts``: system prompt, role markers and the
    generation prompt, i.e. every token of the formatted prompt outside the user's text (the first position, an
    attention sink, is skipped as in extraction). Tokens a gate should never open on: they are in every prompt.
    """
    tok = loaded.tokenizer
    if not (chat and has_chat_template(tok)):
        raise ConfigError("Template tokens need a tokenizer with a chat template (and chat=True).")
    if not getattr(tok, "is_fast", False):
        raise ConfigError("Template tokens need a fast tokenizer (character offsets).")
    texts = [format_prompt(tok, p, True) for p in prompts]
    enc = tok(texts, add_special_tokens=False, return_offsets_mapping=True)
    encoded = []
    for text, prompt, ids, offsets in zip(texts, prompts, enc["input_ids"], enc["offset_mapping"]):
        start = text.find(prompt)
        if start < 0:
            raise DataError(f"The chat template changed the prompt {prompt[:40]!r}; cannot find its tokens.")
        end = start + len(prompt)
        keep = [j for j in range(1, len(ids)) if not (offsets[j][0] < end and offsets[j][1] > start)]
        if keep:
            encoded.append(Encoded(list(ids), keep))
    if not encoded:
        raise DataError("No template tokens found: the chat template adds nothing around these prompts.")
    rows = extract_encoded(loaded.model, encoded, site, pad_id=pad_token_id(tok), batch_size=batch_size,
                           progress=False)
    return rows.activations


def background_activations(loaded: LoadedModel, site: Site, prompts: Sequence[str],
                           texts: Sequence[str] = BACKGROUND_TEXTS, *, chat: bool = True) -> torch.Tensor:
    """Background rows ``[N, d]`` for training (``train_steerer(..., background=...)``): every token of ``texts``
    (neutral sentences; default :data:`BACKGROUND_TEXTS`, not the held-out :data:`NEUTRAL_TEXTS`) and the template
    tokens of ``prompts`` (take them from the training split)."""
    parts = [neutral_activations(loaded, site, texts)] if texts else []
    if prompts and chat and has_chat_template(loaded.tokenizer):
        parts.append(template_activations(loaded, site, prompts, chat=chat))
    if not parts:
        raise ConfigError("No background: pass neutral texts or prompts (with a chat template).")
    return torch.cat(parts)


#: Training questions per data set whose chat-template tokens join the background (:func:`training_background`).
BACKGROUND_PROMPTS = 30


def training_background(loaded: LoadedModel, site: Site, datasets: Sequence[str], n: int = BACKGROUND_PROMPTS,
                        seed: int = 0) -> torch.Tensor:
    """The background rows ``[N, d]`` the ``targeted`` presets train their gates shut on
    (:func:`background_activations`): every token of :data:`BACKGROUND_TEXTS` and the chat-template tokens of the
    first ``n`` *training* questions of each of ``datasets`` (never dev or test ones)."""
    prompts = sorted({e.prompt for ds in datasets for e in load_examples(ds, "train", limit=n, seed=seed)})
    return background_activations(loaded, site, prompts)


def paradetox_activations(loaded: LoadedModel, site: Site, split: str = "dev", n: int = 100,
                          seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Token activations ``(toxic [P, d], non-toxic [Q, d])`` of ``n`` ParaDetox rows (a toxic sentence and its
    neutral paraphrases) of ``split``, every token of each sentence (Table 2's groups)."""
    examples = load_examples("paradetox", split, limit=n, seed=seed)
    toxic = [e.text for e in examples if e.label == 0]
    clean = [e.text for e in examples if e.label == 1]
    if not toxic or not clean:
        raise DataError(f"ParaDetox {split} (n={n}) has no toxic or no non-toxic sentences.")
    return neutral_activations(loaded, site, toxic), neutral_activations(loaded, site, clean)


def targeting_report(
    loaded: LoadedModel,
    steerer: Steerer,
    site: Site,
    dev: Sequence[AttributeData | FeatureSet],
    *,
    prompts: Sequence[str],
    train: Sequence[AttributeData | FeatureSet] | None = None,
    neutral_texts: Sequence[str] = NEUTRAL_TEXTS,
    paradetox_split: str | None = "dev",
    paradetox_n: int = 100,
    target: str = "toxicity",
    threshold: float = OPEN_THRESHOLD,
    seed: int = 0,
) -> GateTargeting:
    """:func:`matsteer.core.health.gate_targeting` with the model-run groups: neutral text (every token of
    ``neutral_texts``), the chat-template tokens of ``prompts`` (held-out prompts, e.g. dev questions) and, unless
    ``paradetox_split`` is None, ParaDetox toxic / non-toxic sentences of that split. dev / train: dev (and
    training, for the probe's precision ceiling) activations per attribute, :class:`AttributeData` or feature sets.
    """
    def as_data(xs: Sequence[AttributeData | FeatureSet]) -> list[AttributeData]:
        return [x if isinstance(x, AttributeData) else AttributeData(x.attribute, x.positives, x.negatives,
                                                                     x.positive_side) for x in xs]

    neutral = neutral_activations(loaded, site, neutral_texts) if neutral_texts else None
    template = (template_activations(loaded, site, prompts)
                if prompts and has_chat_template(loaded.tokenizer) else None)
    paradetox = paradetox_activations(loaded, site, paradetox_split, paradetox_n, seed) if paradetox_split else None
    return gate_targeting(steerer, as_data(dev), neutral=neutral, template=template, paradetox=paradetox,
                          train=as_data(train) if train is not None else None, target=target, threshold=threshold,
                          seed=seed)
