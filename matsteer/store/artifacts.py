"""A trained steerer as a folder: ``steerer.safetensors`` (θ, W, b in float32) + ``manifest.json`` (+ ``history.json``).

Nothing is ever unpickled when loading: tensors come from safetensors and metadata from JSON. Saving is atomic
(the folder is built beside the target and renamed into place) and deterministic (sorted keys, no timestamps),
so identical inputs give byte-identical files.

``import_reference_checkpoint`` converts a checkpoint of the reference code (github.com/duykhuongnguyen/MAT-Steer,
``torch.save`` of ``{"model_state_dict", "input_dim", "num_attributes", "task_names"}`` or of a bare state dict
with ``steering_vectors.{i}`` ``[d]`` and ``gating_weights.{i}.weight`` ``[1, d]`` / ``.bias`` ``[1]``), loading it
with ``torch.load(weights_only=True)`` only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from matsteer.activations.sites import Site
from matsteer.core.config import TrainConfig
from matsteer.core.history import History
from matsteer.core.steerer import Steerer
from matsteer.core.training import TrainResult
from matsteer.errors import ArtifactError
from matsteer.files import (
    atomic_folder,
    fsync_file,
    read_json,
    read_tensors,
    recover_interrupted_folder,
    sha256_file,
)
from matsteer.store.provenance import collect, datasets_in, library_versions

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TENSORS = "steerer.safetensors"
HISTORY = "history.json"
KIND = "matsteer.steerer"  # the format tag in every manifest: not a module path, never renamed
_TENSOR_KEYS = ("theta", "gate_weight", "gate_bias")




def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def recover_interrupted_save(path: str | Path) -> bool:
    """Finish what a killed :func:`save_steerer` left behind at ``path``; True if a previous steerer was restored
    (:func:`matsteer.files.recover_interrupted_folder`: a ``.old`` steerer folder with its manifest is moved back)."""
    return recover_interrupted_folder(path, lambda old: (old / MANIFEST).is_file())


def _is_replaceable(path: Path) -> bool:
    """An existing target may be replaced only if it is an empty folder or a steerer folder (has a manifest)."""
    return path.is_dir() and ((path / MANIFEST).is_file() or not any(path.iterdir()))


def save_steerer(
    path: str | Path,
    steerer: Steerer,
    *,
    site: Site,
    model_name: str,
    model_hash: str,
    config: TrainConfig | None = None,
    history: History | None = None,
    data_info: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    sigma_used: float | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """Write a steerer folder at ``path`` atomically; replace an existing steerer folder there. Returns the path.

    The manifest records: format_version, the model (name + weight hash), the site, d, the attributes and what
    their positive side means, the training config (hyperparameters, loss variant), ``sigma_used`` (the numeric
    σ; needed when ``config.sigma == "median"``), ``data_info`` (splits and their hashes), library versions, the
    final losses (from ``history``) and the safetensors file's sha256. ``history`` is also saved in full as
    ``history.json``. ``provenance`` (default: :func:`matsteer.store.provenance.collect` for the data sets named in
    ``data_info`` and the training seed: data file and split hashes, library versions, Python/platform, git
    commit) is recorded under ``"provenance"``. Identical inputs give byte-identical files (no timestamps).
    A killed earlier save to ``path`` is recovered first (:func:`recover_interrupted_save`).
    """
    path = Path(path)
    recover_interrupted_save(path)
    if path.exists() and not _is_replaceable(path):
        raise ArtifactError(
            f"{path} exists and is not a matsteer steerer folder (no {MANIFEST}); refusing to overwrite it. "
            "Choose another output path or remove it."
        )
    tensors = _steerer_tensors(steerer)
    if config is not None and sigma_used is None and not isinstance(config.sigma, str):
        sigma_used = float(config.sigma)
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "kind": KIND,
        "model": {"name": str(model_name), "hash": str(model_hash)},
        "site": site.to_dict(),
        "d": steerer.d,
        "num_attributes": steerer.num_attributes,
        "attributes": [
            {"index": i, "name": name, "positive_side": side}
            for i, (name, side) in enumerate(zip(steerer.attributes, steerer.positive_sides))
        ],
        "training": _training_entry(config, history, sigma_used),
        "data": dict(data_info) if data_info is not None else None,
        "library_versions": library_versions(),
        "tensors": {
            "file": TENSORS,
            "dtype": "float32",
            "shapes": {k: list(v.shape) for k, v in tensors.items()},
        },
        "extra": dict(extra) if extra is not None else {},
        "provenance": dict(provenance) if provenance is not None else _default_provenance(
            model_name, model_hash, config, data_info),
    }
    _write_folder(path, tensors, manifest, history)
    return path


def _steerer_tensors(steerer: Steerer) -> dict[str, torch.Tensor]:
    """θ ``[T, d]``, W ``[T, d]`` and b ``[T]`` as contiguous float32 CPU tensors; refuses NaN/Inf."""
    tensors = {
        "theta": steerer.theta.detach().float().cpu().contiguous(),
        "gate_weight": steerer.gate_weight.detach().float().cpu().contiguous(),
        "gate_bias": steerer.gate_bias.detach().float().cpu().contiguous(),
    }
    for name, t in tensors.items():
        if not bool(torch.isfinite(t).all()):
            raise ArtifactError(f"Steerer tensor {name} contains NaN/Inf; refusing to save it. Re-train the steerer.")
    return tensors


def _training_entry(config: TrainConfig | None, history: History | None, sigma_used: float | None) -> dict[str, Any]:
    """The manifest's ``training`` entry: settings, loss variant, σ used, epochs run and final losses."""
    return {
        "config": config.to_dict() if config is not None else None,
        "loss_variant": config.loss_variant if config is not None else None,
        "sigma_used": float(sigma_used) if sigma_used is not None else None,
        "epochs_run": history.epochs if history is not None else None,
        "final_losses": (
            {"train": history.final("train"), "dev": history.final("dev")} if history is not None else None
        ),
    }


