#!/usr/bin/env bash
# Download, on a machine with package-registry access, the wheels that the lent GPU machine lacks
# for benchmarks/gpu_check.sh: its image has torch, triton and transformers but not
# transformer-lens (the harvest benchmark, and `sae` itself) nor the `datasets` stack that
# transformer-lens imports. The GPU machine has no network; gpu_check.sh installs whatever is in
# .whl/ (pass `carry: [".whl"]` to the device run). Python there: CPython 3.12, x86-64.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
PY="${PYTHON:-python3}"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d .whl \
    transformer-lens==4.3.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
ls -la .whl
