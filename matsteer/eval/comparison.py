"""The paper's comparison on the default model: every method trained on the same features, tuned on dev only,
scored on the held-out test questions over several seeds, beside reference rows, with side effects and a
bootstrap over questions and seeds.

``run_evaluation(EvalConfig())`` writes ``results/eval.json`` and ``results/eval.md`` (schema:
``docs/eval-schema.md``).

Reference rows: the constant / majority answer of every task from its gold labels
(:func:`matsteer.eval.tasks.constant_row`), no steering, and random directions with MAT-Steer's norms (a control
that pushes as hard as MAT-Steer in a meaningless direction). A method at or below the constant on a task is
marked in ``eval.md``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from matsteer.eval.config import (
    BASELINE_POOL,
    CONSTANT_LABEL,
    CONTROLS,
    MAT_VARIANTS,
    METHOD_LABELS,
    SEEDED,
    EvalConfig,
)
from matsteer.eval.experiment import Experiment, ignore_step, provenance
from matsteer.eval.report import write_report
from matsteer.eval.stats import (
    mean_std,
    minimum_detectable_effect,
    seed_question_bootstrap,
    seed_question_bootstrap_tasks,
)
from matsteer.eval.tasks import PRIMARY
from matsteer.files import write_json


def select_training_default(ex: Experiment) -> dict[str, Any]:
    """Each training candidate trained with the first seed, its multiplier tuned on dev; the best is kept."""
    seed = ex.cfg.seeds[0]
    trials = []
    for cand in ex.cfg.training_candidates:
        params, grid = ex.tune("mat_steer", seed, cand)
        trials.append({"overrides": cand, "dev_mean": max(g["dev_mean"] for g in grid), "params": params,
                       "grid": grid})
    best = max(range(len(trials)), key=lambda i: (trials[i]["dev_mean"], -i))
    return {"trials": trials, "chosen": trials[best]}


def _number(value: Any) -> float | None:
    """A metric value as a float, or None where it is undefined (None or NaN: e.g. a bias score with no
    non-unknown answer, or a class with no question)."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _mean_std_or_none(values: Sequence[Any]) -> dict[str, float] | None:
    """Mean ± std over the seeds where the metric is defined; None where it is defined for none."""
    defined = [v for v in (_number(x) for x in values) if v is not None]
    return asdict(mean_std(defined)) if defined else None


