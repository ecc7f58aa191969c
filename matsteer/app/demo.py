"""The demo end to end: extract, train, save, compare generations."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from matsteer.activations.features import FeatureSet
from matsteer.activations.models import load_model
from matsteer.activations.sites import Site
from matsteer.core.workflow import DemoConfig, extract_splits, train_from_features
from matsteer.steering.generation import compare_generations
from matsteer.store.artifacts import save_training_result


def _folders(sets: Sequence[FeatureSet]) -> list[Path]:
    """The folders extracted feature sets were saved to (extract_splits saves every set it returns)."""
    folders: list[Path] = []
    for fs in sets:
        assert fs.path is not None, "extract_splits returns saved feature sets"
        folders.append(fs.path)
    return folders


def run_demo(cfg: DemoConfig | None = None, progress: bool = True) -> dict[str, Any]:
    """Extract train/dev features of the QA attributes, train MAT-Steer, save it, compare generations.

    Returns the JSON report: the config, the steerer folder, timings, final losses and the generations.
    """
    cfg = cfg or DemoConfig()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    loaded = load_model(cfg.model, dtype=cfg.dtype)
    timings["load_model_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    train_sets = extract_splits(loaded, cfg, "train", cfg.limits, progress)
    dev_sets = extract_splits(loaded, cfg, "dev", cfg.dev_limits, progress)
    timings["extract_s"] = time.perf_counter() - t0
    for fs in train_sets:
        m = fs.manifest
        print(f"  {m['dataset']:<10} train: {m['texts']:>5} texts -> {m['positives']:>6} positive / {m['negatives']:>6} negative rows")
    t0 = time.perf_counter()
    result, origin, info = train_from_features(_folders(train_sets), cfg.train, _folders(dev_sets), progress=progress)
    timings["train_s"] = time.perf_counter() - t0
    site = Site.from_dict(origin["site"])
    steerer_dir = save_training_result(cfg.out_dir / "steerer", result, site=site, model_name=loaded.name,
                                       model_hash=loaded.weight_hash, data_info=info)
    print(f"  trained {result.steps} steps in {result.wall_time_s:.1f} s ({result.steps_per_s:.0f} steps/s); "
          f"sigma used {result.sigma_used:.3g}; saved {steerer_dir}")
    t0 = time.perf_counter()
    gens = compare_generations(loaded, result.steerer, site, cfg.prompts)
    timings["generate_s"] = time.perf_counter() - t0
    for g in gens:
        print(f"\n  prompt   : {g.prompt}\n  unsteered: {g.unsteered}\n  steered  : {g.steered}")
    return {"config": cfg.to_dict(), "steerer": str(steerer_dir), "timings": timings,
            "final_losses": result.final_losses(), "generations": [asdict(g) for g in gens]}
