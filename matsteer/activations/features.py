"""The on-disk activation cache: one folder per (model, site, tokens, dataset, split, ...) extraction.

A folder holds ``activations.safetensors`` (``activations [M, d]``, ``labels [M]``, ``text_index [M]``,
``token_index [M]``) and ``manifest.json``. The manifest is written last, and both carry the cache key, so a
folder whose extraction was interrupted or made with other settings is never read as complete. Work in progress
is streamed to ``.partial-<key>/`` shards (each written atomically), which an interrupted run resumes from.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from matsteer.activations.extraction import ActivationRows, encode_texts, extract_encoded
from matsteer.activations.models import LoadedModel, pad_token_id
from matsteer.activations.sites import Site
from matsteer.data.records import Example
from matsteer.data.registry import POSITIVE_SIDE
from matsteer.errors import ArtifactError, ConfigError, DataError
from matsteer.files import read_json, read_tensors, sha256_json, write_json, write_tensors

FORMAT_VERSION = 1
# Bumped whenever extraction semantics change (e.g. which positions a token selection keeps), so old caches go stale.
EXTRACTOR_VERSION = 2
_TENSORS = ("activations", "labels", "text_index", "token_index")


@dataclass
class FeatureSet:
    """Activations of one dataset split at one site, with labels (1 = the desirable side)."""

    activations: torch.Tensor  # [M, d] float32
    labels: torch.Tensor  # [M] int64
    text_index: torch.Tensor  # [M] int64: which text each row came from
    token_index: torch.Tensor  # [M] int64: position of the row's token in its text
    manifest: dict[str, Any]
    path: Path | None = None

    @property
    def attribute(self) -> str:
        return str(self.manifest["attribute"])

    @property
    def positive_side(self) -> str:
        return str(self.manifest.get("positive_side", "label 1"))

    @property
    def site(self) -> Site:
        return Site.from_dict(self.manifest["site"])

    @property
    def positives(self) -> torch.Tensor:
        return self.activations[self.labels == 1]

    @property
    def negatives(self) -> torch.Tensor:
        return self.activations[self.labels == 0]


def cache_key(spec: dict[str, Any]) -> str:
    return sha256_json({"format": FORMAT_VERSION, **spec})


def _texts_fingerprint(examples: Sequence[Example]) -> str:
    return sha256_json([[e.text, e.answer_span, int(e.label), e.group] for e in examples])


def _rows_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the row tensors (names, dtypes, shapes, bytes): safetensors itself has no checksum, so a
    flipped byte in the data would otherwise load as silently wrong activations."""
    h = hashlib.sha256()
    for name in _TENSORS:
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _save_rows(path: Path, rows: ActivationRows, key: str) -> None:
    tensors = {name: getattr(rows, name) for name in _TENSORS}
    write_tensors(path, tensors, metadata={"cache_key": key, "sha256": _rows_digest(tensors)})


def _load_rows(path: Path, key: str | None = None) -> ActivationRows:
    tensors, meta = read_tensors(path, "activation file")
    if key is not None and meta.get("cache_key") != key:
        raise ArtifactError(f"{path} belongs to another extraction (cache key differs). Delete it and extract again.")
    missing = [n for n in _TENSORS if n not in tensors]
    if missing:
        raise ArtifactError(f"{path} lacks tensors {missing}. Delete it and extract again.")
    # Files written before the digest existed have none; they are read as before.
    if "sha256" in meta and meta["sha256"] != _rows_digest(tensors):
        raise ArtifactError(f"{path} is corrupted (its tensors do not match the sha256 recorded in the file). "
                            "Delete it and extract again.")
    # A valid safetensors file can still hold tensors of the wrong rank or dtype (hand-made or from elsewhere).
    acts = tensors["activations"]
    if acts.dim() != 2 or not acts.is_floating_point():
        raise ArtifactError(f"{path}: activations must be a float [rows, d] tensor, got {acts.dtype} "
                            f"{tuple(acts.shape)}. Delete it and extract again.")
    for name in ("labels", "text_index", "token_index"):
        t = tensors[name]
        if t.dim() != 1 or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise ArtifactError(f"{path}: {name} must be an integer [rows] tensor, got {t.dtype} "
                                f"{tuple(t.shape)}. Delete it and extract again.")
    return ActivationRows(acts, tensors["text_index"].long(), tensors["token_index"].long(), tensors["labels"].long())


