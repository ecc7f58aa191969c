"""The paper's ablations and analyses on the default model, each a function returning a figure-ready result.

Every ablation reuses one :class:`~matsteer.eval.experiment.Experiment` (model, features, question caches) and the
MAT-Steer setting the main comparison chose on dev (:func:`chosen_setting` reads it from ``results/eval.json``,
or falls back to the training defaults at multiplier 1, and says which). Scores are on the test questions except
where a choice is being made (the layer sweep and the multiplier sweep use dev), and every row carries the
three-task mean and the KL on neutral text next to the accuracies.

=================  ==========================================================  ===================================
name               what                                                        figure (``matsteer.viz.charts``)
=================  ==========================================================  ===================================
components         Table 3: loss terms removed / added one at a time            ``plot_ablation``
tokens             Table 4: which tokens to steer (random, last, all, gated)     ``plot_ablation``
data_efficiency    Fig. 4: 10%..100% of the training texts                       ``plot_data_efficiency``
num_attributes     Fig. 7's question: 1..4 attributes, HH-RLHF harmless 4th      ``plot_num_attributes``
paradetox_gates    Table 2: gates on toxic vs neutral ParaDetox sentences        ``tables.plot_gate_table``
layers             layer sweep on dev (MAT-Steer and CAA at each layer)          ``plot_num_attributes``-style curve
interference       steer one attribute (others forced off), score every task     ``plot_ablation``
multiplier_sweep   one attribute's multiplier swept on dev, accuracy and KL      ``plot_multiplier_sweep``
training_tokens    features of the answer tokens vs all tokens of x‖y (paper)     ``plot_ablation``
targeting          gate variants: dev mean-vs-KL frontier, test at one budget     ``plot_targeting_frontier``
=================  ==========================================================  ===================================
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch

from matsteer.activations.features import FeatureSet, extract_to_folder, feature_dir
from matsteer.activations.models import LoadedModel
from matsteer.activations.sites import Site
from matsteer.core.attributes import AttributeData
from matsteer.core.baselines import mean_difference, random_direction_steerer, sum_of_single, uniform_gates
from matsteer.core.config import PRESETS
from matsteer.core.steerer import Steerer
from matsteer.core.workflow import attribute_data, extract_splits
from matsteer.data import Example, load_examples
from matsteer.errors import ConfigError
from matsteer.eval.cached_scoring import score_cached_settings, text_logits_settings
from matsteer.eval.config import EvalConfig
from matsteer.eval.evaluator import Evaluator, Method
from matsteer.eval.experiment import Experiment, provenance
from matsteer.eval.gate_analysis import gate_table_stats, targeting_report, text_gates
from matsteer.eval.selection import borrowed_choices, select_trial
from matsteer.eval.side_effects import cross_entropy, next_token_kl
from matsteer.eval.site_cache import CachedTexts, cache_questions
from matsteer.eval.stats import mean_std
from matsteer.eval.tasks import PRIMARY
from matsteer.eval.toxicity import (
    continuation_scores,
    fit_toxicity_classifier,
    method_continuations,
    toxigen_prompts,
)
from matsteer.files import read_json, write_json

ABLATIONS = ("components", "tokens", "data_efficiency", "num_attributes", "paradetox_gates", "layers",
             "interference", "multiplier_sweep", "training_tokens", "targeting")


@dataclass
class Setting:
    """The MAT-Steer setting an ablation starts from: training overrides and global multiplier, and their source."""

    overrides: dict[str, Any] = field(default_factory=dict)
    multiplier: float = 1.0
    caa_multiplier: float = 1.0
    source: str = "defaults (no results/eval.json)"
    positions: str | None = None  # where MAT-Steer steers (None: the evaluator's policy)
    caa_positions: str | None = None


def chosen_setting(eval_json: str | Path | None, protocol: str | None = None) -> Setting:
    """The setting the main comparison chose on dev, read from its ``eval.json``; defaults when absent.
    ``protocol`` (a position policy): the choice under that protocol alone
    (:func:`~matsteer.eval.selection.borrowed_choices`), e.g. ``"prompt"``, the paper's."""
    if eval_json is None or not Path(eval_json).is_file():
        return Setting()
    report = read_json(Path(eval_json))
    try:
        if protocol is None:
            sel = report["selection"]
            overrides = sel["training_default"]["chosen"]["overrides"]
        else:
            sel = borrowed_choices(report, protocol)
            overrides = sel["training_default"]["overrides"]
        mat, caa = sel["mat_steer"]["chosen"], sel.get("caa", {}).get("chosen", {})
        source = str(eval_json) + (f" ({protocol} protocol)" if protocol else "")
        return Setting(dict(overrides), float(mat["multiplier"]), float(caa.get("multiplier", 1.0)), source,
                       mat.get("positions", protocol), caa.get("positions", protocol))
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{eval_json} has no MAT-Steer selection ({exc}); rerun `matsteer compare` or pass "
                          "--from-eval none.") from exc


