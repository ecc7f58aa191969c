"""A LoRA fine-tuning baseline as a folder: peft's adapter files plus a matsteer manifest. Nothing is pickled.

``adapter_model.safetensors`` (peft's adapter state dict: ``...q_proj.lora_A.weight`` ``[rank, d_in]`` and
``...lora_B.weight`` ``[d_out, rank]``, float32) and ``adapter_config.json`` (peft's ``LoraConfig``) carry peft's
own names, so ``peft.PeftModel.from_pretrained(base, folder)`` reads the folder too. ``manifest.json`` records the
fine-tuning config, the base model's name and weight hash, the per-step losses and the library versions.
The folder is written atomically (built beside the target, then renamed into place).
"""

from __future__ import annotations

from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import torch

from matsteer.activations.models import LoadedModel
from matsteer.core.finetune import FinetuneConfig, FinetuneResult, merged_copy, read_lora_config
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
KIND = "matsteer.lora_adapter"  # the format tag in every manifest
MANIFEST = "manifest.json"
WEIGHTS = "adapter_model.safetensors"  # peft's file names
PEFT_CONFIG = "adapter_config.json"


def _versions() -> dict[str, str | None]:
    out = library_versions()
    for name in ("peft", "trl"):
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            out[name] = None
    return out


def _is_whole(folder: Path) -> bool:
    return (folder / MANIFEST).is_file() and (folder / WEIGHTS).is_file()


def save_adapter(result: FinetuneResult, path: str | Path) -> Path:
    """Write ``result``'s adapter to the folder ``path`` (replacing an earlier adapter folder there); returns it.

    Refuses to replace a folder that is neither empty nor an adapter folder (:class:`ArtifactError`)."""
    path = Path(path)
    recover_interrupted_folder(path, _is_whole)
    if path.exists() and not (path.is_dir() and ((path / MANIFEST).is_file() or not any(path.iterdir()))):
        raise ArtifactError(f"{path} exists and is not an adapter folder; choose another path or remove it.")
    if not result.adapter:
        raise ArtifactError("The result holds no adapter weights; train with train_lora_sft / train_lora_dpo.")
    with atomic_folder(path) as tmp:
        write_tensors(tmp / WEIGHTS, result.adapter, metadata={"format": "pt"})  # peft's metadata
        result.peft_config.save_pretrained(str(tmp))
        manifest: dict[str, Any] = {
            "kind": KIND,
            "format_version": FORMAT_VERSION,
            "method": result.config.method,
            "config": result.config.to_dict(),
            "base_model": {"name": result.base_name, "weight_hash": result.base_hash},
            "training": {"steps": result.steps, "losses": result.losses, "wall_seconds": result.wall_seconds,
                         "examples": result.examples, "eval_loss_before": result.eval_loss_before,
                         "eval_loss_after": result.eval_loss_after},
            "tensors": {"file": WEIGHTS, "sha256": sha256_file(tmp / WEIGHTS), "count": len(result.adapter)},
            "library_versions": _versions(),
        }
        write_json(tmp / MANIFEST, manifest)
    return path


def read_adapter_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of an adapter folder, checked for its kind and format version (:class:`ArtifactError`)."""
    return read_folder_manifest(path, kind=KIND, format_version=FORMAT_VERSION, what="LoRA adapter",
                                writer="save_adapter", is_whole=_is_whole)


def load_adapter(
    path: str | Path,
    loaded: LoadedModel,
    *,
    device: str | torch.device | None = None,
    allow_model_mismatch: bool = False,
) -> tuple[LoadedModel, FinetuneConfig, dict[str, Any]]:
    """Merge a saved adapter into a copy of ``loaded``: ``(adapted model, its FinetuneConfig, manifest)``.

    The base model must be the one the adapter was trained on (same weight hash) unless ``allow_model_mismatch``;
    the merged weights, and so the logits, are identical to the ``adapted`` model training returned.
    """
    path = Path(path)
    manifest = read_adapter_manifest(path)
    check_trained_on(path, manifest, loaded.name, loaded.weight_hash, allow_model_mismatch)
    adapter = read_manifest_tensors(path, manifest, WEIGHTS, "adapter weights", "Save the adapter again.")
    try:
        config = FinetuneConfig.from_dict(manifest["config"])
        config.validate()
    except (KeyError, TypeError, ConfigError) as exc:
        raise ArtifactError(f"{path / MANIFEST} has no valid fine-tuning config ({exc}); save the adapter again.") \
            from exc
    if not (path / PEFT_CONFIG).is_file():
        raise ArtifactError(f"{path / PEFT_CONFIG} is missing; the folder is incomplete. Save the adapter again.")
    peft_config = read_lora_config(path)
    adapted = merged_copy(loaded, peft_config, adapter, device=device, suffix=f"lora-{config.method}")
    return adapted, config, manifest