def _write_folder(path: Path, tensors: dict[str, torch.Tensor], manifest: dict[str, Any],
                  history: History | None) -> None:
    """Write tensors, manifest (with the tensors' sha256) and history into a folder built beside ``path``."""
    with atomic_folder(path) as tmp:
        save_file(tensors, str(tmp / TENSORS), metadata={"format": KIND})
        fsync_file(tmp / TENSORS)
        manifest["tensors"]["sha256"] = sha256_file(tmp / TENSORS)
        try:
            _write_bytes(tmp / MANIFEST, _json_bytes(manifest))
            if history is not None:
                _write_bytes(tmp / HISTORY, _json_bytes(history.to_dict()))
        except (TypeError, ValueError) as exc:
            raise ArtifactError(
                f"Cannot write the manifest for {path}: {exc}. data_info and extra must be JSON-serialisable "
                "(str, numbers, lists, dicts; no NaN)."
            ) from exc


def _default_provenance(
    model_name: str, model_hash: str, config: TrainConfig | None, data_info: Mapping[str, Any] | None
) -> dict[str, Any]:
    """:func:`~matsteer.store.provenance.collect` for the data sets named in ``data_info`` and the training seed."""
    return collect(model_name=model_name, model_hash=model_hash, datasets=datasets_in(data_info),
                   seeds={"train": config.seed} if config is not None else {})


def save_training_result(
    path: str | Path,
    result: TrainResult,
    *,
    site: Site,
    model_name: str,
    model_hash: str,
    data_info: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """:func:`save_steerer` for a :class:`~matsteer.core.training.TrainResult` (config, history, σ used and, when trained
    with dev data, the training-health report under ``extra["health"]``)."""
    if result.health is not None:
        extra = {**(extra or {}), "health": result.health.to_dict()}
    return save_steerer(
        path,
        result.steerer,
        site=site,
        model_name=model_name,
        model_hash=model_hash,
        config=result.config,
        history=result.history,
        data_info=data_info,
        extra=extra,
        sigma_used=result.sigma_used,
    )


def _manifest_error(path: Path, problem: str) -> ArtifactError:
    return ArtifactError(
        f"Malformed steerer manifest {path / MANIFEST}: {problem}. Re-save the steerer (or re-train it)."
    )


def _validate_manifest(manifest: Any, path: Path) -> None:
    if not isinstance(manifest, dict):
        raise _manifest_error(path, "expected a JSON object")
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise _manifest_error(path, f"format_version must be an integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise ArtifactError(
            f"{path / MANIFEST} has format_version {version}, newer than this matsteer supports "
            f"({FORMAT_VERSION}). Upgrade matsteer to load it."
        )
    if version < 1:
        raise _manifest_error(path, f"format_version must be ≥ 1, got {version}")
    d = manifest.get("d")
    if not isinstance(d, int) or isinstance(d, bool) or d <= 0:
        raise _manifest_error(path, f"'d' must be a positive integer, got {d!r}")
    attrs = manifest.get("attributes")
    if not isinstance(attrs, list) or not attrs:
        raise _manifest_error(path, "'attributes' must be a non-empty list")
    for a in attrs:
        if not isinstance(a, dict) or not isinstance(a.get("name"), str) or not isinstance(a.get("positive_side"), str):
            raise _manifest_error(path, f"each attribute needs a 'name' and a 'positive_side' string, got {a!r}")
    site = manifest.get("site")
    if not isinstance(site, dict):
        raise _manifest_error(path, "'site' must be an object with 'layer' and 'component'")
    try:
        Site.from_dict(site)
    except Exception as exc:  # ConfigError from Site validation
        raise _manifest_error(path, f"bad site {site!r} ({exc})") from exc
    model = manifest.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("name"), str) or not isinstance(model.get("hash"), str):
        raise _manifest_error(path, "'model' must be an object with 'name' and 'hash' strings")
    tensors = manifest.get("tensors")
    if tensors is not None and not (isinstance(tensors, dict) and isinstance(tensors.get("sha256", ""), str)):
        raise _manifest_error(path, "'tensors' must be an object with a 'sha256' string")


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Read and validate a steerer folder's manifest (no tensors loaded)."""
    path = Path(path)
    if not path.exists():
        recover_interrupted_save(path)  # a save killed mid-swap left the previous steerer beside the path
    if not path.is_dir():
        raise ArtifactError(f"Steerer folder not found: {path}. Check the path, or train and save a steerer there.")
    manifest = read_json(path / MANIFEST, what="Steerer manifest")
    _validate_manifest(manifest, path)
    return manifest