def _summary(runs: Sequence[dict[str, Any]], tasks: Sequence[str]) -> dict[str, Any]:
    """``{task: {mean, std}, "mean": {...}, "kl": {...}}`` of the primary metrics over seeds."""
    out: dict[str, Any] = {t: asdict(mean_std([r[t][PRIMARY[t]] for r in runs])) for t in tasks}
    out["mean"] = asdict(mean_std([sum(r[t][PRIMARY[t]] for t in tasks) / len(tasks) for r in runs]))
    kls = [r["side_effects"]["kl"] for r in runs]
    out["kl"] = None if None in kls else asdict(mean_std(kls))  # None: a method that does not edit activations
    return out


def _score(evaluator: Evaluator, build: Callable[[int], Method], seeds: Sequence[int]) -> dict[str, Any]:
    """The summary (:func:`_summary`) of ``build(seed)`` scored by ``evaluator`` for each seed."""
    return _summary([evaluator.evaluate(build(s)) for s in seeds], evaluator.tasks)


def _caa(data: Sequence[AttributeData], multiplier: float, positions: str | None = None) -> Method:
    """CAA (mean difference) on ``data`` at ``multiplier``."""
    return Method("caa", mean_difference({a.name: (a.positives, a.negatives) for a in data}, multiplier),
                  preserve_norm=False, positions=positions)


def _mat(ex: Experiment, setting: Setting, seed: int, extra: dict[str, Any] | None = None,
         data: Sequence[AttributeData] | None = None) -> Method:
    """MAT-Steer at ``setting`` (plus ``extra`` training overrides), trained on ``data`` (default: the experiment's)."""
    overrides = {**setting.overrides, **(extra or {})}
    steerer = ex.steerer(seed, overrides, data)
    return Method("mat_steer", steerer, global_multiplier=setting.multiplier,
                  preserve_norm=overrides.get("preserve_norm", True), positions=setting.positions)


def _steerer_of(method: Method) -> Steerer:
    """The steerer of a method :func:`_mat` built (it always has one)."""
    assert method.steerer is not None
    return method.steerer


def _no_steering(seed: int) -> Method:
    """The unsteered model (the same for every seed)."""
    return Method("none")


# -- Table 3 -----------------------------------------------------------------------------------------------------
COMPONENTS: dict[str, dict[str, Any] | None] = {
    "Base": None,
    "MMD only": {"lambda_pos": 0.0, "lambda_sparse": 0.0, "lambda_ortho": 0.0},
    "+ Pos": {"lambda_sparse": 0.0, "lambda_ortho": 0.0},
    "+ Sparse": {"lambda_pos": 0.0, "lambda_ortho": 0.0},
    "+ Orth": {"lambda_pos": 0.0, "lambda_sparse": 0.0},
    "w/o Pos": {"lambda_pos": 0.0},
    "w/o Sparse": {"lambda_sparse": 0.0},
    "w/o Orth": {"lambda_ortho": 0.0},
    "w/o Normalization": {"preserve_norm": False},
    "w/o supervised gate": {"gate_loss": "none"},
    "Paper's objective (σ median)": {**PRESETS["paper"], "sigma": "median"},
    "Full": {},
}


def components(ex: Experiment, setting: Setting, seeds: Sequence[int]) -> dict[str, Any]:
    """Table 3: each loss term removed (or only MMD plus one term), trained per seed, scored on test."""
    rows = {}
    for name, extra in COMPONENTS.items():
        build: Callable[[int], Method] = _no_steering if extra is None else partial(_mat, ex, setting, extra=extra)
        rows[name] = _score(ex.test, build, seeds[:1] if extra is None else seeds)
    return {"rows": rows, "baseline": "Base"}


