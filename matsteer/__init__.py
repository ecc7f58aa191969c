"""matsteer: multi-attribute targeted steering (MAT-Steer) of language models, as a research workbench.

The package is the pipeline's stages, each importing only the ones before it:
``data`` -> ``activations`` -> ``core`` -> ``store`` -> ``steering`` -> ``eval`` -> ``viz`` -> ``app``.
The names below are the public API, one import away (``from matsteer import train_steerer``); the tuning widget
needs the notebooks extra (``from matsteer.app.widgets import MultiplierTuner``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from matsteer._lazy import lazy_attributes

# Where each public name is defined; it is imported from there on first use (matsteer/_lazy.py).
_EXPORTS = {
    "matsteer.activations.extraction": ("ActivationRows", "extract_activations"),
    "matsteer.activations.features": ("FeatureSet", "extract_to_folder", "feature_dir", "load_features"),
    "matsteer.activations.models": ("DEFAULT_MODEL", "LoadedModel", "load_model"),
    "matsteer.activations.sites": ("Site",),
    "matsteer.app.workbench": (
        "Workbench", "feature_table", "kernel_scale_table", "loss_table", "markdown_report", "quick_evaluation",
        "report_step", "workbench",
    ),
    "matsteer.core.attributes": ("AttributeData",),
    "matsteer.core.config": ("TrainConfig",),
    "matsteer.core.health": ("health_table", "targeting_table", "training_health"),
    "matsteer.core.history": ("History",),
    "matsteer.core.kernel": ("median_sigma",),
    "matsteer.core.steerer": ("Steerer",),
    "matsteer.core.training": ("TrainResult", "train_steerer"),
    "matsteer.core.workflow": ("DemoConfig", "attribute_data", "extract_splits", "train_from_features"),
    "matsteer.data": ("Example", "MCQuestion", "load_examples", "load_mc_questions"),
    "matsteer.errors": (
        "ArtifactError", "ConfigError", "DataError", "MatSteerError", "ModelError", "TrainingError",
    ),
    "matsteer.eval.ablations": ("run_ablations",),
    "matsteer.eval.comparison": ("run_evaluation",),
    "matsteer.eval.config": ("EvalConfig",),
    "matsteer.eval.evaluator": ("Evaluator", "Method"),
    "matsteer.eval.gate_analysis": (
        "gate_sets", "gate_table_stats", "generate_with_gates", "neutral_activations", "steered_sets",
        "targeting_report", "text_gates",
    ),
    "matsteer.steering.compat": ("MATIntervener", "create_mat_pyvene_config"),
    "matsteer.steering.generation": ("compare_generations", "generate_texts"),
    "matsteer.steering.session": ("steer",),
    "matsteer.store.artifacts": (
        "check_compatible", "load_history", "load_steerer", "save_steerer", "save_training_result",
    ),
    "matsteer.store.hub": ("from_pretrained", "save_pretrained"),
    "matsteer.viz.figures": ("figures_from_report",),
    "matsteer.viz.paper": (
        "PAPER", "comparison_markdown", "item_figure", "item_markdown", "load_paper_results", "paper_comparisons",
        "pending_items", "pending_markdown", "plot_comparison", "sources_markdown", "write_paper",
    ),
    "matsteer.viz.plots": (
        "plot_gate_distributions", "plot_orthogonality", "plot_pca", "plot_token_gates", "plot_training_curves",
    ),
    "matsteer.viz.style": ("save_figure",),
    "matsteer.viz.tables": ("plot_gate_table",),
}

if TYPE_CHECKING:
    from matsteer.activations.extraction import ActivationRows, extract_activations
    from matsteer.activations.features import FeatureSet, extract_to_folder, feature_dir, load_features
    from matsteer.activations.models import DEFAULT_MODEL, LoadedModel, load_model
    from matsteer.activations.sites import Site
    from matsteer.app.workbench import (
        Workbench,
        feature_table,
        kernel_scale_table,
        loss_table,
        markdown_report,
        quick_evaluation,
        report_step,
        workbench,
    )
    from matsteer.core.attributes import AttributeData
    from matsteer.core.config import TrainConfig
    from matsteer.core.health import health_table, targeting_table, training_health
    from matsteer.core.history import History
    from matsteer.core.kernel import median_sigma
    from matsteer.core.steerer import Steerer
    from matsteer.core.training import TrainResult, train_steerer
    from matsteer.core.workflow import DemoConfig, attribute_data, extract_splits, train_from_features
    from matsteer.data import Example, MCQuestion, load_examples, load_mc_questions
    from matsteer.errors import (
        ArtifactError,
        ConfigError,
        DataError,
        MatSteerError,
        ModelError,
        TrainingError,
    )
    from matsteer.eval.ablations import run_ablations
    from matsteer.eval.comparison import run_evaluation
    from matsteer.eval.config import EvalConfig
    from matsteer.eval.evaluator import Evaluator, Method
    from matsteer.eval.gate_analysis import (
        gate_sets,
        gate_table_stats,
        generate_with_gates,
        neutral_activations,
        steered_sets,
        targeting_report,
        text_gates,
    )
    from matsteer.steering.compat import MATIntervener, create_mat_pyvene_config
    from matsteer.steering.generation import compare_generations, generate_texts
    from matsteer.steering.session import steer
    from matsteer.store.artifacts import (
        check_compatible,
        load_history,
        load_steerer,
        save_steerer,
        save_training_result,
    )
    from matsteer.store.hub import from_pretrained, save_pretrained
    from matsteer.viz.figures import figures_from_report
    from matsteer.viz.paper import (
        PAPER,
        comparison_markdown,
        item_figure,
        item_markdown,
        load_paper_results,
        paper_comparisons,
        pending_items,
        pending_markdown,
        plot_comparison,
        sources_markdown,
        write_paper,
    )
    from matsteer.viz.plots import (
        plot_gate_distributions,
        plot_orthogonality,
        plot_pca,
        plot_token_gates,
        plot_training_curves,
    )
    from matsteer.viz.style import save_figure
    from matsteer.viz.tables import plot_gate_table
else:
    __getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL",
    "PAPER",
    "ActivationRows",
    "ArtifactError",
    "AttributeData",
    "ConfigError",
    "DataError",
    "DemoConfig",
    "EvalConfig",
    "Evaluator",
    "Example",
    "FeatureSet",
    "History",
    "LoadedModel",
    "MATIntervener",
    "MCQuestion",
    "MatSteerError",
    "Method",
    "ModelError",
    "Site",
    "Steerer",
    "TrainConfig",
    "TrainResult",
    "TrainingError",
    "Workbench",
    "attribute_data",
    "check_compatible",
    "compare_generations",
    "comparison_markdown",
    "create_mat_pyvene_config",
    "extract_activations",
    "extract_splits",
    "extract_to_folder",
    "feature_dir",
    "feature_table",
    "figures_from_report",
    "from_pretrained",
    "gate_sets",
    "gate_table_stats",
    "generate_texts",
    "generate_with_gates",
    "health_table",
    "item_figure",
    "item_markdown",
    "kernel_scale_table",
    "load_examples",
    "load_features",
    "load_history",
    "load_mc_questions",
    "load_model",
    "load_paper_results",
    "load_steerer",
    "loss_table",
    "markdown_report",
    "median_sigma",
    "neutral_activations",
    "paper_comparisons",
    "pending_items",
    "pending_markdown",
    "plot_comparison",
    "plot_gate_distributions",
    "plot_gate_table",
    "plot_orthogonality",
    "plot_pca",
    "plot_token_gates",
    "plot_training_curves",
    "quick_evaluation",
    "report_step",
    "run_ablations",
    "run_evaluation",
    "save_figure",
    "save_pretrained",
    "save_steerer",
    "save_training_result",
    "sources_markdown",
    "steer",
    "steered_sets",
    "targeting_report",
    "targeting_table",
    "text_gates",
    "train_from_features",
    "train_steerer",
    "training_health",
    "workbench",
    "write_paper",
]
