#!/usr/bin/env bash
# One-GPU check of the Triton kernels, in about 6 minutes, installing nothing when it can:
# 1. print the GPU (nvidia-smi) and the torch / triton versions;
# 2. install the wheels carried in .whl/ (benchmarks/gpu_wheels.sh) if any; make `import
#    sae_kernels` work: the installed package, else a symlink on PYTHONPATH (no pip, no
#    network), else `pip install --no-deps -e .` as the last resort;
# 3. run the GPU-marked kernel tests with compiled kernels (TRITON_INTERPRET=0), then the
#    harvest's CUDA test;
# 4. run benchmarks/train_step_gpu.py (main configs, the toolkit's own trainer step, the selection's
#    chunk/warps grid, d_sae and k sweeps; --quick with QUICK=1);
# 5. run benchmarks/harvest_gpu.py (the activation-harvest target of the activations issue).
# Output goes to the terminal and, when $OUT is set, to "$OUT"/gpu_check.log and
# "$OUT"/train_step_gpu.json. Exit status: non-zero if the tests or the benchmark failed.
set -uo pipefail

cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
LOG="/dev/null"
if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    LOG="$OUT/gpu_check.log"
fi
say() { echo "== $*" | tee -a "$LOG"; }
run() { "$@" 2>&1 | tee -a "$LOG"; }

export TRITON_INTERPRET=0
unset SAE_KERNELS

say "GPU"
run nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
run "$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.cuda.is_available())" \
    || { say "torch/triton missing: nothing to check"; exit 2; }

# The lent GPU machine has no network and no transformer-lens: benchmarks/gpu_wheels.sh fetches
# the missing wheels into .whl/ beforehand, carried along with the working tree.
if compgen -G ".whl/*.whl" >/dev/null; then
    say "installing the carried wheels in .whl/ (no network, no deps)"
    run "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/sae-site .whl/*.whl
    export PYTHONPATH="/tmp/sae-site${PYTHONPATH:+:$PYTHONPATH}"
fi

if ! "$PY" -c "import sae_kernels" 2>/dev/null; then
    shim="$(mktemp -d)"
    ln -s "$PWD/kernels" "$shim/sae_kernels"
    export PYTHONPATH="$shim${PYTHONPATH:+:$PYTHONPATH}"
    if ! "$PY" -c "import sae_kernels" 2>/dev/null; then
        say "installing the project (no deps)"
        run "$PY" -m pip install --no-deps --no-build-isolation -q -e . || exit 2
    fi
fi

status=0
say "pytest -m gpu tests/kernels"
if "$PY" -c "import pytest" 2>/dev/null; then
    # --confcutdir keeps conftest files above tests/kernels (and their imports) out of this run.
    run timeout 240 "$PY" -m pytest -m gpu tests/kernels -q --confcutdir=tests/kernels -p no:cacheprovider \
        || status=1
    # The harvest's CUDA path (side-stream copies to page-locked memory) against the CPU's, on
    # the tiny test model: this one needs the root conftest's fixtures, so it runs on its own.
    say "pytest -m gpu tests/activations/test_harvest_cuda.py"
    run timeout 120 "$PY" -m pytest -m gpu tests/activations/test_harvest_cuda.py -q -p no:cacheprovider \
        || status=1
else
    say "pytest is not installed: tests skipped"
    status=1
fi

say "benchmarks/train_step_gpu.py"
bench_args=(--json)
if [ "${QUICK:-0}" = 1 ]; then bench_args+=(--quick); fi
json="${OUT:-/tmp}/train_step_gpu.json"
# PYTHONPATH: the library-trainer row imports `sae` from this checkout (it is skipped without it).
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" timeout 300 "$PY" benchmarks/train_step_gpu.py "${bench_args[@]}" 2>&1 \
    | tee -a "$LOG" | tee >(tail -n 1 >"$json") || status=1
say "benchmarks/harvest_gpu.py (needs transformer-lens; GPT-2 small shape, bf16)"
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 timeout 180 "$PY" benchmarks/harvest_gpu.py 2>&1 \
    | tee -a "$LOG" || status=1
say "done (status $status)"
exit "$status"
