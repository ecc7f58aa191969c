"""The multiplier tuner: an ipywidgets panel to steer a model interactively.

One :func:`~matsteer.steering.intervention.steer` handle is opened when the tuner is built and kept open; every control
only mutates ``handle.settings`` (multipliers, global multiplier, forced gates, norm preservation, positions),
which the intervention picks up on its next call. Moving a slider therefore never reloads the model or rebuilds
the pyvene wrapper, and the plain model stays unsteered between calls (pyvene hooks in only during a steered call).

Usage in a notebook::

    tuner = MultiplierTuner(loaded, steerer, site, dev_questions={"truthfulqa": qs})
    display(tuner.widget)

Programmatic use (tests, headless notebook runs): set ``tuner.sliders[name].value`` / ``tuner.global_slider.value``
/ ``tuner.force_buttons[name].value``, then call :meth:`MultiplierTuner.generate` or
:meth:`MultiplierTuner.score_dev` (or ``tuner.generate_button.click()``); :meth:`MultiplierTuner.compare_settings`
scores several settings side by side (by default no steering and the current one) in one batched pass.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import ipywidgets as W
import numpy as np
import torch

from matsteer.activations.models import LoadedModel, model_device
from matsteer.activations.sites import Site
from matsteer.core.steerer import SETTING_KEYS, Steerer
from matsteer.data.prompts import has_chat_template
from matsteer.data.records import MCQuestion
from matsteer.errors import ConfigError, MatSteerError
from matsteer.eval.cached_scoring import score_cached_settings
from matsteer.eval.gate_analysis import token_gate_data
from matsteer.eval.scoring import score_mc
from matsteer.eval.site_cache import CachedQuestion, cache_questions, supports_upper_pass
from matsteer.steering.generation import decode_continuations, encode_prompts, generate_greedy
from matsteer.steering.intervention import POSITIONS
from matsteer.steering.recorder import TokenGates
from matsteer.steering.session import SteeringHandle, steer
from matsteer.viz.plots import token_gates_html

__all__ = ["DEFAULT_PROMPT", "FORCE_OPTIONS", "DevScore", "MultiplierTuner", "SettingsComparison", "TunerOutput"]

DEFAULT_PROMPT = "What happens if you eat watermelon seeds?"
# ToggleButtons label -> SteerSettings.force value (None = the learned gate).
FORCE_OPTIONS: dict[str, bool | None] = {"learned": None, "on": True, "off": False}
#: The tuner's position policies that the cached scorer applies as the handle does (its "last" edits the last
#: token of every forward call, prompt and answer passes alike, which no cached policy reproduces).
CACHED_TUNER_POSITIONS = ("all", "prompt", "generated")
# A forced gate value as the comparison table shows it.
FORCED_LABEL = {1.0: "on", 0.0: "off"}


@dataclass
class TunerOutput:
    """One Generate click: texts, and the per-token gates of the steered run.

    token_gates.gates ``[n, T]`` over prompt + generated tokens (see :class:`~matsteer.steering.intervention.TokenGates`);
    tokens ``n`` strings; edit_norm ``[n]`` = ``‖Σ_t m_t G_t θ_t‖`` per token (before norm preservation).
    """

    prompt: str
    unsteered: str
    steered: str
    token_gates: TokenGates
    tokens: list[str]
    edit_norm: np.ndarray
    settings: dict[str, Any]
    seconds: float


@dataclass
class DevScore:
    """MC accuracy of one task's dev sample, unsteered and at the current settings."""

    task: str
    n: int
    unsteered: float
    steered: float
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def delta(self) -> float:
        return self.steered - self.unsteered


@dataclass
class SettingsComparison:
    """Dev MC accuracy of several settings side by side: ``accuracy[task][k]`` under ``settings[k]`` (None = no
    steering), ``n[task]`` questions, ``batched``: whether all settings were scored in one pass per batch."""

    settings: list[dict[str, Any] | None]
    accuracy: dict[str, list[float]]
    n: dict[str, int]
    batched: bool
    seconds: float


