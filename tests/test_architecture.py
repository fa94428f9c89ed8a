"""The package's shape holds: layers import downward only, no import cycle,
no module over 400 lines or function over 60 (tools/archcheck.py), and only
capture/patching.py changes what is not epochmagic's own."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

from epochmagic import EpochProfile
from epochmagic.model.vocabulary import SETTING_KEYS

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import archcheck  # noqa: E402


def test_layers_cycles_and_sizes_hold():
    assert archcheck.problems(ROOT / "epochmagic") == []


def test_archcheck_finds_a_cycle_an_upward_import_and_a_long_function(tmp_path):
    pkg = tmp_path / "epochmagic"
    for layer in ("model", "report"):
        (pkg / layer).mkdir(parents=True)
        (pkg / layer / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "model" / "a.py").write_text(
        "def f():\n    from epochmagic.report import b\n" + "    x = 1\n" * 60
    )
    (pkg / "report" / "b.py").write_text("from epochmagic.model import a\n")
    found = "\n".join(archcheck.problems(pkg))
    assert "import cycle: epochmagic.model.a -> epochmagic.report.b" in found
    assert "epochmagic.model.a imports epochmagic.report.b, a higher layer" in found
    assert "f: 62 lines" in found


def test_archcheck_runs_as_a_script():
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "archcheck.py")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout


# what only capture/patching.py may do: set attributes of torch, of the
# interpreter or of the user's objects, and swap code
_PATCHING = re.compile(
    r"setattr\(|\.__code__ = |\.__init__ = |warnings\.showwarning = |\.transform = |set_num_threads\("
)


def test_only_patching_patches():
    offenders = []
    for path in sorted((ROOT / "epochmagic").rglob("*.py")):
        if path.name == "patching.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = re.sub(r"\"[^\"]*\"|'[^']*'", "", line.split("#", 1)[0])  # code, not text
            if _PATCHING.search(code) and "noqa: patching" not in line:
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert offenders == []


def test_rerun_keywords_are_the_settings():
    params = list(inspect.signature(EpochProfile.rerun).parameters)
    assert sorted(params) == sorted(["self", "steps", *SETTING_KEYS])
    # the order the keywords always had: positional calls keep their meaning
    assert params[:5] == ["self", "batch_size", "workers", "precision", "steps"]
    assert all(f"``{k}``" in (EpochProfile.rerun.__doc__ or "") for k in SETTING_KEYS)


def test_a_released_or_loaded_profile_says_to_run_the_cell_again(tmp_path):
    class Handle:
        def rerun(self, base, steps, **changes):
            return EpochProfile(steps=steps or 0)

        def sweep(self, base, steps, **grid):
            return []

    prof = EpochProfile(session=Handle())
    assert prof.rerun(steps=3).steps == 3
    assert prof.rerun(64, None, None, 5).steps == 5  # batch_size, workers, precision, steps
    with pytest.raises(TypeError):
        prof.rerun(bogus=1)
    assert "session" not in prof.to_dict() and "rendered" not in prof.to_dict()
    loaded = EpochProfile.load(prof.save(tmp_path / "p.json"))
    prof.release()
    for p in (prof, loaded):
        with pytest.raises(RuntimeError, match="run the cell again"):
            p.rerun(workers=2)


def test_the_config_record_holds_every_setting():
    from types import SimpleNamespace

    from epochmagic.analysis.assemble import _config

    config = _config(SimpleNamespace(precision=None, optimizers={}), None, "cpu")
    assert set(SETTING_KEYS) <= set(config)  # a what-if's label compares them all
