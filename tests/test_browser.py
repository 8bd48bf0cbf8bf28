"""End to end in a real browser: JupyterLab on 127.0.0.1 with a fresh token, notebooks/07_explorer.ipynb opened in
headless Debian Chromium driven by Playwright, all cells run on the "mfutils" kernel, then a person's moves: drag
the knockout explorer's layer-window slider (the displayed margin must change) and click the identified heads on
the head board (they must show as blocked and the MFR readout must change). Screenshots go to the test's
tmp_path; with MF_SCREENSHOT_DIR set, the head board's is also copied there as 07_explorer_head_board.png
(that is how figures/tiny/07_explorer_head_board.png is made).

Needs /usr/bin/chromium (Debian's chromium; .ci/install-browser installs it and this test calls it when the
browser is missing) and the Python package playwright (dev extra). Skips only when the browser cannot be
installed at all. Never runs `playwright install`.

Run alone: ``python -m pytest tests/test_browser.py``; to refresh the committed figure:
``MF_SCREENSHOT_DIR=figures/tiny python -m pytest tests/test_browser.py`` (without MF_OUT, so the kernel reads
notebook 03's identified heads from results/tiny/; the notebook writes nothing).
"""

from __future__ import annotations

import json
import os
import re
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

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "07_explorer.ipynb"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
RUN_ALL_TIMEOUT_S = 420
SERVER_START_TIMEOUT_S = 90

pytestmark = pytest.mark.slow


def _ensure_chromium() -> None:
    """/usr/bin/chromium, installed by .ci/install-browser when missing; skip if that is impossible here."""
    if CHROMIUM.exists():
        return
    script = ROOT / ".ci" / "install-browser"
    try:
        proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=1200)
        why = (proc.stderr or proc.stdout).strip()[-400:]
    except (OSError, subprocess.TimeoutExpired) as exc:
        why = str(exc)
    if not CHROMIUM.exists():
        pytest.skip(f"the browser cannot be installed on this machine: {CHROMIUM} is missing and {script} "
                    f"could not install Debian's chromium ({why})")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write_lab_home(home: Path) -> dict[str, str]:
    """A private Jupyter home: the "mfutils" kernel (this interpreter) and lab settings for a test run
    (every cell rendered, no news or update checks). Returns the environment additions."""
    kernel = home / "share" / "jupyter" / "kernels" / "mfutils"
    kernel.mkdir(parents=True)
    (kernel / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python (mfutils)", "language": "python"}))
    settings = home / "lab-settings"
    for rel, value in {
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                            "checkForUpdates": False},
    }.items():
        (settings / rel).parent.mkdir(parents=True, exist_ok=True)
        (settings / rel).write_text(json.dumps(value))
    for d in ("config", "runtime", "data", "workspaces"):
        (home / d).mkdir()
    return {"JUPYTER_PATH": str(home / "share" / "jupyter"), "JUPYTER_CONFIG_DIR": str(home / "config"),
            "JUPYTER_RUNTIME_DIR": str(home / "runtime"), "JUPYTER_DATA_DIR": str(home / "data")}


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[dict[str, str]]:
    """JupyterLab serving a copy of notebook 07 (so the source never gets outputs), killed in a finally."""
    _ensure_chromium()
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    home = tmp_path / "jupyter"
    env = {**os.environ, **_write_lab_home(home), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    port, token = _free_port(), secrets.token_hex(24)
    jupyter = Path(sys.executable).with_name("jupyter")
    cmd = [str(jupyter), "lab"] if jupyter.exists() else [sys.executable, "-m", "jupyterlab"]
    cmd += ["--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True",
            f"--LabApp.user_settings_dir={home / 'lab-settings'}", f"--LabApp.workspaces_dir={home / 'workspaces'}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")                    # CI and these machines run as root
    log = (tmp_path / "jupyter-lab.log").open("w")
    server = subprocess.Popen(cmd, env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"JupyterLab did not start (exit code {server.poll()}); its log:\n"
                                   + (tmp_path / "jupyter-lab.log").read_text()[-3000:])
            time.sleep(0.5)
        yield {"url": url, "token": token, "log": str(tmp_path / "jupyter-lab.log")}
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)     # the server and the kernels it started (its own group)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=10)
        log.close()


_CURRENT = "window.jupyterapp.shell.currentWidget"
_MARGIN = ".mf-knockout .mf-margin"
_MFR = ".mf-head-board .mf-mfr"


def _text_changes(page, selector: str, before: str, timeout_ms: int = 60_000) -> str:
    page.wait_for_function(
        "([sel, before]) => { const e = document.querySelector(sel); return e && e.innerText.trim() !== before.trim(); }",
        arg=[selector, before], timeout=timeout_ms)
    return page.inner_text(selector)


def _busy_cleared(page, scope: str, timeout_ms: int = 60_000) -> None:
    page.wait_for_function(
        "(scope) => [...document.querySelectorAll(scope + ' .mf-busy')].every(e => e.innerText.trim() === '')",
        arg=scope, timeout=timeout_ms)


