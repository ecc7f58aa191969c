"""benchmarks/gpu_check.py runs without a GPU: CPU float32 vs CPU bfloat16 on the tiny model, and it fails loudly."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
SMALL = ["--device", "cpu", "--tiny-only", "--questions", "2", "--new-tokens", "4", "--epochs", "2"]


def test_cpu_self_check_agrees_and_writes_summary(tmp_path):
    out = tmp_path / "gpu_check.json"
    summary = runpy.run_path(str(SCRIPT))["main"]([*SMALL, "--json", str(out)])
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(summary)) and saved["ok"] and saved["dtypes"] == ["bfloat16"]
    metrics = {(c["model"], c["dtype"], c["metric"]) for c in saved["checks"]}
    assert metrics == {("tiny-llama", "bfloat16", m)
                       for m in ("extract_rel", "train_rel", "generate_margin_nats", "score_rel")}
    assert all(0 <= c["value"] <= c["tolerance"] for c in saved["checks"])
    times = saved["timings_s"]["tiny-llama"]
    assert set(times) == {"cpu-float32", "cpu-bfloat16"}
    assert set(times["cpu-bfloat16"]) == {"extract_s", "train_s", "generate_s", "score_s"}
    assert saved["tolerances"]["extract_rel"]["bfloat16"] > 0 and saved["info"][0]["score_argmax_agreement"] >= 0


def test_disagreement_exits_nonzero(tmp_path, monkeypatch, capsys):
    # Zero tolerance: bfloat16 cannot match float32 exactly, so the script must report it and exit 1.
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), *SMALL, "--tolerance-scale", "0"])
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    assert info.value.code == 1 and "DISAGREE" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_requested_without_gpu_is_a_clear_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(SCRIPT))["main"](["--device", "cuda", "--tiny-only"])
    assert info.value.code == 2 and "--device cpu --tiny-only" in capsys.readouterr().err
