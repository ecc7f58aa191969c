"""Figures for MAT-Steer, in one consistent seaborn/matplotlib style.

Every ``plot_*`` function takes plain data (tensors, arrays, dicts, lists) and returns a
:class:`matplotlib.figure.Figure` built without pyplot, so nothing accumulates in pyplot's global figure list
(tests and notebooks can make hundreds of figures). :func:`save_figure` writes PNG and PDF.

Figures of the paper (§6 of the reference notes) and diagnostics it lacks:

- :func:`plot_pca` positive / negative / steered-negative activations per attribute;
- :func:`plot_orthogonality` cosine similarity of the steering vectors θ (a diagnostic the paper does not show);
- :func:`plot_gate_distributions` gate values per attribute on positive, negative and neutral text;
- :func:`plot_token_gates` per-token gate heat map plus the size of the total edit ``‖Σ_t m_t G_t θ_t‖``
  (App. C's FaithEval visualisation); :func:`token_gates_html` is the same as an HTML table (widgets);
- :func:`plot_training_curves` loss terms over epochs (from :class:`~matsteer.train.History`);
- :func:`plot_multiplier_sweep` accuracy and KL against a multiplier, per attribute;
- :func:`plot_ablation` Table 3 / Table 4 style bars; :func:`plot_data_efficiency` Fig. 4;
  :func:`plot_num_attributes` Fig. 7; :func:`plot_gate_table` Table 2 (ParaDetox gates);
  :func:`plot_method_table` Table 1 (methods x tasks, mean ± std).

Small helpers turn library objects into those plain inputs (:func:`steered_sets`, :func:`gate_sets`,
:func:`edit_norms`, :func:`token_strings`, :func:`gate_table_stats`, :func:`method_table_from_report`), so the
notebooks hold no logic of their own.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker
import numpy as np
import seaborn as sns
import torch
from matplotlib.colors import Normalize, to_hex
from matplotlib.figure import Figure

from .errors import ConfigError

__all__ = [
    "GROUP_COLORS",
    "NEUTRAL_TEXTS",
    "PRIMARY_METRICS",
    "TokenGateRun",
    "attribute_colors",
    "edit_norms",
    "figures_from_ablation",
    "figures_from_report",
    "gate_sets",
    "generate_with_gates",
    "gate_table_stats",
    "method_table_from_report",
    "neutral_activations",
    "plot_ablation",
    "plot_data_efficiency",
    "plot_gate_distributions",
    "plot_gate_table",
    "plot_method_table",
    "plot_multiplier_sweep",
    "plot_num_attributes",
    "plot_orthogonality",
    "plot_pca",
    "plot_token_gates",
    "plot_training_curves",
    "save_figure",
    "steered_sets",
    "style",
    "text_gates",
    "token_gate_data",
    "token_gates_html",
    "token_strings",
]

# --------------------------------------------------------------------------------------------------------------
# Style
# --------------------------------------------------------------------------------------------------------------

_PALETTE = sns.color_palette("colorblind", 10)
# Fixed colours for the attributes the shipped data sets carry, so every figure agrees on them.
_KNOWN_ATTRIBUTES = ("truthfulness", "toxicity", "bias", "harmlessness", "helpfulness", "correctness",
                     "coherence", "complexity", "verbosity")
GROUP_COLORS: dict[str, tuple[float, float, float]] = {
    "positive": _PALETTE[2],  # green: the desirable side
    "negative": _PALETTE[3],  # red-orange: the side to move
    "steered": _PALETTE[0],  # blue: negatives after f(a)
    "neutral": (0.55, 0.55, 0.55),
}
_RC = {
    "figure.dpi": 100,
    "savefig.dpi": 150,
    "savefig.bbox": "tight",
    "axes.titleweight": "bold",
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "pdf.fonttype": 42,  # editable text in the PDFs
}
GATE_CMAP = "rocket_r"  # 0 = white-ish, 1 = dark: an off gate is invisible
EDIT_CMAP = "Blues"

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


@contextmanager
def style() -> Iterator[None]:
    """The workbench style (seaborn ``whitegrid`` + ``notebook`` context) for the figures made inside."""
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.9), matplotlib.rc_context(_RC):
        yield


def _figure(nrows: int = 1, ncols: int = 1, *, width: float = 5.0, height: float = 3.6, squeeze: bool = False,
            **kwargs: Any) -> tuple[Figure, np.ndarray]:
    """A pyplot-free figure with an ``[nrows, ncols]`` array of axes (call inside :func:`style`)."""
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=squeeze, **kwargs)
    return fig, axes


def attribute_colors(attributes: Sequence[str]) -> dict[str, tuple[float, float, float]]:
    """One colour per attribute; the known attribute names always get the same colour."""
    colors = {}
    spare = iter([c for i, c in enumerate(_PALETTE) if i >= len(_KNOWN_ATTRIBUTES)] + list(_PALETTE))
    for name in attributes:
        if name in _KNOWN_ATTRIBUTES:
            colors[name] = _PALETTE[_KNOWN_ATTRIBUTES.index(name) % len(_PALETTE)]
        else:
            colors[name] = next(spare, (0.3, 0.3, 0.3))
    return colors


def save_figure(fig: Figure, name: str, folder: str | Path = "figures", formats: Sequence[str] = ("png", "pdf")
                ) -> list[Path]:
    """Write ``fig`` as ``folder/name.png`` and ``folder/name.pdf`` (folder created); returns the paths."""
    if not name or any(sep in name for sep in ("/", "\\")) or name.startswith("."):
        raise ConfigError(f"Figure name must be a plain file stem such as 'pca_layer14', got {name!r}.")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    with style():
        for fmt in formats:
            path = out / f"{name}.{fmt}"
            fig.savefig(path, format=fmt)
            paths.append(path)
    return paths


# --------------------------------------------------------------------------------------------------------------
# Value helpers
# --------------------------------------------------------------------------------------------------------------


def _array(x: Any, name: str, ndim: int | None = None) -> np.ndarray:
    """A float64 numpy array from a tensor / array / list; checks the number of dimensions."""
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if ndim is not None and arr.ndim != ndim:
        raise ConfigError(f"{name} must have {ndim} dimension(s), got shape {arr.shape}.")
    return arr


def _mean_std(value: Any) -> tuple[float, float | None]:
    """(mean, std or None) from a number, a (mean, std) pair, a {"mean", "std"} dict or an object with .mean/.std."""
    if isinstance(value, Mapping):
        if "mean" not in value:
            raise ConfigError(f"A score dict needs a 'mean' entry, got keys {sorted(value)}.")
        std = value.get("std")
        return float(value["mean"]), None if std is None else float(std)
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ConfigError(f"A score pair must be (mean, std), got {value!r}.")
        return float(value[0]), None if value[1] is None else float(value[1])
    if hasattr(value, "mean") and not isinstance(value, (np.ndarray, torch.Tensor)):
        std = getattr(value, "std", None)
        return float(value.mean), None if std is None else float(std)
    return float(value), None


def _subsample(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return x if len(x) <= n else x[rng.choice(len(x), n, replace=False)]


def _empty_note(ax: Any, text: str = "no data") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.5")
    ax.set_xticks([])
    ax.set_yticks([])


# --------------------------------------------------------------------------------------------------------------
# Data preparation from library objects
# --------------------------------------------------------------------------------------------------------------


def steered_sets(
    steerer: Any,
    feature_sets: Sequence[Any],
    *,
    multipliers: Mapping[str, float] | None = None,
    global_multiplier: float = 1.0,
    preserve_norm: bool = True,
    max_rows: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, torch.Tensor]]:
    """Input of :func:`plot_pca`: per attribute ``{"positive" [n, d], "negative" [m, d], "steered" [m, d]}``.

    feature_sets: :class:`~matsteer.features.FeatureSet` objects (one per attribute). At most ``max_rows`` rows
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
    steerer: Any,
    feature_sets: Sequence[Any],
    neutral: torch.Tensor | None = None,
) -> dict[str, dict[str, torch.Tensor]]:
    """Input of :func:`plot_gate_distributions`: ``{attribute t: {group: G_t(a) [n]}}``.

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
    g = _array(gates, "gates", 2)
    th = _array(theta, "theta", 2)
    if g.shape[1] != th.shape[0]:
        raise ConfigError(f"gates have {g.shape[1]} attributes but theta has {th.shape[0]} rows.")
    m = np.ones(th.shape[0]) if scale is None else _array(scale, "scale", 1)
    return np.linalg.norm((g * m) @ th, axis=1)


def token_strings(tokenizer: Any, token_ids: Sequence[int] | torch.Tensor) -> list[str]:
    """Each token id decoded on its own (readable pieces: ``" the"`` rather than ``"Ġthe"``)."""
    ids = token_ids.tolist() if isinstance(token_ids, torch.Tensor) else list(token_ids)
    return [tokenizer.decode([int(i)]) for i in ids]


def token_gate_data(tokenizer: Any, token_gates: Any, steerer: Any, scale: Any = None) -> tuple[list[str], np.ndarray]:
    """Token strings ``n`` and edit sizes ``[n]`` for a recorded :class:`~matsteer.intervention.TokenGates`.

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
    loaded: Any,
    steerer: Any,
    site: Any,
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
    """Greedy steered generation of one prompt, recording every token's gates (input of :func:`plot_token_gates`)."""
    from .intervention import steer
    from .pipeline import format_prompt

    tok, model = loaded.tokenizer, loaded.model
    chat = chat and bool(getattr(tok, "chat_template", None))
    enc = tok([format_prompt(tok, prompt, chat)], return_tensors="pt", add_special_tokens=not chat)
    device = next(model.parameters()).device
    enc = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    with torch.inference_mode(), steer(model, steerer, site=site, multipliers=multipliers,
                                       global_multiplier=global_multiplier, force=force, preserve_norm=preserve_norm,
                                       positions=positions, record=True) as handle:
        out = handle.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
        tg = handle.recorder.token_gates(0, out[0])
    scale = steerer.scale_vector(multipliers, global_multiplier).cpu()
    tokens, norms = token_gate_data(tok, tg, steerer, scale)
    text = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    return TokenGateRun(prompt, text, tokens, tg.gates, tg.generated, norms, list(tg.attributes))


