"""Per-row steering settings: one row of multipliers / forced gates per batch row, in one batched pass."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model_for

from matsteer.activations.models import LoadedModel
from matsteer.activations.sites import Site
from matsteer.core.steerer import ModuleGatedSteerer, Steerer, apply_steering, row_settings_for, token_rows
from matsteer.errors import ConfigError
from matsteer.steering.generation import generate_texts
from matsteer.steering.intervention import MatSteerIntervention, SteerSettings
from matsteer.steering.session import steer

ATTRS = ["truth", "toxicity", "bias"]
D = 32
LAYER = 2
SITE = Site(LAYER, "attn_heads")
# Different lengths -> left padding; rows 0 and 3 are the same prompt under different settings.
PROMPTS = ["the sun is", "what is the capital of france ?", "people can be kind or cruel", "the sun is"]
# One setting per row: a multiplier sweep, a forced gate, an "off" row and a per-row un-forcing of nothing.
ROW_MULT = [{"truth": 2.0}, {}, {"toxicity": -1.5, "bias": 0.5}, dict.fromkeys(ATTRS, 0.0)]
ROW_FORCE = [{}, {"toxicity": True}, {"truth": False}, {}]

_models: dict[str, torch.nn.Module] = {}


def model_for(arch: str) -> torch.nn.Module:
    if arch not in _models:
        _models[arch] = tiny_model_for(arch)
    return _models[arch]


def make_steerer(seed: int = 0) -> Steerer:
    st = Steerer(ATTRS, D, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        st.theta.mul_(0.5)
    return st


def encode(tokenizer, prompts=PROMPTS) -> dict[str, torch.Tensor]:
    enc = tokenizer(list(prompts), return_tensors="pt", padding=True)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


# ------------------------------------------------------------------------------------------------------------
# Core: [B, T] settings


@pytest.mark.parametrize("shape", [(4, 5, D), (4, D)])
@pytest.mark.parametrize("preserve_norm", [True, False])
def test_equal_rows_are_bit_identical_to_shared(shape, preserve_norm):
    st = make_steerer()
    a = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    scale = torch.tensor([2.0, -0.5, 1.25])
    forced = torch.tensor([float("nan"), 1.0, float("nan")])
    rows = shape[0]
    for f in (None, forced):
        shared = st(a, scale, f, preserve_norm)
        per_row = st(a, scale.expand(rows, -1).clone(), None if f is None else f.expand(rows, -1).clone(),
                     preserve_norm)
        assert torch.equal(shared[0], per_row[0]) and torch.equal(shared[1], per_row[1])


def test_different_rows_equal_each_setting_alone():
    st = make_steerer()
    a = torch.randn(4, 6, D, generator=torch.Generator().manual_seed(2))
    scale = st.scale_rows(ROW_MULT)
    forced = st.forced_rows(ROW_FORCE)
    assert scale.shape == forced.shape == (4, len(ATTRS))
    out, gates = st(a, scale, forced)
    for i in range(4):
        ref, ref_gates = st(a, st.scale_vector(ROW_MULT[i]), st.forced_vector(ROW_FORCE[i]))
        assert torch.equal(out[i], ref[i]) and torch.equal(gates[i], ref_gates[i])


def test_row_merging_over_shared_settings():
    st = make_steerer()
    scale = st.scale_rows([{}, {"truth": 3.0}], shared={"truth": 2.0, "bias": 0.5}, global_multiplier=2.0)
    assert scale.tolist() == [[4.0, 2.0, 1.0], [6.0, 2.0, 1.0]]
    forced = st.forced_rows([None, {"bias": None}, {"truth": True}], shared={"bias": False})
    assert forced is not None and forced[:, 2].isnan().tolist() == [False, True, False]
    assert forced[2, 0] == 1.0 and forced[:2, 0].isnan().all()
    assert st.forced_rows([{}, None]) is None


def test_gathered_tokens_keep_their_row_settings():
    """The pure pieces a cached scorer needs: tokens gathered by a mask, each steered with its row's settings."""
    st = make_steerer()
    a = torch.randn(3, 5, D, generator=torch.Generator().manual_seed(3))
    where = torch.rand(3, 5, generator=torch.Generator().manual_seed(4)) < 0.6
    scale, forced = st.scale_rows(ROW_MULT[:3]), st.forced_rows(ROW_FORCE[:3])
    rows = token_rows(where)
    assert torch.equal(rows, torch.arange(3)[:, None].expand(3, 5)[where])
    got, _ = apply_steering(a[where], st.theta, st.gate_weight, st.gate_bias,
                            scale=row_settings_for(scale, rows), forced=row_settings_for(forced, rows))
    ref, _ = apply_steering(a, st.theta, st.gate_weight, st.gate_bias, scale=scale, forced=forced)
    torch.testing.assert_close(got, ref[where], rtol=1e-6, atol=1e-6)  # [n, d] vs [B, S, d] matmuls
    assert row_settings_for(st.scale_vector(), rows).shape == (len(ATTRS),)
    with pytest.raises(ConfigError, match="pass rows"):
        row_settings_for(scale, None)


