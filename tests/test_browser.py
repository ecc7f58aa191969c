"""Notebook 05 in a real JupyterLab, driven by headless Chromium: run all, move a slider, click Generate.

Skipped only when /usr/bin/chromium is absent (CI installs Debian's ``chromium``). The server runs on a free
loopback port with a random token, in a temporary root with its own config/runtime/workspace folders, and is
always shut down (REST shutdown, then SIGTERM, then SIGKILL of its own process group). Every wait is bounded.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "05_tune_multipliers.ipynb"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is absent (apt-get install chromium)"),
]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, timeout: float = 5.0) -> int:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - loopback only
        return int(r.status)


def _steerer_folder(folder: Path) -> Path:
    """A seeded random steerer for the default model at layer 14 with large vectors and open gates, so that any
    multiplier change visibly changes the greedy text."""
    from matsteer.activations.models import load_model
    from matsteer.activations.sites import Site
    from matsteer.core.steerer import Steerer
    from matsteer.store.artifacts import save_steerer

    loaded = load_model(progress=False)
    steerer = Steerer(["truthfulness", "toxicity", "bias"], loaded.hidden_size,
                      generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        steerer.theta.mul_(3.0)
        steerer.gate_bias.fill_(4.0)
    return save_steerer(folder, steerer, site=Site(14, "residual"), model_name=loaded.name,
                        model_hash=loaded.weight_hash)


@pytest.fixture()
def lab(tmp_path) -> Iterator[tuple[str, str, Path]]:
    """(base URL, token, root dir) of a JupyterLab holding a quick, parameterised copy of notebook 05."""
    from matsteer.app.notebooks import install_kernel
    from matsteer.app.parameters import parameterize_notebook

    root = tmp_path / "lab"
    kernels = install_kernel(prefix=tmp_path / "kernels")  # the kernel the notebooks name, as make lab registers it
    parameterize_notebook(ROOT / "notebooks" / NOTEBOOK, {
        "quick": True, "steerer_dir": str(_steerer_folder(tmp_path / "steerer")), "multiplier": 1.0,
        "max_new_tokens": 8, "dev_questions": 1, "features_dir": str(tmp_path / "features"),
    }, root / NOTEBOOK)
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt"),
           "JUPYTER_NO_CONFIG": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "JUPYTER_PATH": str(kernels.parents[1])}
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.open_browser=False",
           "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           f"--LabApp.workspaces_dir={tmp_path / 'ws'}", "--LabApp.expose_app_in_browser=True",
           "--ServerApp.terminals_enabled=False", "--LabApp.news_url=None",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]  # no network, no news pop-up
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # CI containers run as root
    log = (tmp_path / "jupyterlab.log").open("w")
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"JupyterLab exited ({proc.returncode}):\n{(tmp_path / 'jupyterlab.log').read_text()[-3000:]}")
            try:
                if _get(f"{base}/api/status?token={token}") == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("JupyterLab did not answer within 90 s")
            time.sleep(0.5)
        yield base, token, root
    finally:
        try:  # graceful: shuts the kernels down too
            req = urllib.request.Request(f"{base}/api/shutdown?token={token}", method="POST")
            urllib.request.urlopen(req, timeout=10)  # noqa: S310 - loopback only
        except OSError:
            pass
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        log.close()


def _text(page, selector: str) -> str:
    loc = page.locator(selector)
    return loc.first.inner_text(timeout=5_000).strip() if loc.count() else ""


def test_tuner_in_jupyterlab(lab, tmp_path):
    # A test dependency (pyproject's test extras): its absence is a failure, not a skip.
    from playwright import sync_api

    base, token, _ = lab
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True, timeout=60_000)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            page.set_default_timeout(30_000)
            page.goto(f"{base}/lab/tree/{NOTEBOOK}?reset&token={token}", timeout=60_000)
            # The app object (exposed by --LabApp.expose_app_in_browser) and a notebook whose kernel is ready.
            page.wait_for_function(
                """() => {
                    const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
                    const s = w && w.sessionContext;
                    return !!(s && s.session && s.session.kernel && s.session.kernel.status === 'idle');
                }""", timeout=120_000)
            page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")

            # The tuner renders and the headless cell's first generation fills the steered box.
            page.wait_for_selector(".matsteer-tuner", timeout=180_000)
            page.wait_for_function(
                "() => { const e = document.querySelector('.matsteer-steered .matsteer-text');"
                " return e && e.innerText.trim().length > 0; }", timeout=180_000)
            # Wait for the whole run (dev scoring is the last cell) so the kernel is free for our click.
            page.wait_for_selector(".matsteer-scores table", timeout=180_000)
            before = _text(page, ".matsteer-steered .matsteer-text")
            unsteered = _text(page, ".matsteer-unsteered .matsteer-text")
            page.screenshot(path=str(shots / "tuner_before.png"), full_page=True)

            # Move the global multiplier slider to its left end (-2): drag the handle over the track.
            slider = page.locator(".matsteer-slider-global")
            slider.scroll_into_view_if_needed()
            handle = slider.locator(".noUi-handle").first
            track = slider.locator(".noUi-target").first
            hb, tb = handle.bounding_box(), track.bounding_box()
            assert hb and tb, "slider not laid out"
            page.mouse.move(hb["x"] + hb["width"] / 2, hb["y"] + hb["height"] / 2)
            page.mouse.down()
            page.mouse.move(tb["x"] - 20, hb["y"] + hb["height"] / 2, steps=12)
            page.mouse.up()
            # The readout prints a Unicode minus sign (U+2212).
            page.wait_for_function(
                "() => { const r = document.querySelector('.matsteer-slider-global .widget-readout');"
                " return r && r.innerText.trim().replace('\u2212', '-') === '-2.0'; }", timeout=15_000)

            page.locator(".matsteer-generate").click()
            page.wait_for_function(
                "([before]) => { const e = document.querySelector('.matsteer-steered .matsteer-text');"
                " return e && e.innerText.trim().length > 0 && e.innerText.trim() !== before; }",
                arg=[before], timeout=120_000)
            after = _text(page, ".matsteer-steered .matsteer-text")
            assert after != before
            assert _text(page, ".matsteer-unsteered .matsteer-text") == unsteered  # the plain model is untouched
            assert "global ×-2" in _text(page, ".matsteer-steered")
            page.locator(".matsteer-gates").first.scroll_into_view_if_needed()
            page.screenshot(path=str(shots / "tuner_after.png"), full_page=True)
        finally:
            browser.close()
    out = ROOT / "build" / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    for png in shots.glob("*.png"):
        assert png.stat().st_size > 10_000
        shutil.copy2(png, out / png.name)