# -- Table 4 -----------------------------------------------------------------------------------------------------
def tokens(ex: Experiment, setting: Setting, seeds: Sequence[int]) -> dict[str, Any]:
    """Table 4: MAT-Steer's vectors with always-on gates on random / the last / all prompt tokens, vs its gates."""

    def uniform(positions: str) -> Callable[[int], Method]:
        def build(seed: int) -> Method:
            m = _mat(ex, setting, seed)
            return Method(f"uniform_{positions}", uniform_gates(_steerer_of(m)), global_multiplier=m.global_multiplier,
                          positions=positions)
        return build

    def random_direction(gated: bool) -> Callable[[int], Method]:
        """Controls: random directions of MAT-Steer's ‖θ_t‖, behind always-on gates or behind its learned gates."""
        def build(seed: int) -> Method:
            m = _mat(ex, setting, seed)
            mat = _steerer_of(m)
            control = random_direction_steerer(mat.attributes, mat.d, mat.theta.norm(dim=1), seed)
            if gated:
                with torch.no_grad():
                    control.gate_weight.copy_(mat.gate_weight)
                    control.gate_bias.copy_(mat.gate_bias)
            return Method("random", control, global_multiplier=m.global_multiplier, positions=m.positions)
        return build

    builds: dict[str, tuple[Callable[[int], Method], Sequence[int]]] = {
        "Base": (_no_steering, seeds[:1]), "Random tokens": (uniform("random"), seeds),
        "Last prompt token only": (uniform("last"), seeds), "All tokens (uniform)": (uniform("prompt"), seeds),
        "Random directions, all tokens": (random_direction(False), seeds),
        "Random directions, MAT-Steer's gates": (random_direction(True), seeds),
        "MAT-Steer gating": (partial(_mat, ex, setting), seeds)}
    return {"rows": {name: _score(ex.test, build, s) for name, (build, s) in builds.items()}, "baseline": "Base"}


# -- which tokens to train on -------------------------------------------------------------------------------------
def training_tokens(ex: Experiment, setting: Setting, seeds: Sequence[int]) -> dict[str, Any]:
    """MAT-Steer trained on the answer tokens' activations (our default) and on every token of x‖y (the paper
    §2.2), each with its gates and with always-on gates, scored on test (steering the query tokens in all rows)."""
    rows = {"Base": _score(ex.test, _no_steering, seeds[:1])}
    for tokens, label in (("answer", "Answer tokens"), ("all", "All tokens of x‖y (paper)")):
        data = None
        if tokens != ex.cfg.demo.tokens:
            demo = copy.deepcopy(ex.cfg.demo)
            demo.tokens = tokens
            data = [attribute_data(fs) for fs in extract_splits(ex.loaded, demo, "train", demo.limits, ex.progress)]

        def uniform(seed: int, d: list[AttributeData] | None = data) -> Method:
            m = _mat(ex, setting, seed, data=d)
            return Method("uniform_gates", uniform_gates(_steerer_of(m)), global_multiplier=m.global_multiplier,
                          positions=m.positions)

        rows[f"{label}, gated"] = _score(ex.test, partial(_mat, ex, setting, data=data), seeds)
        rows[f"{label}, uniform gates"] = _score(ex.test, uniform, seeds)
    return {"rows": rows, "baseline": "Base"}


#: Row order of the table-style ablations (saved JSON sorts keys; figures restore the paper's order).
ROW_ORDER: dict[str, list[str]] = {
    "components": list(COMPONENTS),
    "tokens": ["Base", "Random tokens", "Last prompt token only", "All tokens (uniform)",
               "Random directions, all tokens", "Random directions, MAT-Steer's gates", "MAT-Steer gating"],
    "interference": ["none"],  # then each attribute alone, then "all"
    "training_tokens": ["Base", "Answer tokens, gated", "Answer tokens, uniform gates",
                        "All tokens of x‖y (paper), gated", "All tokens of x‖y (paper), uniform gates"],
}


# -- Fig. 4 ------------------------------------------------------------------------------------------------------
def subsample(fs: FeatureSet, fraction: float, seed: int) -> AttributeData:
    """One attribute's rows from a seeded ``fraction`` of its positive texts and of its negative texts (at least
    one of each): whole texts, so that rows of one text never straddle the cut."""
    g = torch.Generator().manual_seed(seed)
    sides = []
    for label in (1, 0):
        texts = fs.text_index[fs.labels == label].unique()
        keep = texts[torch.randperm(len(texts), generator=g)[: max(1, round(fraction * len(texts)))]]
        sides.append(fs.activations[(fs.labels == label) & torch.isin(fs.text_index, keep)])
    if not all(len(s) for s in sides):
        raise ConfigError(f"{fs.attribute}: the training features lack one side; extract more texts.")
    return AttributeData(fs.attribute, sides[0], sides[1], fs.positive_side)


