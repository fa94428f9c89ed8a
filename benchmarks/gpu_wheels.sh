#!/usr/bin/env bash
# Wheels a GPU machine without IPython needs (one whose image has torch,
# matplotlib, tqdm, numpy, pygments, psutil and pytest but no IPython), for
# Python 3.12, into .whl/ (ignored by git): copy the folder to that machine and
# `pip install --no-index --no-deps --target /tmp/site .whl/*.whl`, then run
# with PYTHONPATH=/tmp/site:. (see benchmarks/gpu_check.py and docs/testing.md).
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
