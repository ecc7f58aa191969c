"""Figures of activations, gates and training, each from plain data (tensors, arrays, dicts, lists).

Every ``plot_*`` function returns a :class:`matplotlib.figure.Figure` built without pyplot, so nothing accumulates in
pyplot's global figure list (tests and notebooks can make hundreds of figures); :func:`matsteer.viz.style.save_figure`
writes PNG and PDF. Figures of the paper (§6 of the reference notes) and diagnostics it lacks:

- :func:`plot_pca` positive / negative / steered-negative activations per attribute;
- :func:`plot_orthogonality` cosine similarity of the steering vectors θ (a diagnostic the paper does not show);
- :func:`plot_gate_distributions` gate values per attribute on positive, negative and neutral text;
- :func:`plot_token_gates` per-token gate heat map plus the size of the total edit ``‖Σ_t m_t G_t θ_t‖``
  (App. C's FaithEval visualisation); :func:`token_gates_html` is the same as an HTML table (widgets);
- :func:`plot_training_curves` loss terms over epochs (from :class:`~matsteer.core.training.History`).

Scores and results are drawn by :mod:`matsteer.viz.charts` and :mod:`matsteer.viz.tables`, saved results by
:mod:`matsteer.viz.figures`. :mod:`matsteer.eval.gate_analysis` turns library objects into these plain inputs
(:func:`~matsteer.eval.gate_analysis.steered_sets`, :func:`~matsteer.eval.gate_analysis.gate_sets`,
:func:`~matsteer.eval.gate_analysis.edit_norms`, :func:`~matsteer.eval.gate_analysis.token_strings`), so the
notebooks hold no logic of their own."""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib
import numpy as np
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.colors import Normalize, to_hex
from matplotlib.figure import Figure

from matsteer.core.training import History
from matsteer.errors import ConfigError
from matsteer.eval.gate_analysis import as_array
from matsteer.viz.style import EDIT_CMAP, GATE_CMAP, GROUP_COLORS, attribute_colors, new_figure, style

__all__ = [
    "plot_gate_distributions",
    "plot_orthogonality",
    "plot_pca",
    "plot_token_gates",
    "plot_training_curves",
    "token_gates_html",
]