def neutral_activations(loaded: Any, site: Any, texts: Sequence[str] = NEUTRAL_TEXTS) -> torch.Tensor:
    """Activations ``[M, d]`` of every token of ``texts`` at ``site`` (the neutral group of gate distributions)."""
    from .extract import extract

    return extract(loaded.model, loaded.tokenizer, list(texts), site, tokens="all", progress=False).activations


def text_gates(loaded: Any, steerer: Any, site: Any, texts: Sequence[str]) -> list[torch.Tensor]:
    """Per-token gates of each text, ``[n_i, T]`` per text (input of :func:`gate_table_stats`).

    Tokens as in extraction with ``tokens="all"`` (the attention-sink first position is skipped).
    """
    from .extract import extract

    rows = extract(loaded.model, loaded.tokenizer, list(texts), site, tokens="all", progress=False)
    with torch.no_grad():
        gates = steerer.gates(rows.activations.to(steerer.theta.device)).cpu()
    return [gates[rows.text_index == i] for i in range(len(texts))]


def _show_token(tok: str) -> str:
    """A token made visible in a figure: newlines and tabs as symbols, leading spaces as a middle dot."""
    tok = tok.replace("\n", "⏎").replace("\t", "⇥")
    stripped = tok.lstrip(" ")
    return "·" * (len(tok) - len(stripped)) + stripped if stripped else "␣" * max(1, len(tok))


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
        mats = [_array(g, "gates", 2) for g in samples]
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


