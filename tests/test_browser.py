"""Chapter 7 in a real browser: JupyterLab + headless Chromium (Debian's), driven by Playwright.

Starts JupyterLab on 127.0.0.1 (random port and token, a temporary root folder holding a
copy of notebook 07), opens the notebook, runs all cells, moves the ViT explorer's layer
slider and its patch slider with the keyboard, and checks that the attention picture the
browser shows changes each time. Screenshots go to ``artifacts/browser/`` (git-ignored).
"""
from __future__ import annotations

import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "notebooks" / "07_attention_maps.ipynb"
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = REPO / "artifacts" / "browser"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]

pytestmark = [pytest.mark.browser, pytest.mark.slow]

if not CHROMIUM.exists():
    pytest.skip(
        "Debian's chromium is not installed (/usr/bin/chromium missing): `apt-get install -y chromium` "
        "enables the chapter-7 browser test (CI installs it)",
        allow_module_level=True,
    )
playwright_sync = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _write_lab_settings(settings_dir: Path) -> None:
    """No news toast or update check (nothing may cover the notebook); every cell kept in the page
    (JupyterLab 4 otherwise detaches cells scrolled out of view, outputs included)."""
    settings = {
        "apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
        "notebook-extension/tracker": {"windowingMode": "none"},
    }
    for plugin, values in settings.items():
        path = settings_dir / "@jupyterlab" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


def _wait_for_server(url: str, process: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with code {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (OSError, http.client.HTTPException):  # not listening yet, or still starting
            time.sleep(0.5)
    raise RuntimeError(f"JupyterLab did not answer within {timeout} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def jupyter_lab():
    """A JupyterLab server on a temporary root holding notebook 07; yields (base URL, token, root)."""
    if not NOTEBOOK.exists():
        pytest.fail(f"{NOTEBOOK.relative_to(REPO)} is missing")
    with tempfile.TemporaryDirectory(prefix="minivit-browser-") as temp:
        temp = Path(temp)
        root, settings = temp / "root", temp / "lab-settings"
        root.mkdir()
        shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
        _write_lab_settings(settings)
        port, token = _free_port(), secrets.token_hex(16)
        env = {
            **os.environ,
            "MINIVIT_PROFILE": "smoke",
            "JUPYTERLAB_SETTINGS_DIR": str(settings),
            "JUPYTERLAB_WORKSPACES_DIR": str(temp / "workspaces"),
            "JUPYTER_RUNTIME_DIR": str(temp / "runtime"),
        }
        log = temp / "jupyterlab.log"
        command = [
            sys.executable, "-m", "jupyterlab", "--no-browser",
            "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
            "--LabApp.news_url=None", "--LabApp.expose_app_in_browser=True",
            "--allow-root",  # CI containers run as root
        ]
        with open(log, "w") as log_file:
            server = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        try:
            base = f"http://127.0.0.1:{port}"
            _wait_for_server(f"{base}/api/status?token={token}", server, log)
            yield base, token, log
        finally:
            _stop(server)


def _stop(server: subprocess.Popen) -> None:
    """Stop the server and the kernels it started (its own process group)."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:
            return
        try:
            server.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


HOSTILE_NAME = "<img src=x onerror=window.minivitInjected=1>.png"


def _png_bytes() -> bytes:
    """A small photo-like PNG for the upload."""
    import io

    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _changed_picture(locator, before: bytes, timeout: float = 30) -> bytes:
    """Screenshots of ``locator`` until one differs from ``before`` (the kernel answers asynchronously)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = locator.screenshot()
        if now != before:
            return now
        time.sleep(0.25)
    raise AssertionError(f"the attention picture did not change within {timeout} s")


def _press(page, slider_class: str, key: str, times: int = 1) -> None:
    handle = page.locator(f".{slider_class} .noUi-handle")
    handle.focus()
    for _ in range(times):
        handle.press(key)


def test_attention_explorer_in_jupyterlab(jupyter_lab):
    base, token, log = jupyter_lab
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with playwright_sync.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{base}/lab/tree/{NOTEBOOK.name}?token={token}")
            page.wait_for_function("window.jupyterapp !== undefined", timeout=60_000)
            page.wait_for_function("document.querySelectorAll('.jp-Notebook .jp-Cell').length > 10", timeout=90_000)
            page.get_by_text(re.compile(r"\| Idle")).wait_for(timeout=90_000)  # the status bar: kernel started
            page.screenshot(path=SCREENSHOTS / "0_opened.png")
            assert page.locator(".jp-Dialog").count() == 0, "a dialog (kernel choice?) covers the notebook"

            # do not await the run
            page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
            vit_picture = page.locator("img.minivit-vit-picture")
            detr_picture = page.locator("img.minivit-detr-picture")
            try:
                detr_picture.wait_for(state="visible", timeout=150_000)  # the last explorer: every cell ran
            except playwright_sync.TimeoutError:
                page.screenshot(path=SCREENSHOTS / "failed_run.png", full_page=True)
                errors = page.locator(
                    ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']"
                ).all_inner_texts()
                raise AssertionError(f"the explorers did not appear; stderr outputs: {errors[-3:]}\n"
                                     f"server log: {log.read_text()[-2000:]}")
            vit_picture.scroll_into_view_if_needed()
            page.wait_for_timeout(500)
            first = vit_picture.screenshot(path=SCREENSHOTS / "1_vit_explorer.png")
            page.screenshot(path=SCREENSHOTS / "1_page_after_run_all.png")

            _press(page, "minivit-vit-layer", "ArrowLeft", times=2)  # last layer -> two layers lower
            after_layer = _changed_picture(vit_picture, first)
            vit_picture.screenshot(path=SCREENSHOTS / "2_vit_layer_changed.png")

            _press(page, "minivit-vit-row", "ArrowLeft", times=2)  # choose a patch: it becomes the query
            after_patch = _changed_picture(vit_picture, after_layer)
            vit_picture.screenshot(path=SCREENSHOTS / "3_vit_patch_changed.png")
            page.locator(".minivit-vit-picture").locator("xpath=..").screenshot(
                path=SCREENSHOTS / "3_vit_explorer_widgets.png")
            assert len({first, after_layer, after_patch}) == 3

            # Issue 13, finding 6: an uploaded file's name reaches the page as text, never as HTML
            with page.expect_file_chooser() as chooser:  # the widget's file input is hidden: click the button
                page.locator(".minivit-vit-upload").click()
            chooser.value.set_files(files=[{"name": HOSTILE_NAME, "mimeType": "image/png", "buffer": _png_bytes()}])
            caption = page.locator(".minivit-vit-caption")
            caption.get_by_text(HOSTILE_NAME, exact=False).wait_for(timeout=30_000)
            page.wait_for_timeout(500)  # an injected onerror handler would have run by now
            caption.screenshot(path=SCREENSHOTS / "3_vit_hostile_upload_name.png")
            assert page.evaluate("() => window.minivitInjected") is None, "the file name ran as script"
            assert caption.locator("img").count() == 0, "the file name became an <img> element"

            detr_picture.scroll_into_view_if_needed()
            detr_picture.locator("xpath=..").screenshot(path=SCREENSHOTS / "4_detr_explorer.png")
        finally:
            browser.close()
    assert time.monotonic() - started < 180, "the browser test must stay under 3 minutes"
