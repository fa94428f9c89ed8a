"""The dashboard in a real browser: JupyterLab 4 and Notebook 7 in headless
Chromium (Playwright), as docs/testing.md describes. Skips with a
clear message where Chromium or Playwright is missing; .ci/run installs both."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.browser]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(os.environ.get("EPOCHMAGIC_SCREENSHOTS", Path(__file__).parent / "screenshots"))

QUICKSTART = Path(__file__).parent.parent / "example_notebooks" / "quickstart.ipynb"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    pytest.importorskip("jupyterlab", reason="jupyterlab is not installed")
    pytest.importorskip("notebook", reason="notebook is not installed")
    if not os.path.exists(CHROMIUM):
        pytest.skip("Chromium is not installed (apt-get install -y chromium)")
    root = tmp_path_factory.mktemp("lab")
    env = dict(os.environ)
    for var in (
        "JUPYTER_CONFIG_DIR",
        "JUPYTER_DATA_DIR",
        "JUPYTER_RUNTIME_DIR",
        "IPYTHONDIR",
        "JUPYTERLAB_SETTINGS_DIR",
        "JUPYTERLAB_WORKSPACES_DIR",
    ):
        env[var] = str(tmp_path_factory.mktemp(var.lower()))
    settings = Path(env["JUPYTERLAB_SETTINGS_DIR"]) / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False})
    )
    nb = nbformat.read(QUICKSTART, as_version=4)
    nbformat.write(nb, root / "dash.ipynb")
    port, token = _free_port(), secrets.token_hex(16)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--allow-root",
            "--ip=127.0.0.1",
            f"--port={port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={root}",
            "--ServerApp.terminals_enabled=False",
            "--expose-app-in-browser",
            "--JupyterNotebookApp.expose_app_in_browser=True",
            "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--LabApp.extension_manager=readonly",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            req = urllib.request.Request(
                f"{base}/api/status", headers={"Authorization": f"token {token}"}
            )
            if urllib.request.urlopen(req, timeout=2).status == 200:
                break
        except OSError:
            time.sleep(0.5)
    else:
        proc.terminate()
        pytest.fail("JupyterLab did not start")
    yield base, token
    try:
        req = urllib.request.Request(
            f"{base}/api/shutdown", method="POST", headers={"Authorization": f"token {token}"}
        )
        urllib.request.urlopen(req, timeout=10)
    except OSError:
        pass
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.mark.parametrize("app", ["lab", "notebook7"])
def test_dashboard_renders_and_a_what_if_runs_from_the_browser(server, app):
    from playwright.sync_api import sync_playwright

    base, token = server
    url = (
        f"{base}/lab/tree/dash.ipynb?reset&token={token}"
        if app == "lab"
        else f"{base}/notebooks/dash.ipynb?token={token}"
    )
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1300, "height": 1500})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        try:
            page.goto(url)
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
            page.wait_for_function(
                "() => !!window.jupyterapp?.shell?.currentWidget?.sessionContext", timeout=60_000
            )
            page.wait_for_function(
                "() => { const k = window.jupyterapp?.shell?.currentWidget?.sessionContext"
                "?.session?.kernel; return k && k.connectionStatus === 'connected' && "
                "k.status === 'idle'; }",
                timeout=60_000,
            )
            page.evaluate(
                "() => { window.__ran = undefined; window.jupyterapp.commands"
                ".execute('notebook:run-all-cells').then(r => window.__ran = r); }"
            )
            page.wait_for_function("() => window.__ran !== undefined", timeout=180_000)
            assert page.evaluate("() => window.__ran") is True
            tabs = page.locator(".widget-tab, .jupyter-widget-tab")
            tabs.first.wait_for(timeout=60_000)
            page.wait_for_function(
                "() => [...document.querySelectorAll('.widget-image, .jp-OutputArea img')]"
                ".some(i => i.naturalWidth > 100)",
                timeout=30_000,
            )
            page.get_by_text("Diagnosis", exact=True).first.click()
            page.get_by_text("input-bound").first.wait_for(timeout=10_000)
            page.get_by_text("What-if", exact=True).first.click()
            slider = page.locator(".widget-slider").filter(has_text="workers").first
            slider.scroll_into_view_if_needed()
            readout = slider.locator(".widget-readout").first  # editable in ipywidgets 8
            readout.click()
            page.keyboard.press("Control+A")
            page.keyboard.type("1")
            page.keyboard.press("Enter")
            page.wait_for_function(
                "() => [...document.querySelectorAll('.widget-slider')].some(s => "
                "s.textContent.includes('workers') && s.querySelector('.widget-readout')"
                "?.textContent.trim() === '1')",
                timeout=10_000,
            )
            page.locator("button.widget-button", has_text="Run").first.click()
            page.wait_for_function(
                "() => [...document.querySelectorAll('table.em-results tr')]"
                ".some(r => r.textContent.includes('workers=1'))",
                timeout=120_000,
            )
            page.screenshot(path=str(SCREENSHOTS / f"dashboard-{app}.png"), full_page=True)
            assert page.locator(".jp-Dialog").count() == 0
            if app == "lab":
                assert not errors, errors
        finally:
            browser.close()
