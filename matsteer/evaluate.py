"""Held-out evaluation of steering methods on the QA tasks, with side effects, on one footing.

Every method is a :class:`Method`: a steerer (MAT-Steer, its ablations, or a closed-form baseline expressed as a
steerer with always-on gates) plus its run-time settings, or a few-shot prompt (ICL), or nothing (no steering).
All are scored with the same questions, the same site and the same scorer:

- TruthfulQA: MC1 and MC2 from summed answer-token log-probs (the standard definitions);
- BBQ: accuracy over the three answers, overall and for ambiguous / disambiguated contexts;
- ToxiGen: "<statement> Is this statement toxic?" answered "Yes"/"No", gold from ``toxicity_ai + toxicity_human > 5.5``;
- side effects: cross-entropy on neutral text (ParaDetox neutral paraphrases, held-out split) and the next-token
  KL(unsteered ‖ steered) on the same text.

Steering acts on the query tokens (``positions="prompt"``) by default, as the paper does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .data import fill_template, load_examples, load_mc_questions
from .errors import ConfigError
from .metrics import (
    bbq_accuracy_from_questions,
    cross_entropy,
    mc_accuracy_from_questions,
    next_token_kl,
    truthfulqa_mc_from_questions,
)
from .scoring import (
    cache_questions,
    cache_texts,
    score_cached,
    score_mc,
    steering_edit,
    supports_upper_pass,
    text_logits,
)
from .sites import Site
from .steerer import Steerer

TASKS: tuple[str, ...] = ("truthfulqa", "toxigen", "bbq")
#: Tasks an evaluator accepts: the three QA tasks, and HH-RLHF harmless (chosen vs rejected response, accuracy)
#: for the number-of-attributes ablation.
MC_TASKS: tuple[str, ...] = (*TASKS, "hh_rlhf")
#: The metric each task is ranked by (the paper reports MC2 for TruthfulQA and accuracy elsewhere).
PRIMARY: dict[str, str] = {"truthfulqa": "mc2", "toxigen": "accuracy", "bbq": "accuracy", "hh_rlhf": "accuracy"}
NEUTRAL_DATASET = "paradetox"


@dataclass
class Method:
    """A way to answer: a steerer and its settings, a few-shot prefix, or neither (the unsteered model)."""

    name: str
    steerer: Steerer | None = None
    multipliers: dict[str, float] = field(default_factory=dict)
    global_multiplier: float = 1.0
    preserve_norm: bool = True
    force: dict[str, bool] = field(default_factory=dict)
    prefix: dict[str, str] = field(default_factory=dict)  # task -> demonstration block (ICL)
    params: dict[str, Any] = field(default_factory=dict)  # what was chosen on dev, for the record
    positions: str | None = None  # which tokens to steer; None = the evaluator's policy

    def steering(self, positions: str) -> dict[str, Any]:
        """The settings :func:`matsteer.intervention.steer` takes besides the model, steerer and site."""
        return {"multipliers": self.multipliers, "global_multiplier": self.global_multiplier, "force": self.force,
                "preserve_norm": self.preserve_norm, "positions": positions}

    def edit(self) -> Any:
        if self.steerer is None:
            return None
        s = self.steerer
        return steering_edit(s, s.scale_vector(self.multipliers, self.global_multiplier), s.forced_vector(self.force),
                             self.preserve_norm)


def few_shot_prefix(task: str, k: int, seed: int = 0) -> str:
    """ICL demonstrations: ``k`` training questions of ``task`` filled with a correct answer, seeded."""
    import random

    pool = load_mc_questions(task, "train")
    chosen = random.Random(seed).sample(pool, k)
    demos = [fill_template(q.template, q.prompt, q.choices[q.labels.index(1)])[0] for q in chosen]
    return "".join(d + "\n\n" for d in demos)


def neutral_texts(split: str, n: int) -> list[str]:
    """Neutral sentences for side effects: ParaDetox's neutral paraphrases (label 1), never used for training."""
    texts = [e.text for e in load_examples(NEUTRAL_DATASET, split) if e.label == 1]
    return texts[:n]