# Metric picked from a task entry that holds several metrics (an evaluation report's test[task]), in order.
PRIMARY_METRICS: tuple[str, ...] = ("mc2", "accuracy", "acc", "score", "win_rate")


def method_table_from_report(
    report: Mapping[str, Any],
    split: str = "test",
    tasks: Sequence[str] | None = None,
    primary: Mapping[str, str] | None = None,
    scale: float = 1.0,
) -> dict[str, dict[str, tuple[float, float | None]]]:
    """``{method label: {task: (mean, std)}}`` from an evaluation report (``report["methods"][m][split][task]``).

    A task entry may be a score itself (``{"mean", "std"}``, a pair, a number) or a dict of metrics
    (``{"mc2": {"mean", "std"}, "mc1": ..., "n": ...}``); then ``primary[task]`` names the metric, else the first of
    :data:`PRIMARY_METRICS` present. Entries without a score (``side_effects``, ``n``, notes) are skipped.
    ``scale=100`` turns fractions into percentages. Methods are labelled by their ``label`` entry when present.
    """
    methods = report.get("methods")
    if not isinstance(methods, Mapping) or not methods:
        raise ConfigError("The report has no 'methods' entry; pass the dict run_evaluation returned (or eval.json).")
    primary = dict(primary or {})
    table: dict[str, dict[str, tuple[float, float | None]]] = {}
    for name, entry in methods.items():
        scores = entry.get(split) if isinstance(entry, Mapping) else None
        if not isinstance(scores, Mapping):
            continue
        row = {}
        for task, value in scores.items():
            if tasks is not None and task not in tasks:
                continue
            if isinstance(value, Mapping) and "mean" not in value:
                metric = primary.get(task) or next((k for k in PRIMARY_METRICS if k in value), None)
                if metric is None or metric not in value:
                    continue
                value = value[metric]
            try:
                m, sd = _mean_std(value)
            except (ConfigError, TypeError, ValueError):
                continue  # a non-score entry (e.g. a note) in the report
            row[task] = (m * scale, None if sd is None else sd * scale)
        if row:
            label = entry.get("label") if isinstance(entry.get("label"), str) else name
            table[label] = row
    if not table:
        raise ConfigError(f"No method in the report has scores for split {split!r}.")
    return table


# --------------------------------------------------------------------------------------------------------------
# Activations and vectors
# --------------------------------------------------------------------------------------------------------------


def plot_pca(
    sets: Mapping[str, Mapping[str, Any]],
    *,
    max_points: int = 800,
    seed: int = 0,
) -> Figure:
    """PCA of activations, one panel per attribute.

    sets: ``{attribute: {"positive": [n, d], "negative": [m, d], "steered": [m, d]}}`` (``steered`` optional;
    see :func:`steered_sets`). PCA is fitted on positives + negatives, so the steered points are shown in the
    same plane; large markers are group means (circle positive, square negative, cross steered; the arrow goes
    from the negative mean to the steered mean).
    """
    from sklearn.decomposition import PCA

    if not sets:
        raise ConfigError("plot_pca needs at least one attribute.")
    rng = np.random.default_rng(seed)
    with style():
        fig, axes = _figure(1, len(sets), width=4.2, height=3.8)
        for ax, (attr, groups) in zip(axes[0], sets.items()):
            data = {g: _array(groups[g], f"{attr}/{g}", 2) for g in ("positive", "negative", "steered") if g in groups}
            fit = np.concatenate([data[g] for g in ("positive", "negative") if g in data])
            if len(fit) < 2:
                _empty_note(ax, "too few rows for PCA")
                ax.set_title(attr)
                continue
            pca = PCA(n_components=2, random_state=seed).fit(_subsample(fit, 4 * max_points, rng))
            centres = {}
            for g, x in data.items():
                if len(x) == 0:
                    continue
                p = pca.transform(_subsample(x, max_points, rng))
                ax.scatter(p[:, 0], p[:, 1], s=7, alpha=0.35, color=GROUP_COLORS[g], label=g, linewidths=0)
                centres[g] = pca.transform(x.mean(0, keepdims=True))[0]
            # Group means: distinct markers (they often overlap) and an arrow negative -> steered mean.
            for g, marker, size in (("positive", "o", 150), ("negative", "s", 110), ("steered", "X", 110)):
                if g in centres:
                    ax.scatter(*centres[g], s=size, marker=marker, color=GROUP_COLORS[g], edgecolor="black",
                               linewidths=0.9, zorder=5)
            if "negative" in centres and "steered" in centres:
                ax.annotate("", xy=centres["steered"], xytext=centres["negative"], zorder=6,
                            arrowprops={"arrowstyle": "->", "color": "black", "linewidth": 1.2})
            ev = pca.explained_variance_ratio_
            ax.set_xlabel(f"PC1 ({100 * ev[0]:.0f}%)")
            ax.set_ylabel(f"PC2 ({100 * ev[1]:.0f}%)")
            ax.set_title(attr)
        handles, labels = axes[0, 0].get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), markerscale=2.5)
    return fig


