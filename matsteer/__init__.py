"""matsteer: multi-attribute targeted steering (MAT-Steer) of language models, as a research workbench.

Data flows one way: data -> activations -> training -> steering -> evaluation -> figures.
Public names are imported lazily so that ``import matsteer`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "MatSteerError": "errors",
    "Site": "sites",
    "Steerer": "steerer",
    "load_model": "models",
    "DEFAULT_MODEL": "models",
    "extract": "extract",
    "load_features": "features",
    "extract_to_folder": "features",
    "load_examples": "data",
    "train": "train",
    "TrainConfig": "train",
    "AttributeData": "train",
    "save_steerer": "artifacts",
    "load_steerer": "artifacts",
    "steer": "intervention",
    "MATIntervener": "intervention",
    "create_mat_pyvene_config": "intervention",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'matsteer' has no attribute {name!r}")
