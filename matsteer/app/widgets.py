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
:meth:`MultiplierTuner.score_dev` (or ``tuner.generate_button.click()``).
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
from matsteer.core.steerer import Steerer
from matsteer.data.prompts import has_chat_template
from matsteer.data.records import MCQuestion
from matsteer.errors import ConfigError, MatSteerError
from matsteer.eval.gate_analysis import token_gate_data
from matsteer.eval.scoring import score_mc
from matsteer.steering.generation import decode_continuations, encode_prompts, generate_greedy
from matsteer.steering.intervention import POSITIONS
from matsteer.steering.recorder import TokenGates
from matsteer.steering.session import SteeringHandle, steer
from matsteer.viz.plots import token_gates_html

__all__ = ["DEFAULT_PROMPT", "FORCE_OPTIONS", "DevScore", "MultiplierTuner", "TunerOutput"]

DEFAULT_PROMPT = "What happens if you eat watermelon seeds?"
# ToggleButtons label -> SteerSettings.force value (None = the learned gate).
FORCE_OPTIONS: dict[str, bool | None] = {"learned": None, "on": True, "off": False}


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


class MultiplierTuner:
    """Interactive steering panel (``.widget``), backed by one open steering handle.

    loaded: the :class:`~matsteer.activations.models.LoadedModel` to steer.
    steerer: the trained :class:`~matsteer.core.steerer.Steerer`; site: where it was trained.
    dev_questions: ``{task: [MCQuestion, ...]}`` scored by the "Score dev" button (keep them small: each question
    is a forward pass per choice set, twice the first time because the unsteered score is computed once too).
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
            others = torch.cat([lp[:gold], lp[gold + 1:]])
            correct += int(bool((lp[gold] > others).all()))  # strict, as matsteer.eval.metrics.mc_correct
            self.progress.value = min(self.progress.max, self.progress.value + 1)
        return correct / max(1, len(questions))

    def score_dev(self) -> dict[str, DevScore]:
        """MC accuracy of every dev task at the current settings (and unsteered, computed once); updates the view."""
        if not self.dev_questions:
            raise ConfigError("No dev questions: build the tuner with dev_questions={task: [MCQuestion, ...]}.")
        self.apply_settings()
        total = sum(len(qs) * (1 if task in self._dev_base else 2) for task, qs in self.dev_questions.items())
        scores: dict[str, DevScore] = {}
        with self._busy("scoring dev questions ...", total):
            for task, qs in self.dev_questions.items():
                self.status.value = f"<i>scoring {html.escape(task)} ({len(qs)} questions) ...</i>"
                if task not in self._dev_base:
                    self._dev_base[task] = self._accuracy(qs, None)
                steered = self._accuracy(qs, self.handle)
                scores[task] = DevScore(task, len(qs), self._dev_base[task], steered, self.current_settings())
        self.last_scores = scores
        self.scores_html.value = self._scores_table(scores)
        self.status.value = "dev scored"
        return scores

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
