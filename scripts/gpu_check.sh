#!/usr/bin/env bash
# GPU check for a lent GPU machine (budget: 9 minutes of GPU time in all, BUDGET=540 s by default). Run from the repository root:
#
#   bash scripts/gpu_check.sh            # on the GPU machine; results in ${OUT:-gpu_check_out}/
#   bash scripts/gpu_check.sh --dry-run  # same steps on CPU with tiny networks and images (checks the script itself)
#
# Steps (each under its own `timeout`, so one hang cannot eat the budget; a failed step is reported, the rest run):
#   1. environment: torch, CUDA, GPUs, bf16 support                                               (~10 s)
#   2. AMP smoke: train.py for 1 epoch on the embedded samples with --amp bf16 and --amp fp16 (finite losses,
#      deferred non-finite guard on CUDA, checkpoints written) and test.py --amp bf16 --batch_size 2     (~1 min)
#   3. bench: pyramidpix2pix (L1_L2_L3_L4) at 1024 px, batch 2: fp32 eager, fp32 channels_last, bf16,
#      bf16 + channels_last; and the L1-only pattern (pyramid overhead) fp32 and bf16                (~3-4 min)
#   4. if 2+ GPUs: DDP through torchrun on 2 GPUs, bf16 + channels_last, vs the 1-process row        (~1-2 min)
# Goals (docs/PERFORMANCE.md): bf16 >= 2x fp32 images/s at 1024 px; DDP on 2 GPUs >= 1.8x one GPU.
set -uo pipefail

DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; fi
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
PY=${PYTHON:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if [[ $DRY == 1 ]]; then
  DEVICE=cpu; GPU_IDS=-1; SIZE=64; NGF=8; STEPS=1; WARMUP=1; TILE=64
  NGPU=2  # exercise the DDP step with the gloo backend on CPU
  BENCH_OPTS="eager,bf16"
else
  DEVICE=cuda; GPU_IDS=0; SIZE=1024; NGF=64; STEPS=10; WARMUP=3; TILE=256
  NGPU=$($PY -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
  BENCH_OPTS="eager,channels_last,bf16,bf16+channels_last"
fi
FAIL=0
BUDGET=${BUDGET:-540}  # seconds for the whole script; each step's limit is cut to what is left
step() {  # step <name> <timeout_s> <command...>
  local name=$1 limit=$2; shift 2
  local left=$((BUDGET - SECONDS))
  if (( left < 20 )); then echo "=== $name SKIPPED: the ${BUDGET}s budget is spent"; FAIL=1; return; fi
  if (( limit > left )); then limit=$left; fi
  echo "=== $name (limit ${limit}s)"
  local t0=$SECONDS
  if timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; then
    echo "    ok in $((SECONDS - t0)) s"
  else
    echo "    FAILED (exit $?) after $((SECONDS - t0)) s; last lines:"; tail -n 5 "$OUT/$name.log" | sed 's/^/    /'
    FAIL=1
  fi
}

step env 60 $PY -c "
import torch, platform
print('torch', torch.__version__, 'python', platform.python_version())
print('cuda available', torch.cuda.is_available(), 'devices', torch.cuda.device_count())
if torch.cuda.is_available():
    for i in range(torch.cuda.device_count()):
        print(i, torch.cuda.get_device_name(i), 'bf16', torch.cuda.is_bf16_supported())
"
cat "$OUT/env.log" 2>/dev/null

DATA="$OUT/sample_bci"
step data 120 $PY scripts/make_sample_dataset.py --out "$DATA" --tile_size "$TILE" --n_train 4 --n_test 2 --seed 1
COMMON=(--dataroot "$DATA" --checkpoints_dir "$OUT/ck" --model pyramidpix2pix --n_epochs 1 --n_epochs_decay 0
        --gpu_ids "$GPU_IDS" --num_threads 2 --display_id 0 --print_freq 2 --display_freq 1000000 --seed 0
        --ngf "$NGF" --ndf "$NGF")
step train_bf16 180 $PY train.py "${COMMON[@]}" --name amp_bf16 --amp bf16 --channels_last
step train_fp16 180 $PY train.py "${COMMON[@]}" --name amp_fp16 --amp fp16
step test_bf16 120 $PY test.py --dataroot "$DATA" --checkpoints_dir "$OUT/ck" --name amp_bf16 --gpu_ids "$GPU_IDS" \
  --results_dir "$OUT/results" --amp bf16 --batch_size 2 --num_threads 0

step bench_1024 300 $PY scripts/bench_train.py --device "$DEVICE" --models pyramidpix2pix,pyramidpix2pix_L1 \
  --sizes "$SIZE" --options "$BENCH_OPTS" --steps "$STEPS" --warmup "$WARMUP" --ngf "$NGF" --ndf "$NGF" \
  --out "$OUT/bench_1024.md" --json "$OUT/bench_1024.json" --tmp "$OUT/bench_tmp" --timeout 120
cat "$OUT/bench_1024.md" 2>/dev/null

if [[ "$NGPU" -ge 2 ]]; then
  step bench_ddp2 200 $PY scripts/bench_train.py --device "$DEVICE" --nproc 2 --models pyramidpix2pix \
    --sizes "$SIZE" --options "bf16+channels_last" --steps "$STEPS" --warmup "$WARMUP" --ngf "$NGF" --ndf "$NGF" \
    --out "$OUT/bench_ddp2.md" --json "$OUT/bench_ddp2.json" --tmp "$OUT/bench_tmp" --timeout 150
  cat "$OUT/bench_ddp2.md" 2>/dev/null
else
  echo "=== bench_ddp2 skipped: $NGPU GPU(s) visible (needs 2)"
fi
echo "gpu_check: $([[ $FAIL == 0 ]] && echo 'all steps passed' || echo 'SOME STEPS FAILED') (logs in $OUT/)"
exit $FAIL
