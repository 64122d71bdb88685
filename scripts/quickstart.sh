#!/usr/bin/env bash
# The main job on the bundled model and corpus: cache -> train -> eval -> report (~5 min, 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH" TOKENIZERS_PARALLELISM=false
OUT=${OUT:-runs/quickstart}
HOOK=blocks.6.hook_resid_post

echo "== 1/4 harvest $HOOK of SmolLM2-135M-Instruct over WikiText-2 (valid) =="
sae cache --model smollm2-135m-instruct --data sae/_bundled/wikitext-2-valid.txt --hook "$HOOK" \
  --tokens 250000 --context 128 --out "$OUT/cache"

echo "== 2/4 train a TopK SAE (d_sae 4608, k 32) =="
sae train configs/quickstart.yaml --set data.cache="$OUT/cache" --set train.out="$OUT/train"

echo "== 3/4 evaluate it spliced into the model on held-out text (GAP validation) =="
sae eval --sae "$OUT/train/saes/$HOOK" --model smollm2-135m-instruct --data data/gap-validation.tsv \
  --text-field Text --tokens 8192 --json | tee "$OUT/train/eval.json"

echo "== 4/4 report =="
sae report "$OUT/train"
echo "Open $OUT/train/report.html in a browser."
