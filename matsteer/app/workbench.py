"""What the notebooks call: their shared settings (:func:`workbench`), the tables they show, the quick comparison.

Each notebook reads its parameters cell into one object, ``wb = workbench(globals())``, and every later cell reads
the settings from it (``wb.features_dir``, ``wb.site``, ``wb.demo.limits``, ...), so the notebooks define no
functions of their own and never re-list their parameters.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from matsteer.activations.features import FeatureSet, feature_dir, load_features
from matsteer.activations.models import LoadedModel
from matsteer.activations.sites import Site
from matsteer.app.paths import resolve_path
from matsteer.core.attributes import AttributeData
from matsteer.core.config import TrainConfig
from matsteer.core.history import History
from matsteer.core.kernel import kernel_scale_report
from matsteer.core.steerer import Steerer
from matsteer.core.workflow import DemoConfig
from matsteer.data import MCQuestion, load_examples, load_mc_questions
from matsteer.errors import ConfigError
from matsteer.eval.comparison import run_evaluation
from matsteer.eval.config import COMBINED, FINETUNED, METHODS, REFT, EvalConfig
from matsteer.eval.report import markdown_table
from matsteer.store.artifacts import check_compatible, load_steerer

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "FULL",
    "PARAMETERS",
    "QUICK",
    "STEP_PREFIX",
    "Workbench",
    "feature_table",
    "kernel_scale_table",
    "loss_table",
    "markdown_report",
    "quick_evaluation",
    "report_step",
    "workbench",
]

# Quick mode: a few groups per data set and split, a few epochs, short generations. Sized so the five notebooks
# run in about two minutes on 2 CPU cores with the default model.
QUICK: dict[str, Any] = {
    "limits": {"truthfulqa": 12, "toxigen": 24, "bbq": 12},
    "dev_limits": {"truthfulqa": 6, "toxigen": 12, "bbq": 6},
    "epochs": 5,
    "max_new_tokens": 16,
    "dev_questions": 3,
    "eval_limits": {"truthfulqa": 3, "toxigen": 4, "bbq": 3},
}
FULL: dict[str, Any] = {"max_new_tokens": 48, "dev_questions": 20}

#: The notebook parameters :func:`workbench` reads from a notebook's namespace. A notebook's other parameters (a
#: prompt, a multiplier) are its own: the cells that use them read them by name.
PARAMETERS: tuple[str, ...] = ("model", "layer", "quick", "seed", "features_dir", "steerer_dir", "figures_dir",
                               "results_dir", "epochs", "preset", "sigma", "max_new_tokens", "dev_questions")

#: A notebook line starting with this (see :func:`report_step`) is echoed by a talking headless run.
STEP_PREFIX = "[matsteer] "


@dataclass
class Workbench:
    """The settings every notebook derives from its parameters (absolute folders, quick or full limits)."""

    demo: DemoConfig
    quick: bool
    seed: int
    steerer_dir: Path
    figures_dir: Path
    results_dir: Path
    max_new_tokens: int
    dev_questions_per_task: int
    eval_limits: dict[str, int | None] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        *,
        model: str = "smollm2-135m-instruct",
        layer: int = 14,
        quick: bool = True,
        seed: int = 0,
        features_dir: str | Path = "features",
        steerer_dir: str | Path = "results/notebooks/steerer",
        figures_dir: str | Path = "figures",
        results_dir: str | Path = "results/notebooks",
        epochs: int | None = None,
        preset: str = "default",
        sigma: float | str | None = None,
        site: str = "residual",
        max_new_tokens: int | None = None,
        dev_questions: int | None = None,
    ) -> Workbench:
        """The settings from parameter values (relative folders are under the project root).

        quick: small data limits (:data:`QUICK`), ``epochs`` default 5 instead of 100, short generations.
        preset: the training settings (``TrainConfig.preset``: "default", "paper", "reference"; docs/training.md).
        sigma: overrides the preset's kernel width, a number or ``"median"`` (σ = 2 is far too small for raw
        activations; see ``docs/losses.md`` and the kernel scale table of notebook 01).
        max_new_tokens: generation length (None or 0: 16 in quick mode, 48 otherwise). dev_questions: dev
        questions per task for the tuner's "Score dev" (None: 3 in quick mode, 20 otherwise).
        """
        base = DemoConfig()
        epochs = epochs if epochs is not None else (QUICK["epochs"] if quick else base.train.epochs)
        overrides = {"epochs": epochs, "seed": seed, **({"sigma": sigma} if sigma is not None else {})}
        train = TrainConfig.preset(preset, **overrides)
        train.validate()
        demo = DemoConfig(
            model=model, layer=layer, site=site, train=train, features_dir=resolve_path(features_dir),
            out_dir=resolve_path(results_dir),
            limits=dict(QUICK["limits"]) if quick else dict(base.limits),
            dev_limits=dict(QUICK["dev_limits"]) if quick else dict(base.dev_limits),
        )
        Site(layer, site)  # validates the layer and component early
        mode = QUICK if quick else FULL
        return cls(
            demo=demo, quick=quick, seed=seed, steerer_dir=resolve_path(steerer_dir), figures_dir=resolve_path(figures_dir),
            results_dir=resolve_path(results_dir), max_new_tokens=int(max_new_tokens or mode["max_new_tokens"]),
            dev_questions_per_task=int(mode["dev_questions"]) if dev_questions is None else dev_questions,
            eval_limits=dict(QUICK["eval_limits"]) if quick else {},
        )

    @property
    def model(self) -> str:
        return self.demo.model

    @property
    def layer(self) -> int:
        return self.demo.layer

    @property
    def site(self) -> Site:
        return Site(self.demo.layer, self.demo.site)

    @property
    def features_dir(self) -> Path:
        return self.demo.features_dir

    def feature_folders(self, split: str) -> list[Path]:
        """The feature folder of each QA data set for ``split``; refuses missing ones (run notebook 01 first)."""
        folders = [feature_dir(self.demo.features_dir, self.demo.model, ds, split, self.site, self.demo.tokens)
                   for ds in self.demo.datasets]
        missing = [str(f) for f in folders if not (f / "manifest.json").is_file()]
        if missing:
            raise ConfigError(f"No extracted features at {missing}. Run 01_extract_activations.ipynb with the same "
                              "model, layer, quick and features_dir first.")
        return folders

    def load_features(self, split: str) -> list[FeatureSet]:
        """The feature set of each QA data set for ``split`` (see :meth:`feature_folders`)."""
        return [load_features(f) for f in self.feature_folders(split)]

    def load_steerer(self, loaded: LoadedModel) -> tuple[Steerer, Site]:
        """The steerer saved in ``steerer_dir`` and its site, checked against ``loaded`` and this site.

        Raises :class:`~matsteer.errors.ArtifactError` (missing folder: run notebook 02) or when the steerer was
        trained on another model, hidden size or site; warnings for allowed mismatches are printed.
        """
        if not (self.steerer_dir / "manifest.json").is_file():
            raise ConfigError(f"No steerer at {self.steerer_dir}. Run 02_train_steering.ipynb with the same "
                              "steerer_dir first.")
        steerer, manifest = load_steerer(self.steerer_dir)
        for warning in check_compatible(manifest, model_name=loaded.name, model_hash=loaded.weight_hash,
                                        d=loaded.hidden_size, site=self.site):
            print(f"warning: {warning}")
        return steerer, Site.from_dict(manifest["site"])

    def dev_questions(self, n: int | None = None) -> dict[str, list[MCQuestion]]:
        """A small sample of dev multiple-choice questions per QA task (for the tuner's "Score dev").

        n: questions per task; default ``dev_questions_per_task``; 0 or less: none.
        """
        n = self.dev_questions_per_task if n is None else n
        if n <= 0:
            return {}
        return {ds: load_mc_questions(ds, "dev", limit=n, seed=0) for ds in self.demo.datasets}

    def paradetox_texts(self, n: int | None = None, split: str = "dev") -> dict[str, list[str]]:
        """ParaDetox sentences for the gate analysis (Table 2): ``{"Toxic": [...], "Non-toxic": [...]}``.

        n: pairs (groups) to take; default 8 in quick mode, 100 otherwise.
        """
        n = (8 if self.quick else 100) if n is None else n
        examples = load_examples("paradetox", split, limit=n, seed=0)
        return {"Toxic": [e.text for e in examples if e.label == 0],
                "Non-toxic": [e.text for e in examples if e.label == 1]}

    def to_dict(self) -> dict[str, Any]:
        return {"demo": self.demo.to_dict(), "quick": self.quick, "seed": self.seed,
                "steerer_dir": str(self.steerer_dir), "figures_dir": str(self.figures_dir),
                "results_dir": str(self.results_dir), "max_new_tokens": self.max_new_tokens,
                "dev_questions_per_task": self.dev_questions_per_task, "eval_limits": dict(self.eval_limits)}


def workbench(namespace: Mapping[str, Any] | None = None, /, **settings: Any) -> Workbench:
    """A notebook's shared settings, from its parameters: ``wb = workbench(globals())`` after the parameters cell.

    namespace: the notebook's globals (its ``parameters`` cell and any injected values run before). Only the names
    in :data:`PARAMETERS` are read, so an unrelated global (a later ``site = ...``) never leaks in; a parameter
    the notebook does not declare keeps its default. settings: keyword values over the namespace's (the same
    names, plus ``site``), e.g. ``workbench(quick=True, features_dir="features")``; see :meth:`Workbench.create`.
    """
    found = {name: namespace[name] for name in PARAMETERS if name in namespace} if namespace is not None else {}
    return Workbench.create(**{**found, **settings})


def feature_table(sets: Sequence[FeatureSet]) -> pd.DataFrame:
    """One row per feature folder: data set, split, texts, rows, positives, negatives, d (a pandas DataFrame)."""
    import pandas as pd

    rows = []
    for fs in sets:
        m = fs.manifest
        rows.append({"dataset": m["dataset"], "split": m["split"], "attribute": fs.attribute,
                     "positive side": fs.positive_side, "texts": m.get("texts"), "rows": int(fs.activations.shape[0]),
                     "positives": int((fs.labels == 1).sum()), "negatives": int((fs.labels == 0).sum()),
                     "d": int(fs.activations.shape[1])})
    return pd.DataFrame(rows)


def kernel_scale_table(
    data: Sequence[AttributeData],
    settings: Iterable[tuple[float | str, bool]] = ((2.0, False), ("median", False), (2.0, True)),
    seed: int = 0,
) -> pd.DataFrame:
    """:func:`~matsteer.core.training.kernel_scale_report` for several (σ, standardize) settings, as a DataFrame."""
    import pandas as pd

    rows = []
    for sigma, standardize in settings:
        r = kernel_scale_report(data, sigma, standardize=standardize, seed=seed)
        rows.append({"sigma setting": sigma, "standardize": standardize, "sigma": r["sigma"],
                     "median distance": r["median_pairwise_distance"], "mean norm": r["mean_norm"],
                     "mean k(x,y)": r["mean_offdiag_kernel"], "frac k<1e-6": r["frac_kernel_below_1e-6"],
                     "advice": r["advice"]})
    return pd.DataFrame(rows)


def loss_table(history: History, split: str = "train") -> pd.DataFrame | None:
    """Last-epoch loss terms (rows) per attribute and summed (columns), as a DataFrame; None without that split."""
    import pandas as pd

    final = history.final(split)
    return None if final is None else pd.DataFrame(final).T


def report_step(message: str) -> None:
    """Print one progress line from inside a notebook; a talking headless run echoes it with times."""
    print(f"{STEP_PREFIX}{message}", flush=True)


def quick_evaluation(wb: Workbench, *, settings_from: str | Path | None = None, progress: bool = False,
                     steps: bool = True) -> dict[str, Any]:
    """Run the method comparison (:func:`matsteer.eval.comparison.run_evaluation`) at the notebook's settings.

    Quick mode: one seed, one multiplier, the notebook's training setting, few questions, a short bootstrap, two
    temperatures, no grid extension. Features are shared with notebooks 01/02 (same folders and limits). Writes
    ``eval.json`` / ``eval.md`` under ``wb.results_dir`` and returns the report. steps: print a
    :func:`report_step` line as each part of the comparison starts (set-up, each method's dev tuning, each test
    run); progress: tqdm bars as well. The LoRA baselines are left out (each adapter trains for minutes on a
    2-core CPU; LoReFT likewise); ``matsteer compare`` and the reference run include them. settings_from: a finished comparison's
    ``eval.json`` (relative: under the project root) whose dev choices are borrowed under the primary protocol
    instead of searching this run's dev (:attr:`EvalConfig.settings_from`; notebook 04 borrows the committed
    reference's); None or "": every choice made on this run's dev.
    """
    cfg = EvalConfig(demo=copy.deepcopy(wb.demo), out_dir=Path(wb.results_dir),
                     methods=tuple(m for m in METHODS if m not in {*FINETUNED, *REFT, *COMBINED}))
    if wb.quick:
        cfg.seeds, cfg.multipliers, cfg.iti_alphas, cfg.icl_shots = (wb.seed,), (1.0,), (1.0,), (1,)
        cfg.dev_limits, cfg.test_limits = dict(wb.eval_limits), dict(wb.eval_limits)
        cfg.training_candidates, cfg.n_boot = ({},), 200
        cfg.temperatures, cfg.grid_extensions, cfg.nl_iti_alphas, cfg.icv_lambdas = (1.0, 3.0), 0, (1.0,), (0.1,)
    if settings_from:
        cfg.settings_from = str(resolve_path(settings_from))
    return run_evaluation(cfg, progress=progress, on_step=report_step if steps else None)


def markdown_report(report: dict[str, Any], results_dir: str | Path | None = None) -> str:
    """The evaluation's markdown table: ``eval.md`` beside the report when written, else rebuilt from the report."""
    if results_dir is not None and (Path(results_dir) / "eval.md").is_file():
        return (Path(results_dir) / "eval.md").read_text(encoding="utf-8")
    return markdown_table(report)