def _summarise(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± std over seeds of every metric (None where undefined), with ``per_item`` kept per seed.

    Per task: each metric as ``{mean, std, n}`` (n = seeds where defined) or None; ``n`` and ``counts`` as
    they are; text (a constant's ``answer``) as it is; ``per_item`` as ``[seeds][questions]``, the per-question
    primary scores of every seed (a bootstrap over questions and seeds needs them unaveraged).
    """
    out: dict[str, Any] = {}
    tasks = [k for k in per_seed[0] if k not in ("mean", "side_effects")]
    for task in tasks:
        entry: dict[str, Any] = {}
        for k, v in per_seed[0][task].items():
            if k == "per_item":
                entry[k] = [[float(x) for x in r[task][k]] for r in per_seed]
            elif k in ("n", "counts") or isinstance(v, str):
                entry[k] = v
            else:
                entry[k] = _mean_std_or_none([r[task][k] for r in per_seed])
        out[task] = entry
    out["mean"] = _mean_std_or_none([r["mean"] for r in per_seed])
    out["side_effects"] = {k: _mean_std_or_none([r["side_effects"][k] for r in per_seed])
                           for k in per_seed[0]["side_effects"]}
    return out


def _per_item(entry: Mapping[str, Any], tasks: Sequence[str]) -> dict[str, list[list[float]]]:
    """A method's per-seed per-question test scores ``{task: [seeds][questions]}``."""
    return {t: entry["test"][t]["per_item"] for t in tasks}


def comparison_intervals(
    methods: Mapping[str, Mapping[str, Any]], reference: str, tasks: Sequence[str], probes: Sequence[str] = (),
    n_boot: int = 10000, seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Every method minus ``reference``: a bootstrap over questions and seeds
    (:func:`matsteer.eval.stats.seed_question_bootstrap_tasks`) per attribute task, for their mean (``"mean"``) and
    per probe. methods: ``report["methods"]`` (each with ``test[task]["per_item"]`` of shape ``[seeds, n]``)."""
    ref = methods[reference]
    out: dict[str, dict[str, Any]] = {}
    for name, entry in methods.items():
        if name == reference:
            continue
        cis = seed_question_bootstrap_tasks(_per_item(entry, tasks), _per_item(ref, tasks), n_boot, seed=seed)
        row = {k: asdict(ci) for k, ci in cis.items()}
        for probe in probes:
            row[probe] = asdict(seed_question_bootstrap(entry["test"][probe]["per_item"],
                                                        ref["test"][probe]["per_item"], n_boot, seed=seed))
        out[name] = row
    return out


#: The rule behind ``report["detectable"]`` (also printed under the table).
DETECTABLE_RULE = ("smallest true difference a two-sided test at 5% detects with 80% power: "
                   "(z_0.975 + z_0.8) * sqrt(2 s^2 / n), s^2 the per-question variance of no steering's primary "
                   "scores (for the mean: sqrt(2 sum_t s_t^2 / n_t) / T); treats the two methods as independent, "
                   "an upper bound for paired questions")


def detectable_differences(entry: Mapping[str, Any], tasks: Sequence[str], probes: Sequence[str] = (),
                           n_boot: int = 10000, alpha: float = 0.05, power: float = 0.8) -> dict[str, Any]:
    """What the test sizes can resolve, from one method's (no steering's) first-seed per-question scores: the
    power-based minimum detectable effect per task and for the mean (see :data:`DETECTABLE_RULE`), and the
    half-width of that method's own 95% bootstrap interval."""
    first = {t: entry["test"][t]["per_item"][0] for t in (*tasks, *probes)}
    mde = {t: minimum_detectable_effect(first[t], alpha, power) for t in (*tasks, *probes)}
    mde["mean"] = minimum_detectable_effect({t: first[t] for t in tasks}, alpha, power)
    own = seed_question_bootstrap_tasks({t: [first[t]] for t in tasks}, None, n_boot)
    for probe in probes:
        own[probe] = seed_question_bootstrap([first[probe]], None, n_boot)
    half = {k: (ci.high - ci.low) / 2 for k, ci in own.items()}
    return {"rule": DETECTABLE_RULE, "alpha": alpha, "power": power, "mde": mde, "ci_halfwidth": half}


def run_evaluation(cfg: EvalConfig | None = None, progress: bool = True,
                   on_step: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The whole comparison; writes ``eval.json`` and ``eval.md`` (and ``eval-timings.json``) to ``cfg.out_dir``.
    ``on_step`` receives a line as each part starts (set-up, each method's dev tuning, each test run).

    1. MAT-Steer's training setting and multiplier, and every other method's hyperparameter, are chosen on dev
       with the first seed (never on test). 2. Every method is scored on test once per seed (methods that do not
       depend on the seed are scored once and their std is 0), beside the constant answer of each task. 3. Every
       method is compared with no steering and with the best baseline by dev (from :data:`BASELINE_POOL`: not
       MAT-Steer's own variants, not the controls) by a bootstrap over test questions and seeds; the smallest
       detectable difference is recorded beside them.
    """
    cfg = cfg or EvalConfig()
    cfg.validate()
    t_start = time.perf_counter()
    step = on_step or ignore_step
    step("comparison: set-up (model, training and dev features, dev and test questions)")
    ex = Experiment(cfg, progress, on_step)
    selection = select_training_default(ex)
    overrides = selection["chosen"]["overrides"]
    report: dict[str, Any] = {"config": cfg.to_dict(), "selection": {"training_default": selection}, "methods": {}}
    chosen = _choose_on_dev(ex, selection, report["selection"])
    for name in cfg.methods:
        report["methods"][name] = _test_entry(ex, name, chosen[name], overrides, step)
    report["reference"] = {"constant": {"label": CONSTANT_LABEL, "test": _summarise([ex.test.constant()])},
                           "unsteered_ce": ex.test.unsteered_ce()}
    tasks, probes = ex.test.tasks, ex.test.probes
    report["sizes"] = _sizes(ex)
    report["primary"] = {t: PRIMARY[t] for t in (*tasks, *probes)}
    report["tasks"], report["probes"] = list(tasks), list(probes)
    report["best_baseline"] = _best_baseline(cfg.methods, report["selection"])
    _add_intervals(report, tasks, probes, cfg.n_boot)
    report["provenance"] = provenance(ex)
    write_report(report, cfg.out_dir)
    write_json(Path(cfg.out_dir) / "eval-timings.json",
               {**ex.timings, "total_s": time.perf_counter() - t_start, "torch_threads": torch.get_num_threads()})
    return report


def _choose_on_dev(ex: Experiment, selection: Mapping[str, Any],
                   record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every method's run-time hyperparameter, chosen on dev with the first seed (MAT-Steer's came with its
    training setting, ``selection``); each method's choice and trials are recorded in ``record[name]``."""
    overrides = selection["chosen"]["overrides"]
    chosen: dict[str, dict[str, Any]] = {}
    for name in ex.cfg.methods:
        if name == "mat_steer":
            chosen[name], trials = selection["chosen"]["params"], selection["chosen"]["grid"]
        else:
            chosen[name], trials = ex.tune(name, ex.cfg.seeds[0], overrides)
        record[name] = {"chosen": chosen[name], "dev_trials": trials}
    return chosen


def _test_entry(ex: Experiment, name: str, params: dict[str, Any], overrides: dict[str, Any] | None,
                step: Callable[[str], None]) -> dict[str, Any]:
    """One method's entry of ``report["methods"]``: scored on test at its dev choice ``params`` once per seed (once
    when it does not depend on the seed) and summarised; MAT-Steer's carries its training health per seed."""
    seeds = ex.cfg.seeds if name in SEEDED else ex.cfg.seeds[:1]
    runs = []
    for i, seed in enumerate(seeds, 1):
        step(f"comparison: test: {name} ({i}/{len(seeds)})")
        runs.append(ex.test_result(ex.method(name, params, seed, overrides)))
    entry = {"label": METHOD_LABELS[name], "seeded": name in SEEDED, "seeds": list(seeds), "role": _role(name),
             "params": params, "test": _summarise(runs)}
    if name == "mat_steer":
        entry["health"] = [ex.health(seed, overrides) for seed in seeds]
    return entry


def _sizes(ex: Experiment) -> dict[str, Any]:
    """Questions per dev and test task, and training rows per attribute and side."""
    return {"dev": {t: len(ex.dev.questions[t]) for t in ex.dev.all_tasks},
            "test": {t: len(ex.test.questions[t]) for t in ex.test.all_tasks},
            "train": {a.name: {"positives": int(a.positives.shape[0]), "negatives": int(a.negatives.shape[0])}
                      for a in ex.train_data}}


def _best_baseline(methods: Sequence[str], selection: Mapping[str, Any]) -> dict[str, Any]:
    """The baseline (from :data:`BASELINE_POOL`) with the best dev mean, with every candidate's dev mean."""
    pool = [n for n in methods if n in BASELINE_POOL]
    dev_best = {n: max(t["dev_mean"] for t in selection[n]["dev_trials"]) for n in pool}
    best = max(dev_best, key=dev_best.get) if dev_best else None  # type: ignore[arg-type]
    return {"name": best, "dev_means": dev_best, "pool": pool}


def _add_intervals(report: dict[str, Any], tasks: Sequence[str], probes: Sequence[str], n_boot: int) -> None:
    """Every method against no steering (with the smallest detectable difference) and against the best baseline,
    as bootstrap intervals over test questions and seeds, into ``report``."""
    intervals: dict[str, Any] = {}
    best = report["best_baseline"]["name"]
    if "none" in report["methods"]:
        intervals["vs_none"] = comparison_intervals(report["methods"], "none", tasks, probes, n_boot)
        report["detectable"] = detectable_differences(report["methods"]["none"], tasks, probes, n_boot)
    if best is not None:
        intervals["vs_best_baseline"] = comparison_intervals(report["methods"], best, tasks, probes, n_boot)
        report["bootstrap_vs_best_baseline"] = intervals["vs_best_baseline"]["mat_steer"]
    report["intervals"] = intervals


def _role(name: str) -> str:
    """Where a method stands in the comparison: a control, a baseline (in the best-baseline pool) or MAT-Steer /
    one of its variants."""
    if name in CONTROLS:
        return "control"
    return "mat_steer" if name in MAT_VARIANTS else "baseline"
