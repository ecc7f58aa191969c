"""Steerers that travel: ``save_pretrained`` / ``from_pretrained`` in the Hugging Face way.

A steerer is stored as the folder :mod:`matsteer.store.artifacts` writes (``steerer.safetensors`` + ``manifest.json``,
atomically, never pickled). The same folder is what a Hugging Face Hub repository holds, so:

* ``from_pretrained("results/steerer")`` loads a local folder;
* ``from_pretrained("user/my-steerer")`` downloads the repo's steerer files through ``huggingface_hub`` (cached as
  the hub caches model files; ``revision``, ``token``, ``cache_dir``, ``local_files_only`` as usual) and loads them;
* ``save_pretrained(steerer, "out/folder", site=..., model_name=..., model_hash=...)`` writes a folder, and with
  ``push_to_hub=True`` the first argument is a repo id and the folder is uploaded there (with a short model card).

A steerer returned by :func:`from_pretrained` keeps its manifest as ``steerer.manifest``, so it can be saved or
pushed again without restating its site and model. Both are also ``matsteer.from_pretrained`` /
``matsteer.save_pretrained``.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from matsteer.activations.sites import Site
from matsteer.core.steerer import Steerer
from matsteer.errors import ArtifactError, ConfigError
from matsteer.files import read_json
from matsteer.store.artifacts import load_steerer, save_steerer

__all__ = ["from_pretrained", "is_repo_id", "model_card", "save_pretrained"]

#: The files of a steerer folder a hub repository carries (the model card is for people).
STEERER_FILES = ("steerer.safetensors", "manifest.json", "history.json", "README.md")
_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def is_repo_id(name: str) -> bool:
    """Whether ``name`` has the shape of a hub repo id (``name`` or ``namespace/name``, no ``..`` or ``--``)."""
    return bool(_REPO_ID.match(name)) and ".." not in name and "--" not in name and not name.endswith(".")


def from_pretrained(
    path_or_repo: str | Path,
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool = False,
    verify_hash: bool = True,
) -> Steerer:
    """A steerer from a local steerer folder, or else from a Hugging Face Hub repo of that id.

    The returned steerer carries its manifest as ``.manifest`` (model, site, attributes, training settings).
    Raises :class:`~matsteer.errors.ArtifactError` naming the problem and the fix when the folder is not a
    steerer or the repo cannot be fetched (no network, no such repo, private without a token).
    """
    path = Path(path_or_repo).expanduser()
    if path.is_dir():
        steerer, manifest = load_steerer(path, verify_hash=verify_hash)
    else:
        steerer, manifest = load_steerer(_download(str(path_or_repo), revision=revision, token=token,
                                                   cache_dir=cache_dir, local_files_only=local_files_only),
                                         verify_hash=verify_hash)
    steerer.manifest = manifest
    return steerer


def _download(repo_id: str, **options: Any) -> Path:
    """The local snapshot of ``repo_id``'s steerer files; :class:`ArtifactError` if it cannot be had."""
    if not is_repo_id(repo_id):
        raise ArtifactError(f"{repo_id!r} is neither a steerer folder on this machine nor a Hugging Face Hub repo id "
                            "(namespace/name). Check the path.")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # a dependency of transformers, so normally present
        raise ArtifactError("Loading a steerer from the Hugging Face Hub needs huggingface_hub: "
                            "pip install huggingface_hub.") from exc
    try:
        folder = snapshot_download(repo_id, allow_patterns=list(STEERER_FILES), **options)
    except Exception as exc:  # the hub client's errors differ across versions; each means "could not fetch"
        raise ArtifactError(
            f"No steerer folder {repo_id!r} on this machine, and the Hugging Face Hub repo {repo_id!r} could not be "
            f"fetched ({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else 'no detail'}). "
            "Check the folder path or the repo id, your network (HF_HUB_OFFLINE=1 blocks downloads) and, for a "
            "private repo, your token (huggingface-cli login)."
        ) from exc
    return Path(folder)