def data_efficiency(ex: Experiment, setting: Setting, seeds: Sequence[int],
                    fractions: Sequence[float] = (0.1, 0.25, 0.5, 1.0)) -> dict[str, Any]:
    """Fig. 4: the three-task test mean of MAT-Steer and CAA trained on a fraction of each attribute's texts."""
    detail: dict[str, dict[str, Any]] = {"MAT-Steer": {}, "CAA": {}}
    for f in fractions:
        data = {s: [subsample(fs, f, s) for fs in ex.train_sets] for s in seeds}

        def mat(seed: int, d: dict[int, list[AttributeData]] = data) -> Method:
            return _mat(ex, setting, seed, data=d[seed])

        def caa(seed: int, d: dict[int, list[AttributeData]] = data) -> Method:
            return _caa(d[seed], setting.caa_multiplier, setting.caa_positions)

        detail["MAT-Steer"][str(f)] = _score(ex.test, mat, seeds)
        detail["CAA"][str(f)] = _score(ex.test, caa, seeds)
    none = _score(ex.test, _no_steering, seeds[:1])
    curves = {name: {f: row["mean"] for f, row in pts.items()} for name, pts in detail.items()}
    return {"curves": curves, "detail": detail, "reference": {"No steering": none["mean"]["mean"]},
            "fractions": list(fractions)}


# -- Fig. 7 ------------------------------------------------------------------------------------------------------
FOURTH = "hh_rlhf"
MAX_LENGTH = 512  # extract_to_folder's token limit; longer texts would lose their answers to truncation


def fitting_pairs(ex: Experiment, limit: int, max_length: int = MAX_LENGTH) -> list[Example]:
    """The first ``limit`` HH-RLHF harmless training pairs (split order) whose chosen and rejected responses are both
    non-empty and whose dialogues both fit ``max_length`` tokens: some dialogues run to thousands of tokens (a
    truncated one has no answer left), and a few responses in the data set are empty (no tokens to extract)."""
    tok = ex.loaded.tokenizer
    examples = load_examples(FOURTH, "train")
    unusable = {e.group for e in examples if not e.answer.strip() or len(tok(e.text)["input_ids"]) > max_length}
    keep = set([g for g in dict.fromkeys(e.group for e in examples) if g not in unusable][:limit])
    return [e for e in examples if e.group in keep]


def num_attributes(ex: Experiment, setting: Setting, seeds: Sequence[int], limit: int = 200,
                   test_limit: int = 60) -> dict[str, Any]:
    """Fig. 7's question: steer the first k of truthfulness, toxicity, bias, harmlessness (HH-RLHF harmless, its
    first ``limit`` usable training pairs, :func:`fitting_pairs`); score all four tasks on test. Curves: four-task
    mean of MAT-Steer and of the sum of single-attribute steerers against k (and, per k, the mean over the k steered
    tasks)."""
    folder = feature_dir(ex.cfg.demo.features_dir, ex.cfg.demo.model, FOURTH, "train", ex.site, ex.cfg.demo.tokens)
    fourth = extract_to_folder(ex.loaded, fitting_pairs(ex, limit), ex.site, Path(f"{folder}-fit{MAX_LENGTH}"),
                               tokens=ex.cfg.demo.tokens, dataset=FOURTH, split="train", max_length=MAX_LENGTH,
                               progress=ex.progress)
    data = [*ex.train_data, attribute_data(fourth)]
    tasks = (*ex.test.tasks, FOURTH)
    evaluator = Evaluator(ex.loaded, ex.site, "test", {**ex.cfg.test_limits, FOURTH: test_limit}, tasks=tasks,
                          positions=ex.cfg.positions, progress=ex.progress)
    curves: dict[str, dict[str, Any]] = {"MAT-Steer": {}, "Sum of single": {}}
    steered: dict[str, dict[str, Any]] = {"MAT-Steer": {}, "Sum of single": {}}
    for k in range(1, len(data) + 1):
        subset = data[:k]

        def single(s: int, subset: list = subset) -> Method:
            return Method("sum_single", sum_of_single([ex.steerer(s, ex.same_steps(setting.overrides, [a]), [a])
                                                       for a in subset]),
                          global_multiplier=setting.multiplier)

        for name, build in (("MAT-Steer", lambda s, subset=subset: _mat(ex, setting, s, data=subset)),
                            ("Sum of single", single)):
            runs = [evaluator.evaluate(build(s)) for s in seeds]
            curves[name][str(k)] = _summary(runs, tasks)["mean"]
            steered[name][str(k)] = _summary(runs, tasks[:k])["mean"]
    none = _summary([evaluator.evaluate(Method("none"))], tasks)
    return {"curves": curves, "steered_tasks_mean": steered, "reference": {"No steering": none["mean"]["mean"]},
            "attributes": [a.name for a in data], "tasks": list(tasks)}


