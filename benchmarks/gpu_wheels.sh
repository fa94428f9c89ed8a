#!/usr/bin/env bash
# Wheels the GPU machine lacks (its image has torch, matplotlib, tqdm, numpy,
# pygments, psutil, but no IPython), for its Python 3.12, into .whl/ (ignored
# by git; carry it: run(carry=[".whl"], ...)). See benchmarks/gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl \
  ipython ipython-pygments-lexers traitlets jedi parso matplotlib-inline pexpect ptyprocess \
  prompt_toolkit wcwidth stack_data executing asttokens pure_eval decorator \
  ipywidgets comm widgetsnbextension jupyterlab_widgets line_profiler
ls .whl