def load_steerer(path: str | Path, *, verify_hash: bool = True) -> tuple[Steerer, dict[str, Any]]:
    """Load a steerer folder written by :func:`save_steerer`: ``(Steerer on CPU, manifest)``. Never unpickles.

    Raises :class:`ArtifactError` (naming the file and the fix) for a missing folder or file, a truncated or
    corrupted tensor file (including a sha256 mismatch with the manifest), a malformed manifest, a newer
    format_version, or tensor shapes that disagree with the manifest.
    """
    path = Path(path)
    manifest = read_manifest(path)
    tensor_path = path / TENSORS
    if not tensor_path.is_file():
        raise ArtifactError(f"Steerer tensors not found: {tensor_path}. The folder is incomplete; re-save the steerer.")
    expected_hash = (manifest.get("tensors") or {}).get("sha256")
    if verify_hash and expected_hash is not None and sha256_file(tensor_path) != expected_hash:
        raise ArtifactError(
            f"{tensor_path} does not match the sha256 recorded in {path / MANIFEST}: the file was modified or is "
            "corrupted. Re-save the steerer (or re-train it)."
        )
    tensors, _ = read_tensors(tensor_path, "steerer tensor file")
    missing = [k for k in _TENSOR_KEYS if k not in tensors]
    if missing:
        raise ArtifactError(f"{tensor_path} lacks tensors {missing}; it is not a matsteer steerer. Re-save it.")
    T, d = len(manifest["attributes"]), manifest["d"]
    expected = {"theta": (T, d), "gate_weight": (T, d), "gate_bias": (T,)}
    for key, shape in expected.items():
        if tuple(tensors[key].shape) != shape:
            raise ArtifactError(
                f"{tensor_path}: {key} has shape {tuple(tensors[key].shape)} but {path / MANIFEST} says "
                f"{list(shape)} ({T} attributes, d={d}). The files do not belong together; re-save the steerer."
            )
        if not tensors[key].is_floating_point() or not bool(torch.isfinite(tensors[key]).all()):
            raise ArtifactError(f"{tensor_path}: {key} is not a finite float tensor. Re-save the steerer.")
    steerer = Steerer(
        [a["name"] for a in manifest["attributes"]],
        d,
        [a["positive_side"] for a in manifest["attributes"]],
        generator=torch.Generator().manual_seed(0),  # placeholder init; keeps the global RNG untouched
    )
    with torch.no_grad():
        for key in _TENSOR_KEYS:
            getattr(steerer, key).copy_(tensors[key].float())
    return steerer, manifest


def load_history(path: str | Path) -> History | None:
    """The training history saved beside a steerer, or None if it was saved without one."""
    file = Path(path) / HISTORY
    if not file.is_file():
        return None
    return History.from_dict(read_json(file, what="Training history"))


def check_compatible(
    manifest: Mapping[str, Any],
    *,
    model_name: str,
    model_hash: str | None,
    d: int,
    site: Site | Mapping[str, Any],
    allow_model_mismatch: bool = False,
) -> list[str]:
    """Refuse to use a steerer where it does not belong; return warnings for allowed model mismatches.

    A different hidden size d or site is always refused (the vectors would not mean anything there). A different
    model name or weight hash is refused unless ``allow_model_mismatch`` (e.g. the same architecture fine-tuned);
    then a warning is returned. A hash of None on either side skips the hash comparison.
    """
    site_obj = site if isinstance(site, Site) else Site.from_dict(dict(site))
    saved_site = Site.from_dict(dict(manifest["site"]))
    if int(manifest["d"]) != int(d):
        raise ArtifactError(
            f"This steerer was trained for hidden size d={manifest['d']} but the target has d={d}. "
            "Train a steerer on this model's activations."
        )
    if saved_site != site_obj:
        raise ArtifactError(
            f"This steerer was trained at site '{saved_site}' but is being applied at '{site_obj}'. "
            f"Apply it at {saved_site} (layer {saved_site.layer}, component {saved_site.component}) or re-train."
        )
    saved_model = manifest.get("model") or {}
    problems = []
    if saved_model.get("name") != model_name:
        problems.append(f"model name {saved_model.get('name')!r} != {model_name!r}")
    saved_hash = saved_model.get("hash")
    if saved_hash and model_hash and saved_hash != model_hash:
        problems.append(f"model weight hash {saved_hash[:12]}… != {model_hash[:12]}…")
    if problems and not allow_model_mismatch:
        raise ArtifactError(
            f"This steerer was trained on a different model ({'; '.join(problems)}). Use the model it was trained "
            "on, or pass allow_model_mismatch=True (CLI: --allow-model-mismatch) if you know they are compatible."
        )
    return [f"Steerer trained on a different model: {p}." for p in problems]
