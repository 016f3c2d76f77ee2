#!/usr/bin/env bash
# How the shipped data/backbones/{tokenizer,lm} were built (one GPU), then the tiny track's results run
# with them (scripts/tiny_results.py). README gives the measured numbers.
set -uo pipefail
OUT=${OUT:-/tmp/device_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m llava_mini.backbones --parts lm --out /tmp/bb --device cuda \
    --lm-batch 64 --lm-steps 20000 --lm-minutes 1.3 2>&1 | grep -v "Writing model\|Loading weights" | tee "$OUT/lm_build_log.txt"
tar czf "$OUT/lm.tgz" -C /tmp/bb lm tokenizer report.json && ls -la "$OUT"
# the results run uses the new LM
rm -rf data/backbones/lm data/backbones/tokenizer && cp -r /tmp/bb/lm /tmp/bb/tokenizer data/backbones/
timeout "${RESULTS_SECONDS:-120}" python3 scripts/tiny_results.py --out /tmp/res --lora-steps "${LORA_STEPS:-600}" \
    --batch-size 32 --num-workers 8 --per-kind 100 --descriptions 50 2>&1 | grep -v "Writing model\|Loading weights\|LOAD REPORT\|^Key\|^---\|UNEXPECTED\|Notes" | tail -40
cp /tmp/res/*.json /tmp/res/*.png "$OUT/" 2>/dev/null; ls -la "$OUT"
