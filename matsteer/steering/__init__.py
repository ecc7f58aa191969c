"""Stage 5, steering a running model: the pyvene intervention, gate recording, steered generation."""

from __future__ import annotations

from typing import TYPE_CHECKING

from matsteer._lazy import lazy_attributes

if not TYPE_CHECKING:  # no names of its own: submodules as attributes (matsteer.core.steerer), imported on first use
    __getattr__, __dir__ = lazy_attributes(__name__, {})
