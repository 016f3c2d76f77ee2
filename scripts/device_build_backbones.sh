#!/usr/bin/env bash
# How the shipped data/backbones/vision was built: one GPU, about 5 minutes (README gives the measured
# numbers; the shipped tower came from this command at commit b017481, when it also built an LM that
# scripts/device_build_lm.sh has since replaced; its text tower was then retrained on a CPU with
# scripts/retune_text_tower.py). On a CPU, `python -m llava_mini.backbones --parts vision`
# runs the same recipe within its default time budget.
set -euo pipefail
OUT=${OUT:-/tmp/backbones_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi -L || true
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
python3 -m llava_mini.backbones --parts vision --out /tmp/backbones --device cuda --workers 16 \
    --n-scenes 80000 --vision-batch 256 --vision-steps 40000 --vision-minutes 4.0 \
    2>&1 | grep -v "Writing model shards" | tee "$OUT/build_log.txt"
cp /tmp/backbones/report.json "$OUT/"
tar czf /tmp/backbones.tgz -C /tmp backbones
split -b 15M /tmp/backbones.tgz "$OUT/backbones.tgz.part-"
ls -la "$OUT"
