"""The figures' shared look: one seaborn/matplotlib style, fixed colours per attribute and per group of text,
pyplot-free figures, reading a score given in any of the accepted forms, and :func:`save_figure`."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib
import numpy as np
import seaborn as sns
import torch
from matplotlib.figure import Figure

from matsteer.errors import ConfigError

if TYPE_CHECKING:
    from matplotlib.typing import RcKeyType

__all__ = [
    "EDIT_CMAP",
    "GATE_CMAP",
    "GROUP_COLORS",
    "PALETTE",
    "attribute_colors",
    "new_figure",
    "save_figure",
    "score_mean_std",
    "style",
]

PALETTE = sns.color_palette("colorblind", 10)

# Fixed colours for the attributes the shipped data sets carry, so every figure agrees on them.
_KNOWN_ATTRIBUTES = ("truthfulness", "toxicity", "bias", "harmlessness", "helpfulness", "correctness",
                     "coherence", "complexity", "verbosity")

GROUP_COLORS: dict[str, tuple[float, float, float]] = {
    "positive": PALETTE[2],  # green: the desirable side
    "negative": PALETTE[3],  # red-orange: the side to move
    "steered": PALETTE[0],  # blue: negatives after f(a)
    "neutral": (0.55, 0.55, 0.55),
}

_RC: dict[RcKeyType, Any] = {
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


@contextmanager
def style() -> Iterator[None]:
    """The workbench style (seaborn ``whitegrid`` + ``notebook`` context) for the figures made inside."""
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.9), matplotlib.rc_context(_RC):
        yield


def new_figure(nrows: int = 1, ncols: int = 1, *, width: float = 5.0, height: float = 3.6, squeeze: bool = False,
               **kwargs: Any) -> tuple[Figure, np.ndarray]:
    """A pyplot-free figure with an ``[nrows, ncols]`` array of axes (call inside :func:`style`)."""
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=squeeze, **kwargs)
    return fig, axes


def attribute_colors(attributes: Sequence[str]) -> dict[str, tuple[float, float, float]]:
    """One colour per attribute; the known attribute names always get the same colour."""
    colors = {}
    spare = iter([c for i, c in enumerate(PALETTE) if i >= len(_KNOWN_ATTRIBUTES)] + list(PALETTE))
    for name in attributes:
        if name in _KNOWN_ATTRIBUTES:
            colors[name] = PALETTE[_KNOWN_ATTRIBUTES.index(name) % len(PALETTE)]
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


def score_mean_std(value: Any) -> tuple[float, float | None]:
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
