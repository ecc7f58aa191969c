"""save_pretrained / from_pretrained: a local folder round trip; a hub repo id that cannot be reached."""

from __future__ import annotations

import json

import pytest
import torch

from matsteer.activations.sites import Site
from matsteer.core.steerer import Steerer
from matsteer.errors import ArtifactError, ConfigError
from matsteer.store.artifacts import load_steerer
from matsteer.store.hub import from_pretrained, is_repo_id, model_card, save_pretrained


def _steerer() -> Steerer:
    return Steerer(["truthfulness", "toxicity"], 16, ["truthful", "non-toxic"],
                   generator=torch.Generator().manual_seed(0))


def test_local_folder_round_trip(tmp_path):
    steerer = _steerer()
    folder = save_pretrained(steerer, tmp_path / "s", site=Site(3, "residual"), model_name="tiny", model_hash="h1")
    assert folder == tmp_path / "s" and {p.name for p in folder.iterdir()} == {"steerer.safetensors", "manifest.json"}
    loaded = from_pretrained(str(folder))  # a str path, as users pass it
    assert loaded.attributes == steerer.attributes and loaded.positive_sides == steerer.positive_sides
    for name in ("theta", "gate_weight", "gate_bias"):
        assert torch.equal(getattr(loaded, name), getattr(steerer, name))
    assert loaded.manifest["site"] == {"layer": 3, "component": "residual"}
    # The manifest it carries is enough to save it again, same model, site and tensors.
    again = save_pretrained(loaded, tmp_path / "again")
    first, second = load_steerer(folder)[1], load_steerer(again)[1]
    assert second["model"] == first["model"] and second["site"] == first["site"]
    assert second["tensors"]["sha256"] == first["tensors"]["sha256"]


def test_save_pretrained_needs_site_and_model(tmp_path):
    with pytest.raises(ConfigError, match="site, model_name, model_hash"):
        save_pretrained(_steerer(), tmp_path / "s")
    assert not (tmp_path / "s").exists()
    with pytest.raises(ConfigError, match="repo id"):
        save_pretrained(_steerer(), "not a repo id", push_to_hub=True, site=Site(3, "residual"), model_name="m",
                                   model_hash="h")


def test_a_repo_that_cannot_be_reached_is_a_clear_error(tmp_path):
    with pytest.raises(ArtifactError) as err:  # nothing cached, no downloads allowed: no network touched
        from_pretrained("someone/no-such-steerer", local_files_only=True, cache_dir=tmp_path / "cache")
    message = str(err.value)
    assert "someone/no-such-steerer" in message and "could not be fetched" in message
    assert "HF_HUB_OFFLINE" in message and "token" in message


def test_a_network_failure_is_wrapped(tmp_path, monkeypatch):
    import huggingface_hub

    def refuse(*args, **kwargs):
        raise ConnectionError("[Errno 111] Connection refused")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)
    with pytest.raises(ArtifactError, match="ConnectionError: \\[Errno 111\\] Connection refused"):
        from_pretrained("someone/steerer")


def test_neither_folder_nor_repo_id(tmp_path):
    with pytest.raises(ArtifactError, match="neither a steerer folder"):
        from_pretrained(str(tmp_path / "missing" / "deeper" / "folder"))
    assert is_repo_id("user/name") and is_repo_id("name") and not is_repo_id("a/b/c") and not is_repo_id("a/../b")


def test_a_folder_that_is_not_a_steerer(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "manifest.json").write_text(json.dumps({"format_version": 1}))
    with pytest.raises(ArtifactError, match="Malformed steerer manifest"):
        from_pretrained(tmp_path / "s")


def test_model_card_says_what_and_how(tmp_path):
    folder = save_pretrained(_steerer(), tmp_path / "s", site=Site(3, "residual"), model_name="tiny", model_hash="h")
    card = model_card(load_steerer(folder)[1], "user/tiny-steerer")
    assert "layer 3" in card and "| toxicity | non-toxic |" in card
    assert "from_pretrained('user/tiny-steerer')" in card
