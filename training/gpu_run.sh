#!/bin/sh
# The demo's GPU training run (see training/README.md): data from the seed with many workers, then two
# model shapes trained side by side on one GPU for the same time budget; both come back for evaluation.
# Usage (repo root, MLX CUDA importable): sh training/gpu_run.sh OUTDIR MINUTES
set -e
OUT=${1:?out dir}; MIN=${2:-5}
mkdir -p "$OUT" /tmp/demo_data
python -m training.datagen --seed 0 --n 80000 --workers 16 --out /tmp/demo_data/train.npz
python -m training.train --data /tmp/demo_data/train.npz --out "$OUT/a" --minutes "$MIN" --batch 64 --lr 2e-3 \
  --hidden 256 --layers 6 --intermediate 256 --heads 4 > "$OUT/a.log" 2>&1 &
python -m training.train --data /tmp/demo_data/train.npz --out "$OUT/b" --minutes "$MIN" --batch 64 --lr 2e-3 \
  --hidden 192 --layers 6 --intermediate 384 --heads 3 > "$OUT/b.log" 2>&1 &
wait
tail -n 3 "$OUT/a.log"; tail -n 3 "$OUT/b.log"