# -- Table 2 -----------------------------------------------------------------------------------------------------
def paradetox_gates(ex: Experiment, setting: Setting, seeds: Sequence[int], n: int = 100,
                    threshold: float = 0.5) -> dict[str, Any]:
    """Table 2: mean toxicity gate vs the other gates, and tokens whose toxicity gate is ≥ ``threshold``, on ``n``
    toxic and ``n`` neutral ParaDetox test sentences (never trained on), for the first seed's steerer."""
    examples = load_examples("paradetox", "test")
    groups = {"Toxic": [e.text for e in examples if e.label == 0][:n],
              "Non-toxic": [e.text for e in examples if e.label == 1][:n]}
    steerer = _steerer_of(_mat(ex, setting, seeds[0]))
    gates = {g: text_gates(ex.loaded, steerer, ex.site, texts) for g, texts in groups.items()}
    table = gate_table_stats(gates, steerer.attributes, target="toxicity", threshold=threshold)
    return {"table": table, "threshold": threshold, "n": {g: len(t) for g, t in groups.items()}}


# -- layer sweep -------------------------------------------------------------------------------------------------
def layers(ex: Experiment, setting: Setting, seeds: Sequence[int],
           candidates: Sequence[int] = (6, 10, 14, 18, 22)) -> dict[str, Any]:
    """Dev three-task mean of MAT-Steer and CAA with features extracted, trained and steered at each layer (the
    paper's grid search over layers, on dev)."""
    curves: dict[str, dict[str, Any]] = {"MAT-Steer": {}, "CAA": {}}
    none = None
    for layer in candidates:
        demo = copy.deepcopy(ex.cfg.demo)
        demo.layer = layer
        sets = extract_splits(ex.loaded, demo, "train", demo.limits, ex.progress)
        data = [attribute_data(fs) for fs in sets]
        dev = Evaluator(ex.loaded, Site(layer, demo.site), "dev", ex.cfg.dev_limits, positions=ex.cfg.positions,
                        progress=ex.progress)
        def caa(seed: int, d: list[AttributeData] = data) -> Method:
            return _caa(d, setting.caa_multiplier, setting.caa_positions)

        curves["MAT-Steer"][str(layer)] = _score(dev, partial(_mat, ex, setting, data=data), seeds)["mean"]
        curves["CAA"][str(layer)] = _score(dev, caa, seeds[:1])["mean"]
        none = none or _score(dev, _no_steering, seeds[:1])["mean"]["mean"]
    return {"curves": curves, "reference": {"No steering": none}, "layers": list(candidates)}


# -- interference ------------------------------------------------------------------------------------------------
def interference(ex: Experiment, setting: Setting, seeds: Sequence[int]) -> dict[str, Any]:
    """Steer one attribute (the others' gates forced off), score every task on test: off-diagonal changes are
    interference. Rows: "none", each attribute alone, all attributes."""
    def only(attr: str | None) -> Callable[[int], Method]:
        def build(seed: int) -> Method:
            m = _mat(ex, setting, seed)
            if attr is not None:
                m.force = {a: False for a in _steerer_of(m).attributes if a != attr}
            return m
        return build

    rows = {"none": _score(ex.test, _no_steering, seeds[:1])}
    for attr in (a.name for a in ex.train_data):
        rows[f"{attr} only"] = _score(ex.test, only(attr), seeds)
    rows["all"] = _score(ex.test, only(None), seeds)
    return {"rows": rows, "baseline": "none"}


