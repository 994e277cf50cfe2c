#!/bin/sh
# The demo's GPU training run (training/README.md): data from the seed with 16 workers, then one model.
# Two shapes side by side on one H200 ran out of GPU memory (docs/demo-model.md), so one at a time.
# Usage (in the folder holding training/, with MLX CUDA and the package importable):
#   sh training/gpu_run.sh OUTDIR MINUTES
set -e
OUT=${1:?out dir}; MIN=${2:-12}
mkdir -p "$OUT" /tmp/demo_data
python -m training.datagen --seed 0 --n 72000 --workers 16 --out /tmp/demo_data/train.npz
python -m training.train --data /tmp/demo_data/train.npz --out "$OUT/a" --minutes "$MIN" --batch 64 --lr 2e-3 \
  --hidden 256 --layers 6 --intermediate 256 --heads 4 > "$OUT/a.log" 2>&1
tail -n 3 "$OUT/a.log"
