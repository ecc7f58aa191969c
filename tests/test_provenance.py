"""Provenance records: git commit (+dirty), data and split file hashes, seeds, versions; deterministic, JSON-ready."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path

import pytest

from matsteer.errors import ConfigError
from matsteer.store.provenance import collect, data_hashes, datasets_in, git_commit

SHA = re.compile(r"^[0-9a-f]{40}(\+dirty)?$")


def _git(repo: Path, *args: str) -> str:
    cmd = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org", "-c", "commit.gpgsign=false",
           *args]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


def test_git_commit_clean_dirty_and_outside(tmp_path):
    repo = tmp_path / "repo"
    (repo / "sub").mkdir(parents=True)
    _git(repo, "init", "-q")
    (repo / "tracked.txt").write_text("a\n")
    _git(repo, "add", "tracked.txt")
    _git(repo, "commit", "-q", "-m", "first")
    head = _git(repo, "rev-parse", "HEAD")
    assert git_commit(repo) == head and git_commit(repo / "sub") == head
    (repo / "untracked.txt").write_text("new\n")
    assert git_commit(repo) == head  # untracked files do not make a checkout dirty
    (repo / "tracked.txt").write_text("b\n")
    assert git_commit(repo) == head + "+dirty"
    outside = tmp_path / "plain"
    outside.mkdir()
    assert git_commit(outside) is None


def test_git_commit_of_this_checkout():
    commit = git_commit()
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        pytest.skip("not a git checkout")
    assert commit is not None and SHA.match(commit)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_data_hashes_name_every_file_read(tmp_path):
    (tmp_path / "truthfulqa").mkdir()
    (tmp_path / "splits").mkdir()
    (tmp_path / "truthfulqa" / "mc_task.json").write_text("[]")
    (tmp_path / "truthfulqa" / "TruthfulQA.csv").write_text("Type,Category\n")
    (tmp_path / "splits" / "truthfulqa.json").write_text("{}")
    got = data_hashes(["truthfulqa", "paradetox", "helpsteer2"], data_dir=tmp_path)
    assert got["truthfulqa"] == {
        "truthfulqa/mc_task.json": _sha(tmp_path / "truthfulqa" / "mc_task.json"),
        "truthfulqa/TruthfulQA.csv": _sha(tmp_path / "truthfulqa" / "TruthfulQA.csv"),
        "splits/truthfulqa.json": _sha(tmp_path / "splits" / "truthfulqa.json"),
    }
    assert got["paradetox"] == {"paradetox/paradetox.tsv.gz": None, "splits/paradetox.json": None}  # not there
    assert got["helpsteer2"] == {"hub:nvidia/HelpSteer2": None}
    with pytest.raises(ConfigError, match="Unknown dataset 'truthful'.*valid choices"):
        data_hashes(["truthful"])


def test_data_hashes_of_shipped_files_match_sha256sums():
    root = Path(__file__).resolve().parents[1] / "data"
    sums = {}
    for line in (root / "SHA256SUMS").read_text().splitlines():
        if line.strip():
            digest, name = line.split()
            sums[name.removeprefix("./")] = digest
    got = data_hashes(["bbq", "toxigen"])
    sources = [rel for name in ("bbq", "toxigen") for rel in got[name] if not rel.startswith("splits/")]
    assert len(sources) == 7 and all(got[rel.split("/")[0]][rel] == sums[rel] for rel in sources)
    assert got["toxigen"]["splits/toxigen.json"] == _sha(root / "splits" / "toxigen.json")


def test_collect_is_complete_deterministic_and_json():
    kw = dict(model_name="tiny", model_hash="ab" * 32, datasets=["truthfulqa", "bbq", "truthfulqa"],
              seeds={"train": 3, "split": 0}, extra={"note": "x"})
    a, b = collect(**kw), collect(**kw)
    assert a == b and json.loads(json.dumps(a, allow_nan=False)) == a
    assert set(a) == {"model", "data", "split_files", "seeds", "libraries", "environment", "git_commit", "extra"}
    assert a["model"] == {"name": "tiny", "hash": "ab" * 32} and a["seeds"] == {"train": 3, "split": 0}
    assert list(a["data"]) == ["bbq", "truthfulqa"] and a["split_files"]["truthfulqa"] == "splits/truthfulqa.json"
    assert {"torch", "transformers", "pyvene", "safetensors", "matsteer"} <= set(a["libraries"])
    assert a["environment"]["python"].count(".") == 2 and a["extra"] == {"note": "x"}
    assert collect(model_name="m", model_hash=None, datasets=[], seeds=[0, 1])["seeds"] == [0, 1]
    # A long run records the commit it started from, not the checkout's state when it ends.
    assert collect(model_name="m", model_hash=None, datasets=[], seeds=[0], commit="abc123")["git_commit"] == "abc123"


def test_datasets_in_nested_info():
    info = {"train": {"truthfulness": {"dataset": "truthfulqa"}, "bias": {"dataset": "bbq"}},
            "dev": [{"dataset": "truthfulqa"}, {"dataset": "my-own-set"}], "dataset": 3}
    assert datasets_in(info) == ["bbq", "truthfulqa"]
    assert datasets_in(None) == []


def test_steerer_from_feature_folders_records_their_data(tmp_path, tiny_llama, tokenizer):
    """The CLI's path (pipeline.train_from_features -> save_training_result): the data sets of the feature folders
    end up hashed in the steerer's manifest, with the training seed."""
    from matsteer.activations.features import extract_to_folder
    from matsteer.activations.models import LoadedModel, weight_fingerprint
    from matsteer.activations.sites import Site
    from matsteer.core.config import TrainConfig
    from matsteer.core.workflow import train_from_features
    from matsteer.data import load_examples
    from matsteer.store.artifacts import read_manifest, save_training_result

    loaded = LoadedModel(tiny_llama, tokenizer, "tiny", weight_fingerprint(tiny_llama))
    folders = [extract_to_folder(loaded, load_examples(name, "train", limit=limit), Site(1), tmp_path / name,
                                 tokens="answer", dataset=name, split="train", progress=False).path
               for name, limit in (("truthfulqa", 2), ("bbq", 4))]
    result, origin, info = train_from_features(folders, TrainConfig(epochs=1, sigma="median", batch_per_side=2, seed=4),
                                               progress=False)
    out = save_training_result(tmp_path / "s", result, site=Site(1), model_name="tiny", model_hash=loaded.weight_hash,
                               data_info=info)
    prov = read_manifest(out)["provenance"]
    assert set(prov["data"]) == {"bbq", "truthfulqa"} and prov["seeds"] == {"train": 4}
    assert prov["model"] == {"name": "tiny", "hash": loaded.weight_hash}
    assert prov["data"]["bbq"]["splits/bbq.json"] == data_hashes(["bbq"])["bbq"]["splits/bbq.json"] is not None