def plot_orthogonality(theta: Any, attributes: Sequence[str]) -> Figure:
    """Heat map of cosine similarities between steering vectors: theta ``[T, d]``.

    The orthogonality loss pushes off-diagonal entries to 0 (the paper shows no such plot; it is a diagnostic).
    """
    th = _array(theta, "theta", 2)
    if th.shape[0] != len(attributes):
        raise ConfigError(f"theta has {th.shape[0]} rows but {len(attributes)} attribute names were given.")
    unit = th / np.clip(np.linalg.norm(th, axis=1, keepdims=True), 1e-12, None)
    cos = unit @ unit.T
    T = len(attributes)
    with style():
        fig, axes = _figure(width=1.2 * T + 2.6, height=1.0 * T + 1.8)
        ax = axes[0, 0]
        sns.heatmap(cos, ax=ax, vmin=-1, vmax=1, cmap="vlag", annot=True, fmt=".2f", square=True,
                    xticklabels=list(attributes), yticklabels=list(attributes),
                    cbar_kws={"label": "cos(θ_i, θ_j)", "shrink": 0.8})
        ax.tick_params(axis="x", rotation=30)
        ax.tick_params(axis="y", rotation=0)
        off = cos[~np.eye(T, dtype=bool)]
        extra = f" (mean |off-diag| {np.abs(off).mean():.2f})" if off.size else ""
        ax.set_title("Steering-vector cosine similarity" + extra)
    return fig


def plot_gate_distributions(gates: Mapping[str, Mapping[str, Any]], *, bins: int = 25) -> Figure:
    """Distribution of each attribute's gate ``G_t(a)`` on groups of text, one panel per attribute.

    gates: ``{attribute: {group: values [n]}}``, groups typically positive / negative / neutral (see :func:`gate_sets`).
    A targeted gate is high on negatives and low on positives and neutral text.
    """
    if not gates:
        raise ConfigError("plot_gate_distributions needs at least one attribute.")
    edges = np.linspace(0.0, 1.0, bins + 1)
    with style():
        fig, axes = _figure(1, len(gates), width=4.0, height=3.2, sharey=False)
        for ax, (attr, groups) in zip(axes[0], gates.items()):
            for group, values in groups.items():
                v = _array(values, f"{attr}/{group}").reshape(-1)
                if v.size == 0:
                    continue
                color = GROUP_COLORS.get(group)
                ax.hist(v, bins=edges, density=True, histtype="stepfilled", alpha=0.25, color=color)
                ax.hist(v, bins=edges, density=True, histtype="step", linewidth=1.6, color=color,
                        label=f"{group} (mean {v.mean():.2f}, n={v.size})")
            ax.set_xlim(0, 1)
            ax.set_xlabel(f"{attr} gate G(a)")
            ax.set_ylabel("density")
            ax.set_title(attr)
            ax.legend(loc="best", fontsize=8)
    return fig


def plot_token_gates(
    tokens: Sequence[str],
    gates: Any,
    attributes: Sequence[str],
    edit_norm: Any = None,
    *,
    generated: Sequence[bool] | None = None,
    per_row: int = 28,
    title: str | None = None,
) -> Figure:
    """Per-token gate heat map of a text: one row per attribute's gate (0..1) and a row for ``‖Σ_t m_t G_t θ_t‖``.

    tokens: ``n`` token strings; gates ``[n, T]``; edit_norm ``[n]`` (see :func:`edit_norms`) or None;
    generated ``[n]`` marks generated tokens (their labels are drawn in italics). Long texts wrap every
    ``per_row`` tokens.
    """
    g = _array(gates, "gates", 2)
    n, T = g.shape
    if len(tokens) != n:
        raise ConfigError(f"{len(tokens)} tokens but gates have {n} rows.")
    if T != len(attributes):
        raise ConfigError(f"gates have {T} columns but {len(attributes)} attribute names were given.")
    norms = None if edit_norm is None else _array(edit_norm, "edit_norm", 1)
    if norms is not None and len(norms) != n:
        raise ConfigError(f"edit_norm has {len(norms)} entries for {n} tokens.")
    gen = [False] * n if generated is None else [bool(x) for x in generated]
    chunks = max(1, math.ceil(n / per_row))
    rows_per_chunk = T + (1 if norms is not None else 0)
    cmap_g = sns.color_palette(GATE_CMAP, as_cmap=True)
    norm_max = float(norms.max()) if norms is not None and norms.size and norms.max() > 0 else 1.0
    with style():
        fig = Figure(figsize=(max(6.0, 0.42 * min(n, per_row) + 2.5), chunks * (0.42 * rows_per_chunk + 0.9) + 0.6),
                     layout="constrained")
        axes = fig.subplots(chunks, 1, squeeze=False)[:, 0]
        image = edit_image = None
        for c, ax in enumerate(axes):
            lo, hi = c * per_row, min(n, (c + 1) * per_row)
            width = hi - lo
            if width <= 0:
                _empty_note(ax, "(empty text)")
                continue
            image = ax.imshow(g[lo:hi].T, aspect="auto", cmap=cmap_g, vmin=0, vmax=1,
                              extent=(-0.5, width - 0.5, T - 0.5, -0.5))
            labels = list(attributes)
            if norms is not None:
                edit_image = ax.imshow(norms[lo:hi][None, :], aspect="auto", cmap=EDIT_CMAP, vmin=0, vmax=norm_max,
                                       extent=(-0.5, width - 0.5, T + 0.5, T - 0.5))
                labels.append("‖edit‖")
            ax.set_ylim(rows_per_chunk - 0.5, -0.5)
            ax.set_xlim(-0.5, width - 0.5)
            ax.set_yticks(range(rows_per_chunk), labels)
            ax.set_xticks(range(width), [_show_token(t) for t in tokens[lo:hi]], rotation=60, ha="right", fontsize=8)
            for lab, is_gen in zip(ax.get_xticklabels(), gen[lo:hi]):
                if is_gen:
                    lab.set_fontstyle("italic")
                    lab.set_color("#1f4e99")
            ax.grid(False)
            for y in range(1, rows_per_chunk):
                ax.axhline(y - 0.5, color="white", linewidth=1.5)
        if image is not None:
            fig.colorbar(image, ax=list(axes), label="gate", shrink=0.8, pad=0.01)
        if edit_image is not None:
            fig.colorbar(edit_image, ax=list(axes), label="‖Σ m_t G_t θ_t‖", shrink=0.8, pad=0.01)
        fig.suptitle(title or "Per-token gates" + (" (generated tokens in blue italics)" if any(gen) else ""),
                     fontweight="bold", fontsize=11)
    return fig