# -- multiplier sweep --------------------------------------------------------------------------------------------
class _SettingsView(Evaluator):
    """An evaluator scoring ``methods``, one steerer at K settings, in one pass per batch of questions.

    The methods may differ only in their multipliers, global multiplier and forced gates. The view shares the
    evaluator's questions, question caches and neutral-text logits (the same objects, so what it caches serves the
    evaluator too) and its metrics; on the cached path, the first time any of the methods needs a task's scores
    (or the side effects), all K settings are scored at once (:func:`score_cached_settings`,
    :func:`text_logits_settings`) and ``evaluate(methods[k])`` reads setting k's. Without the cached path (not a
    residual site of a Llama-style model) each method is scored on its own, as :meth:`Evaluator.evaluate` does.
    """

    def __init__(self, evaluator: Evaluator, methods: Sequence[Method]) -> None:
        # A view, not a copy: the same dicts and tensors (no Evaluator.__init__, which would load and cache anew).
        self.__dict__.update(vars(evaluator))
        self._evaluator = evaluator
        if not methods:
            raise ConfigError("Pass at least one method to score.")
        first = methods[0]
        if first.steerer is None or first.model is not None:
            raise ConfigError("Settings are scored together only for a steerer on the evaluator's own model.")
        shared = ("preserve_norm", "positions", "steer_special", "temperature", "prefix")
        for m in methods:
            if m.steerer is not first.steerer or m.model is not None or any(getattr(m, f) != getattr(first, f)
                                                                            for f in shared):
                raise ConfigError(f"Methods scored together must share their steerer and {', '.join(shared)}; "
                                  f"{m.name!r} does not match {first.name!r}.")
        self._index = {id(m): k for k, m in enumerate(methods)}
        self._settings = [{"multipliers": m.multipliers, "global_multiplier": m.global_multiplier, "force": m.force}
                          for m in methods]
        self._scored: dict[tuple[str, str], list[list[torch.Tensor]]] = {}
        self._side: list[dict[str, float | None]] | None = None

    def _model_for(self, task: str) -> LoadedModel:
        return self._evaluator._model_for(task)  # a probe copy is loaded once, for the evaluator

    def _base_neutral_logits(self, cached: CachedTexts) -> torch.Tensor:
        return self._evaluator._base_neutral_logits(cached)  # computed once, for the evaluator

    def _summed_scores(self, task: str, method: Method, choices: str) -> list[torch.Tensor]:
        k = self._index.get(id(method))
        if k is None or not self.fast:
            return super()._summed_scores(task, method, choices)
        if (task, choices) not in self._scored:
            prefix = method.prefix.get(task, "")
            loaded = self._model_for(task)
            key = (task, prefix, choices)
            if key not in self._cache:  # as Evaluator._summed_scores fills it
                self._cache[key] = cache_questions(loaded.model, loaded.tokenizer, self._questions(task, prefix),
                                                   self.site, choices=choices, progress=self.progress)
            assert method.steerer is not None  # checked in __init__
            self._scored[(task, choices)] = score_cached_settings(
                loaded.model, self.site, self._cache[key], method.steerer, self._settings,
                method.positions or self.positions, preserve_norm=method.preserve_norm,
                steer_special=method.steer_special, temperature=method.temperature)
        return self._scored[(task, choices)][k]

    def side_effects(self, method: Method) -> dict[str, float | None]:
        k, c = self._index.get(id(method)), self._neutral_cache
        if k is None or c is None:
            return super().side_effects(method)
        if self._side is None:
            assert method.steerer is not None  # checked in __init__
            base = self._base_neutral_logits(c)
            ids, mask = c.input_ids.to(base.device), c.mask.to(base.device)
            with torch.inference_mode():
                steered = text_logits_settings(self.loaded.model, self.site, c, method.steerer, self._settings,
                                               method.positions or self.positions,
                                               preserve_norm=method.preserve_norm, steer_special=method.steer_special)
                # As Evaluator.side_effects, setting by setting (one [N, W, V] at a time).
                self._side = [{"ce": cross_entropy(s.float(), ids, mask), "kl": next_token_kl(base, s.float(), mask)}
                              for s in steered]
        return self._side[k]


def evaluate_settings(evaluator: Evaluator, methods: Sequence[Method]) -> list[dict[str, Any]]:
    """``[evaluator.evaluate(m) for m in methods]`` for one steerer at K settings (methods differing only in their
    multipliers, global multiplier and forced gates), every task and the side effects scored for all K in one pass
    per batch (:class:`_SettingsView`)."""
    view = _SettingsView(evaluator, methods)
    return [view.evaluate(m) for m in methods]