def test_module_gated_steerer_takes_row_settings():
    st = make_steerer()
    gated = ModuleGatedSteerer(ATTRS, st.theta.detach(), torch.nn.Sequential(torch.nn.Linear(D, len(ATTRS)),
                                                                             torch.nn.Sigmoid()))
    a = torch.randn(4, 3, D, generator=torch.Generator().manual_seed(5))
    scale, forced = gated.scale_rows(ROW_MULT), gated.forced_rows(ROW_FORCE)
    out, _ = gated(a, scale, forced)
    for i in range(4):
        assert torch.equal(out[i], gated(a, scale[i], forced[i])[0][i])


def test_core_refuses_bad_shapes_and_rows():
    st = make_steerer()
    with pytest.raises(ConfigError, match=r"\[B, T\]"):
        st(torch.randn(2, 3, D), torch.ones(3, len(ATTRS)))
    with pytest.raises(ConfigError, match="unknown attributes"):
        st.scale_rows([{}, {"nope": 1.0}])
    with pytest.raises(ConfigError, match="one mapping"):
        st.forced_rows([])
    with pytest.raises(ConfigError, match="one mapping"):
        st.scale_rows([1.0, 2.0])  # type: ignore[list-item]


# ------------------------------------------------------------------------------------------------------------
# Through steer(...): a plain forward


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_batched_rows_equal_rows_one_at_a_time(tokenizer, arch):
    model = model_for(arch)
    enc = encode(tokenizer)
    st = make_steerer()
    with torch.no_grad():
        with steer(model, st, site=SITE, row_multipliers=ROW_MULT, row_force=ROW_FORCE) as s:
            together = s(**enc).logits
        for i in range(len(PROMPTS)):
            # Row i's settings for the whole (same) batch: the row must match exactly.
            with steer(model, st, site=SITE, multipliers=ROW_MULT[i], force=ROW_FORCE[i]) as s:
                alone = s(**enc).logits
            assert torch.equal(together[i], alone[i]), i
        plain = model(**enc).logits
    assert torch.equal(together[3], plain[3])  # the "off" row is the base model, bit for bit
    assert not torch.allclose(together[0], together[3])  # same prompt, different settings
    for i in (0, 1, 2):
        assert not torch.allclose(together[i], plain[i])


def test_rows_alone_in_a_batch_of_one(tokenizer):
    """Each row run by itself (batch of 1, no padding) gives its row of the batched pass."""
    model = model_for("llama")
    enc = encode(tokenizer)
    mask = enc["attention_mask"].bool()
    st = make_steerer()
    with torch.no_grad():
        with steer(model, st, site=SITE, row_multipliers=ROW_MULT, row_force=ROW_FORCE) as s:
            pos = (enc["attention_mask"].cumsum(-1) - 1).clamp_min(0)
            together = s(**enc, position_ids=pos).logits
        for i, prompt in enumerate(PROMPTS):
            with steer(model, st, site=SITE, row_multipliers=ROW_MULT[i:i + 1], row_force=ROW_FORCE[i:i + 1]) as s:
                alone = s(**encode(tokenizer, [prompt])).logits[0]
            # Different batch shapes run different matmul blockings: equal up to float32 rounding.
            torch.testing.assert_close(together[i][mask[i]], alone, rtol=1e-5, atol=1e-5)