def _subsample(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return x if len(x) <= n else x[rng.choice(len(x), n, replace=False)]


def _empty_note(ax: Axes, text: str = "no data") -> None:
    """Mark an empty panel with ``text`` (no ticks)."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.5")
    ax.set_xticks([])
    ax.set_yticks([])


def _show_token(tok: str) -> str:
    """A token made visible in a figure: newlines and tabs as symbols, leading spaces as a middle dot."""
    tok = tok.replace("\n", "⏎").replace("\t", "⇥")
    stripped = tok.lstrip(" ")
    return "·" * (len(tok) - len(stripped)) + stripped if stripped else "␣" * max(1, len(tok))


def plot_pca(
    sets: Mapping[str, Mapping[str, Any]],
    *,
    max_points: int = 800,
    seed: int = 0,
) -> Figure:
    """PCA of activations, one panel per attribute.

    sets: ``{attribute: {"positive": [n, d], "negative": [m, d], "steered": [m, d]}}`` (``steered`` optional;
    see :func:`matsteer.eval.gate_analysis.steered_sets`). PCA is fitted on positives + negatives, so the steered points are shown in the
    same plane; large markers are group means (circle positive, square negative, cross steered; the arrow goes
    from the negative mean to the steered mean).
    """
    from sklearn.decomposition import PCA

    if not sets:
        raise ConfigError("plot_pca needs at least one attribute.")
    rng = np.random.default_rng(seed)
    with style():
        fig, axes = new_figure(1, len(sets), width=4.2, height=3.8)
        for ax, (attr, groups) in zip(axes[0], sets.items()):
            data = {g: as_array(groups[g], f"{attr}/{g}", 2) for g in ("positive", "negative", "steered") if g in groups}
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
    th = as_array(theta, "theta", 2)
    if th.shape[0] != len(attributes):
        raise ConfigError(f"theta has {th.shape[0]} rows but {len(attributes)} attribute names were given.")
    unit = th / np.clip(np.linalg.norm(th, axis=1, keepdims=True), 1e-12, None)
    cos = unit @ unit.T
    T = len(attributes)
    with style():
        fig, axes = new_figure(width=1.2 * T + 2.6, height=1.0 * T + 1.8)
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

    gates: ``{attribute: {group: values [n]}}``, groups typically positive / negative / neutral (see :func:`matsteer.eval.gate_analysis.gate_sets`).
    A targeted gate is high on negatives and low on positives and neutral text.
    """
    if not gates:
        raise ConfigError("plot_gate_distributions needs at least one attribute.")
    edges = np.linspace(0.0, 1.0, bins + 1)
    with style():
        fig, axes = new_figure(1, len(gates), width=4.0, height=3.2, sharey=False)
        for ax, (attr, groups) in zip(axes[0], gates.items()):
            for group, values in groups.items():
                v = as_array(values, f"{attr}/{group}").reshape(-1)
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

    tokens: ``n`` token strings; gates ``[n, T]``; edit_norm ``[n]`` (see
    :func:`matsteer.eval.gate_analysis.edit_norms`) or None; generated ``[n]`` marks generated tokens (their labels
    are drawn in italics). Long texts wrap every ``per_row`` tokens.
    """
    g = as_array(gates, "gates", 2)
    n, T = g.shape
    if len(tokens) != n:
        raise ConfigError(f"{len(tokens)} tokens but gates have {n} rows.")
    if T != len(attributes):
        raise ConfigError(f"gates have {T} columns but {len(attributes)} attribute names were given.")
    norms = None if edit_norm is None else as_array(edit_norm, "edit_norm", 1)
    if norms is not None and len(norms) != n:
        raise ConfigError(f"edit_norm has {len(norms)} entries for {n} tokens.")
    gen = [False] * n if generated is None else [bool(x) for x in generated]
    chunks = max(1, math.ceil(n / per_row))
    rows_per_chunk = T + (1 if norms is not None else 0)
    with style():
        fig = Figure(figsize=(max(6.0, 0.42 * min(n, per_row) + 2.5), chunks * (0.42 * rows_per_chunk + 0.9) + 0.6),
                     layout="constrained")
        axes = fig.subplots(chunks, 1, squeeze=False)[:, 0]
        image = edit_image = None
        for c, ax in enumerate(axes):
            lo, hi = c * per_row, min(n, (c + 1) * per_row)
            if hi - lo <= 0:
                _empty_note(ax, "(empty text)")
                continue
            image, edit_image = _token_gate_rows(ax, g[lo:hi], None if norms is None else norms[lo:hi],
                                                 tokens[lo:hi], gen[lo:hi], attributes, norm_max=_norm_max(norms))
        if image is not None:
            fig.colorbar(image, ax=list(axes), label="gate", shrink=0.8, pad=0.01)
        if edit_image is not None:
            fig.colorbar(edit_image, ax=list(axes), label="‖Σ m_t G_t θ_t‖", shrink=0.8, pad=0.01)
        fig.suptitle(title or "Per-token gates" + (" (generated tokens in blue italics)" if any(gen) else ""),
                     fontweight="bold", fontsize=11)
    return fig


def _norm_max(norms: np.ndarray | None) -> float:
    """The top of the edit-size colour scale: the largest edit, or 1 when there is none."""
    return float(norms.max()) if norms is not None and norms.size and norms.max() > 0 else 1.0


def _token_gate_rows(ax: Axes, g: np.ndarray, norms: np.ndarray | None, tokens: Sequence[str], gen: Sequence[bool],
                     attributes: Sequence[str], norm_max: float) -> tuple[Any, Any]:
    """One row of :func:`plot_token_gates`: the gates ``[w, T]`` (and edit sizes ``[w]``) of ``w`` tokens as heat
    rows on ``ax``; returns the gate image and the edit image (None without edit sizes)."""
    width, T = g.shape
    rows = T + (1 if norms is not None else 0)
    image = ax.imshow(g.T, aspect="auto", cmap=sns.color_palette(GATE_CMAP, as_cmap=True), vmin=0, vmax=1,
                      extent=(-0.5, width - 0.5, T - 0.5, -0.5))
    edit_image = None
    labels = list(attributes)
    if norms is not None:
        edit_image = ax.imshow(norms[None, :], aspect="auto", cmap=EDIT_CMAP, vmin=0, vmax=norm_max,
                               extent=(-0.5, width - 0.5, T + 0.5, T - 0.5))
        labels.append("‖edit‖")
    ax.set_ylim(rows - 0.5, -0.5)
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_yticks(range(rows), labels)
    ax.set_xticks(range(width), [_show_token(t) for t in tokens], rotation=60, ha="right", fontsize=8)
    for lab, is_gen in zip(ax.get_xticklabels(), gen):
        if is_gen:
            lab.set_fontstyle("italic")
            lab.set_color("#1f4e99")
    ax.grid(False)
    for y in range(1, rows):
        ax.axhline(y - 0.5, color="white", linewidth=1.5)
    return image, edit_image


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
    g = as_array(gates, "gates", 2)
    n, T = g.shape
    if len(tokens) != n or T != len(attributes):
        raise ConfigError(f"token_gates_html: {len(tokens)} tokens, gates {g.shape}, {len(attributes)} attributes.")
    cmap_g = sns.color_palette(GATE_CMAP, as_cmap=True)
    cmap_e = matplotlib.colormaps[EDIT_CMAP]
    norms = None if edit_norm is None else as_array(edit_norm, "edit_norm", 1)
    enorm = Normalize(0, _norm_max(norms))
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


_TERM_TITLES = {"mmd": "L_MMD (alignment)", "pos": "L_pos (positive preservation)",
                "sparse": "L_sparse (negative sparsity)", "ortho": "L_ortho (orthogonality)",
                "total": "total (λ-weighted)"}


def plot_training_curves(history: History | Mapping[str, Any], terms: Sequence[str] = ("mmd", "pos", "sparse", "ortho", "gate", "total"),
                         *, logy: bool = False) -> Figure:
    """Loss terms over epochs, one panel per term, one line per attribute (train solid, dev dashed).

    history: a :class:`~matsteer.core.training.History` or its ``to_dict()`` (``{"attributes", "train": {term:
    [epoch][T]}, "dev": ...}``).
    """
    data = history.to_dict() if hasattr(history, "to_dict") else dict(history)
    attributes = list(data["attributes"])
    colors = attribute_colors(attributes)
    with style():
        fig, axes = new_figure(1, len(terms), width=3.4, height=3.0)
        for ax, term in zip(axes[0], terms):
            for split, ls in (("train", "-"), ("dev", "--")):
                table = (data.get(split) or {}).get(term) or []
                if not table:
                    continue
                arr = as_array(table, f"{split}/{term}", 2)  # [epochs, T]
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
