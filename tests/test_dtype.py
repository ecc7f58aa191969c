"""The compute dtype: what "auto" resolves to, the bfloat16 path against float32 (stated tolerances), and the
exact parts that stay exact (steering arithmetic in float32, feature caches keyed by dtype)."""

from __future__ import annotations

import pytest
import torch

from matsteer.activations import models as models
from matsteer.activations.features import extract_to_folder
from matsteer.activations.models import auto_dtype, load_model, resolve_dtype
from matsteer.activations.sites import Site
from matsteer.core.steerer import Steerer
from matsteer.data import load_examples
from matsteer.errors import ModelError
from matsteer.eval.cached_scoring import score_cached
from matsteer.eval.site_cache import cache_questions


def test_auto_follows_the_pin_and_the_cpu(monkeypatch):
    monkeypatch.setenv(models.DTYPE_ENV, "bfloat16")
    assert resolve_dtype("auto") == torch.bfloat16
    assert resolve_dtype("float32") == torch.float32  # an explicit dtype is never overridden
    monkeypatch.setenv(models.DTYPE_ENV, "float8")
    with pytest.raises(ModelError, match=r"MATSTEER_DTYPE='float8' is not a dtype.*float32"):
        resolve_dtype("auto")
    monkeypatch.delenv(models.DTYPE_ENV)
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: True)
    assert auto_dtype("cpu") == torch.bfloat16
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: False)
    assert auto_dtype("cpu") == torch.float32  # emulated bf16 is slower than float32 there


def test_cpu_flags_are_read_from_cpuinfo(monkeypatch, tmp_path):
    real_path = models.Path
    info = tmp_path / "cpuinfo"
    monkeypatch.setattr(models, "Path", lambda p: info if p == "/proc/cpuinfo" else real_path(p))
    for flags, expected in (("fpu avx512f avx512_bf16", True), ("fpu amx_bf16 amx_tile", True),
                            ("fpu avx2 avx512f", False)):
        info.write_text(f"processor : 0\nflags : {flags}\n")
        assert models.cpu_has_native_bf16() is expected


def test_steering_arithmetic_stays_float32():
    st = Steerer(["a", "b"], 16, generator=torch.Generator().manual_seed(0))
    a = torch.randn(5, 16, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    out, gates = st(a)
    ref, ref_gates = st(a.float())
    assert out.dtype == torch.bfloat16 and gates.dtype == torch.float32
    assert torch.equal(out, ref.to(torch.bfloat16)) and torch.equal(gates, ref_gates)


def test_feature_cache_is_keyed_by_dtype(tiny_dir, tmp_path):
    examples = load_examples("toxigen", "train", limit=6)
    f32 = extract_to_folder(load_model(str(tiny_dir), dtype="float32", progress=False), examples, Site(1),
                            tmp_path / "f", tokens="answer", dataset="toxigen", split="train", progress=False)
    bf16 = extract_to_folder(load_model(str(tiny_dir), dtype="bfloat16", progress=False), examples, Site(1),
                             tmp_path / "f", tokens="answer", dataset="toxigen", split="train", progress=False)
    assert f32.manifest["cache_key"] != bf16.manifest["cache_key"]
    assert f32.manifest["dtype"] == "torch.float32" and bf16.manifest["dtype"] == "torch.bfloat16"
    # Features are stored in float32 either way; bf16 rounding moves them by less than bf16's relative precision.
    assert bf16.activations.dtype == torch.float32
    rel = (bf16.activations - f32.activations).norm() / f32.activations.norm()
    assert 0 < float(rel) < 0.02


def test_bf16_scores_agree_with_float32(tiny_dir):
    """The bfloat16 path scores the same questions within a stated tolerance of float32, unsteered and steered
    (tiny random model: every summed answer log-prob within 0.15 nats)."""
    from matsteer.data import load_mc_questions

    questions = load_mc_questions("truthfulqa", "dev", limit=12)
    scores = {}
    for dtype in ("float32", "bfloat16"):
        loaded = load_model(str(tiny_dir), dtype=dtype, progress=False)
        assert loaded.dtype == getattr(torch, dtype)
        cached = cache_questions(loaded.model, loaded.tokenizer, questions, Site(1), progress=False)
        st = Steerer(["truthfulness"], loaded.hidden_size, generator=torch.Generator().manual_seed(0))
        edit = lambda a, s=st: s(a)[0]  # noqa: E731
        scores[dtype] = [torch.cat(score_cached(loaded.model, Site(1), cached, e)) for e in (None, edit)]
    for f32, bf16 in zip(scores["float32"], scores["bfloat16"]):
        assert bf16.dtype == torch.float32
        assert float((f32 - bf16).abs().max()) < 0.15


def test_probes_are_scored_in_float32_by_default(tiny_dir):
    """A bfloat16 evaluator scores its attribute tasks in bfloat16 but its probes with the float32 weights (their
    near-tie Yes/No margins move more than their noise in bf16): probe scores equal a float32 evaluator's exactly."""
    from matsteer.eval.evaluator import Evaluator, Method

    limits = {"truthfulqa": 4, "toxigen": 8}
    scores = {}
    for dtype in ("float32", "bfloat16"):
        ev = Evaluator(load_model(str(tiny_dir), dtype=dtype, progress=False), Site(1), "dev", limits,
                       tasks=("truthfulqa",), probes=("toxigen",), neutral=2, progress=False)
        scores[dtype] = {t: ev._scores(t, Method("none")) for t in ("truthfulqa", "toxigen")}
        if dtype == "bfloat16":
            assert next(ev._model_for("toxigen").model.parameters()).dtype == torch.float32
            assert ev._model_for("truthfulqa") is ev.loaded
    for a, b in zip(scores["float32"]["toxigen"], scores["bfloat16"]["toxigen"]):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(scores["float32"]["truthfulqa"], scores["bfloat16"]["truthfulqa"]))
