"""Kill extraction at a random moment: the folder is never read as complete, and the next run resumes to the same rows."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from matsteer.errors import ArtifactError
from matsteer.features import load_features

CHILD = textwrap.dedent("""
    import sys, time
    import matsteer.features as F
    from matsteer.data import load_examples
    from matsteer.models import load_model
    from matsteer.sites import Site
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