def test_settings_object_and_recorder(tokenizer):
    model = model_for("llama")
    enc = encode(tokenizer)
    with torch.no_grad(), steer(model, make_steerer(), site=SITE, record=True) as s:
        s.settings.row_force = [{"bias": True}, {"bias": False}, {}, {"truth": 0.25}]
        s(**enc)
        gates = s.recorder.records[-1].gates
        bias, truth = ATTRS.index("bias"), ATTRS.index("truth")
        assert (gates[0, :, bias] == 1).all() and (gates[1, :, bias] == 0).all()
        assert (gates[3, :, truth] == 0.25).all() and not (gates[2, :, bias] == 1).all()
        s.settings = SteerSettings(row_multipliers=[{}, dict.fromkeys(ATTRS, 0.0), {}, {}])
        s(**enc)
        rec = s.recorder.records[-1]
        assert not rec.steered[1].any() and torch.equal(rec.steered[0], rec.valid[0])  # the off row is not steered


# ------------------------------------------------------------------------------------------------------------
# Generation: each row keeps its settings through every decode step


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_generate_rows_equal_rows_one_at_a_time(tokenizer, arch):
    model = model_for(arch)
    enc = encode(tokenizer)
    st = make_steerer()
    kw = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        with steer(model, st, site=SITE, row_multipliers=ROW_MULT, row_force=ROW_FORCE) as s:
            together = s.generate(**enc, **kw)
        for i in range(len(PROMPTS)):
            with steer(model, st, site=SITE, multipliers=ROW_MULT[i], force=ROW_FORCE[i]) as s:
                assert torch.equal(together[i], s.generate(**enc, **kw)[i]), i
            with steer(model, st, site=SITE, row_multipliers=ROW_MULT[i:i + 1], row_force=ROW_FORCE[i:i + 1]) as s:
                alone = s.generate(**encode(tokenizer, [PROMPTS[i]]), **kw)[0]
            n = alone.shape[0]
            assert torch.equal(together[i, -n:], alone), i  # token for token (the batch adds left padding)
        plain = model.generate(**enc, **kw)
    assert torch.equal(together[3], plain[3])


def test_generate_texts_slices_row_settings(tokenizer):
    model = model_for("llama")
    loaded = LoadedModel(model, tokenizer, "tiny", "0" * 64)
    st = make_steerer()
    kw = dict(steerer=st, site=SITE, max_new_tokens=4, chat=False)
    batched = generate_texts(loaded, PROMPTS, batch_size=3, row_multipliers=ROW_MULT, row_force=ROW_FORCE, **kw)
    one_by_one = [generate_texts(loaded, [p], multipliers=m, force=f, **kw)[0]
                  for p, m, f in zip(PROMPTS, ROW_MULT, ROW_FORCE)]
    assert batched == one_by_one
    with pytest.raises(ConfigError, match="one per prompt"):
        generate_texts(loaded, PROMPTS, row_multipliers=ROW_MULT[:2], **kw)


# ------------------------------------------------------------------------------------------------------------
# The cached scorer: K settings of one steerer in one pass over the cached site activations

# Whole settings (nothing shared): a sweep value, a forced gate at half strength, a mix, and "off".
SETTINGS = [{"multipliers": {"truth": 2.0}}, {"force": {"toxicity": True}, "global_multiplier": 0.5},
            {"multipliers": {"toxicity": -1.5, "bias": 0.5}, "force": {"truth": False}}, {"global_multiplier": 0.0}]
TEMPLATE = "Q: {prompt} A: {answer}"


def _mc_questions():
    from matsteer.data import MCQuestion

    rows = [("what is the capital of france ?", ["paris", "the moon", "a city in france"]),
            ("the old man and the young woman . who is kind ?", ["the old man", "unknown", "the young woman"]),
            ("the old man is kind . is this toxic ?", ["yes", "no"]),  # one-token answers: the prompt pass only
            ("why do people eat watermelon seeds ?", ["nothing happens", "they grow in your stomach", "you can't"])]
    return [MCQuestion(dataset="x", prompt=p, choices=c, labels=[1] + [0] * (len(c) - 1), group=str(i),
                       template=TEMPLATE) for i, (p, c) in enumerate(rows)]