def _manifest_problem(manifest: Any) -> str | None:
    """What is wrong with a feature manifest's fields (None if nothing): checked before any field is used."""
    if not isinstance(manifest, dict):
        return "expected a JSON object"
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        return f"format_version must be an integer >= 1, got {version!r}"
    if not isinstance(manifest.get("cache_key"), str):
        return f"cache_key must be a string, got {manifest.get('cache_key')!r}"
    for name in ("rows", "d"):
        value = manifest.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            return f"{name!r} must be a non-negative integer, got {value!r}"
    attribute = manifest.get("attribute")
    if not (isinstance(attribute, str) or (isinstance(attribute, list) and all(isinstance(a, str) for a in attribute))):
        return f"'attribute' must be a string (or a list of strings), got {attribute!r}"
    if not isinstance(manifest.get("positive_side", ""), str):
        return f"'positive_side' must be a string, got {manifest.get('positive_side')!r}"
    site = manifest.get("site")
    if not isinstance(site, dict):
        return f"'site' must be an object with 'layer' and 'component', got {site!r}"
    try:
        Site.from_dict(site)
    except ConfigError as exc:
        return f"bad site {site!r} ({exc})"
    return None


def load_features(path: str | Path) -> FeatureSet:
    """Load a complete feature folder; refuses partial, stale, inconsistent or newer-format ones (ArtifactError)."""
    path = Path(path)
    if not path.is_dir():
        raise ArtifactError(f"Feature folder not found: {path}. Check the path, or extract features there "
                            f"(extract_to_folder, or `matsteer extract ... --out {path}`).")
    if not (path / "manifest.json").is_file() and any(path.glob(".partial-*")):
        raise ArtifactError(
            f"{path} holds an unfinished extraction (no manifest yet; it was interrupted or is still running). "
            "Run the same extraction again to resume it."
        )
    manifest = read_json(path / "manifest.json", "feature manifest")
    if not isinstance(manifest, dict) or "cache_key" not in manifest:
        raise ArtifactError(f"{path / 'manifest.json'} is not a matsteer feature manifest. Extract again.")
    version = manifest.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise ArtifactError(
            f"{path} was written by a newer matsteer (format {version} > {FORMAT_VERSION}); upgrade matsteer "
            "to read it, or extract again with this version."
        )
    problem = _manifest_problem(manifest)
    if problem is not None:
        raise ArtifactError(f"Malformed feature manifest {path / 'manifest.json'}: {problem}. Extract again.")
    rows = _load_rows(path / "activations.safetensors", manifest["cache_key"])
    m = len(rows)
    if any(int(t.shape[0]) != m for t in (rows.labels, rows.text_index, rows.token_index)) or m != manifest["rows"]:
        raise ArtifactError(f"{path}: tensor lengths disagree with the manifest ({manifest['rows']} rows). Extract again.")
    if m and int(rows.activations.shape[1]) != manifest["d"]:
        raise ArtifactError(f"{path}: activations have d={int(rows.activations.shape[1])} but the manifest says "
                            f"d={manifest['d']}. Extract again.")
    if not torch.isfinite(rows.activations).all():
        raise DataError(f"{path}: activations contain NaN or Inf (a numerically broken model or dtype?). Extract again in float32.")
    return FeatureSet(rows.activations.float(), rows.labels, rows.text_index, rows.token_index, manifest, path)


