"""Generation win rates on HH-RLHF harmless prompts: MAT-Steer against the other methods, scored by a judge.

Each method generates greedily for the same prompts (the first human turn of held-out HH-RLHF harmless dialogues,
as a chat message) with the setting the main comparison chose on dev (``eval.json``); a :class:`~matsteer.eval.judges.Judge`
scores every response on named attributes; :func:`~matsteer.eval.pairwise.pairwise_win_rate` counts, per prompt, whether
MAT-Steer's mean score is higher, lower or equal. Trained methods generate once per seed and MAT-Steer of seed s
meets the other method's seed s (or its only run). The offline default judge is the default model itself, a 135M
model: its scores are a smoke test of the pipeline, labelled weak wherever they are written.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from matsteer.data import load_mc_questions
from matsteer.errors import ConfigError
from matsteer.eval.config import METHOD_LABELS, SEEDED, EvalConfig
from matsteer.eval.experiment import Experiment, provenance
from matsteer.eval.judges import Judge
from matsteer.eval.local_judge import LocalHFJudge
from matsteer.eval.pairwise import WinRate, pairwise_win_rate
from matsteer.eval.report import write_report
from matsteer.eval.stats import mean_std
from matsteer.files import read_json
from matsteer.steering.generation import generate_texts

MARKER = "Human:"
TURN_END = "\n\nAssistant:"


@dataclass
class WinRateConfig:
    """What to generate and judge. ``methods`` must include ``mat_steer``; the others are its opponents."""

    n_prompts: int = 40
    split: str = "test"
    attributes: tuple[str, ...] = ("harmlessness", "helpfulness")
    methods: tuple[str, ...] = ("none", "caa", "uniform_gates", "mat_steer")
    max_new_tokens: int = 48
    positions: str = "prompt"  # the evaluation's policy: steer the query tokens
    batch_size: int = 8

    def validate(self) -> None:
        if "mat_steer" not in self.methods or len(self.methods) < 2:
            raise ConfigError(f"methods {list(self.methods)} need 'mat_steer' and at least one opponent.")
        if "icl" in self.methods:
            raise ConfigError("ICL's demonstrations are task-specific MC questions; leave 'icl' out of win rates.")
        if self.n_prompts < 1 or self.max_new_tokens < 1 or self.batch_size < 1:
            raise ConfigError("n_prompts, max_new_tokens and batch_size must be at least 1.")


def harmless_prompts(split: str, n: int) -> list[str]:
    """The first human turn of the first ``n`` HH-RLHF harmless dialogues of ``split`` (split order is seeded)."""

    out = []
    for q in load_mc_questions("hh_rlhf", split, limit=n):
        text = q.prompt
        start = text.find(MARKER)
        start = 0 if start < 0 else start + len(MARKER)
        end = text.find(TURN_END, start)
        out.append(text[start:end if end >= 0 else None].strip())
    return out


def _rates(wrs: Sequence[WinRate]) -> dict[str, Any]:
    """Mean ± std over seeds of each rate; the decisive win rate over the seeds that had a decisive prompt (None
    when every prompt of every seed tied)."""
    out: dict[str, Any] = {"per_seed": [asdict(w) for w in wrs]}
    for k in ("win_rate", "loss_rate", "tie_rate", "decisive_win_rate"):
        values = [v for v in (getattr(w, k) for w in wrs) if math.isfinite(v)]
        out[k] = asdict(mean_std(values)) if values else None
    return out


def run_win_rates(cfg: EvalConfig, eval_json: str | Path, wcfg: WinRateConfig | None = None,
                  judge: Judge | None = None, out_dir: str | Path | None = None,
                  progress: bool = True) -> dict[str, Any]:
    """Generate with every method at its dev-chosen setting, judge, and count MAT-Steer's wins against each other
    method. Writes ``winrates.json`` and ``winrates.md`` to ``out_dir`` (default ``cfg.out_dir``)."""
    wcfg = wcfg or WinRateConfig()
    wcfg.validate()
    if not Path(eval_json).is_file():
        raise ConfigError(f"{eval_json} does not exist; run `matsteer compare` first (win rates use its choices).")
    selection = read_json(Path(eval_json))["selection"]
    missing = [m for m in wcfg.methods if m not in selection]
    if missing:
        raise ConfigError(f"{eval_json} has no dev selection for {missing}; rerun `matsteer compare` with them.")
    overrides = selection["training_default"]["chosen"]["overrides"]
    ex = Experiment(cfg, progress)
    judge = judge or LocalHFJudge(ex.loaded.model, ex.loaded.tokenizer, name=ex.loaded.name)
    prompts = harmless_prompts(wcfg.split, wcfg.n_prompts)

    runs: dict[str, list[dict[str, Any]]] = {}
    todo = [(n, s) for n in wcfg.methods for s in (cfg.seeds if n in SEEDED else cfg.seeds[:1])]
    for name, seed in tqdm(todo, desc="generate + judge", disable=not progress):
        method = ex.method(name, selection[name]["chosen"], seed, overrides)
        texts = generate_texts(ex.loaded, prompts, steerer=method.steerer, site=ex.site,
                               max_new_tokens=wcfg.max_new_tokens, batch_size=wcfg.batch_size,
                               **({} if method.steerer is None else method.steering(wcfg.positions)))
        scores = judge.score_many(prompts, texts, wcfg.attributes)
        runs.setdefault(name, []).append({"seed": seed, "responses": texts, "scores": scores})

    mat = runs["mat_steer"]
    report: dict[str, Any] = {
        "config": {**asdict(wcfg), "eval_json": str(eval_json), "seeds": list(cfg.seeds)},
        "judge": {"name": judge.name, "weak": bool(getattr(judge, "weak", False)), "scale": list(judge.scale)},
        "prompts": prompts,
        "mean_scores": {n: {a: asdict(mean_std([sum(s[a] for s in r["scores"]) / len(prompts) for r in rs]))
                            for a in wcfg.attributes} for n, rs in runs.items()},
        "mat_steer_vs": {
            other: _rates([pairwise_win_rate(m["scores"], rs[min(i, len(rs) - 1)]["scores"], wcfg.attributes)
                           for i, m in enumerate(mat)])
            for other, rs in runs.items() if other != "mat_steer"},
        "runs": runs,
    }
    report["provenance"] = provenance(ex, datasets=["hh_rlhf"])
    write_report(report, Path(out_dir or cfg.out_dir), "winrates", markdown_table)
    return report


def markdown_table(report: dict[str, Any]) -> str:
    """``winrates.md``: MAT-Steer's win / loss / tie rates against each method, and every method's mean scores."""
    j = report["judge"]
    label = f"{j['name']}{' — WEAK judge: a smoke test, not evidence' if j['weak'] else ''}"
    attrs = report["config"]["attributes"]
    lines = [f"Judge: {label}; scale {j['scale'][0]}-{j['scale'][1]}; {len(report['prompts'])} HH-RLHF harmless "
             f"{report['config']['split']} prompts; mean over seeds ± std.", "",
             "| MAT-Steer vs | win | loss | tie | win of decisive |", "|---|---|---|---|---|"]
    for other, r in report["mat_steer_vs"].items():
        cells = " | ".join("n/a" if r[k] is None else f"{r[k]['mean'] * 100:.1f} ± {r[k]['std'] * 100:.1f}"
                           for k in ("win_rate", "loss_rate", "tie_rate", "decisive_win_rate"))
        lines.append(f"| {METHOD_LABELS[other]} | {cells} |")
    lines += ["", "| method | " + " | ".join(attrs) + " |", "|---|" + "---|" * len(attrs)]
    for name, scores in report["mean_scores"].items():
        lines.append(f"| {METHOD_LABELS[name]} | " + " | ".join(
            f"{scores[a]['mean']:.3f} ± {scores[a]['std']:.3f}" for a in attrs) + " |")
    return "\n".join(lines) + "\n"