def token_gates_html(
    tokens: Sequence[str],
    gates: Any,
    attributes: Sequence[str],
    edit_norm: Any = None,
    *,
    generated: Sequence[bool] | None = None,
) -> str:
    """The per-token heat map as an HTML table (for widgets): one row per gate, plus ``‖edit‖``; hover shows values.

    tokens ``n`` strings, gates ``[n, T]``, edit_norm ``[n]`` or None, generated ``[n]`` bool or None.
    """
    g = _array(gates, "gates", 2)
    n, T = g.shape
    if len(tokens) != n or T != len(attributes):
        raise ConfigError(f"token_gates_html: {len(tokens)} tokens, gates {g.shape}, {len(attributes)} attributes.")
    cmap_g = sns.color_palette(GATE_CMAP, as_cmap=True)
    cmap_e = matplotlib.colormaps[EDIT_CMAP]
    norms = None if edit_norm is None else _array(edit_norm, "edit_norm", 1)
    enorm = Normalize(0, float(norms.max()) if norms is not None and norms.size and norms.max() > 0 else 1.0)
    gen = [False] * n if generated is None else [bool(x) for x in generated]

    def cell(value: float, color: str, label: str, bold: bool = False) -> str:
        # Dark backgrounds get white text so the token stays readable.
        rgb = tuple(int(color[i:i + 2], 16) for i in (1, 3, 5))
        fg = "#fff" if (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]) < 140 else "#000"
        weight = "font-weight:bold;" if bold else ""
        return (f'<td title="{value:.3f}" style="background:{color};color:{fg};{weight}padding:2px 4px;'
                f'white-space:pre;font-family:monospace;font-size:12px">{html.escape(label)}</td>')

    shown = [_show_token(t) for t in tokens]
    rows = []
    for t, name in enumerate(attributes):
        cells = "".join(cell(float(g[i, t]), to_hex(cmap_g(float(g[i, t]))), shown[i], gen[i]) for i in range(n))
        rows.append(f'<tr><th style="text-align:right;padding-right:6px">{html.escape(name)}</th>{cells}</tr>')
    if norms is not None:
        cells = "".join(cell(float(norms[i]), to_hex(cmap_e(enorm(float(norms[i])))), shown[i], gen[i])
                        for i in range(n))
        rows.append(f'<tr><th style="text-align:right;padding-right:6px">‖edit‖</th>{cells}</tr>')
    return ('<div class="matsteer-token-gates" style="overflow-x:auto"><table style="border-collapse:collapse">'
            + "".join(rows) + "</table><small>gate 0 (light) to 1 (dark); bold tokens are generated; "
            "hover a token for its value.</small></div>")


# --------------------------------------------------------------------------------------------------------------
# Training and tuning
# --------------------------------------------------------------------------------------------------------------

_TERM_TITLES = {"mmd": "L_MMD (alignment)", "pos": "L_pos (positive preservation)",
                "sparse": "L_sparse (negative sparsity)", "ortho": "L_ortho (orthogonality)",
                "total": "total (λ-weighted)"}


def plot_training_curves(history: Any, terms: Sequence[str] = ("mmd", "pos", "sparse", "ortho", "gate", "total"),
                         *, logy: bool = False) -> Figure:
    """Loss terms over epochs, one panel per term, one line per attribute (train solid, dev dashed).

    history: a :class:`~matsteer.train.History` or its ``to_dict()`` (``{"attributes", "train": {term:
    [epoch][T]}, "dev": ...}``).
    """
    data = history.to_dict() if hasattr(history, "to_dict") else dict(history)
    attributes = list(data["attributes"])
    colors = attribute_colors(attributes)
    with style():
        fig, axes = _figure(1, len(terms), width=3.4, height=3.0)
        for ax, term in zip(axes[0], terms):
            for split, ls in (("train", "-"), ("dev", "--")):
                table = (data.get(split) or {}).get(term) or []
                if not table:
                    continue
                arr = _array(table, f"{split}/{term}", 2)  # [epochs, T]
                epochs = np.arange(1, len(arr) + 1)
                for t, attr in enumerate(attributes):
                    ax.plot(epochs, arr[:, t], ls, color=colors[attr], linewidth=1.5,
                            label=f"{attr} ({split})", marker="o" if len(arr) == 1 else None)
            if not ax.lines:
                _empty_note(ax)
            ax.set_title(_TERM_TITLES.get(term, term), fontsize=10)
            ax.set_xlabel("epoch")
            if logy and ax.lines:
                ax.set_yscale("symlog", linthresh=1e-4)
        handles, labels = axes[0, 0].get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 6))
    return fig


