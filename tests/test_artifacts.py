"""Steerer folders: round trip, determinism, corruption, versions, compatibility, reference checkpoints."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from matsteer.activations.sites import Site
from matsteer.core.attributes import AttributeData
from matsteer.core.config import TrainConfig
from matsteer.core.steerer import Steerer
from matsteer.core.training import train_steerer
from matsteer.errors import ArtifactError
from matsteer.store.artifacts import (
    FORMAT_VERSION,
    HISTORY,
    MANIFEST,
    TENSORS,
    check_compatible,
    load_history,
    load_steerer,
    read_manifest,
    save_steerer,
    save_training_result,
)
from matsteer.store.reference import import_reference_checkpoint

SITE = Site(2, "attn_output")


@pytest.fixture(scope="module")
def trained():
    g = torch.Generator().manual_seed(0)
    data = [
        AttributeData(f"attr{t}", torch.randn(40, 6, generator=g) + t, torch.randn(40, 6, generator=g) - t, f"side{t}")
        for t in range(3)
    ]
    return train_steerer(data, TrainConfig(epochs=2, sigma="median", lr=0.01), progress=False)


def save(path: Path, result, **kw):
    args = dict(
        site=SITE,
        model_name="tiny-llama",
        model_hash="ab" * 32,
        config=result.config,
        history=result.history,
        data_info={"splits": {"train": {"rows": 240, "sha256": "cd" * 32}}},
        extra={"note": "test"},
        sigma_used=result.sigma_used,
    )
    args.update(kw)
    return save_steerer(path, result.steerer, **args)


def test_round_trip_identical_tensors_and_outputs(tmp_path, trained):
    folder = save(tmp_path / "s", trained)
    loaded, manifest = load_steerer(folder)
    for key in ("theta", "gate_weight", "gate_bias"):
        assert torch.equal(getattr(loaded, key), getattr(trained.steerer, key).detach())
    assert loaded.attributes == ["attr0", "attr1", "attr2"]
    assert loaded.positive_sides == ["side0", "side1", "side2"]
    x = torch.randn(2, 5, 6)
    with torch.no_grad():
        out_a, gates_a = trained.steerer(x)
        out_b, gates_b = loaded(x)
    assert torch.equal(out_a, out_b) and torch.equal(gates_a, gates_b)
    # manifest content
    assert manifest["format_version"] == FORMAT_VERSION
    assert manifest["model"] == {"name": "tiny-llama", "hash": "ab" * 32}
    assert Site.from_dict(manifest["site"]) == SITE and manifest["d"] == 6
    assert manifest["attributes"][1] == {"index": 1, "name": "attr1", "positive_side": "side1"}
    assert manifest["training"]["loss_variant"] == "paper"
    assert manifest["training"]["config"]["sigma"] == "median"
    assert manifest["training"]["sigma_used"] == pytest.approx(trained.sigma_used)
    assert set(manifest["training"]["final_losses"]["train"]) == {"mmd", "pos", "sparse", "ortho", "gate", "total"}
    assert manifest["data"]["splits"]["train"]["rows"] == 240
    assert {"torch", "transformers", "pyvene", "safetensors", "matsteer"} <= set(manifest["library_versions"])
    assert manifest["extra"] == {"note": "test"}
    assert load_history(folder) == trained.history


def test_byte_identical_and_atomic_replace(tmp_path, trained):
    a, b = save(tmp_path / "a", trained), save(tmp_path / "b", trained)
    c = save_training_result(tmp_path / "c", trained, site=SITE, model_name="tiny-llama", model_hash="ab" * 32,
                             data_info={"splits": {"train": {"rows": 240, "sha256": "cd" * 32}}},
                             extra={"note": "test"})
    for name in (MANIFEST, TENSORS, HISTORY):
        assert (a / name).read_bytes() == (b / name).read_bytes() == (c / name).read_bytes()
    # replacing an existing steerer folder works and leaves no temp folders behind
    save(tmp_path / "a", trained, extra={"note": "second"})
    assert read_manifest(tmp_path / "a")["extra"] == {"note": "second"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]


def test_refuses_to_overwrite_non_steerer_folder(tmp_path, trained):
    other = tmp_path / "data"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    with pytest.raises(ArtifactError, match="not a matsteer steerer folder"):
        save(other, trained)
    assert (other / "precious.txt").read_text() == "keep me"


def test_minimal_save_without_training_info(tmp_path):
    steerer = Steerer(["x"], 4, generator=torch.Generator().manual_seed(1))
    folder = save_steerer(tmp_path / "m", steerer, site=Site(0), model_name="m", model_hash="h", config=None,
                          history=None, data_info=None, extra=None)
    loaded, manifest = load_steerer(folder)
    assert torch.equal(loaded.theta, steerer.theta.detach())
    assert manifest["training"]["config"] is None and load_history(folder) is None


def test_missing_folder_and_files(tmp_path, trained):
    with pytest.raises(ArtifactError, match="not found"):
        load_steerer(tmp_path / "nope")
    folder = save(tmp_path / "s", trained)
    (folder / TENSORS).unlink()
    with pytest.raises(ArtifactError, match="steerer.safetensors"):
        load_steerer(folder)
    folder = save(tmp_path / "t", trained)
    (folder / MANIFEST).unlink()
    with pytest.raises(ArtifactError, match="manifest"):
        load_steerer(folder)


def test_truncated_and_corrupted_safetensors(tmp_path, trained):
    folder = save(tmp_path / "s", trained)
    data = (folder / TENSORS).read_bytes()
    (folder / TENSORS).write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="steerer.safetensors"):
        load_steerer(folder)
    with pytest.raises(ArtifactError, match="truncated or corrupted"):
        load_steerer(folder, verify_hash=False)
    folder = save(tmp_path / "t", trained)
    flipped = bytearray((folder / TENSORS).read_bytes())
    flipped[-3] ^= 0xFF  # corrupt a tensor byte: the header still parses, the hash catches it
    (folder / TENSORS).write_bytes(bytes(flipped))
    with pytest.raises(ArtifactError, match="sha256"):
        load_steerer(folder)
    (folder / TENSORS).write_bytes(b"\x00garbage")
    with pytest.raises(ArtifactError):
        load_steerer(folder, verify_hash=False)


def _edit_manifest(folder: Path, fn) -> None:
    m = json.loads((folder / MANIFEST).read_text())
    fn(m)
    (folder / MANIFEST).write_text(json.dumps(m))


def test_bad_manifest(tmp_path, trained):
    folder = save(tmp_path / "s", trained)
    (folder / MANIFEST).write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        load_steerer(folder)
    for i, (fn, match) in enumerate(
        [
            (lambda m: m.pop("d"), "'d'"),
            (lambda m: m.update(format_version="1"), "format_version"),
            (lambda m: m.update(attributes=[]), "attributes"),
            (lambda m: m.update(site={"layer": -1, "component": "residual"}), "site"),
            (lambda m: m.update(model="x"), "model"),
        ]
    ):
        f = save(tmp_path / f"b{i}", trained)
        _edit_manifest(f, fn)
        with pytest.raises(ArtifactError, match=match):
            load_steerer(f)
    (folder / MANIFEST).write_text("[1, 2]")
    with pytest.raises(ArtifactError, match="JSON object"):
        load_steerer(folder)


def test_newer_format_version_refused(tmp_path, trained):
    folder = save(tmp_path / "s", trained)
    _edit_manifest(folder, lambda m: m.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(ArtifactError, match="newer.*Upgrade"):
        load_steerer(folder)


def test_shapes_inconsistent_with_manifest(tmp_path, trained):
    folder = save(tmp_path / "s", trained)
    _edit_manifest(folder, lambda m: m.update(d=7))
    with pytest.raises(ArtifactError, match="shape"):
        load_steerer(folder)
    folder = save(tmp_path / "t", trained)
    _edit_manifest(folder, lambda m: m["attributes"].pop())
    with pytest.raises(ArtifactError, match="shape"):
        load_steerer(folder)


def test_check_compatible(tmp_path, trained):
    _, manifest = load_steerer(save(tmp_path / "s", trained))
    ok = dict(model_name="tiny-llama", model_hash="ab" * 32, d=6, site=SITE)
    assert check_compatible(manifest, **ok) == []
    assert check_compatible(manifest, **{**ok, "site": SITE.to_dict()}) == []
    with pytest.raises(ArtifactError, match="d=6.*d=8"):
        check_compatible(manifest, **{**ok, "d": 8})
    with pytest.raises(ArtifactError, match="site"):
        check_compatible(manifest, **{**ok, "site": Site(3, "attn_output")})
    with pytest.raises(ArtifactError, match="site"):
        check_compatible(manifest, **{**ok, "site": Site(2, "residual")}, allow_model_mismatch=True)
    with pytest.raises(ArtifactError, match="different model.*allow_model_mismatch"):
        check_compatible(manifest, **{**ok, "model_name": "other"})
    with pytest.raises(ArtifactError, match="hash"):
        check_compatible(manifest, **{**ok, "model_hash": "ef" * 32})
    warnings = check_compatible(manifest, **{**ok, "model_hash": "ef" * 32}, allow_model_mismatch=True)
    assert len(warnings) == 1 and "hash" in warnings[0]


# ---- reference checkpoints --------------------------------------------------------------------------------


def _reference_state(T: int, d: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for i in range(T):
        state[f"steering_vectors.{i}"] = torch.randn(d, generator=g)
    for i in range(T):
        state[f"gating_weights.{i}.weight"] = torch.randn(1, d, generator=g)
        state[f"gating_weights.{i}.bias"] = torch.randn(1, generator=g)
    return state


def _reference_forward(state: dict[str, torch.Tensor], a: torch.Tensor, T: int) -> torch.Tensor:
    """The reference module's computation: per-attribute loop, gates from the original a, then renorm."""
    out = a.clone()
    for t in range(T):
        gate = torch.sigmoid(a @ state[f"gating_weights.{t}.weight"].T + state[f"gating_weights.{t}.bias"])
        out = out + gate * state[f"steering_vectors.{t}"]
    return out * (a.norm(dim=1, keepdim=True) / out.norm(dim=1, keepdim=True))


