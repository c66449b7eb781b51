#!/usr/bin/env bash
# The main job on a fresh machine: install what eenet needs, then train EENet-8 on
# Fashion-MNIST (offline, from Debian's dataset-fashion-mnist package) and evaluate it on the
# test set, printing accuracy, average cost and the samples leaving at each exit.
#
#   bash scripts/main_job.sh              # defaults below: 4 filters, 10 epochs, Adam lr 0.003
#   EPOCHS=5 bash scripts/main_job.sh     # any `eenet train` flag can follow, e.g.
#   bash scripts/main_job.sh --lambda-coef 0.5
set -euo pipefail
cd "$(dirname "$0")/.."

if ! [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq dataset-fashion-mnist
fi
# eenet itself (builds the C core) with the training extras: tqdm, pandas, matplotlib.
python -m pip install -q -e ".[train]"

OUT="${RESULTS_DIR:-results/main-job}"
python -m eenet train --model eenet8 --dataset fashion-mnist \
    --data-dir /usr/share/datasets/fashion-mnist \
    --filters 4 --lr 0.003 --epochs "${EPOCHS:-10}" --test-batch 256 \
    --results-dir "$OUT" --overwrite "$@"
echo "results folder: $OUT (history.csv, plots, model.eenet)"
# Re-evaluate the saved best model one sample at a time (the authors' latency setting).
python -m eenet evaluate "$OUT/model.eenet" --batch-size 1
