"""The multiplier tuner on a tiny random Llama: controls reach the open handle, nothing is rebuilt or reloaded."""

from __future__ import annotations

import ipywidgets as W
import pytest
import torch

from matsteer.activations.models import LoadedModel
from matsteer.activations.sites import Site
from matsteer.app.widgets import MultiplierTuner
from matsteer.core.steerer import Steerer
from matsteer.data import MCQuestion
from matsteer.errors import ConfigError

ATTRS = ["truthfulness", "toxicity"]
PROMPT = "q : what is the capital of france ? a :"


def _questions() -> dict[str, list[MCQuestion]]:
    tqa = MCQuestion(dataset="truthfulqa", prompt="what is the capital of france ?", choices=["paris", "the moon"],
                     labels=[1, 0], group="0", template="Q: {prompt} A: {answer}",
                     mc1_choices=["paris", "the moon"], mc1_labels=[1, 0])
    bbq = MCQuestion(dataset="bbq", prompt="the old man and the young woman . who is kind ?",
                     choices=["the old man", "unknown", "the young woman"], labels=[0, 1, 0], group="1",
                     template="Q: {prompt} A: {answer}")
    return {"truthfulqa": [tqa], "bbq": [bbq]}


@pytest.fixture()
def tuner(tiny_llama, tokenizer):
    # A large θ so that steering visibly changes the tiny model's greedy text.
    steerer = Steerer(ATTRS, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        steerer.theta.mul_(20.0)
        steerer.gate_bias.fill_(3.0)  # gates ≈ 1
    loaded = LoadedModel(tiny_llama, tokenizer, "tiny-llama", "hash")
    t = MultiplierTuner(loaded, steerer, Site(1), dev_questions=_questions(), prompt=PROMPT, max_new_tokens=6)
    yield t
    t.close()


def _texts(t: MultiplierTuner) -> tuple[str, str]:
    assert t.last_output is not None
    return t.last_output.unsteered, t.last_output.steered


def test_widget_tree_and_controls(tuner):
    assert isinstance(tuner.widget, W.VBox)
    assert set(tuner.sliders) == set(ATTRS) and isinstance(tuner.global_slider, W.FloatSlider)
    assert all(isinstance(b, W.ToggleButtons) for b in tuner.force_buttons.values())
    assert isinstance(tuner.prompt, W.Textarea) and isinstance(tuner.generate_button, W.Button)
    assert isinstance(tuner.norm_toggle, W.Checkbox) and isinstance(tuner.progress, W.IntProgress)
    assert not tuner.score_button.disabled


def test_generate_click_shows_both_texts_and_gates(tuner, tiny_llama):
    tuner.generate_button.click()
    assert tuner.last_error is None, tuner.last_error
    out = tuner.last_output
    unsteered, steered = _texts(tuner)
    assert unsteered and steered and unsteered != steered  # θ large, gates ≈ 1: the text changes
    assert tuner.unsteered_html.value.count(unsteered.split()[0]) >= 1
    # Gates over prompt + generated tokens (the last generated token is never fed back).
    n_prompt = len(tuner.tokenizer(PROMPT)["input_ids"])
    assert out.token_gates.gates.shape == (n_prompt + 6 - 1, len(ATTRS))
    assert len(out.tokens) == len(out.edit_norm) == out.token_gates.gates.shape[0]
    assert int(out.token_gates.generated.sum()) == 5
    assert "matsteer-token-gates" in tuner.gates_html.value and "‖edit‖" in tuner.gates_html.value
    assert tuner.progress.bar_style == "success" and not tuner.generate_button.disabled
    # The plain model is unsteered between calls: its own generate matches the cached unsteered text.
    enc = tuner.tokenizer([PROMPT], return_tensors="pt")
    plain = tiny_llama.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert tuner.tokenizer.decode(plain[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip() == unsteered


def test_multiplier_zero_gives_unsteered_text(tuner):
    tuner.global_slider.value = 0.0
    tuner.generate_button.click()
    assert tuner.last_error is None, tuner.last_error
    unsteered, steered = _texts(tuner)
    assert steered == unsteered
    assert float(tuner.last_output.edit_norm.max()) == 0.0
    # Per-attribute sliders at 0 do the same with the global one back at 1.
    tuner.global_slider.value = 1.0
    for s in tuner.sliders.values():
        s.value = 0.0
    out = tuner.generate()
    assert out.steered == out.unsteered


def test_forcing_all_gates_off_gives_unsteered_text(tuner):
    for b in tuner.force_buttons.values():
        b.value = "off"
    out = tuner.generate()
    assert out.steered == out.unsteered
    assert torch.all(out.token_gates.gates == 0)


def test_settings_reach_the_handle_without_rebuild(tuner):
    model, handle, intervenable = tuner.model, tuner.handle, tuner.handle.intervenable
    settings = handle.settings
    params_before = [p.data_ptr() for p in model.parameters()]
    tuner.generate()
    tuner.sliders["toxicity"].value = 2.5
    tuner.global_slider.value = 0.5
    tuner.force_buttons["truthfulness"].value = "on"
    tuner.norm_toggle.value = False
    tuner.positions_dropdown.value = "prompt"
    s = handle.settings
    assert s is settings  # mutated in place
    assert s.multipliers == {"truthfulness": 1.0, "toxicity": 2.5} and s.global_multiplier == 0.5
    assert s.force == {"truthfulness": True, "toxicity": None}
    assert s.preserve_norm is False and s.positions == "prompt"
    tuner.generate()
    # Same model object, same weights in memory, same handle and pyvene wrapper: nothing rebuilt or reloaded.
    assert tuner.model is model and tuner.loaded.model is model
    assert tuner.handle is handle and handle.intervenable is intervenable and not handle.closed
    assert [p.data_ptr() for p in model.parameters()] == params_before
    assert tuner.generate_calls == 2
    assert tuner.last_output.settings["multipliers"]["toxicity"] == 2.5


def test_score_dev_with_progress(tuner):
    tuner.score_button.click()
    assert tuner.last_error is None, tuner.last_error
    scores = tuner.last_scores
    assert set(scores) == {"truthfulqa", "bbq"}
    for s in scores.values():
        assert s.n == 1 and s.unsteered in (0.0, 1.0) and s.steered in (0.0, 1.0)
    assert tuner.progress.value == tuner.progress.max == 4  # 2 questions x (unsteered + steered)
    assert "Dev MC accuracy" in tuner.scores_html.value
    # At multiplier 0 the steered accuracy equals the unsteered one; the unsteered pass is not repeated.
    tuner.global_slider.value = 0.0
    again = tuner.score_dev()
    assert tuner.progress.max == 2
    assert all(s.steered == s.unsteered for s in again.values())


def test_errors_show_in_status_and_close_unhooks(tuner, tiny_llama):
    tuner.prompt.value = "   "
    tuner.generate_button.click()
    assert isinstance(tuner.last_error, ConfigError) and "prompt is empty" in tuner.status.value
    assert not tuner.generate_button.disabled
    handle = tuner.handle
    tuner.close()
    assert handle.closed
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in tiny_llama.modules())


def test_no_dev_questions_disables_scoring(tiny_llama, tokenizer):
    steerer = Steerer(ATTRS, 32, generator=torch.Generator().manual_seed(0))
    with MultiplierTuner(LoadedModel(tiny_llama, tokenizer, "tiny", "h"), steerer, Site(1), prompt=PROMPT) as t:
        assert t.score_button.disabled
        with pytest.raises(ConfigError):
            t.score_dev()


def _count_batched_passes(monkeypatch) -> list[int]:
    """The number of settings of each batched scoring call the tuner makes (one per task and choice list)."""
    import matsteer.app.widgets as widgets

    calls: list[int] = []
    real = widgets.score_cached_settings

    def counting(*args, **kwargs):
        calls.append(len(args[4]))
        return real(*args, **kwargs)

    monkeypatch.setattr(widgets, "score_cached_settings", counting)
    return calls


def test_compare_settings_in_one_pass_equals_each_setting_through_the_handle(tuner, monkeypatch):
    """Several settings scored together (cached site activations, one pass per batch) give the accuracies of
    scoring each through the open handle in turn, the path used where the cached scorer does not apply."""
    settings = [None, {"multipliers": {"toxicity": 2.5}}, {"global_multiplier": 0.5, "force": {"truthfulness": False}},
                {"global_multiplier": 0.0}, {"force": {"truthfulness": True, "toxicity": True}}]
    calls = _count_batched_passes(monkeypatch)
    for positions in ("all", "prompt"):
        tuner.positions_dropdown.value = positions
        calls.clear()
        got = tuner.compare_settings(settings)
        assert got.batched and calls == [len(settings)] * 2  # one pass per task (per choice list), all settings
        assert tuner.progress.value == tuner.progress.max == 2 * len(settings)
        tuner.batched_scoring = lambda: False  # type: ignore[method-assign]
        one_by_one = tuner.compare_settings(settings)
        del tuner.batched_scoring
        assert not one_by_one.batched and one_by_one.accuracy == got.accuracy, positions
        assert all(acc[0] == acc[3] for acc in got.accuracy.values())  # global 0 is the unsteered model
    assert "Dev MC accuracy by setting" in tuner.scores_html.value and "unsteered" in tuner.scores_html.value
    # The dev questions ran up to the site once, on the first batched call.
    assert set(tuner._dev_cache) == {("truthfulqa", "mc1_choices"), ("bbq", "choices")}
    # The default: no steering and the current settings; "last" is scored through the handle.
    tuner.positions_dropdown.value = "last"
    calls.clear()
    default = tuner.compare_settings()
    assert default.settings[0] is None and default.settings[1]["multipliers"] == {a: 1.0 for a in ATTRS}
    assert not default.batched and not calls
    assert tuner.handle.settings.multipliers == {a: 1.0 for a in ATTRS}  # the handle is back at the controls


def test_score_dev_scores_unsteered_and_current_in_one_pass(tuner, monkeypatch):
    calls = _count_batched_passes(monkeypatch)
    tuner.sliders["toxicity"].value = 2.0
    first = tuner.score_dev()
    assert calls == [2, 2]  # per task: the current setting and no steering together
    compared = tuner.compare_settings()
    assert all(compared.accuracy[t] == [s.unsteered, s.steered] for t, s in first.items())
    calls.clear()
    tuner.score_dev()
    assert calls == [1, 1]  # the unsteered accuracy is kept


def test_compare_settings_refuses_bad_settings(tuner):
    with pytest.raises(ConfigError, match="unknown attributes"):
        tuner.compare_settings([{"multipliers": {"nope": 1.0}}])
    with pytest.raises(ConfigError, match="unknown keys"):
        tuner.compare_settings([{"positions": "all"}])
    with pytest.raises(ConfigError, match="at least one setting"):
        tuner.compare_settings([])
    assert not tuner.score_button.disabled and not tuner.generate_button.disabled