def plot_multiplier_sweep(sweep: Mapping[str, Mapping[str, Any]], *, xlabel: str = "multiplier m_t") -> Figure:
    """Accuracy and KL against a multiplier, per swept attribute.

    sweep: ``{attribute: {"multipliers": [k], "accuracy": [k] or {task: [k]}, "kl": [k] (optional)}}``.
    Left panel accuracy (one line per attribute, or per attribute x task), right panel KL to the base model.
    """
    if not sweep:
        raise ConfigError("plot_multiplier_sweep needs at least one attribute.")
    colors = attribute_colors(list(sweep))
    styles = ["-", "--", ":", "-."]
    has_kl = any("kl" in v for v in sweep.values())
    with style():
        fig, axes = _figure(1, 2 if has_kl else 1, width=4.6, height=3.4)
        acc_ax = axes[0, 0]
        for attr, entry in sweep.items():
            x = _array(entry["multipliers"], f"{attr}/multipliers", 1)
            acc = entry.get("accuracy", {})
            series = acc if isinstance(acc, Mapping) else {None: acc}
            for i, (task, ys) in enumerate(series.items()):
                y = _array(ys, f"{attr}/accuracy", 1)
                label = attr if task is None else f"{attr}: {task}"
                acc_ax.plot(x, y, styles[i % len(styles)], marker="o", color=colors[attr], label=label)
            if has_kl and "kl" in entry:
                axes[0, 1].plot(x, _array(entry["kl"], f"{attr}/kl", 1), marker="s", color=colors[attr], label=attr)
        acc_ax.axvline(1.0, color="0.6", linewidth=0.8, linestyle=":")
        acc_ax.set_xlabel(xlabel)
        acc_ax.set_ylabel("accuracy")
        acc_ax.set_title("Accuracy vs multiplier")
        acc_ax.legend()
        if has_kl:
            kl_ax = axes[0, 1]
            kl_ax.axvline(1.0, color="0.6", linewidth=0.8, linestyle=":")
            kl_ax.set_xlabel(xlabel)
            kl_ax.set_ylabel("KL(base ‖ steered), nats/token")
            kl_ax.set_title("Side effect on neutral text")
            kl_ax.legend()
    return fig


# --------------------------------------------------------------------------------------------------------------
# Paper tables and curves
# --------------------------------------------------------------------------------------------------------------


def plot_ablation(
    results: Mapping[str, Mapping[str, Any]],
    *,
    ylabel: str = "score",
    title: str = "Ablation",
    baseline: str | None = None,
    annotate: bool = True,
) -> Figure:
    """Grouped bars, Table 3 / Table 4 style: ``{setting: {task: score}}``; a score may carry a std for error bars.

    Scores: numbers, ``(mean, std)`` pairs or ``{"mean", "std"}`` dicts. ``baseline`` names a setting drawn as a
    dotted reference line per task (e.g. "Base").
    """
    if not results:
        raise ConfigError("plot_ablation needs at least one setting.")
    settings = list(results)
    tasks = list(dict.fromkeys(task for row in results.values() for task in row))
    width = 0.8 / max(1, len(tasks))
    palette = sns.color_palette("deep", len(tasks))
    with style():
        fig, axes = _figure(width=max(4.5, 0.75 * len(settings) * max(1, len(tasks)) ** 0.5 + 2), height=3.8)
        ax = axes[0, 0]
        x = np.arange(len(settings))
        lo = math.inf
        for j, task in enumerate(tasks):
            means, stds = [], []
            for s in settings:
                m, sd = _mean_std(results[s][task]) if task in results[s] else (math.nan, None)
                means.append(m)
                stds.append(0.0 if sd is None else sd)
            means_arr = np.array(means)
            lo = min(lo, np.nanmin(means_arr - np.array(stds)) if np.isfinite(means_arr).any() else lo)
            err = np.array(stds) if any(stds) else None
            bars = ax.bar(x + (j - (len(tasks) - 1) / 2) * width, means_arr, width * 0.95, yerr=err, capsize=3,
                          color=palette[j], label=task, edgecolor="white")
            if annotate:
                ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
            if baseline is not None and task in results.get(baseline, {}):
                ax.axhline(_mean_std(results[baseline][task])[0], color=palette[j], linestyle=":", linewidth=1)
        if math.isfinite(lo):
            bottom, top = ax.get_ylim()
            bottom = max(0.0, lo - 0.1 * (top - lo))  # zoom in: differences are often a few points
            ax.set_ylim(bottom, top + 0.08 * (top - bottom))  # room for the value labels
        ax.set_xticks(x, settings, rotation=30, ha="right")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        if len(tasks) > 1:
            fig.legend(*ax.get_legend_handles_labels(), loc="outside right upper")
    return fig


