"""The dashboard in a real browser: JupyterLab 4 and Notebook 7 in headless
Chromium (Playwright), as docs/testing.md describes. Skips with a
clear message where Chromium or Playwright is missing; .ci/run installs both."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed")

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

# The viewport widths at which no control may be clipped (docs/testing.md); the
# screenshot is taken at the first.
WIDTHS = (1280, 1024)
# What is checked inside the dashboard's output area, in ipywidgets 8's classes:
# labelled controls (sliders, dropdown, checkboxes, progress, HTML) and their
# description labels, readouts, selects, text inputs and areas, buttons, images, boxes
# (HBox/VBox/GridBox scroll when a child overflows) and the tab labels.
CONTROLS = ", ".join(
    [
        ".widget-inline-hbox",
        ".widget-label",
        ".widget-label-basic",
        ".widget-readout",
        ".widget-dropdown select",
        ".widget-text input",
        ".widget-textarea textarea",
        "button.jupyter-button",
        ".widget-image",
        ".widget-box",
        ".widget-gridbox",
        ".lm-TabBar-tabLabel",
    ]
)
# Every visible element matching CONTROLS in the dashboard's output area whose
# content overflows its box (scrollWidth > clientWidth: cut, scrolled, or cut with
# an ellipsis), a select whose widest option does not fit its text box (a select's
# scrollWidth does not show that), or whose box reaches past its output area or
# past an ancestor that clips or scrolls (overflow other than visible); each
# described as tag.classes "text": what. Also the elements checked, so that a
# selector matching nothing cannot pass.
CLIPPED = """(selector) => {
  const area = [...document.querySelectorAll('.jp-OutputArea-output')]
    .find(o => o.querySelector('.widget-tab, .jupyter-widget-tab'));
  if (!area) return {checked: [], bad: ['no output area holds the dashboard']};
  const name = e => e.tagName.toLowerCase()
    + [...e.classList].filter(c => !c.startsWith('lm-')).map(c => '.' + c).join('')
    + ' ' + JSON.stringify((e.innerText || e.value || '').trim().replace(/\\s+/g, ' ').slice(0, 50));
  const px = x => Math.round(x);
  const ctx = document.createElement('canvas').getContext('2d');
  const bad = [], checked = [];
  for (const el of area.querySelectorAll(selector)) {
    if (!el.getClientRects().length) continue;  // in a hidden tab
    checked.push(name(el));
    if (el.scrollWidth > el.clientWidth + 1)
      bad.push(`${name(el)}: content ${el.scrollWidth}px wide in a ${el.clientWidth}px box`);
    if (el.tagName === 'SELECT') {
      const cs = getComputedStyle(el);
      ctx.font = `${cs.fontStyle} ${cs.fontWeight} ${cs.fontSize} ${cs.fontFamily}`;
      const room = el.clientWidth - parseFloat(cs.paddingLeft) - parseFloat(cs.paddingRight);
      for (const o of el.options) {
        const need = ctx.measureText(o.text).width;
        if (need > room + 1)
          bad.push(`${name(el)}: option ${JSON.stringify(o.text)} needs ${px(need)}px, has ${px(room)}px`);
      }
    }
    const r = el.getBoundingClientRect();
    for (let a = el.parentElement; a; a = a.parentElement) {
      if (a === area || getComputedStyle(a).overflowX !== 'visible') {
        const b = a.getBoundingClientRect();
        if (r.left < b.left - 1 || r.right > b.right + 1) {
          const where = a === area ? 'its output area' : name(a);
          bad.push(`${name(el)}: spans x ${px(r.left)}-${px(r.right)}, outside ${where} (${px(b.left)}-${px(b.right)})`);
          break;
        }
      }
      if (a === area) break;
    }
  }
  return {checked, bad};
}"""
# Resolves once the dashboard's output area has kept its size for three frames
# (Lumino lays out on the animation frame after a resize).
SETTLED = """() => new Promise(done => {
  let last = '', same = 0;
  const tick = () => {
    const a = [...document.querySelectorAll('.jp-OutputArea-output')]
      .find(o => o.querySelector('.widget-tab, .jupyter-widget-tab'));
    const r = a ? a.getBoundingClientRect() : {};
    const key = [r.left, r.width, r.height, a && a.scrollWidth].join();
    same = key === last ? same + 1 : 0;
    last = key;
    if (same >= 3) done(); else requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick);
})"""


def _dashboard(page):
    """The output area that holds the dashboard. Texts are looked up inside it:
    page-wide, Lab's and Notebook 7's table of contents lists the report's
    headings too ("Diagnosis"), hidden in a closed side panel."""
    return (
        page.locator(".jp-OutputArea-output")
        .filter(has=page.locator(".widget-tab, .jupyter-widget-tab"))
        .first
    )


def _open_tab(page, title: str) -> None:
    _dashboard(page).locator(".lm-TabBar-tab").filter(
        has_text=re.compile(f"^{re.escape(title)}$")
    ).first.click()


def _clipped_controls(page, app: str) -> list[str]:
    """At each of WIDTHS, in the Diagnosis and the What-if tab (the export row
    shows under both), what CLIPPED finds; ends on What-if at WIDTHS[0]."""
    problems = []
    for width in (*WIDTHS[1:], WIDTHS[0]):
        page.set_viewport_size({"width": width, "height": 1500})
        page.wait_for_function(f"() => window.innerWidth === {width}")
        for tab in ("Diagnosis", "What-if"):
            _open_tab(page, tab)
            _dashboard(page).scroll_into_view_if_needed()
            page.evaluate(SETTLED)
            found = page.evaluate(CLIPPED, CONTROLS)
            problems += [f"{app} at {width}px, {tab} tab: {p}" for p in found["bad"]]
            seen = " ".join(found["checked"])
            expected = ("Try it",) if tab == "Diagnosis" else ("precision", "persistent_workers")
            for text in (*expected, "Export JSON", "Export HTML page"):
                assert text in seen, f"{app} at {width}px, {tab} tab: no control shows {text!r}"
    return problems


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
        page = browser.new_page(viewport={"width": WIDTHS[0], "height": 1500})
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
            _open_tab(page, "Diagnosis")
            # the verdict (what bounds the epoch depends on the machine's load) and
            # the findings, each with its share of the epoch
            dash = _dashboard(page)
            dash.get_by_text(re.compile(r"-bound: \d+%|evaluation-heavy")).first.wait_for(
                timeout=10_000
            )
            dash.get_by_text(re.compile(r"\[\w+, \d+% of the epoch")).first.wait_for(timeout=10_000)
            _open_tab(page, "What-if")
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
            problems = _clipped_controls(page, app)
            page.screenshot(path=str(SCREENSHOTS / f"dashboard-{app}.png"), full_page=True)
            assert not problems, "controls clipped or overflowing their box:\n" + "\n".join(
                problems
            )
            assert page.locator(".jp-Dialog").count() == 0
            if app == "lab":
                assert not errors, errors
        finally:
            browser.close()