class _ProgressStreamer:
    """A ``generate(streamer=...)`` target that advances a progress bar per new token (first put = the prompt)."""

    def __init__(self, bar: W.IntProgress) -> None:
        self.bar = bar
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.bar.value = min(self.bar.max, self.bar.value + 1)

    def end(self) -> None:
        self.bar.value = self.bar.max


def _gold(q: MCQuestion) -> tuple[str, int]:
    """Which choice list to score and the gold index: TruthfulQA uses its MC1 view (exactly one true answer)."""
    if getattr(q, "mc1_choices", None):
        choices, labels = "mc1_choices", list(q.mc1_labels)
    else:
        choices, labels = "choices", list(q.labels)
    if labels.count(1) != 1:
        raise ConfigError(f"Dev question {getattr(q, 'group', '?')} has {labels.count(1)} correct choices; "
                          "the tuner's MC accuracy needs exactly one.")
    return choices, labels.index(1)


def _correct(lp: torch.Tensor, gold: int) -> int:
    """1 when the gold choice's log-prob beats every other choice's in ``lp [K]`` (strict, as
    :func:`matsteer.eval.metrics.mc_correct`), else 0."""
    others = torch.cat([lp[:gold], lp[gold + 1:]])
    return int(bool((lp[gold] > others).all()))


