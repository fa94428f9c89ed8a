"""The example notebooks run top to bottom in a real kernel and show a report."""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed")
NotebookClient = pytest.importorskip("nbclient", reason="nbclient is not installed").NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "example_notebooks").glob("*.ipynb"))

pytestmark = [pytest.mark.slow, pytest.mark.notebook]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes_and_shows_a_report(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    texts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            texts.append(out.get("text", "") or out.get("data", {}).get("text/plain", ""))
    report = "\n".join(texts)
    assert "epochmagic: epoch" in report
    assert "verdict:" in report
    assert not any(o.get("output_type") == "error" for c in nb.cells for o in c.get("outputs", []))
    # what nbconvert and GitHub show without widget state: HTML and a PNG
    data = [o.get("data", {}) for c in nb.cells for o in c.get("outputs", [])]
    report = next(d for d in data if "epochmagic: epoch" in d.get("text/plain", ""))
    assert "<img" in report["text/html"] and report["image/png"]
    assert "application/vnd.jupyter.widget-view+json" in report