def multiplier_sweep(ex: Experiment, setting: Setting, seeds: Sequence[int],
                     values: Sequence[float] = (0.0, 0.5, 1.0, 2.0, 4.0)) -> dict[str, Any]:
    """Each attribute's multiplier swept (the others at 1, the chosen global multiplier kept), on dev: per attribute
    and seed, the K values are K settings of one steerer, scored in one pass per batch (:func:`evaluate_settings`)."""
    sweep = {}
    for attr in (a.name for a in ex.train_data):
        runs: list[list[dict[str, Any]]] = [[] for _ in values]  # [value][seed]
        for seed in seeds:
            m = _mat(ex, setting, seed)
            scored = evaluate_settings(ex.dev, [replace(m, multipliers={attr: v}) for v in values])
            for per_seed, result in zip(runs, scored):
                per_seed.append(result)
        summaries = [_summary(r, ex.dev.tasks) for r in runs]
        sweep[attr] = {"multipliers": list(values),
                       "accuracy": {t: [r[t]["mean"] for r in summaries] for t in ex.dev.tasks},
                       "kl": [r["kl"]["mean"] for r in summaries]}
    return {"sweep": sweep}


# -- gates that target --------------------------------------------------------------------------------------------
#: The gate variants :func:`targeting` compares (training overrides over the comparison's; docs/training.md,
#: "Gates that target"): today's default, the background gate term, and that with the bias calibration.
TARGETING_VARIANTS: dict[str, dict[str, Any]] = {
    "default": {}, "targeted": dict(PRESETS["targeted"]), "targeted-calibrated": dict(PRESETS["targeted-calibrated"])}


def frontier(ex: Experiment, method: Method, multipliers: Sequence[float]) -> list[dict[str, Any]]:
    """``method`` at each global multiplier on dev (one pass per batch for all of them): per multiplier the dev
    mean over the tasks' primaries and the mean next-token KL on neutral text (``dev_mean`` / ``dev_kl``, as the
    comparison's dev trials, so :func:`~matsteer.eval.selection.select_trial` reads them)."""
    scored = evaluate_settings(ex.dev, [replace(method, global_multiplier=m) for m in multipliers])
    return [{"multiplier": m, "dev_mean": sum(r[t][PRIMARY[t]] for t in ex.dev.tasks) / len(ex.dev.tasks),
             "dev_kl": r["side_effects"]["kl"], "dev": {t: r[t][PRIMARY[t]] for t in ex.dev.tasks}}
            for m, r in zip(multipliers, scored)]


def targeting(ex: Experiment, setting: Setting, seeds: Sequence[int],
              multipliers: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0), kl_budget: float | None = None,
              n_prompts: int = 40, paradetox_n: int = 100) -> dict[str, Any]:
    """What gates that target buy (:data:`TARGETING_VARIANTS`), each trained per seed at the comparison's setting:

    - ``frontier``: dev mean and neutral-text KL at every multiplier (seed 0), the dev-mean-vs-KL curve;
    - ``rows``: test scores (seeds) at the multiplier each variant chooses on dev within one KL budget, by
      default the KL today's default has at the comparison's own multiplier (its side effect today), so every
      variant is held to the same side effect;
    - ``targeting``: where each gate opens on held-out tokens (seed 0; :func:`~matsteer.eval.gate_analysis.
      targeting_report`: own negatives / positives, neutral text, dev chat-template tokens, ParaDetox dev);
    - ``generation``: greedy continuations of ``n_prompts`` ToxiGen-style *dev* prompts at the chosen multiplier
      (seed 0, no steering beside): on-topic non-toxicity and distinct bigrams (repetition)
      (:func:`~matsteer.eval.toxicity.continuation_scores`).
    """
    seed0 = seeds[0]
    variants = {name: {**setting.overrides, **extra} for name, extra in TARGETING_VARIANTS.items()}

    def build(overrides: dict[str, Any], multiplier: float = setting.multiplier) -> Callable[[int], Method]:
        return partial(_mat, ex, replace(setting, overrides=overrides, multiplier=multiplier))

    curves = {name: frontier(ex, build(ov)(seed0), multipliers) for name, ov in variants.items()}
    if kl_budget is None:
        today = [p for p in curves["default"] if p["multiplier"] == setting.multiplier]
        kl_budget = (today or frontier(ex, build(variants["default"])(seed0), [setting.multiplier]))[0]["dev_kl"]
    chosen = {name: curve[select_trial(curve, kl_budget)]["multiplier"] for name, curve in curves.items()}
    rows = {"none": _score(ex.test, _no_steering, seeds[:1])}
    for name, ov in variants.items():
        rows[name] = _score(ex.test, build(ov, chosen[name]), seeds)
    prompts = sorted({e.prompt for ds in ex.cfg.demo.datasets for e in load_examples(ds, "dev", limit=10, seed=seed0)})
    gates = {name: targeting_report(ex.loaded, _steerer_of(build(ov)(seed0)), ex.site, ex.dev_data, prompts=prompts,
                                    paradetox_n=paradetox_n, seed=seed0).to_dict() for name, ov in variants.items()}
    clf, toxic = fit_toxicity_classifier(), toxigen_prompts("dev", n_prompts)
    generated = {"none": _no_steering(seed0), **{name: build(ov, chosen[name])(seed0) for name, ov in variants.items()}}
    generation = {name: continuation_scores(clf, method_continuations(ex, m, toxic), [p.group for p in toxic])
                  for name, m in generated.items()}
    return {"frontier": curves, "kl_budget": kl_budget, "chosen": chosen, "rows": rows, "baseline": "none",
            "none_dev": _score(ex.dev, _no_steering, seeds[:1])["mean"]["mean"],
            "targeting": gates, "generation": generation, "variants": variants}


