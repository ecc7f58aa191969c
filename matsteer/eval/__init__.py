"""Stage 6, evaluation: metrics, statistics, scoring, the comparison, ablations, judges, gate analyses.

Modules, lower ones first: ``metrics``, ``task_metrics`` and ``side_effects`` (pure functions
of scores), ``stats`` (bootstraps, mean ± std, detectable differences), ``tasks`` (task names, primary metrics,
sources, constant answers), ``scoring`` (multiple choice through the model or a steering handle), ``site_cache`` and
``cached_scoring`` (one pass below the site, then each method above it), ``evaluator`` (``Method``,
``Evaluator``), ``config`` (the comparison's methods and ``EvalConfig``), ``experiment`` (the shared
set-up), ``report`` (``eval.md``), ``comparison`` (``run_evaluation``), ``ablations``, ``gate_analysis``; the
judges (``judges``, ``judge_prompts``, ``openai_judge``, ``local_judge``), ``pairwise`` and ``winrates``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from matsteer._lazy import lazy_attributes

if not TYPE_CHECKING:  # no names of its own: submodules as attributes (matsteer.core.steerer), imported on first use
    __getattr__, __dir__ = lazy_attributes(__name__, {})
