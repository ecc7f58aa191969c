"""The CLI end to end on a tiny saved model: extract -> train -> generate, and clear errors with exit code 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from matsteer.app.cli import main


def test_extract_train_generate(tmp_path, tiny_dir, capsys):
    feats = []
    for ds in ("truthfulqa", "bbq"):
        out = tmp_path / ds
        assert main(["extract", "--model", str(tiny_dir), "--dataset", ds, "--split", "train", "--layer", "1",
                     "--tokens", "answer", "--limit", "4", "--out", str(out)]) == 0
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["site"] == {"layer": 1, "component": "residual"} and manifest["rows"] > 0
        feats.append(str(out))
    dev = []
    for ds in ("truthfulqa", "bbq"):
        out = tmp_path / f"{ds}-dev"
        assert main(["extract", "--model", str(tiny_dir), "--dataset", ds, "--split", "dev", "--layer", "1",
                     "--tokens", "answer", "--limit", "4", "--out", str(out)]) == 0
        dev.append(str(out))
    steerer = tmp_path / "steerer"
    capsys.readouterr()
    assert main(["train", "--features", *feats, "--dev-features", *dev, "--out", str(steerer), "--epochs", "2",
                 "--batch_size", "8", "--sigma", "median", "--seed", "3"]) == 0
    assert "Training health on the dev features" in capsys.readouterr().out
    manifest = json.loads((steerer / "manifest.json").read_text())
    health = manifest["extra"]["health"]
    assert health["attributes"] == ["truthfulness", "bias"] and len(health["gate_auc"]) == 2
    assert manifest["training"]["config"]["gate_loss"] == "supervised"  # the default preset
    assert [a["name"] for a in manifest["attributes"]] == ["truthfulness", "bias"]
    assert manifest["training"]["config"]["seed"] == 3 and manifest["training"]["config"]["sigma"] == "median"
    # The targeted preset reads its background with the features' own model; without it training would refuse.
    targeted = tmp_path / "steerer-targeted"
    assert main(["train", "--features", *feats, "--out", str(targeted), "--epochs", "2", "--batch_size", "8",
                 "--sigma", "median", "--seed", "3", "--preset", "targeted"]) == 0
    assert json.loads((targeted / "manifest.json").read_text())["training"]["config"]["lambda_background"] == 1.0
    assert ((targeted / "steerer.safetensors").read_bytes() != (steerer / "steerer.safetensors").read_bytes())
    assert main(["generate", "--steerer", str(steerer), "--model", str(tiny_dir), "--prompt", "what is the sun ?",
                 "--multiplier", "2", "--multiplier", "truthfulness=0", "--max-new-tokens", "3", "--raw"]) == 0
    out = capsys.readouterr().out
    assert "unsteered:" in out and "steered  :" in out
    out_json = tmp_path / "eval.json"
    assert main(["eval", "--steerer", str(steerer), "--model", str(tiny_dir), "--tasks", "truthfulqa,toxigen",
                 "--split", "dev", "--limit", "3", "--baseline", "--json", str(out_json)]) == 0
    report = json.loads(out_json.read_text())
    assert set(report["results"]) == {"none", "mat_steer"} and report["tasks"] == ["truthfulqa", "toxigen"]
    assert report["probes"] == ["toxigen"]  # the Yes/No probe is scored but kept out of the mean
    assert report["results"]["none"]["side_effects"] == {"ce": None, "kl": None}  # n/a: nothing is steered
    assert report["results"]["mat_steer"]["side_effects"]["kl"] >= 0.0
    assert report["reference"]["constant"]["toxigen"]["balanced_accuracy"] == 0.5
    out = capsys.readouterr().out
    assert "mat_steer" in out and "constant" in out and "KL n/a" in out and "training health (dev" in out
    # --source: a copy of the shipped file scores exactly as the shipped file does.
    copy = tmp_path / "my_truthfulqa.json"
    shutil.copy(Path(__file__).resolve().parent.parent / "data" / "truthfulqa" / "mc_task.json", copy)
    own_json = tmp_path / "own.json"
    assert main(["eval", "--steerer", str(steerer), "--model", str(tiny_dir), "--tasks", "truthfulqa,toxigen",
                 "--split", "dev", "--limit", "3", "--baseline", "--json", str(own_json),
                 "--source", f"truthfulqa={copy}"]) == 0
    own = json.loads(own_json.read_text())
    assert own["sources"] == {"truthfulqa": str(copy)}
    assert str(copy) in own["provenance"]["extra"]["sources"]["truthfulqa"]
    # The same scores; only the clusters differ: TruthfulQA's categories come with the shipped data, not with
    # mc_task.json, so a source file's questions are their own clusters.
    def scores(results):
        return {m: {t: {k: v for k, v in r.items() if k != "clusters"} if isinstance(r, dict) else r
                    for t, r in res.items()} for m, res in results.items()}

    assert scores(own["results"]) == scores(report["results"])
    assert own["results"]["none"]["truthfulqa"]["clusters"][0].startswith("truthfulqa:")
    assert main(["eval", "--steerer", str(steerer), "--model", str(tiny_dir), "--source", "squad=x.json"]) == 2
    assert "unknown task" in capsys.readouterr().err
    figs = tmp_path / "figs"
    assert main(["figures", "--steerer", str(steerer), "--features", *feats, "--out", str(figs)]) == 0
    for name in ("orthogonality", "pca_steered", "gate_distributions", "training_curves"):
        assert (figs / f"{name}.png").stat().st_size > 0 and (figs / f"{name}.pdf").stat().st_size > 0


def test_errors_exit_2_with_message(tmp_path, tiny_dir, capsys):
    code = main(["extract", "--model", str(tiny_dir), "--dataset", "truthfulqa", "--layer", "99", "--limit", "2",
                 "--out", str(tmp_path / "x")])
    assert code == 2
    assert "out of range" in capsys.readouterr().err
    assert main(["train", "--features", str(tmp_path / "missing"), "--out", str(tmp_path / "s")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["extract", "--model", "./no/such/model", "--dataset", "bbq", "--limit", "1"]) == 2
    capsys.readouterr()
    assert main(["figures", "--results", str(tmp_path)]) == 2
    assert "no eval.json" in capsys.readouterr().err
    assert main(["figures", "--out", str(tmp_path)]) == 2
    assert "--results" in capsys.readouterr().err


def test_compare_and_winrates_pass_their_flags(tmp_path, monkeypatch):
    """The sub-commands are thin: the flags land in the configs that run_evaluation / run_win_rates receive."""
    import matsteer.app.commands as C

    seen = {}

    def fake_eval(cfg):
        seen["eval"] = cfg
        (cfg.out_dir / "eval.md").parent.mkdir(parents=True, exist_ok=True)
        (cfg.out_dir / "eval.md").write_text("table\n")
        return {"best_baseline": {"name": "caa"}}

    def fake_win(cfg, eval_json, wcfg, judge=None, out_dir=None):
        seen["win"] = (cfg, eval_json, wcfg, judge, out_dir)
        (out_dir / "winrates.md").write_text("table\n")

    monkeypatch.setattr(C, "run_evaluation", fake_eval)
    monkeypatch.setattr(C, "run_win_rates", fake_win)
    src = tmp_path / "bbq"
    src.mkdir()
    assert main(["compare", "--layer", "10", "--seeds", "4", "5", "--out", str(tmp_path), "--source", f"bbq={src}",
                 "--steer-special", "--positions", "all", "--multipliers", "1", "4", "--kl-budget", "0.3",
                 "--norm-grid", "on", "off", "--grid-extensions", "1", "--temperatures", "1", "3",
                 "--layer-grid", "10", "18", "--search", "halving", "--halving-fraction", "0.5", "--halving-keep", "3"]
                ) == 0
    cfg = seen["eval"]
    assert (cfg.layers, cfg.search, cfg.halving_fraction, cfg.halving_keep) == ((10, 18), "halving", 0.5, 3)
    # The reviewer's reference, its primary protocol alone, planned: nothing runs.
    seen.clear()
    assert main(["compare", "--protocol-reference", "--protocols", "prompt", "--plan", "--plan-costs",
                 str(tmp_path / "none")]) == 0
    assert not seen
    assert (cfg.demo.layer, cfg.seeds, cfg.out_dir) == (10, (4, 5), tmp_path)
    assert cfg.positions == "all" and cfg.multipliers == (1.0, 4.0)
    assert (cfg.kl_budget, cfg.norm_grid, cfg.grid_extensions, cfg.temperatures) == (0.3, (True, False), 1,
                                                                                      (1.0, 3.0))
    assert cfg.sources == {"bbq": str(src)} and cfg.steer_special
    assert main(["winrates", "--from-eval", "x.json", "--n", "7", "--max-new-tokens", "9", "--seeds", "1",
                 "--judge-url", "http://127.0.0.1:9/v1", "--judge-model", "m", "--out", str(tmp_path)]) == 0
    cfg, eval_json, wcfg, judge, out_dir = seen["win"]
    assert (eval_json, wcfg.n_prompts, wcfg.max_new_tokens, cfg.seeds, out_dir) == ("x.json", 7, 9, (1,), tmp_path)
    assert (judge.base_url, judge.model) == ("http://127.0.0.1:9/v1", "m")