def _saved_settings(steerer: Steerer) -> dict[str, Any]:
    """What :func:`save_pretrained` needs, recovered from the manifest a loaded steerer carries (if any)."""
    manifest = getattr(steerer, "manifest", None)
    if not isinstance(manifest, Mapping):
        return {}
    settings: dict[str, Any] = {}
    try:
        settings["site"] = Site.from_dict(manifest["site"])
        settings["model_name"] = manifest["model"]["name"]
        settings["model_hash"] = manifest["model"]["hash"]
    except (KeyError, TypeError):
        return {}
    for key, field in (("data_info", "data"), ("extra", "extra"), ("provenance", "provenance")):
        if isinstance(manifest.get(field), Mapping):
            settings[key] = manifest[field]
    training = manifest.get("training")
    if isinstance(training, Mapping) and isinstance(training.get("sigma_used"), (int, float)):
        settings["sigma_used"] = float(training["sigma_used"])
    return settings


def save_pretrained(
    steerer: Steerer,
    path_or_repo: str | Path,
    *,
    push_to_hub: bool = False,
    token: str | bool | None = None,
    private: bool | None = None,
    commit_message: str = "Upload matsteer steerer",
    **save_options: Any,
) -> Path | str:
    """Save ``steerer`` as a steerer folder at ``path_or_repo``, or push it to the hub repo ``path_or_repo``.

    save_options: those of :func:`matsteer.store.artifacts.save_steerer` (``site``, ``model_name`` and ``model_hash``
    are required unless the steerer came from :func:`from_pretrained`, whose manifest supplies them; ``config``,
    ``history``, ``data_info``, ``extra``...). push_to_hub: write the folder to a temporary place and upload it
    with ``huggingface_hub`` (the repo is created if needed; ``private`` and ``token`` as in ``HfApi``). Returns
    the folder, or the repo's URL after a push.
    """
    options = {**_saved_settings(steerer), **save_options}
    missing = [k for k in ("site", "model_name", "model_hash") if options.get(k) is None]
    if missing:
        raise ConfigError(f"save_pretrained needs {', '.join(missing)}: pass site=Site(layer, component), "
                          "model_name= and model_hash= (the model the steerer was trained on), or load the steerer "
                          "with from_pretrained, which keeps them.")
    if not push_to_hub:
        return save_steerer(Path(path_or_repo), steerer, **options)
    repo_id = str(path_or_repo)
    if not is_repo_id(repo_id):
        raise ConfigError(f"push_to_hub needs a repo id such as 'user/my-steerer', got {repo_id!r}.")
    with tempfile.TemporaryDirectory(prefix="matsteer-push-") as tmp:
        folder = save_steerer(Path(tmp) / "steerer", steerer, **options)

        (folder / "README.md").write_text(model_card(read_json(folder / "manifest.json"), repo_id), encoding="utf-8")
        return _upload(folder, repo_id, token=token, private=private, commit_message=commit_message)


def _upload(folder: Path, repo_id: str, *, token: str | bool | None, private: bool | None,
            commit_message: str) -> str:
    try:
        from huggingface_hub import HfApi
    except ImportError as exc:
        raise ArtifactError("Pushing to the Hugging Face Hub needs huggingface_hub: pip install huggingface_hub.") \
            from exc
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message, repo_type="model")
    except Exception as exc:  # network, permissions, token: all "could not push"
        raise ArtifactError(
            f"Could not push the steerer to the Hugging Face Hub repo {repo_id!r} ({type(exc).__name__}: {exc}). "
            "Check your network and token (huggingface-cli login), or save to a local folder instead."
        ) from exc
    return str(url)


def model_card(manifest: Mapping[str, Any], repo_id: str | None = None) -> str:
    """A short README for a pushed steerer: what it steers, where, on which model, and how to load it."""
    site = manifest.get("site") or {}
    model = (manifest.get("model") or {}).get("name", "?")
    attributes = manifest.get("attributes") or []
    rows = "\n".join(f"| {a.get('name')} | {a.get('positive_side')} |" for a in attributes if isinstance(a, Mapping))
    name = repo_id or "path/to/steerer"
    return (
        "---\nlibrary_name: matsteer\ntags:\n- steering\n- mat-steer\n---\n\n"
        f"# MAT-Steer steerer for `{model}`\n\n"
        f"Multi-attribute targeted steering (MAT-Steer): one steering vector and one sigmoid gate per attribute, "
        f"applied at layer {site.get('layer')}, site `{site.get('component')}`, of `{model}`.\n\n"
        f"| attribute | positive side |\n|---|---|\n{rows}\n\n"
        "```python\nfrom matsteer import from_pretrained\n"
        f"steerer = from_pretrained({name!r})\n```\n\n"
        "`manifest.json` records the model's weight hash, the site, the training settings and their provenance.\n"
    )