def test_import_reference_checkpoint_wrapped(tmp_path):
    T, d = 3, 10
    state = _reference_state(T, d)
    path = tmp_path / "llama3.1_8B_L14_mat_steer.pt"
    torch.save({"model_state_dict": state, "input_dim": d, "num_attributes": T,
                "task_names": ["truthfulqa", "toxigen", "bbq"]}, path)
    steerer = import_reference_checkpoint(path)
    assert steerer.attributes == ["truthfulqa", "toxigen", "bbq"] and steerer.d == d
    assert torch.equal(steerer.theta[1], state["steering_vectors.1"])
    assert torch.equal(steerer.gate_weight[2], state["gating_weights.2.weight"][0])
    a = torch.randn(5, d)
    with torch.no_grad():
        ours, _ = steerer(a)
    torch.testing.assert_close(ours, _reference_forward(state, a, T))
    renamed = import_reference_checkpoint(path, attribute_names=["t", "x", "b"])
    assert renamed.attributes == ["t", "x", "b"]
    with pytest.raises(ArtifactError, match="3 attributes but 2 names"):
        import_reference_checkpoint(path, attribute_names=["a", "b"])


def test_import_reference_checkpoint_bare_state_dict(tmp_path):
    state = _reference_state(2, 4, seed=1)
    path = tmp_path / "multi_qa.pth"
    torch.save(state, path)
    steerer = import_reference_checkpoint(path)
    assert steerer.attributes == ["attr0", "attr1"]
    assert torch.equal(steerer.gate_bias, torch.cat([state["gating_weights.0.bias"], state["gating_weights.1.bias"]]))


