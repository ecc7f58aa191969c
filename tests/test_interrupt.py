"""Kill extraction or training at a random moment: nothing partial is ever read, and the next run resumes or starts
clean (extraction resumes to the same rows; a steerer folder is absent or complete, never lost mid-replace)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from matsteer.activations.features import load_features
from matsteer.errors import ArtifactError

CHILD = textwrap.dedent("""
    import sys, time
    import matsteer.activations.features as F
    from matsteer.data import load_examples
    from matsteer.activations.models import load_model
    from matsteer.activations.sites import Site
    model_dir, out, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])
    original = F.extract_encoded
    def slow(*args, **kwargs):  # stretch each shard so the parent can kill mid-run
        time.sleep(delay)
        return original(*args, **kwargs)
    F.extract_encoded = slow
    loaded = load_model(model_dir, progress=False)
    F.extract_to_folder(loaded, load_examples("truthfulqa", "train", limit=12), Site(1), out, tokens="answer",
                        dataset="truthfulqa", split="train", shard_texts=10, progress=False)
""")


def _run(tiny_dir, out, delay: float) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-c", CHILD, str(tiny_dir), str(out), str(delay)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_killed_extraction_resumes_to_identical_rows(tmp_path, tiny_dir):
    reference = tmp_path / "reference"
    assert _run(tiny_dir, reference, 0.0).wait(timeout=120) == 0
    expected = load_features(reference)

    out = tmp_path / "killed"
    proc = _run(tiny_dir, out, 0.4)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list(out.glob(".partial-*/shard-*.safetensors")):
        time.sleep(0.05)
    time.sleep(random.Random(0).uniform(0.0, 0.4))  # somewhere inside a later shard
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (out / "manifest.json").exists(), "the run finished before the kill; raise the delay"
    assert list(out.glob(".partial-*/shard-*.safetensors")), "no shard was written before the kill"
    with pytest.raises(ArtifactError):
        load_features(out)  # a killed run is never read as complete
    assert _run(tiny_dir, out, 0.0).wait(timeout=120) == 0
    resumed = load_features(out)
    assert torch.equal(resumed.activations, expected.activations)
    assert torch.equal(resumed.labels, expected.labels) and torch.equal(resumed.text_index, expected.text_index)


# ----------------------------------------------------------------------------------------------------------------
# Training and saving a steerer: a SIGKILL at any moment leaves the target absent or complete, never partial


TRAIN_CHILD = textwrap.dedent("""
    import itertools, sys
    from matsteer.store.artifacts import save_training_result
    from matsteer.activations.sites import Site
    sys.path.insert(0, sys.argv[2])
    from test_interrupt import toy_data, toy_config
    from matsteer.core.training import train_steerer
    data = toy_data()
    for i in itertools.count():  # train and save again and again until killed
        save_training_result(sys.argv[1], train_steerer(data, toy_config(i), progress=False), site=Site(1), model_name="toy",
                             model_hash="0" * 64, data_info={"train": {"a0": {"dataset": "truthfulqa"}}})
        print(i, flush=True)
""")


def toy_data():
    """Two attributes of 48 + 48 rows, d = 16 (seeded): training takes milliseconds, so saving dominates."""
    from matsteer.core.attributes import AttributeData

    g = torch.Generator().manual_seed(0)
    return [AttributeData(f"a{t}", torch.randn(48, 16, generator=g) + t, torch.randn(48, 16, generator=g) - t)
            for t in range(2)]


def toy_config(i: int):
    """The config of the child's i-th save: its seed is i, so the parent can re-train any saved steerer."""
    from matsteer.core.config import TrainConfig

    return TrainConfig(epochs=1 + i % 3, sigma="median", seed=i, batch_per_side=8)


def _hidden_work_dirs(out) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


@pytest.mark.slow
def test_killed_training_save_is_absent_or_complete(tmp_path):
    from matsteer.activations.sites import Site
    from matsteer.core.training import train_steerer
    from matsteer.store.artifacts import load_history, load_steerer, save_training_result

    data = toy_data()
    rng = random.Random()  # a different moment each run; every outcome below must hold whatever the moment
    for attempt in range(2):
        out = tmp_path / f"steerer{attempt}"
        proc = subprocess.Popen([sys.executable, "-c", TRAIN_CHILD, str(out), str(Path(__file__).parent)],
                                env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        first = proc.stdout.readline()  # the first save has landed
        assert first.strip() == "0", proc.stderr.read()
        delay = rng.uniform(0.0, 0.6)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        saves = 1 + len(proc.stdout.read().split())
        # The folder is complete: manifest, tensors (sha256 checked) and history agree, and they are exactly what
        # the child trained with that seed; a save killed mid-swap is restored from its backup, never lost.
        steerer, manifest = load_steerer(out)
        seed = manifest["training"]["config"]["seed"]
        # The last announced save, or the one after it if it landed before its announcement: never an older one.
        assert seed in (saves - 1, saves), f"kill after {delay:.3f} s: steerer {seed}, last announced {saves - 1}"
        expected = train_steerer(data, toy_config(seed), progress=False)
        for key in ("theta", "gate_weight", "gate_bias"):
            assert torch.equal(getattr(steerer, key), getattr(expected.steerer, key).detach()), (delay, key)
        assert load_history(out) == expected.history
        # The next run starts clean: leftovers of the killed process are removed, the save replaces the folder.
        save_training_result(out, expected, site=Site(1), model_name="toy", model_hash="0" * 64)
        assert _hidden_work_dirs(out) == [], delay
        assert load_steerer(out)[1]["training"]["config"]["seed"] == seed
