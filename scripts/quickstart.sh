#!/usr/bin/env bash
# Fresh machine -> a trained pyramid pix2pix on the embedded real-tissue sample, its results page and its scores.
#   1. installs the requirements (PyTorch pinned) and visdom;
#   2. derives a small BCI-layout dataset from samples/ihc.png (datasets/sample_bci; pairs are DERIVED, see its README);
#   3. trains pyramid pix2pix (the paper's networks) for a few epochs on the CPU (CPU fast paths on by default:
#      --fast_cpu, docs/PERFORMANCE.md);
#   4. tests it and writes results/sample_pyramid/test_latest/index.html;
#   5. scores the results (PSNR, SSIM, DAB stain metrics) into results/sample_pyramid/test_latest/metrics.*
# Environment: PYTHON (default python3), EPOCHS (default 3 + 2 decaying), SKIP_INSTALL=1 to skip step 1.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export PYTHON="$PY"
NAME="${NAME:-sample_pyramid}"
if [[ "${SKIP_INSTALL:-0}" != 1 ]]; then
    "$PY" -m pip install --disable-pip-version-check -q -r requirements.txt
    bash scripts/install_visdom.sh
fi
start=$(date +%s)
if [[ ! -d datasets/sample_bci ]]; then
    "$PY" scripts/make_sample_dataset.py --out datasets/sample_bci
fi
"$PY" train.py --dataroot datasets/sample_bci --name "$NAME" --model pyramidpix2pix --pattern L1_L2_L3_L4 \
    --gpu_ids -1 --n_epochs "${EPOCHS:-3}" --n_epochs_decay "${EPOCHS_DECAY:-2}" --num_threads 2 \
    --print_freq 24 --display_freq 24 --seed 0 --save_epoch_freq 5
"$PY" test.py --dataroot datasets/sample_bci --name "$NAME" --model pyramidpix2pix --gpu_ids -1 --overwrite
"$PY" evaluate.py --result_path "results/$NAME"
end=$(date +%s)
echo
echo "main job done in $((end - start)) s (after installation)."
echo "evaluation report: results/$NAME/test_latest/report.html; results page: results/$NAME/test_latest/index.html"
echo "training page: checkpoints/$NAME/web/index.html; scores: results/$NAME/test_latest/metrics.md"