def test_import_reference_checkpoint_errors(tmp_path):
    with pytest.raises(ArtifactError, match="not found"):
        import_reference_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ArtifactError, match="weights-only"):
        import_reference_checkpoint(bad)
    state = _reference_state(2, 4)
    del state["gating_weights.1.bias"]
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(ArtifactError, match="gating_weights.1.bias"):
        import_reference_checkpoint(tmp_path / "partial.pt")
    torch.save({"model_state_dict": _reference_state(2, 4), "input_dim": 5, "num_attributes": 2}, tmp_path / "d.pt")
    with pytest.raises(ArtifactError, match="input_dim=5"):
        import_reference_checkpoint(tmp_path / "d.pt")
    torch.save({"something": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ArtifactError, match="steering_vectors"):
        import_reference_checkpoint(tmp_path / "other.pt")


def test_import_refuses_pickled_objects(tmp_path):
    import argparse

    # An arbitrary Python object (here argparse args, as training scripts often save) is not weights-only.
    torch.save({"model_state_dict": _reference_state(1, 3), "args": argparse.Namespace(lr=0.1)}, tmp_path / "evil.pt")
    with pytest.raises(ArtifactError, match="unpickle"):
        import_reference_checkpoint(tmp_path / "evil.pt")


# ---- nothing lost: leftovers of a killed save ---------------------------------------------------------------


def _reaped_pid() -> int:
    """The pid of a process that has exited and been reaped (so no process has it, barring reuse)."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_save_killed_mid_swap_is_restored_not_lost(tmp_path, trained):
    folder = save(tmp_path / "s", trained)
    expected = (folder / TENSORS).read_bytes()
    # A save killed between its two renames: the previous steerer sits in its backup, the target is missing.
    backup = tmp_path / f".s.{_reaped_pid()}.abcd1234.old"
    folder.rename(backup)
    loaded, _ = load_steerer(folder)  # the load restores it
    assert (folder / TENSORS).read_bytes() == expected and not backup.exists()
    assert torch.equal(loaded.theta, trained.steerer.theta.detach())


def test_next_save_removes_dead_leftovers_only(tmp_path, trained):
    folder = save(tmp_path / "s", trained)
    dead, live = _reaped_pid(), os.getpid()
    stale_tmp = tmp_path / f".s.{dead}.zz_9x8y7.tmp"  # a killed save's half-written folder
    stale_old = tmp_path / f".s.{dead}.k2j3h4g5.old"  # a killed save's backup whose replacement landed
    busy_tmp = tmp_path / f".s.{live}.q1w2e3r4.tmp"  # a running save's folder: not ours to remove
    for p in (stale_tmp, stale_old, busy_tmp):
        p.mkdir()
    (stale_tmp / TENSORS).write_bytes(b"half")
    (stale_old / MANIFEST).write_text("{}")
    assert read_manifest(folder)["d"] == 6  # loading an existing folder touches nothing
    assert stale_tmp.exists() and stale_old.exists()
    save(folder, trained)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["s", busy_tmp.name])


# ---- reproducibility and provenance -------------------------------------------------------------------------


def test_two_trainings_same_seed_give_byte_identical_files(tmp_path):
    g = torch.Generator().manual_seed(3)
    data = [AttributeData(f"attr{t}", torch.randn(48, 6, generator=g) + t, torch.randn(48, 6, generator=g) - t)
            for t in range(2)]
    info = {"train": {"attr0": {"dataset": "truthfulqa"}, "attr1": {"dataset": "bbq"}}}
    folders = []
    for run in ("a", "b"):  # two independent trainings, not one result saved twice
        result = train_steerer(data, TrainConfig(epochs=3, sigma="median", lr=0.01, seed=11), progress=False)
        folders.append(save_training_result(tmp_path / run, result, site=SITE, model_name="tiny", model_hash="ab" * 32,
                                            data_info=info))
    for name in (MANIFEST, TENSORS, HISTORY):
        assert (folders[0] / name).read_bytes() == (folders[1] / name).read_bytes(), name


def test_manifest_records_provenance(tmp_path, trained):
    from matsteer.store.provenance import collect

    info = {"train": {"attr0": {"dataset": "truthfulqa", "split": "train"}, "attr1": {"dataset": "bbq"}}}
    folder = save_training_result(tmp_path / "s", trained, site=SITE, model_name="tiny", model_hash="ab" * 32,
                                  data_info=info)
    prov = read_manifest(folder)["provenance"]
    assert prov == json.loads(json.dumps(collect(model_name="tiny", model_hash="ab" * 32,
                                                 datasets=["bbq", "truthfulqa"], seeds={"train": 0})))
    assert prov["seeds"] == {"train": trained.config.seed} and set(prov["data"]) == {"bbq", "truthfulqa"}
    assert prov["data"]["truthfulqa"]["truthfulqa/mc_task.json"] and prov["split_files"]["bbq"] == "splits/bbq.json"
    # An explicit record is stored as given.
    own = save(tmp_path / "own", trained, provenance={"note": "made elsewhere"})
    assert read_manifest(own)["provenance"] == {"note": "made elsewhere"}