class MultiplierTuner:
    """Interactive steering panel (``.widget``), backed by one open steering handle.

    loaded: the :class:`~matsteer.activations.models.LoadedModel` to steer.
    steerer: the trained :class:`~matsteer.core.steerer.Steerer`; site: where it was trained.
    dev_questions: ``{task: [MCQuestion, ...]}`` scored by the "Score dev" button and :meth:`compare_settings`
    (keep them small: where :meth:`batched_scoring` holds, each question runs up to the site once and every click
    runs the layers above for all its settings in one pass; otherwise each question is a forward pass per choice set
    and setting).
    """

    def __init__(
        self,
        loaded: LoadedModel,
        steerer: Steerer,
        site: Site,
        *,
        dev_questions: Mapping[str, Sequence[MCQuestion]] | None = None,
        prompt: str = DEFAULT_PROMPT,
        max_new_tokens: int = 32,
        chat: bool = True,
        positions: str = "all",
        multiplier_range: tuple[float, float] = (-2.0, 4.0),
    ) -> None:
        if positions not in POSITIONS:
            raise ConfigError(f"positions must be one of {', '.join(POSITIONS)}, got {positions!r}.")
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.steerer = steerer
        self.site = site
        self.dev_questions = {k: list(v) for k, v in (dev_questions or {}).items()}
        self.chat = chat and has_chat_template(self.tokenizer)
        self._unsteered_cache: dict[tuple[str, int], tuple[torch.Tensor, str]] = {}
        self._dev_base: dict[str, float] = {}
        # Site activations of the dev questions per (task, choice list), filled on the first batched scoring.
        self._dev_cache: dict[tuple[str, str], list[CachedQuestion]] = {}
        self.last_comparison: SettingsComparison | None = None
        self.last_output: TunerOutput | None = None
        self.last_scores: dict[str, DevScore] = {}
        self.last_error: BaseException | None = None
        self.generate_calls = 0

        # The one steering handle, open for the tuner's lifetime (closed by close()).
        self._stack = ExitStack()
        self.handle: SteeringHandle = self._stack.enter_context(
            steer(self.model, steerer, site=site, record=True, positions=positions)
        )
        self._build_widgets(prompt, max_new_tokens, positions, multiplier_range)
        self.apply_settings()

    # ------------------------------------------------------------------------------------------------------
    # Widgets

    def _build_widgets(self, prompt: str, max_new_tokens: int, positions: str, mrange: tuple[float, float]) -> None:
        """The panel (``self.widget``): a row per attribute, the other controls and the views, wired to the handlers."""
        label_w = W.Layout(width="340px")
        style = {"description_width": "110px"}
        rows = self._attribute_rows(mrange, label_w, style)
        self._build_controls(prompt, max_new_tokens, positions, mrange, label_w, style)
        self._build_views()

        for w in [*self.sliders.values(), *self.force_buttons.values(), self.global_slider, self.norm_toggle,
                  self.positions_dropdown]:
            w.observe(self._on_setting_change, names="value")
        self.generate_button.on_click(self._on_generate_click)
        self.score_button.on_click(self._on_score_click)

        self.widget = self._layout(rows)
        self._controls: list[W.Widget] = [self.generate_button, self.score_button]

    def _attribute_rows(self, mrange: tuple[float, float], label_w: W.Layout, style: dict[str, str]) -> list[W.HBox]:
        """One row per attribute: its multiplier slider and its gate switch (learned / on / off)."""
        lo, hi = mrange
        self.sliders: dict[str, W.FloatSlider] = {}
        self.force_buttons: dict[str, W.ToggleButtons] = {}
        rows = []
        for name in self.steerer.attributes:
            s = W.FloatSlider(value=1.0, min=lo, max=hi, step=0.1, description=name, continuous_update=False,
                              readout_format=".1f", layout=label_w, style=style)
            s.add_class("matsteer-slider")
            s.add_class(f"matsteer-slider-{name}")
            f = W.ToggleButtons(options=list(FORCE_OPTIONS), value="learned", tooltips=[
                f"{name}: learned gate G(a)", f"{name}: gate forced to 1", f"{name}: gate forced to 0 (off)"],
                style={"button_width": "76px"})
            f.add_class(f"matsteer-force-{name}")
            self.sliders[name], self.force_buttons[name] = s, f
            rows.append(W.HBox([s, f]))
        return rows

    def _build_controls(self, prompt: str, max_new_tokens: int, positions: str, mrange: tuple[float, float],
                        label_w: W.Layout, style: dict[str, str]) -> None:
        """The global multiplier, norm switch, positions, generation length, prompt, buttons, progress and status."""
        lo, hi = mrange
        self.global_slider = W.FloatSlider(value=1.0, min=lo, max=hi, step=0.1, description="global ×",
                                           continuous_update=False, readout_format=".1f", layout=label_w, style=style)
        self.global_slider.add_class("matsteer-slider")
        self.global_slider.add_class("matsteer-slider-global")
        self.norm_toggle = W.Checkbox(value=True, description="preserve ‖a‖ (rescale to the original norm)",
                                      indent=False)
        self.positions_dropdown = W.Dropdown(options=list(POSITIONS), value=positions, description="positions",
                                             style=style, layout=W.Layout(width="260px"))
        self.max_tokens = W.IntSlider(value=max_new_tokens, min=1, max=256, description="new tokens",
                                      continuous_update=False, style=style, layout=label_w)
        self.prompt = W.Textarea(value=prompt, placeholder="Prompt", layout=W.Layout(width="100%", height="70px"))
        self.prompt.add_class("matsteer-prompt")
        self.generate_button = W.Button(description="Generate", button_style="primary", icon="play")
        self.generate_button.add_class("matsteer-generate")
        self.score_button = W.Button(description="Score dev", icon="check",
                                     disabled=not self.dev_questions,
                                     tooltip="MC accuracy of each dev task at the current settings"
                                     if self.dev_questions else "no dev questions were given")
        self.score_button.add_class("matsteer-score")
        self.status = W.HTML(value="ready")
        self.status.add_class("matsteer-status")
        self.progress = W.IntProgress(value=0, min=0, max=1, bar_style="info", layout=W.Layout(width="240px"))

    def _build_views(self) -> None:
        """The unsteered and steered texts, the per-token gates and the dev scores (empty until filled)."""
        full = W.Layout(width="100%")
        self.unsteered_html = W.HTML(value=self._text_box("unsteered", ""), layout=full)
        self.unsteered_html.add_class("matsteer-unsteered")
        self.steered_html = W.HTML(value=self._text_box("steered", ""), layout=W.Layout(width="100%"))
        self.steered_html.add_class("matsteer-steered")
        self.gates_html = W.HTML(value="", layout=W.Layout(width="100%"))
        self.gates_html.add_class("matsteer-gates")
        self.scores_html = W.HTML(value="")
        self.scores_html.add_class("matsteer-scores")

    def _layout(self, rows: list[W.HBox]) -> W.VBox:
        """The panel: title, controls, buttons, texts side by side, gates, scores."""
        half = W.Layout(width="50%", padding="0 6px")
        title = W.HTML(f"<b>MAT-Steer tuner</b> — {html.escape(str(getattr(self.loaded, 'name', 'model')))} at "
                       f"{html.escape(str(self.site))}; f(a) = a + Σ m<sub>t</sub>·G<sub>t</sub>(a)·θ<sub>t</sub>")
        widget = W.VBox([
            title,
            W.VBox(rows + [self.global_slider]),
            W.HBox([self.norm_toggle, self.positions_dropdown]),
            self.max_tokens,
            self.prompt,
            W.HBox([self.generate_button, self.score_button, self.progress, self.status]),
            W.HBox([W.Box([self.unsteered_html], layout=half), W.Box([self.steered_html], layout=half)]),
            self.gates_html,
            self.scores_html,
        ])
        widget.add_class("matsteer-tuner")
        return widget

    @staticmethod
    def _text_box(label: str, text: str, note: str = "") -> str:
        return (f'<div style="border:1px solid #ccc;border-radius:4px;padding:6px;min-height:48px">'
                f'<b>{label}</b> <small style="color:#777">{html.escape(note)}</small>'
                f'<div class="matsteer-text" style="white-space:pre-wrap">{html.escape(text)}</div></div>')

    # ------------------------------------------------------------------------------------------------------
    # Settings

    def current_settings(self) -> dict[str, Any]:
        """The controls' values as ``steer`` keyword arguments."""
        return {
            "multipliers": {name: float(s.value) for name, s in self.sliders.items()},
            "global_multiplier": float(self.global_slider.value),
            "force": {name: FORCE_OPTIONS[b.value] for name, b in self.force_buttons.items()},
            "preserve_norm": bool(self.norm_toggle.value),
            "positions": str(self.positions_dropdown.value),
        }

    def apply_settings(self) -> None:
        """Copy the controls into the open handle's settings (in place: no rebuild, no reload)."""
        cfg = self.current_settings()
        s = self.handle.settings
        s.multipliers.clear()
        s.multipliers.update(cfg["multipliers"])
        s.global_multiplier = cfg["global_multiplier"]
        s.force.clear()
        s.force.update(cfg["force"])
        s.preserve_norm = cfg["preserve_norm"]
        s.positions = cfg["positions"]

    def _on_setting_change(self, change: Mapping[str, Any]) -> None:
        self.apply_settings()
        self.status.value = "settings changed: click Generate (or Score dev) to see the effect"

    # ------------------------------------------------------------------------------------------------------
    # Long work with feedback

    @contextmanager
    def _busy(self, message: str, total: int) -> Iterator[None]:
        for w in self._controls:
            w.disabled = True
        self.progress.max, self.progress.value, self.progress.bar_style = max(1, total), 0, "info"
        self.status.value = f"<i>{html.escape(message)}</i>"
        try:
            yield
        except BaseException:
            self.progress.bar_style = "danger"
            raise
        else:
            self.progress.bar_style = "success"
        finally:
            self.generate_button.disabled = False
            self.score_button.disabled = not self.dev_questions

    def _report_error(self, exc: BaseException) -> None:
        self.last_error = exc
        kind = "" if isinstance(exc, MatSteerError) else f"{type(exc).__name__}: "
        self.status.value = f'<span style="color:#b00">{html.escape(kind + str(exc))}</span>'

    # ------------------------------------------------------------------------------------------------------
    # Generate

    def _encode(self, prompt: str) -> dict[str, torch.Tensor]:
        """``input_ids`` / ``attention_mask`` ``[1, seq]`` of the prompt (chat-formatted if asked) on the model's device."""
        if not prompt.strip():
            raise ConfigError("The prompt is empty; type a prompt first.")
        return encode_prompts(self.tokenizer, [prompt], model_device(self.model), self.chat)

    def generate(self, prompt: str | None = None) -> TunerOutput:
        """Generate greedily, unsteered (cached per prompt) and steered at the current settings; update the view."""
        prompt = self.prompt.value if prompt is None else prompt
        n_new = int(self.max_tokens.value)
        self.apply_settings()
        t0 = time.perf_counter()
        enc = self._encode(prompt)
        width = enc["input_ids"].shape[1]
        key = (prompt, n_new)
        cached = key in self._unsteered_cache
        with self._busy("generating ..." if cached else "generating (unsteered, then steered) ...",
                        n_new * (1 if cached else 2)):
            streamer = _ProgressStreamer(self.progress)
            if not cached:
                # The plain model: the handle's hooks exist only during its own calls, so this is unsteered.
                plain = generate_greedy(self.model, self.tokenizer, enc, n_new, streamer=streamer)
                self._unsteered_cache[key] = (plain[0].cpu(), decode_continuations(self.tokenizer, plain, width)[0])
                streamer = _ProgressStreamer(self.progress)
            steered = generate_greedy(self.model, self.tokenizer, enc, n_new, self.handle, streamer=streamer)
        unsteered_text = self._unsteered_cache[key][1]
        steered_text = decode_continuations(self.tokenizer, steered, width)[0]
        recorder = self.handle.recorder
        assert recorder is not None  # the handle was opened with record=True
        tg = recorder.token_gates(0, steered[0])
        s = self.handle.settings
        scale = self.steerer.scale_vector(s.multipliers, s.global_multiplier).cpu()
        tokens, norms = token_gate_data(self.tokenizer, tg, self.steerer, scale)
        out = TunerOutput(prompt, unsteered_text, steered_text, tg, tokens, norms, self.current_settings(),
                          time.perf_counter() - t0)
        self.last_output = out
        self.generate_calls += 1
        self._show_output(out)
        return out

    def _show_output(self, out: TunerOutput) -> None:
        cfg = out.settings
        mults = ", ".join(f"{k}={v:g}" for k, v in cfg["multipliers"].items())
        forced = ", ".join(f"{k}={'on' if v else 'off'}" for k, v in cfg["force"].items() if v is not None)
        note = f"global ×{cfg['global_multiplier']:g}; {mults}" + (f"; forced {forced}" if forced else "")
        same = " (identical to unsteered)" if out.steered == out.unsteered else ""
        self.unsteered_html.value = self._text_box("unsteered", out.unsteered)
        self.steered_html.value = self._text_box("steered" + same, out.steered, note)
        self.gates_html.value = (
            "<b>Per-token gates of the steered run</b> (prompt, then generated tokens)"
            + token_gates_html(out.tokens, out.token_gates.gates, out.token_gates.attributes, out.edit_norm,
                               generated=out.token_gates.generated.tolist())
        )
        self.status.value = f"generated in {out.seconds:.1f} s"

    def _on_generate_click(self, _button: W.Button | None = None) -> None:
        try:
            self.generate()
        except Exception as exc:  # a widget callback has nowhere to raise to: show it
            self._report_error(exc)

    # ------------------------------------------------------------------------------------------------------
    # Dev scoring

    def _accuracy(self, questions: Sequence[MCQuestion], steering: SteeringHandle | None) -> float:
        """MC accuracy of ``questions`` unsteered (``steering`` None) or through the handle; advances the progress bar."""
        correct = 0
        for q in questions:
            choices, gold = _gold(q)
            lp = score_mc(self.model, self.tokenizer, [q], steering, choices=choices, progress=False)[0]
            correct += _correct(lp, gold)
            self.progress.value = min(self.progress.max, self.progress.value + 1)
        return correct / max(1, len(questions))

    def batched_scoring(self) -> bool:
        """Whether dev scoring runs all settings in one pass: cached site activations (a residual site of a
        Llama-style model) and a position policy the cached scorer applies as the handle does
        (:data:`CACHED_TUNER_POSITIONS`). Otherwise each setting is scored through the handle in turn."""
        return (supports_upper_pass(self.model, self.site)
                and str(self.positions_dropdown.value) in CACHED_TUNER_POSITIONS)

    def _dev_accuracies(self, settings: Sequence[Mapping[str, Any] | None]) -> dict[str, list[float]]:
        """Per dev task, the MC accuracy under each of ``settings`` (None = no steering; norm preservation and
        positions from the panel); advances the progress bar by one per question and setting."""
        self.apply_settings()
        self.steerer.setting_rows([s for s in settings if s is not None] or [{}])  # refuse bad settings first
        batched = self.batched_scoring()
        out: dict[str, list[float]] = {}
        for task, qs in self.dev_questions.items():
            self.status.value = f"<i>scoring {html.escape(task)} ({len(qs)} questions) ...</i>"
            if batched:
                out[task] = self._batched_accuracies(task, qs, settings)
                self.progress.value = min(self.progress.max, self.progress.value + len(qs) * len(settings))
            else:
                out[task] = []
                for setting in settings:
                    with self._handle_at(setting):
                        out[task].append(self._accuracy(qs, None if setting is None else self.handle))
        return out

    def _batched_accuracies(self, task: str, questions: Sequence[MCQuestion],
                            settings: Sequence[Mapping[str, Any] | None]) -> list[float]:
        """MC accuracy of ``questions`` under each of ``settings`` from one cached pass per batch
        (:func:`~matsteer.eval.cached_scoring.score_cached_settings`; no steering is the setting with global
        multiplier 0, which leaves every activation exactly as it is)."""
        cfg = self.current_settings()
        rows = [{"global_multiplier": 0.0} if s is None else dict(s) for s in settings]
        golds = [_gold(q) for q in questions]
        correct = [0] * len(settings)
        for choices in dict.fromkeys(c for c, _ in golds):  # TruthfulQA scores its MC1 list, others their choices
            idx = [i for i, (c, _) in enumerate(golds) if c == choices]
            key = (task, choices)
            if key not in self._dev_cache:
                self._dev_cache[key] = cache_questions(self.model, self.tokenizer, [questions[i] for i in idx],
                                                       self.site, choices=choices, progress=False)
            scores = score_cached_settings(self.model, self.site, self._dev_cache[key], self.steerer, rows,
                                           cfg["positions"], preserve_norm=cfg["preserve_norm"])
            for k, per_question in enumerate(scores):
                correct[k] += sum(_correct(lp, golds[i][1]) for i, lp in zip(idx, per_question))
        return [c / max(1, len(questions)) for c in correct]

    @contextmanager
    def _handle_at(self, setting: Mapping[str, Any] | None) -> Iterator[None]:
        """The open handle at ``setting``'s multipliers, global multiplier and forced gates for the block (None:
        unchanged, the plain model is used), then back at the controls' values."""
        if setting is None:
            yield
            return
        s = self.handle.settings  # mutated in place, as apply_settings does
        s.multipliers.clear()
        s.multipliers.update(setting.get("multipliers") or {})
        s.force.clear()
        s.force.update(setting.get("force") or {})
        s.global_multiplier = float(setting.get("global_multiplier", 1.0))
        try:
            yield
        finally:
            self.apply_settings()

    def _require_dev(self) -> None:
        if not self.dev_questions:
            raise ConfigError("No dev questions: build the tuner with dev_questions={task: [MCQuestion, ...]}.")

    def score_dev(self) -> dict[str, DevScore]:
        """MC accuracy of every dev task at the current settings (and unsteered, computed once, in the same batched
        pass, see :meth:`compare_settings`); updates the view."""
        self._require_dev()
        self.apply_settings()
        cfg = self.current_settings()
        current = {k: cfg[k] for k in SETTING_KEYS}
        base_known = all(task in self._dev_base for task in self.dev_questions)
        settings: list[Mapping[str, Any] | None] = [current] if base_known else [current, None]
        total = sum(len(qs) for qs in self.dev_questions.values()) * len(settings)
        with self._busy("scoring dev questions ...", total):
            accuracy = self._dev_accuracies(settings)
        scores: dict[str, DevScore] = {}
        for task, qs in self.dev_questions.items():
            if not base_known:
                self._dev_base[task] = accuracy[task][1]
            scores[task] = DevScore(task, len(qs), self._dev_base[task], accuracy[task][0], self.current_settings())
        self.last_scores = scores
        self.scores_html.value = self._scores_table(scores)
        self.status.value = "dev scored"
        return scores

    def compare_settings(self, settings: Sequence[Mapping[str, Any] | None] | None = None) -> SettingsComparison:
        """MC accuracy of every dev task under each of ``settings``, side by side; updates the view.

        settings: mappings of ``multipliers``, ``global_multiplier`` and ``force`` (each whole on its own: missing
        multipliers are 1, no gate forced; :meth:`~matsteer.core.steerer.Steerer.setting_rows`), or None for no
        steering; default: no steering and the current settings. Norm preservation and positions are the
        panel's. Where :meth:`batched_scoring` holds, each task's questions run once up to the site (kept for
        later calls) and every setting is scored in one pass over the layers above, as K rows of one batch;
        otherwise each setting is scored through the open handle in turn.
        """
        self._require_dev()
        self.apply_settings()
        if settings is None:
            cfg = self.current_settings()
            settings = [None, {k: cfg[k] for k in SETTING_KEYS}]
        rows = [None if s is None else dict(s) for s in settings]
        if not rows:
            raise ConfigError("Pass at least one setting to compare (None = no steering).")
        t0 = time.perf_counter()
        with self._busy("comparing settings on dev ...", sum(len(qs) for qs in self.dev_questions.values()) * len(rows)):
            accuracy = self._dev_accuracies(rows)
        out = SettingsComparison(rows, accuracy, {t: len(qs) for t, qs in self.dev_questions.items()},
                                 self.batched_scoring(), time.perf_counter() - t0)
        self.last_comparison = out
        self.scores_html.value = self._comparison_table(out)
        self.status.value = f"{len(rows)} settings compared in {out.seconds:.1f} s"
        return out

    @staticmethod
    def _comparison_table(c: SettingsComparison) -> str:
        pad = "padding:2px 10px;text-align:right"

        def label(s: Mapping[str, Any] | None) -> str:
            if s is None:
                return "unsteered"
            parts = [f"×{s['global_multiplier']:g}"] if "global_multiplier" in s else []
            parts += [f"{k}={v:g}" for k, v in (s.get("multipliers") or {}).items()]
            parts += [f"{k} {FORCED_LABEL.get(float(v), f'gate {float(v):g}')}"
                      for k, v in (s.get("force") or {}).items() if v is not None]
            return ", ".join(parts) or "defaults"

        head = "".join(f"<th style='{pad}'>{html.escape(h)}</th>" for h in ("setting", *c.accuracy))
        body = "".join(
            f"<tr><td style='{pad};text-align:left'>{html.escape(label(s))}</td>"
            + "".join(f"<td style='{pad}'>{c.accuracy[t][k]:.3f}</td>" for t in c.accuracy) + "</tr>"
            for k, s in enumerate(c.settings))
        return f"<b>Dev MC accuracy by setting</b> (TruthfulQA: MC1)<table><tr>{head}</tr>{body}</table>"

    @staticmethod
    def _scores_table(scores: Mapping[str, DevScore]) -> str:
        pad = "padding:2px 10px;text-align:right"
        head = "".join(f"<th style='{pad}'>{h}</th>" for h in ("task", "questions", "unsteered", "steered", "Δ"))
        body = "".join(
            f"<tr><td style='{pad};text-align:left'>{html.escape(s.task)}</td><td style='{pad}'>{s.n}</td>"
            f"<td style='{pad}'>{s.unsteered:.3f}</td><td style='{pad}'>{s.steered:.3f}</td>"
            f"<td style='{pad};color:{'#070' if s.delta > 0 else '#b00' if s.delta < 0 else '#000'}'>{s.delta:+.3f}</td></tr>"
            for s in scores.values()
        )
        return f"<b>Dev MC accuracy</b> (TruthfulQA: MC1)<table><tr>{head}</tr>{body}</table>"

    def _on_score_click(self, _button: W.Button | None = None) -> None:
        try:
            self.score_dev()
        except Exception as exc:
            self._report_error(exc)

    # ------------------------------------------------------------------------------------------------------
    # Lifetime

    def close(self) -> None:
        """Close the steering handle (its hooks are gone) and the widgets."""
        self._stack.close()
        self.widget.close()

    def __enter__(self) -> MultiplierTuner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ipython_display_(self) -> None:  # `tuner` as the last line of a cell shows the panel
        from IPython.display import display

        display(self.widget)