def extract_to_folder(
    loaded: LoadedModel,
    examples: Sequence[Example],
    site: Site,
    out: str | Path,
    *,
    tokens: str = "all",
    dataset: str,
    split: str,
    batch_size: int = 16,
    max_length: int | None = 512,
    shard_texts: int = 256,
    data_info: dict[str, Any] | None = None,
    progress: bool = True,
) -> FeatureSet:
    """Extract ``examples`` with ``loaded`` into ``out``.

    Reuses ``out`` when its manifest has the same cache key; resumes from ``.partial-<key>`` shards; otherwise
    (another model, site, token selection, prompt format or data) re-extracts and replaces it.
    """
    if not examples:
        raise DataError(f"No examples to extract for {dataset}/{split}; check the split name and --limit.")
    out = Path(out)
    site.resolve(loaded.model)
    spec = {
        "extractor": EXTRACTOR_VERSION,
        "model": {"name": loaded.name, "weight_hash": loaded.weight_hash},
        "site": site.to_dict(),
        "tokens": tokens,
        "max_length": max_length,
        "dataset": dataset,
        "split": split,
        "prompt_format": sorted({e.template for e in examples}),
        "texts_sha256": _texts_fingerprint(examples),
        "dtype": str(loaded.dtype),
    }
    key = cache_key(spec)
    cached = _cached(out, key)
    if cached is not None:
        return cached
    partial = out / f".partial-{key[:16]}"
    partial.mkdir(parents=True, exist_ok=True)
    labels = torch.tensor([int(e.label) for e in examples], dtype=torch.long)
    extract = _ShardExtraction(loaded, labels, site, key, tokens, max_length, batch_size, progress, dataset)
    shards = []
    starts = range(0, len(examples), shard_texts)
    for k, start in enumerate(tqdm(starts, desc=f"{dataset}/{split} shards", disable=not progress or len(starts) < 2)):
        shards.append(extract(partial / f"shard-{k:05d}.safetensors", start, examples[start:start + shard_texts]))
    rows = ActivationRows(
        torch.cat([s.activations for s in shards]), torch.cat([s.text_index for s in shards]),
        torch.cat([s.token_index for s in shards]), torch.cat([s.labels for s in shards]),
    )
    if not torch.isfinite(rows.activations).all():
        raise DataError(f"Activations for {dataset}/{split} at {site} contain NaN or Inf; try dtype float32.")
    _save_rows(out / "activations.safetensors", rows, key)
    manifest = _manifest(spec, key, examples, rows, data_info)
    write_json(out / "manifest.json", manifest)
    shutil.rmtree(partial, ignore_errors=True)
    return FeatureSet(rows.activations, rows.labels, rows.text_index, rows.token_index, manifest, out)


def _cached(out: Path, key: str) -> FeatureSet | None:
    """The feature folder at ``out`` if it is complete and made with cache key ``key``; None (and why) if not."""
    if (out / "manifest.json").is_file():
        try:
            existing = load_features(out)
            if existing.manifest["cache_key"] == key:
                return existing
            print(f"{out}: cached features were made with other settings; extracting again.")
        except (ArtifactError, DataError) as exc:
            print(f"{out}: {exc} Extracting again.")
    return None


@dataclass
class _ShardExtraction:
    """Extracts one shard of texts, or reads it back when an interrupted run already wrote it."""

    loaded: LoadedModel
    labels: torch.Tensor  # [texts] of all examples
    site: Site
    key: str
    tokens: str
    max_length: int | None
    batch_size: int
    progress: bool
    dataset: str

    def __call__(self, shard_path: Path, start: int, chunk: Sequence[Example]) -> ActivationRows:
        """Rows of ``chunk`` (texts ``start ..`` of all examples), written to ``shard_path`` atomically."""
        if shard_path.is_file():
            try:
                return _load_rows(shard_path, self.key)
            except ArtifactError:
                shard_path.unlink()
        tok = self.loaded.tokenizer
        encoded = encode_texts(tok, [e.text for e in chunk], self.tokens, [e.answer_span for e in chunk],
                               self.max_length)
        rows = extract_encoded(self.loaded.model, encoded, self.site, pad_id=pad_token_id(tok),
                               batch_size=self.batch_size, index_offset=start, progress=self.progress,
                               desc=f"{self.dataset} L{self.site.layer}")
        rows.labels = self.labels[rows.text_index]
        _save_rows(shard_path, rows, self.key)
        return rows


def _manifest(spec: dict[str, Any], key: str, examples: Sequence[Example], rows: ActivationRows,
              data_info: dict[str, Any] | None) -> dict[str, Any]:
    """The feature folder's manifest: the cache key and its spec, the attribute, and row and label counts."""
    attributes = sorted({e.attribute for e in examples})
    return {
        "format_version": FORMAT_VERSION,
        "cache_key": key,
        **spec,
        "attribute": attributes[0] if len(attributes) == 1 else attributes,
        "positive_side": _positive_side(attributes),
        "rows": len(rows),
        "texts": len(examples),
        "positives": int((rows.labels == 1).sum()),
        "negatives": int((rows.labels == 0).sum()),
        "d": int(rows.activations.shape[1]),
        "data": data_info or {},
    }


def _positive_side(attributes: list[str]) -> str:
    return ", ".join(POSITIVE_SIDE.get(a, "label 1") for a in attributes)


def feature_dir(root: Path, model: str, dataset: str, split: str, site: Site, tokens: str) -> Path:
    safe_model = model.strip("/").replace("/", "--")
    return root / safe_model / f"{dataset}-{split}-L{site.layer}-{site.component}-{tokens}"
