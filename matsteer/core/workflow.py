"""The default run's settings and its first stages: feature folders of the QA data sets -> a trained steerer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from matsteer.activations.features import FeatureSet, extract_to_folder, feature_dir, load_features
from matsteer.activations.models import LoadedModel
from matsteer.activations.sites import Site
from matsteer.core.attributes import AttributeData
from matsteer.core.config import TrainConfig
from matsteer.core.training import TrainResult, train_steerer
from matsteer.data import load_examples
from matsteer.errors import ConfigError, DataError

QA_DATASETS: tuple[str, ...] = ("truthfulqa", "toxigen", "bbq")


def attribute_data(fs: FeatureSet) -> AttributeData:
    """One attribute's positives/negatives from a feature folder (label 1 = positive side)."""
    if isinstance(fs.manifest.get("attribute"), list):
        raise ConfigError(f"{fs.path}: features mix attributes {fs.manifest['attribute']}; extract one dataset per folder.")
    return AttributeData(fs.attribute, fs.positives, fs.negatives, fs.positive_side)


def check_same_origin(sets: Sequence[FeatureSet]) -> dict[str, Any]:
    """All feature sets must come from one model, site and hidden size; returns that common origin."""
    if not sets:
        raise ConfigError("No feature folders given; pass --features DIR [DIR ...].")
    first = sets[0].manifest
    for fs in sets[1:]:
        m = fs.manifest
        for key in ("model", "site", "d"):
            if m[key] != first[key]:
                raise ConfigError(
                    f"Feature folders disagree on {key}: {sets[0].path} has {first[key]}, {fs.path} has {m[key]}. "
                    "Train on features extracted from one model at one site."
                )
    names = [fs.attribute for fs in sets]
    if len(set(names)) != len(names):
        raise ConfigError(f"Two feature folders hold the same attribute ({names}); pass one folder per attribute.")
    return {"model": first["model"], "site": first["site"], "d": first["d"]}


def data_info(sets: Sequence[FeatureSet]) -> dict[str, Any]:
    return {fs.attribute: {k: fs.manifest[k] for k in ("dataset", "split", "tokens", "texts_sha256", "rows",
                                                       "positives", "negatives", "cache_key")} for fs in sets}


def train_from_features(
    train_dirs: Sequence[str | Path],
    config: TrainConfig | None = None,
    dev_dirs: Sequence[str | Path] | None = None,
    progress: bool = True,
    probe: bool = False,
    background: torch.Tensor | None = None,
    dev_background: torch.Tensor | None = None,
) -> tuple[TrainResult, dict[str, Any], dict[str, Any]]:
    """Train on feature folders (one per attribute). Returns (result, origin {model, site, d}, data_info).

    With dev folders the result carries a training-health report (``probe``: with the logistic-probe yardstick).
    background ``[N, d]`` / dev_background ``[M, d]``: tokens that belong to no attribute, for the background gate
    term and the bias calibration (presets ``targeted``, ``targeted-calibrated``) and the health report's neutral
    row (see :func:`~matsteer.core.training.train_steerer`)."""
    sets = [load_features(p) for p in train_dirs]
    origin = check_same_origin(sets)
    for fs in sets:
        for side in ("positives", "negatives"):
            if not fs.manifest.get(side):
                raise DataError(f"{fs.path}: {fs.manifest.get('dataset')}/{fs.manifest.get('split')} has no {side} "
                                f"for {fs.attribute}; extract a split or --limit that holds both labels.")
    dev = None
    info = {"train": data_info(sets)}
    if dev_dirs:
        dev_sets = [load_features(p) for p in dev_dirs]
        if check_same_origin(dev_sets) != origin:
            raise ConfigError("Dev features come from another model or site than the training features.")
        dev = [attribute_data(fs) for fs in dev_sets]
        info["dev"] = data_info(dev_sets)
    result = train_steerer([attribute_data(fs) for fs in sets], config or TrainConfig(), dev=dev, progress=progress,
                           health_probe=probe, background=background, dev_background=dev_background)
    return result, origin, info


@dataclass
class DemoConfig:
    """The default end-to-end run on the embedded model (quick: subsets of the training splits)."""

    model: str = "smollm2-135m-instruct"
    # "auto": bfloat16 where the hardware computes it natively, else float32 (matsteer.activations.models.auto_dtype).
    dtype: str = "auto"
    layer: int = 14
    site: str = "residual"
    tokens: str = "answer"
    datasets: tuple[str, ...] = QA_DATASETS
    # Groups (questions / statements / BBQ examples) per split in quick mode; None = whole split.
    limits: dict[str, int | None] = field(default_factory=lambda: {"truthfulqa": None, "toxigen": 1200, "bbq": 300})
    dev_limits: dict[str, int | None] = field(default_factory=lambda: {"truthfulqa": None, "toxigen": 300, "bbq": 100})
    # σ = 2 (the reference default) is degenerate on this model's activations; see README "Defaults chosen on dev".
    train: TrainConfig = field(default_factory=TrainConfig)
    features_dir: Path = Path("features")
    out_dir: Path = Path("results/demo")
    prompts: tuple[str, ...] = (
        "What happens if you eat watermelon seeds?",
        "Write one sentence about immigrants.",
        "Who is more likely to be bad at technology, an old man or a young man?",
    )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["train"] = self.train.to_dict()
        d["features_dir"], d["out_dir"] = str(self.features_dir), str(self.out_dir)
        return d


def extract_splits(loaded: LoadedModel, cfg: DemoConfig, split: str, limits: Mapping[str, int | None],
                   progress: bool = True) -> list[FeatureSet]:
    """Feature folders of ``split`` for each of ``cfg.datasets`` (at most ``limits[dataset]`` examples each)."""
    site = Site(cfg.layer, cfg.site)
    out = []
    for ds in cfg.datasets:
        examples = load_examples(ds, split, limit=limits.get(ds))
        folder = feature_dir(cfg.features_dir, cfg.model, ds, split, site, cfg.tokens)
        out.append(extract_to_folder(loaded, examples, site, folder, tokens=cfg.tokens, dataset=ds, split=split,
                                     progress=progress))
    return out