RUNNERS: dict[str, Callable[..., dict[str, Any]]] = {
    "components": components, "tokens": tokens, "data_efficiency": data_efficiency,
    "num_attributes": num_attributes, "paradetox_gates": paradetox_gates, "layers": layers,
    "interference": interference, "multiplier_sweep": multiplier_sweep, "training_tokens": training_tokens,
    "targeting": targeting,
}


def run_ablations(names: Sequence[str], cfg: EvalConfig | None = None, *, seeds: Sequence[int] = (0,),
                  eval_json: str | Path | None = "results/eval.json", out_dir: str | Path = "results/ablations",
                  options: dict[str, dict[str, Any]] | None = None, progress: bool = True,
                  protocol: str | None = None) -> dict[str, dict[str, Any]]:
    """Run the named ablations on one shared :class:`Experiment`; write ``<name>.json`` (and wall times in
    ``<name>-timings.json``) under ``out_dir``. ``options`` passes keyword arguments to one ablation, e.g.
    ``{"layers": {"candidates": [10, 14]}}``; ``protocol``: start from ``eval_json``'s choice under that protocol
    (:func:`chosen_setting`). Returns ``{name: result}``."""
    unknown = sorted(set(names) - set(RUNNERS))
    if unknown or not names:
        raise ConfigError(f"Unknown ablations {unknown or '(none given)'}; choose from {', '.join(ABLATIONS)}.")
    if not seeds:
        raise ConfigError("Pass at least one seed.")
    cfg = cfg or EvalConfig()
    setting = chosen_setting(eval_json, protocol)
    ex = Experiment(cfg, progress)
    out = {}
    for name in names:
        t0 = time.perf_counter()
        kwargs = (options or {}).get(name, {})
        result = RUNNERS[name](ex, setting, list(seeds), **kwargs)
        out[name] = {"name": name, "setting": asdict(setting), "seeds": list(seeds), "options": kwargs,
                     "result": result,
                     "limits": {"dev": cfg.dev_limits, "test": cfg.test_limits, "train": cfg.demo.limits},
                     "provenance": provenance(ex, [FOURTH] if name == "num_attributes" else [])}
        write_json(Path(out_dir) / f"{name}.json", out[name])
        write_json(Path(out_dir) / f"{name}-timings.json", {"wall_s": time.perf_counter() - t0})
    return out


def _kl_text(kl: Mapping[str, Any] | None) -> str:
    # The no-steering row changes nothing, so its KL is None (n/a), not 0.
    return "KL n/a" if kl is None or kl.get("mean") is None else f"KL {kl['mean']:.4f}"


def describe(result: dict[str, Any]) -> str:
    """A short plain-text rendering of an ablation result (for the CLI)."""
    r = result["result"]
    if "rows" in r:
        return "\n".join(f"  {k:<24} mean {v['mean']['mean'] * 100:6.2f}  {_kl_text(v['kl'])}  "
                         + "  ".join(f"{t} {v[t]['mean'] * 100:.2f}" for t in v if t not in ("mean", "kl"))
                         for k, v in r["rows"].items())
    if "curves" in r:
        return "\n".join(f"  {name:<14} " + "  ".join(f"{x}: {p['mean'] * 100:.2f}" for x, p in pts.items())
                         for name, pts in r["curves"].items())
    return json.dumps(r, indent=1, default=str)[:2000]