def _curve_axis(curves: Mapping[str, Mapping[Any, Any]], ax: Any, marker: str = "o") -> None:
    palette = sns.color_palette("deep", len(curves))
    for i, (name, points) in enumerate(curves.items()):
        xs = sorted(points, key=float)
        x = np.array([float(v) for v in xs])
        ms = [_mean_std(points[v]) for v in xs]
        y = np.array([m for m, _ in ms])
        sd = np.array([0.0 if s is None else s for _, s in ms])
        ax.plot(x, y, marker=marker, color=palette[i], label=name, linewidth=2 if i == 0 else 1.4)
        if sd.any():
            ax.fill_between(x, y - sd, y + sd, color=palette[i], alpha=0.15, linewidth=0)


def plot_data_efficiency(
    curves: Mapping[str, Mapping[float, Any]],
    *,
    reference: Mapping[str, float] | None = None,
    ylabel: str = "accuracy",
    title: str = "Data efficiency",
) -> Figure:
    """Score against the fraction of training data (Fig. 4): ``{method: {fraction in (0, 1]: score}}``.

    reference: horizontal lines, e.g. ``{"SFT (100%)": 54.12}``. Scores may carry a std (shaded band).
    """
    if not curves:
        raise ConfigError("plot_data_efficiency needs at least one method.")
    with style():
        fig, axes = _figure(width=5.2, height=3.6)
        ax = axes[0, 0]
        _curve_axis(curves, ax)
        for i, (name, value) in enumerate((reference or {}).items()):
            ax.axhline(float(value), color="0.4", linestyle=["--", ":", "-."][i % 3], linewidth=1, label=name)
        ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(xmax=1.0))
        ax.set_xlabel("fraction of training data")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend()
    return fig


def plot_num_attributes(
    curves: Mapping[str, Mapping[int, Any]],
    *,
    chance: float | None = 50.0,
    ylabel: str = "MAT-Steer win rate (%)",
    title: str = "Number of attributes",
) -> Figure:
    """Score against the number of steered attributes (Fig. 7): ``{baseline or method: {n_attributes: score}}``.

    chance: a dotted reference line (50% win rate), or None.
    """
    if not curves:
        raise ConfigError("plot_num_attributes needs at least one curve.")
    with style():
        fig, axes = _figure(width=5.0, height=3.6)
        ax = axes[0, 0]
        _curve_axis(curves, ax, marker="s")
        if chance is not None:
            ax.axhline(chance, color="0.4", linestyle=":", linewidth=1.2)
        ns = sorted({int(n) for pts in curves.values() for n in pts})
        ax.set_xticks(ns)
        ax.set_xlabel("number of attributes")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(title="vs." if chance is not None else None)
    return fig


def _format_cell(value: Any, digits: int) -> str:
    if isinstance(value, str):
        return value
    m, sd = _mean_std(value)
    if math.isnan(m):
        return "–"
    return f"{m:.{digits}f}" if sd is None else f"{m:.{digits}f} ± {sd:.{digits}f}"


def _table_figure(cells: list[list[str]], rows: list[str], cols: list[str], title: str,
                  colors: list[list[Any]] | None = None, bold: set[tuple[int, int]] | None = None) -> Figure:
    """A figure holding only a table (rows x cols of strings)."""
    width = max(4.0, 1.6 + 0.11 * max(len(r) for r in rows) + sum(max(10, 0.9 * max(len(c), *(len(cells[i][j])
                for i in range(len(rows))))) * 0.09 for j, c in enumerate(cols)))
    with style():
        fig = Figure(figsize=(width, 0.5 + 0.3 * (len(rows) + 1)), layout="constrained")
        ax = fig.subplots()
        ax.axis("off")
        table = ax.table(cellText=cells, rowLabels=rows, colLabels=cols, cellColours=colors, loc="upper center",
                         cellLoc="center")
        table.auto_set_font_size(False)
        table.set_fontsize(9)
        table.scale(1.0, 1.35)
        for (r, c), cell in table.get_celld().items():
            cell.set_edgecolor("0.8")
            if r == 0 or c == -1:
                cell.set_text_props(fontweight="bold")
                cell.set_facecolor("#eef0f4")
            if bold and r > 0 and (r - 1, c) in bold:
                cell.set_text_props(fontweight="bold")
        ax.set_title(title, fontweight="bold", fontsize=11)
    return fig


def plot_gate_table(table: Mapping[str, Mapping[str, Any]], *, title: str = "ParaDetox gate analysis",
                    digits: int = 2) -> Figure:
    """Table 2 rendered as a figure: ``{metric: {group: value}}`` (see :func:`gate_table_stats`)."""
    if not table:
        raise ConfigError("plot_gate_table needs at least one row.")
    rows = list(table)
    cols = list(dict.fromkeys(g for r in table.values() for g in r))
    cells = [[_format_cell(table[r].get(c, "–"), digits) for c in cols] for r in rows]
    return _table_figure(cells, rows, cols, title)