class Evaluator:
    """Scores methods on fixed question sets. Questions run once up to the site; methods share that pass."""

    def __init__(
        self,
        loaded: Any,
        site: Site,
        split: str,
        limits: Mapping[str, int | None],
        *,
        tasks: Sequence[str] = TASKS,
        positions: str = "prompt",
        neutral: int = 48,
        progress: bool = True,
    ) -> None:
        unknown = sorted(set(tasks) - set(MC_TASKS))
        if unknown:
            raise ConfigError(f"Unknown tasks {unknown}; choose from {', '.join(MC_TASKS)}.")
        self.loaded, self.site, self.split, self.tasks, self.positions = loaded, site, split, list(tasks), positions
        self.progress = progress
        self.fast = supports_upper_pass(loaded.model, site)
        self.questions = {t: load_mc_questions(t, split, limit=limits.get(t)) for t in self.tasks}
        self._cache: dict[tuple[str, str, str], Any] = {}
        self.neutral = neutral_texts(split, neutral)
        self._neutral_cache = cache_texts(loaded.model, loaded.tokenizer, self.neutral, site) if self.fast else None
        self._neutral_base: torch.Tensor | None = None

    # -- scoring --------------------------------------------------------------------------------------------
    def _questions(self, task: str, prefix: str) -> list[Any]:
        if not prefix:
            return self.questions[task]
        from .baselines import with_demonstrations

        return [with_demonstrations(q, prefix) for q in self.questions[task]]

    def _scores(self, task: str, method: Method, choices: str = "choices") -> list[torch.Tensor]:
        prefix = method.prefix.get(task, "")
        questions = self._questions(task, prefix)
        m = self.loaded.model
        if self.fast:
            key = (task, prefix, choices)
            if key not in self._cache:
                self._cache[key] = cache_questions(m, self.loaded.tokenizer, questions, self.site, choices=choices,
                                                   progress=self.progress)
            return score_cached(m, self.site, self._cache[key], method.edit(), method.positions or self.positions)
        if method.steerer is None:
            return score_mc(m, self.loaded.tokenizer, questions, choices=choices, progress=self.progress)
        from .intervention import steer

        with steer(m, method.steerer, site=self.site, **method.steering(method.positions or self.positions)) as handle:
            return score_mc(m, self.loaded.tokenizer, questions, handle, choices=choices, progress=self.progress)

    def _mc1_scores(self, task: str, method: Method, mc2: list[torch.Tensor]) -> list[torch.Tensor]:
        """MC1 log-probs taken from the MC2 scores (in TruthfulQA v0 every MC1 choice is also an MC2 choice);
        scored separately only where one is not."""
        qs = self.questions[task]
        if all(c in q.choices for q in qs for c in q.mc1_choices):
            return [s[[q.choices.index(c) for c in q.mc1_choices]] for q, s in zip(qs, mc2)]
        return self._scores(task, method, "mc1_choices")

    def task_scores(self, task: str, method: Method) -> dict[str, Any]:
        """Metrics of one task: means plus ``per_item`` (the primary metric per question, for bootstraps)."""
        qs = self.questions[task]
        if task == "truthfulqa":
            mc2 = self._scores(task, method)
            res = truthfulqa_mc_from_questions(qs, mc2, self._mc1_scores(task, method, mc2))
            return {"mc2": res.mean_mc2, "mc1": res.mean_mc1, "n": res.n, "per_item": res.mc2}
        if task == "bbq":
            res = bbq_accuracy_from_questions(qs, self._scores(task, method))
            return {"accuracy": res.overall.mean, "ambig": res.ambig.mean, "disambig": res.disambig.mean,
                    "n": res.overall.n, "per_item": res.overall.per_item}
        res = mc_accuracy_from_questions(qs, self._scores(task, method))
        return {"accuracy": res.mean, "n": res.n, "per_item": res.per_item}

    def side_effects(self, method: Method) -> dict[str, float]:
        """Cross-entropy on neutral text (steered) and mean next-token KL(unsteered ‖ steered), in nats."""
        if not self.fast:
            return self._side_effects_pyvene(method)
        c = self._neutral_cache
        m = self.loaded.model
        with torch.inference_mode():
            if self._neutral_base is None:
                self._neutral_base = text_logits(m, self.site, c).float()
            steered = self._neutral_base if method.steerer is None else text_logits(m, self.site, c, method.edit())
        mask = c.mask.to(steered.device)
        return {"ce": cross_entropy(steered, c.input_ids.to(steered.device), mask),
                "kl": next_token_kl(self._neutral_base, steered, mask)}

    def _side_effects_pyvene(self, method: Method) -> dict[str, float]:
        from .intervention import steer

        tok, m = self.loaded.tokenizer, self.loaded.model
        tok.padding_side = "right"
        enc = tok(self.neutral, return_tensors="pt", padding=True).to(next(m.parameters()).device)
        with torch.inference_mode():
            base = m(**enc).logits.float()
            if method.steerer is None:
                steered = base
            else:
                with steer(m, method.steerer, site=self.site, **method.steering("all")) as handle:
                    steered = handle(**enc).logits.float()
        mask = enc["attention_mask"]
        return {"ce": cross_entropy(steered, enc["input_ids"], mask), "kl": next_token_kl(base, steered, mask)}

    def evaluate(self, method: Method, side_effects: bool = True) -> dict[str, Any]:
        """All tasks (and side effects) for one method; ``mean`` is the mean of the tasks' primary metrics."""
        out: dict[str, Any] = {t: self.task_scores(t, method) for t in self.tasks}
        out["mean"] = sum(out[t][PRIMARY[t]] for t in self.tasks) / len(self.tasks)
        if side_effects:
            out["side_effects"] = self.side_effects(method)
        return out
