"""Checkpoints of the reference code (github.com/duykhuongnguyen/MAT-Steer) as a :class:`~matsteer.core.steerer.Steerer`.

The reference saves ``torch.save`` of ``{"model_state_dict", "input_dim", "num_attributes", "task_names"}`` or of a
bare state dict with ``steering_vectors.{i}`` ``[d]`` and ``gating_weights.{i}.weight`` ``[1, d]`` / ``.bias``
``[1]``; it is loaded with ``torch.load(weights_only=True)`` only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from matsteer.core.steerer import Steerer
from matsteer.errors import ArtifactError

_VEC_KEY = re.compile(r"^steering_vectors\.(\d+)$")


def import_reference_checkpoint(
    path: str | Path,
    attribute_names: Sequence[str] | None = None,
    positive_sides: Sequence[str] | None = None,
) -> Steerer:
    """Convert a reference-code MAT-Steer checkpoint (``torch.save`` file) into a :class:`Steerer`.

    Accepts ``{"model_state_dict": sd, "input_dim": d, "num_attributes": T, "task_names": [...]}`` or a bare
    ``sd`` (the first code push). ``sd`` holds ``steering_vectors.{i}`` ``[d]``, ``gating_weights.{i}.weight``
    ``[1, d]`` and ``gating_weights.{i}.bias`` ``[1]``. Loaded with ``weights_only=True``: a file holding
    arbitrary pickled objects is refused. Names: ``attribute_names``, else the checkpoint's ``task_names``, else
    ``attr0..``. Note the reference code treats label 1 as the positive (desired) side.
    """
    path = Path(path)
    state, declared_t, declared_d, task_names = _read_checkpoint(path)
    T = _count_attributes(path, state, declared_t)
    thetas, weights, biases = _attribute_tensors(path, state, T, declared_d)
    d = int(thetas[0].shape[0])
    if attribute_names is not None:
        names = list(attribute_names)
    elif task_names is not None:
        names = [str(n) for n in task_names]
    else:
        names = [f"attr{i}" for i in range(T)]
    if len(names) != T:
        raise ArtifactError(f"{path} has {T} attributes but {len(names)} names were given ({names}).")
    steerer = Steerer(names, d, positive_sides, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        steerer.theta.copy_(torch.stack(thetas))
        steerer.gate_weight.copy_(torch.stack(weights))
        steerer.gate_bias.copy_(torch.cat(biases))
    return steerer


def _read_checkpoint(path: Path) -> tuple[dict[str, Any], Any, Any, Any]:
    """``(state dict without "module." prefixes, declared T, declared d, task names)``; the declared values may be
    None (a bare state dict)."""
    if not path.is_file():
        raise ArtifactError(f"Reference checkpoint not found: {path}. Check the path.")
    try:
        ckpt = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # UnpicklingError for non-weights content, RuntimeError/EOFError for corrupt zips
        raise ArtifactError(
            f"Cannot load {path} as a weights-only PyTorch checkpoint ({type(exc).__name__}: {exc}). It is "
            "corrupted or holds arbitrary Python objects, which matsteer refuses to unpickle."
        ) from exc
    if not isinstance(ckpt, Mapping):
        raise ArtifactError(f"{path} holds a {type(ckpt).__name__}, not a MAT-Steer state dict.")
    if "model_state_dict" in ckpt:
        state = ckpt["model_state_dict"]
        declared_t, declared_d = ckpt.get("num_attributes"), ckpt.get("input_dim")
        task_names = ckpt.get("task_names")
    else:
        state, declared_t, declared_d, task_names = ckpt, None, None, None
    if not isinstance(state, Mapping):
        raise ArtifactError(f"{path}: 'model_state_dict' is not a mapping of tensors.")
    state = {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in state.items()}
    return state, declared_t, declared_d, task_names


def _count_attributes(path: Path, state: Mapping[str, Any], declared_t: Any) -> int:
    """T: the number of ``steering_vectors.N`` entries (indices 0..T-1, as many as declared)."""
    indices = sorted(int(m.group(1)) for k in state if (m := _VEC_KEY.match(k)))
    if not indices:
        raise ArtifactError(
            f"{path} has no 'steering_vectors.N' entries (keys: {sorted(state)[:8]}...); it is not a MAT-Steer "
            "reference checkpoint."
        )
    T = len(indices)
    if indices != list(range(T)):
        raise ArtifactError(f"{path}: steering vector indices {indices} are not 0..{T - 1}.")
    if declared_t is not None and int(declared_t) != T:
        raise ArtifactError(f"{path}: num_attributes={declared_t} but the state dict has {T} steering vectors.")
    return T


def _attribute_tensors(
    path: Path, state: Mapping[str, Any], T: int, declared_d: Any
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Per attribute: θ ``[d]``, gate weight ``[d]`` and bias ``[1]`` (float32), their shapes checked."""
    thetas, weights, biases = [], [], []
    for i in range(T):
        try:
            vec = state[f"steering_vectors.{i}"]
            w = state[f"gating_weights.{i}.weight"]
            b = state[f"gating_weights.{i}.bias"]
        except KeyError as exc:
            raise ArtifactError(f"{path}: missing {exc.args[0]!r} for attribute {i}.") from exc
        if not all(isinstance(x, torch.Tensor) for x in (vec, w, b)):
            raise ArtifactError(f"{path}: entries for attribute {i} are not tensors.")
        thetas.append(vec.reshape(-1).float())
        weights.append(w.reshape(-1).float())
        biases.append(b.reshape(-1).float())
    d = int(thetas[0].shape[0])
    if declared_d is not None and int(declared_d) != d:
        raise ArtifactError(f"{path}: input_dim={declared_d} but the steering vectors have d={d}.")
    for i, (vec, w, b) in enumerate(zip(thetas, weights, biases)):
        if vec.shape[0] != d or w.shape[0] != d or b.shape[0] != 1:
            raise ArtifactError(
                f"{path}: attribute {i} has vector {tuple(vec.shape)}, gate weight {tuple(w.shape)}, bias "
                f"{tuple(b.shape)}; expected ({d},), ({d},), (1,)."
            )
    return thetas, weights, biases
