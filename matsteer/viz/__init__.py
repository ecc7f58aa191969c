"""Stage 7, figures: plots and the figure builders for saved results (no model passes).

Modules: ``style`` (the shared look, ``save_figure``), ``plots`` (activations, gates, training curves), ``charts``
(bars and curves of scores), ``tables`` (table figures), ``figures`` (figures of saved reports and ablations).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from matsteer._lazy import lazy_attributes

if not TYPE_CHECKING:  # no names of its own: submodules as attributes (matsteer.core.steerer), imported on first use
    __getattr__, __dir__ = lazy_attributes(__name__, {})
