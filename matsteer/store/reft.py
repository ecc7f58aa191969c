"""A trained LoReFT intervention as a folder: its tensors in safetensors plus a JSON manifest. Nothing is pickled.

``intervention.safetensors`` holds R, W and b under pyreft's state-dict names (``rotate_layer`` ``[d, r]``, the
materialised Rᵀ with orthonormal columns; ``weight`` ``[r, d]``; ``bias`` ``[r]``; float32). ``manifest.json``
records the LoReFT config, the site, the base model's name and weight hash, the per-step losses, the sha256 of the
tensor file and the library versions. The edit is computed from exactly these tensors whether trained or loaded,
so a loaded intervention gives bit-identical outputs. The folder is written atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from matsteer.activations.models import LoadedModel
from matsteer.activations.sites import Site
from matsteer.core.reft import ReftConfig, ReftResult, ReftSteerer, check_reft_tensors
from matsteer.errors import ArtifactError, ConfigError
from matsteer.files import (
    atomic_folder,
    check_trained_on,
    read_folder_manifest,
    read_manifest_tensors,
    recover_interrupted_folder,
    sha256_file,
    write_json,
    write_tensors,
)
from matsteer.store.provenance import library_versions

FORMAT_VERSION = 1
KIND = "matsteer.loreft"  # the format tag in every manifest
MANIFEST = "manifest.json"
TENSORS = "intervention.safetensors"


def _is_whole(folder: Path) -> bool:
    return (folder / MANIFEST).is_file() and (folder / TENSORS).is_file()


def save_reft(result: ReftResult, path: str | Path) -> Path:
    """Write ``result``'s intervention to the folder ``path`` (replacing an earlier LoReFT folder there); returns it.

    Refuses a result of zero steps (no intervention to save) and a folder that is neither empty nor a LoReFT
    folder (:class:`ArtifactError`)."""
    path = Path(path)
    recover_interrupted_folder(path, _is_whole)
    if path.exists() and not (path.is_dir() and ((path / MANIFEST).is_file() or not any(path.iterdir()))):
        raise ArtifactError(f"{path} exists and is not a LoReFT folder; choose another path or remove it.")
    tensors = result.tensors
    if not tensors:
        raise ArtifactError("The result holds no intervention (zero training steps); train with steps ≥ 1.")
    d, rank = check_reft_tensors(tensors)
    with atomic_folder(path) as tmp:
        write_tensors(tmp / TENSORS, tensors, metadata={"format": "pt"})
        manifest: dict[str, Any] = {
            "kind": KIND,
            "format_version": FORMAT_VERSION,
            "method": "loreft",
            "config": result.config.to_dict(),
            "site": result.site.to_dict(),
            "d": d,
            "rank": rank,
            "base_model": {"name": result.base_name, "weight_hash": result.base_hash},
            "training": {"steps": result.steps, "losses": result.losses, "wall_seconds": result.wall_seconds,
                         "train_seconds": result.train_seconds, "examples": result.examples},
            "tensors": {"file": TENSORS, "sha256": sha256_file(tmp / TENSORS), "names": sorted(tensors)},
            "library_versions": library_versions(),
        }
        write_json(tmp / MANIFEST, manifest)
    return path


def read_reft_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of a LoReFT folder, checked for its kind and format version (:class:`ArtifactError`)."""
    return read_folder_manifest(path, kind=KIND, format_version=FORMAT_VERSION, what="LoReFT", writer="save_reft",
                                is_whole=_is_whole)


def load_reft(
    path: str | Path,
    loaded: LoadedModel | None = None,
    *,
    device: str | torch.device | None = None,
    allow_model_mismatch: bool = False,
) -> tuple[ReftSteerer, ReftConfig, Site, dict[str, Any]]:
    """A saved LoReFT: ``(its edit as a ReftSteerer, its ReftConfig, its Site, manifest)``.

    With ``loaded``, the model must be the one it was trained on (same weight hash) unless
    ``allow_model_mismatch``. ``device``: where the steerer goes (default: the CPU). Its edit, and so the logits of
    a model steered with it, is identical to the one training returned.
    """
    path = Path(path)
    manifest = read_reft_manifest(path)
    if loaded is not None:
        check_trained_on(path, manifest, loaded.name, loaded.weight_hash, allow_model_mismatch)
    tensors = read_manifest_tensors(path, manifest, TENSORS, "LoReFT tensors", "Save the intervention again.")
    try:
        config = ReftConfig.from_dict(manifest["config"])
        config.validate()
        site = Site.from_dict(manifest["site"])
        d, _ = check_reft_tensors(tensors)
        steerer = ReftSteerer(d, tensors)
    except (KeyError, TypeError, ConfigError) as exc:
        raise ArtifactError(f"{path} holds no valid LoReFT intervention ({exc}); save it again.") from exc
    if device is not None:
        steerer = steerer.to(device)
    return steerer, config, site, manifest