def _one_setting_edit(st: Steerer, setting: dict, preserve_norm: bool = True):
    from matsteer.eval.cached_scoring import steering_edit

    return steering_edit(st, st.scale_vector(setting.get("multipliers"), setting.get("global_multiplier", 1.0)),
                         st.forced_vector(setting.get("force")), preserve_norm)


def test_setting_rows_are_each_setting_alone():
    st = make_steerer()
    scale, forced = st.setting_rows(SETTINGS)
    assert scale.shape == (4, 3) and forced is not None and forced.shape == (4, 3)
    for k, s in enumerate(SETTINGS):
        assert torch.equal(scale[k], st.scale_vector(s.get("multipliers"), s.get("global_multiplier", 1.0)))
        alone = st.forced_vector(s.get("force"))
        assert forced[k].isnan().all() if alone is None else torch.equal(forced[k].nan_to_num(7), alone.nan_to_num(7))
    assert st.setting_rows([{}, {"multipliers": {"bias": 2.0}}])[1] is None
    with pytest.raises(ConfigError, match="unknown keys"):
        st.setting_rows([{"preserve_norm": False}])
    with pytest.raises(ConfigError, match="unknown attributes"):
        st.setting_rows([{"force": {"nope": True}}])


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("positions", ["prompt", "all", "generated", "last", "random"])
def test_cached_settings_in_one_pass_equal_each_setting_alone(tokenizer, arch, positions):
    """K settings as K copies of each batch: exactly the K separate score_cached calls. The copies run the same
    padded shapes and answer chunks as one setting and each copy's edit runs on its own; only the upper layers'
    products have K times more rows, which on this CPU rounds as one copy does once they have a few rows."""
    from matsteer.eval.cached_scoring import score_cached, score_cached_settings
    from matsteer.eval.site_cache import cache_questions

    model, site, st = model_for(arch), Site(1), make_steerer()
    cached = cache_questions(model, tokenizer, _mc_questions(), site, progress=False)
    for preserve_norm in (True, False):
        together = score_cached_settings(model, site, cached, st, SETTINGS, positions, preserve_norm=preserve_norm)
        assert len(together) == len(SETTINGS) and all(len(t) == len(cached) for t in together)
        for k, s in enumerate(SETTINGS):
            alone = score_cached(model, site, cached, _one_setting_edit(st, s, preserve_norm), positions)
            assert all(torch.equal(a, b) for a, b in zip(together[k], alone)), (k, preserve_norm)
    plain = score_cached(model, site, cached)
    assert all(torch.equal(a, b) for a, b in zip(together[3], plain))  # global 0: exactly the unsteered model
    if positions != "generated":  # one-token answers are never steered under "generated"
        assert not torch.allclose(together[0][2], together[1][2])


def test_cached_settings_tiny_batches_agree_to_rounding(tokenizer):
    """With a 3-token budget every batch is one short question: products of a handful of rows, where the CPU's
    kernels for K copies round differently from one copy's (measured: at most 2 float32 ulps, 1.9e-6 nats)."""
    from matsteer.eval.cached_scoring import score_cached, score_cached_settings
    from matsteer.eval.site_cache import cache_questions

    model, site, st = model_for("llama"), Site(1), make_steerer()
    cached = cache_questions(model, tokenizer, _mc_questions(), site, progress=False, batch_tokens=3)
    for positions in ("prompt", "all"):
        together = score_cached_settings(model, site, cached, st, SETTINGS, positions, batch_tokens=3)
        for k, s in enumerate(SETTINGS):
            alone = score_cached(model, site, cached, _one_setting_edit(st, s), positions, batch_tokens=3)
            for a, b in zip(together[k], alone):
                torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("positions", ["all", "last", "random"])