def plot_method_table(
    table: Mapping[str, Mapping[str, Any]],
    *,
    title: str = "Method comparison (mean ± std)",
    digits: int = 2,
    higher_is_better: bool = True,
) -> Figure:
    """Methods x tasks as a table figure (Table 1 style): cells ``mean ± std``, shaded by rank, best in bold.

    table: ``{method: {task: score}}`` with numbers, ``(mean, std)`` or ``{"mean", "std"}``
    (see :func:`method_table_from_report`); or an evaluation report with a ``"methods"`` entry.
    """
    if "methods" in table and isinstance(table["methods"], Mapping):
        table = method_table_from_report(table)
    if not table:
        raise ConfigError("plot_method_table needs at least one method.")
    rows = list(table)
    cols = list(dict.fromkeys(t for r in table.values() for t in r))
    means = np.full((len(rows), len(cols)), np.nan)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            if c in table[r]:
                means[i, j] = _mean_std(table[r][c])[0]
    cells = [[_format_cell(table[r][c], digits) if c in table[r] else "–" for c in cols] for r in rows]
    cmap = sns.light_palette(_PALETTE[2], as_cmap=True)
    colors, bold = [], set()
    for j in range(len(cols)):
        col = means[:, j]
        if np.isfinite(col).any():
            best = np.nanargmax(col) if higher_is_better else np.nanargmin(col)
            bold.add((int(best), j))
    for i in range(len(rows)):
        row_colors = []
        for j in range(len(cols)):
            col = means[:, j]
            finite = col[np.isfinite(col)]
            if not np.isfinite(means[i, j]) or finite.max() == finite.min():
                row_colors.append("white")
                continue
            frac = (means[i, j] - finite.min()) / (finite.max() - finite.min())
            row_colors.append(cmap(0.1 + 0.6 * (frac if higher_is_better else 1 - frac)))
        colors.append(row_colors)
    return _table_figure(cells, rows, cols, title, colors=colors, bold=bold)


# --------------------------------------------------------------------------------------------------------------
# Figures from saved results (``matsteer figures --results``)
# --------------------------------------------------------------------------------------------------------------

_ABLATION_TITLES = {
    "components": "Loss components (Table 3), test, %", "tokens": "Which tokens to steer (Table 4), test, %",
    "interference": "Steer one attribute, score every task (test, %)",
    "training_tokens": "Which tokens to train on (test, %)",
}


def _rows_percent(name: str, rows: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, tuple[float, float]]]:
    """Ablation rows ``{setting: {task|"mean": {"mean", "std"}, "kl": ...}}`` as percentages, KL dropped, ordered."""
    from .ablations import ROW_ORDER

    known = ROW_ORDER.get(name, [])
    order = sorted(rows, key=lambda k: (known.index(k) if k in known else len(known), k == "all", k))
    return {s: {t: (v["mean"] * 100, v["std"] * 100) for t, v in rows[s].items() if t != "kl"} for s in order}


def _curves_percent(curves: Mapping[str, Mapping[str, Any]], x: type = float
                    ) -> dict[str, dict[Any, tuple[float, float]]]:
    """Saved curves ``{name: {"x": {"mean", "std"}}}`` as ``{name: {x: (mean %, std %)}}`` with numeric x."""
    return {name: {x(k): (p["mean"] * 100, p["std"] * 100) for k, p in pts.items()} for name, pts in curves.items()}


def figures_from_ablation(name: str, saved: Mapping[str, Any]) -> Figure:
    """The figure of one saved ablation (``results/ablations/<name>.json``, see :mod:`matsteer.ablations`)."""
    r = saved["result"]
    ref = {k: v * 100 for k, v in r.get("reference", {}).items()}
    if name in _ABLATION_TITLES:
        return plot_ablation(_rows_percent(name, r["rows"]), ylabel="score (%)", title=_ABLATION_TITLES[name],
                             baseline=r.get("baseline"))
    if name == "data_efficiency":
        return plot_data_efficiency(_curves_percent(r["curves"]), reference=ref, ylabel="three-task mean (%)",
                                    title="Data efficiency (test)")
    if name == "num_attributes":
        return plot_num_attributes(_curves_percent(r["curves"], int), chance=ref.get("No steering"),
                                   ylabel="four-task mean (%)",
                                   title="Number of steered attributes (test; dotted: no steering)")
    if name == "layers":
        fig = plot_num_attributes(_curves_percent(r["curves"], int), chance=ref.get("No steering"),
                                  ylabel="three-task mean (%), dev",
                                  title="Layer sweep (dev; dotted: no steering)")
        fig.axes[0].set_xlabel("layer")
        return fig
    if name == "paradetox_gates":
        return plot_gate_table(r["table"], title=f"ParaDetox gates (intervened: toxicity gate ≥ {r['threshold']})")
    if name == "multiplier_sweep":
        return plot_multiplier_sweep(r["sweep"])
    raise ConfigError(f"No figure for ablation {name!r}.")


def figures_from_report(report: Mapping[str, Any]) -> dict[str, Figure]:
    """The method table (Table 1 style) and grouped bars of an evaluation report (``results/eval.json``)."""
    from .evaluate import PRIMARY
    from .experiments import METHODS

    methods = report["methods"]
    # The constant answer of each task (a reference row) first, then the methods in table order.
    constant = report.get("reference", {}).get("constant")
    rows = {"constant": constant} if constant else {}
    rows.update({m: methods[m] for m in sorted(methods, key=lambda m: METHODS.index(m) if m in METHODS else len(METHODS))})
    ordered = {"methods": rows}
    columns = ("truthfulqa", "toxigen_pref", "toxigen", "bbq", "hh_rlhf", "mean")
    table = {label: {c: row[c] for c in columns if c in row}
             for label, row in method_table_from_report(ordered, scale=100, primary=PRIMARY).items()}
    return {"method_table": plot_method_table(table, title="Test scores (%), mean ± std over seeds"),
            "method_comparison": plot_ablation(table, ylabel="score (%)", title="Methods on the test questions",
                                               baseline=report["methods"].get("none", {}).get("label"))}