def test_explorer_in_jupyterlab_and_chromium(lab: dict[str, str], tmp_path: Path) -> None:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the Python package playwright is missing: install the dev extra (pip install -e '.[dev]'; "
                    "make venv does it). Never run `playwright install`: the test uses /usr/bin/chromium.")
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.set_default_timeout(120_000)
            page.goto(f"{lab['url']}/lab/tree/{NOTEBOOK.name}?token={lab['token']}")
            page.wait_for_function(f"() => window.jupyterapp && {_CURRENT} && {_CURRENT}.sessionContext "
                                   f"&& {_CURRENT}.sessionContext.session && {_CURRENT}.sessionContext.session.kernel "
                                   f"&& {_CURRENT}.sessionContext.session.kernel.status === 'idle'")
            kernel = page.evaluate(f"() => {_CURRENT}.sessionContext.session.kernel.name")
            assert kernel == "mfutils"

            # Run all cells and wait for the last one (the promise resolves when every cell has run).
            ran = page.evaluate(
                "async (ms) => await Promise.race([window.jupyterapp.commands.execute('notebook:run-all-cells'),"
                " new Promise((_, reject) => setTimeout(() => reject(new Error('run-all timed out')), ms))])",
                RUN_ALL_TIMEOUT_S * 1000)
            errors = page.evaluate(
                f"() => {_CURRENT}.content.widgets.filter(c => c.model.type === 'code').flatMap(c => "
                "c.model.outputs.toJSON().filter(o => o.output_type === 'error').map(o => o.ename + ': ' + o.evalue))")
            page.screenshot(path=str(shots / "07_explorer_after_run_all.png"))
            assert not errors, f"cells failed in the browser: {errors}"
            assert ran is True
            for name in ("sample-browser", "attention-view"):       # for a person reading the test's output
                view = page.locator(f".mf-{name}")
                view.scroll_into_view_if_needed()
                view.screenshot(path=str(shots / f"07_explorer_{name.replace('-', '_')}.png"))

            # Knockout explorer: drag the lower handle of the layer window to the right.
            margin = page.locator(_MARGIN)
            margin.wait_for(state="visible")
            _busy_cleared(page, ".mf-knockout")
            before = margin.inner_text()
            readout = page.locator(".mf-knockout .mf-window .widget-readout")
            window_before = readout.inner_text()
            handle = page.locator(".mf-knockout .mf-window .noUi-handle-lower")
            handle.scroll_into_view_if_needed()
            box = handle.bounding_box()
            track = page.locator(".mf-knockout .mf-window .noUi-target").bounding_box()
            assert box is not None and track is not None
            x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
            page.mouse.move(x, y)
            page.mouse.down()
            page.mouse.move(x + track["width"] * 0.45, y, steps=12)
            page.mouse.up()
            after = _text_changes(page, _MARGIN, before)
            _busy_cleared(page, ".mf-knockout")
            after = margin.inner_text()
            window_after = readout.inner_text()
            assert window_after != window_before, (window_before, window_after)
            m_before = re.search(r"margin ([+-]\d+\.\d+)", before)
            m_after = re.search(r"margin ([+-]\d+\.\d+)", after)
            assert m_before and m_after and m_before.group(1) != m_after.group(1), (before, after)
            margin.locator("xpath=..").screenshot(path=str(shots / "07_explorer_knockout.png"))

            # Head board: click every identified head once (normal -> blocked); the click is debounced.
            board = page.locator(".mf-head-board")
            mfr = page.locator(_MFR)
            _busy_cleared(page, ".mf-head-board")
            mfr_before = mfr.inner_text()
            identified = page.locator(".mf-head-board .mf-identified")
            n = identified.count()
            assert n >= 1, page.evaluate(
                "() => ({boards: document.querySelectorAll('.mf-head-board').length, "
                "heads: document.querySelectorAll('.mf-head').length, "
                "classes: [...document.querySelectorAll('.mf-head')].slice(0, 3).map(e => e.className)})")
            for i in range(n):
                identified.nth(i).click()
            page.wait_for_function("(n) => document.querySelectorAll('.mf-head-board .mf-blocked').length === n", arg=n)
            _text_changes(page, _MFR, mfr_before)
            _busy_cleared(page, ".mf-head-board")
            mfr_after = mfr.inner_text()
            assert f"{n} blocked" in mfr_after and re.search(r"\d+/\d+ samples", mfr_after), mfr_after
            board.scroll_into_view_if_needed()
            board.screenshot(path=str(shots / "07_explorer_head_board.png"))
        finally:
            browser.close()
    target = os.environ.get("MF_SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(shots / "07_explorer_head_board.png", Path(target) / "07_explorer_head_board.png")
    print(f"margin: {m_before.group(1)} -> {m_after.group(1)} (window {window_before} -> {window_after}); "
          f"MFR readout after blocking {n} heads: {mfr_after.splitlines()[0]}; screenshots in {shots}")