def test_text_logits_settings_equal_each_setting_alone(tokenizer, positions):
    from matsteer.eval.cached_scoring import text_logits, text_logits_settings
    from matsteer.eval.site_cache import cache_texts

    model, site, st = model_for("llama"), Site(1), make_steerer()
    texts = cache_texts(model, tokenizer, ["the sun is good .", "water", "what is the capital of france ?"], site)
    with torch.inference_mode():
        together = list(text_logits_settings(model, site, texts, st, SETTINGS, positions))
        for k, s in enumerate(SETTINGS):
            assert torch.equal(together[k], text_logits(model, site, texts, _one_setting_edit(st, s), positions)), k
        assert torch.equal(together[3], text_logits(model, site, texts))


def test_cached_settings_refuse_bad_settings(tokenizer):
    from matsteer.eval.cached_scoring import score_cached_settings
    from matsteer.eval.site_cache import cache_questions

    model, site, st = model_for("llama"), Site(1), make_steerer()
    cached = cache_questions(model, tokenizer, _mc_questions()[:1], site, progress=False)
    with pytest.raises(ConfigError, match="one mapping"):
        score_cached_settings(model, site, cached, st, [])
    with pytest.raises(ConfigError, match="unknown keys"):
        score_cached_settings(model, site, cached, st, [{"positions": "all"}])


# ------------------------------------------------------------------------------------------------------------
# Refusals


def test_bad_lengths_and_names_refused(tokenizer):
    model = model_for("llama")
    enc = encode(tokenizer)
    st = make_steerer()
    with pytest.raises(ConfigError, match="unknown attributes"):
        with steer(model, st, site=SITE, row_multipliers=[{}, {"nope": 2.0}, {}, {}]):
            pass
    with pytest.raises(ConfigError, match="unknown attributes"):
        with steer(model, st, site=SITE, row_force=[{"nope": True}, {}, {}, {}]):
            pass
    with pytest.raises(ConfigError, match="row_force has 3"):
        with steer(model, st, site=SITE, row_multipliers=ROW_MULT, row_force=ROW_FORCE[:3]):
            pass
    with pytest.raises(ConfigError, match="one mapping"):
        with steer(model, st, site=SITE, row_multipliers={"truth": 2.0}):  # type: ignore[arg-type]
            pass
    with torch.no_grad(), steer(model, st, site=SITE, row_multipliers=ROW_MULT[:3]) as s:
        tap: list[int] = []
        orig = s.intervention.forward

        def counting(*a, **k):
            tap.append(1)
            return orig(*a, **k)

        s.intervention.forward = counting  # type: ignore[method-assign]
        with pytest.raises(ConfigError, match="3 rows but this call has a batch of 4"):
            s(**enc)
        with pytest.raises(ConfigError, match="batch of 4"):
            s.generate(**enc, max_new_tokens=2, do_sample=False, pad_token_id=0)
        assert not tap  # refused before any forward pass
        with pytest.raises(ConfigError, match="beam search"):
            s.generate(**encode(tokenizer, PROMPTS[:3]), max_new_tokens=2, do_sample=False, pad_token_id=0,
                       num_beams=2)
        assert not tap


def test_intervention_refuses_wrong_batch_directly():
    iv = MatSteerIntervention(make_steerer(), SteerSettings(row_multipliers=[{}, {}]))
    assert iv(torch.randn(2, 3, D)).shape == (2, 3, D)
    with pytest.raises(ConfigError, match="batch of 3"):
        iv(torch.randn(3, 3, D))
    iv.settings.row_multipliers = [{"truth": 1.0}, {"bias": float("inf")}]
    with pytest.raises(ConfigError, match="finite"):
        iv(torch.randn(2, 3, D))


def test_benchmark_script_runs_tiny(tmp_path):
    import json
    import runpy
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_row_settings.py"
    main = runpy.run_path(str(script))["main"]
    out = tmp_path / "bench.json"
    result = main(["--tiny", "--prompts", "2", "--multipliers", "0.5", "2", "--repeats", "1", "--json", str(out)])
    saved = json.loads(out.read_text())
    assert saved["median_speedup"] == result["median_speedup"] > 0 and saved["settings"] == 2
    assert saved["argmax_agreement"] == 1.0
    cached = saved["cached"]  # the cached scorer's row: K settings in one cached pass vs K cached passes
    assert cached["settings"] == 2 and cached["median_speedup"] > 0 and cached["max_abs_diff"] < 1e-5
