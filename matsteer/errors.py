"""The one exception family matsteer raises for bad input.

Every message names the problem and the fix; the CLI prints it and exits non-zero.
"""

from __future__ import annotations


class MatSteerError(Exception):
    """Base class: a problem the user can fix (bad input, missing file, mismatch)."""


class ConfigError(MatSteerError, ValueError):
    """An impossible or unknown setting (layer out of range, σ ≤ 0, unknown attribute...)."""


class DataError(MatSteerError, ValueError):
    """A missing, empty or malformed data file, or a split that cannot be used."""


class ArtifactError(MatSteerError, ValueError):
    """A cache, steerer or manifest that is corrupt, from a newer format, or does not match."""


class ModelError(MatSteerError, ValueError):
    """A model that cannot be loaded or that lacks the requested site."""


class TrainingError(MatSteerError, RuntimeError):
    """Training diverged (NaN/Inf) or cannot start."""
