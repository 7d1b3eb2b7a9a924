#!/usr/bin/env bash
# Everything this project checks on a GPU, in one run of under 8 minutes on one CUDA device.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]        (default: $OUT if set, else gpu_check_out)
#
# Writes every figure and log to OUT_DIR:
#   pytest_cuda.txt          `pytest -m cuda`: CUDA against CPU in float64 (HVPs, eigenvalues,
#                            FGSM, the trainer), nccl with one process (distributed HVP,
#                            eigenvalue and trainer on the device, SyncBatchNorm)
#   curvature.json           ResNet18 (base 64), batch 128: gradient, HVP, rebuilt HVP, top
#                            eigenvalue (ms), HVP / gradient
#   bl_vs_abs_epoch.json     ResNet18 epoch on 10,000 synthetic 32x32 images, BL against ABS
#                            (one eigenvalue per epoch): seconds and the ratio
#   nccl_cli.txt, nccl_cli_compare.txt
#                            `hessbatch train` in float64 on CUDA plainly and under
#                            torch.distributed.run with nccl (1 process): same metrics
#   summary.txt              pass/fail of each step and the wall time
#   setup.txt                what was installed (step 0) and why a setup check failed
#   ddp2_cli.txt, syncbn2.txt
#                            with 2 or more GPUs: `--nproc 2` with nccl equals the plain run
#                            (float64, 1e-7), and `--sync-batchnorm` on 2 ranks with a short
#                            last batch (a padding micro-batch) finishes; with one GPU the
#                            SyncBatchNorm run uses 2 ranks on that GPU over gloo
# Step 0 installs what is missing (GPU_CHECK_INSTALL=0 skips it): torch (the PyPI wheel for
# Linux is a CUDA build; TORCH_SPEC overrides, e.g. "torch==2.13.0"), then the project with its
# test extras (`pip install -e ".[test]"`). A missing package, a CPU-only torch build and a
# missing device are three different verdicts, never reported as one another.
# Each step has its own time limit (timeout), and all steps together share one budget,
# GPU_CHECK_BUDGET seconds (default 420) counted from the end of the set-up: a step gets the
# smaller of its limit and what is left, and a step with under 15 s left is reported as not
# run (a failure). So the checks end within 7 minutes plus the set-up (seconds when everything
# is installed; pip's time otherwise). The steps' own times are in summary.txt; a step that
# fails is reported and the others still run. Exit code: the number of failed steps. Checking the script itself without a GPU: GPU_CHECK_DEVICE=cpu
# GPU_CHECK_BACKEND=gloo GPU_CHECK_ONLY=cli runs step 4 alone on the CPU.
set -uo pipefail
SELF="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "$SELF")/.."   # the repository root; a relative OUT_DIR is taken from here
PY=${PYTHON:-python}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
BACKEND=${GPU_CHECK_BACKEND:-nccl}
ONLY=${GPU_CHECK_ONLY:-all}

TINY=(--model mlp --width 8 --data synthetic:600:1x8x8 --batch-size 32 --micro-batch 16
      --max-batch 128 --hessian-batch 64 --method absa --patience 1 --epochs 2 --dtype float64
      --device "$DEVICE" --quiet --seed 1 --threads 1)
nccl_cli() {
    "$PY" -m hessbatch.cli train "${TINY[@]}" --out "$OUT_DIR/plain" &&
    "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 -m hessbatch.cli train \
        "${TINY[@]}" --backend "$BACKEND" --out "$OUT_DIR/nccl" &&
    NCCL_A=plain NCCL_B=nccl nccl_compare
}
nccl_compare() {  # compare $OUT_DIR/$NCCL_A with $OUT_DIR/$NCCL_B: metrics and weights, 1e-7
    "$PY" - "$OUT_DIR" "$NCCL_A" "$NCCL_B" <<'PY'
import json, math, sys, torch
out, A, B = sys.argv[1:4]
a = json.load(open(f"{out}/{A}/metrics.json"))["history"]
b = json.load(open(f"{out}/{B}/metrics.json"))["history"]
keys = ("train_loss", "test_loss", "test_accuracy", "batch_size", "lr", "updates")
bad = [(i, k, x[k], y[k]) for i, (x, y) in enumerate(zip(a, b)) for k in keys
       if not math.isclose(x[k], y[k], rel_tol=1e-7)]
wa = torch.load(f"{out}/{A}/checkpoint.pt", weights_only=True)["model"]
wb = torch.load(f"{out}/{B}/checkpoint.pt", weights_only=True)["model"]
err = max(float((wa[k] - wb[k]).abs().max() / wa[k].abs().max().clamp_min(1e-300)) for k in wa)
ok = len(a) == len(b) == 2 and not bad and err <= 1e-7
print(f"epochs {len(a)} / {len(b)}; metric mismatches {bad}; max weight error {err:.3g}")
print("agree" if ok else "DIFFER")
sys.exit(0 if ok else 1)
PY
}
if [ "${1:-}" = --ddp2-step ]; then  # step 5, re-entered under `timeout`
    OUT_DIR=$2
    "$PY" -m hessbatch.cli train "${TINY[@]}" --out "$OUT_DIR/plain2" &&
    "$PY" -m hessbatch.cli train "${TINY[@]}" --nproc 2 --backend nccl --out "$OUT_DIR/nccl2" &&
    NCCL_A=plain2 NCCL_B=nccl2 nccl_compare
    exit
fi
if [ "${1:-}" = --compare ]; then  # the comparison alone: --compare OUT_DIR RUN_A RUN_B
    OUT_DIR=$2 NCCL_A=$3 NCCL_B=$4 nccl_compare
    exit
fi
if [ "${1:-}" = --nccl-cli-step ]; then  # step 4, re-entered under `timeout`
    OUT_DIR=$2
    nccl_cli
    exit
fi

OUT_DIR=${1:-${OUT:-gpu_check_out}}
mkdir -p "$OUT_DIR"
start=$(date +%s)
failed=0
summary="$OUT_DIR/summary.txt"
: > "$summary"

BUDGET=${GPU_CHECK_BUDGET:-420}
exec 3>&1   # the terminal: a step's verdict goes there and to summary.txt, never into the
            # log file its command's output is redirected to
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log pass/fail and duration
    local name=$1 limit=$2
    shift 2
    local t0=$(date +%s)
    local left=$(( BUDGET - (t0 - ${steps_start:-$t0}) ))
    if [ "$left" -lt 15 ]; then
        echo "FAIL $name (not run: $left s left of the $BUDGET s budget)" | tee -a "$summary" >&3
        failed=$((failed + 1))
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    if timeout "$limit" "$@"; then
        echo "PASS $name ($(( $(date +%s) - t0 )) s)" | tee -a "$summary" >&3
    else
        echo "FAIL $name (exit $?, $(( $(date +%s) - t0 )) s, limit $limit s)" | tee -a "$summary" >&3
        failed=$((failed + 1))
    fi
}

# 0. set-up: install what is missing, then tell a missing package from a missing device
if [ "${GPU_CHECK_INSTALL:-1}" = 1 ]; then
    {
        "$PY" -c "import torch" 2>/dev/null || "$PY" -m pip install -q ${TORCH_SPEC:-torch}  # unquoted: may hold pip options
        "$PY" -c "import hessbatch, pytest, hypothesis, numba" 2>/dev/null \
            || "$PY" -m pip install -q -e ".[test]"
    } > "$OUT_DIR/setup.txt" 2>&1
fi
if ! "$PY" -c "import torch" >> "$OUT_DIR/setup.txt" 2>&1; then
    echo "FAIL setup: torch is not installed or does not import (see setup.txt); install a CUDA build of torch" | tee -a "$summary"
    exit 1
fi
if ! "$PY" -c "import hessbatch.deep, pytest, hypothesis" >> "$OUT_DIR/setup.txt" 2>&1; then
    echo "FAIL setup: the project or its test extras do not import (see setup.txt); pip install -e '.[test]'" | tee -a "$summary"
    exit 1
fi
"$PY" - <<'PY' > "$OUT_DIR/device.txt" 2>&1
import torch, torch.distributed as dist
print("torch", torch.__version__, "cuda", torch.version.cuda)
print("device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "NO CUDA",
      "count", torch.cuda.device_count())
print("nccl available", dist.is_available() and dist.is_nccl_available())
PY
cat "$OUT_DIR/device.txt"
if [ "$DEVICE" = cuda ]; then
    if "$PY" -c "import torch, sys; sys.exit(0 if torch.version.cuda is None else 1)"; then
        echo "FAIL setup: torch $("$PY" -c 'import torch; print(torch.__version__)') is a CPU-only build (not a device problem); install a CUDA build, e.g. TORCH_SPEC='torch --index-url https://download.pytorch.org/whl/cu126'" | tee -a "$summary"
        exit 1
    fi
    if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "FAIL no CUDA device visible to a CUDA build of torch (nvidia-smi: $(nvidia-smi -L 2>&1 | head -1))" | tee -a "$summary"
        exit 1
    fi
fi
NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
steps_start=$(date +%s)   # the budget counts from here

if [ "$ONLY" = all ]; then
# 1. the CUDA tests (they are skipped on the CPU-only CI)
step "pytest -m cuda" 180 \
    "$PY" -m pytest -m cuda -q -rs tests > "$OUT_DIR/pytest_cuda.txt" 2>&1
tail -3 "$OUT_DIR/pytest_cuda.txt"
# `-m cuda` must have run tests, not skipped them all
if ! grep -qE "[0-9]+ passed" "$OUT_DIR/pytest_cuda.txt" \
        || grep -qE "[0-9]+ skipped" "$OUT_DIR/pytest_cuda.txt"; then
    echo "FAIL pytest -m cuda ran nothing or skipped tests (see pytest_cuda.txt)" \
        | tee -a "$summary"
    failed=$((failed + 1))
fi

# 2. curvature cost on ResNet18, batch 128, and 3. a BL-vs-ABS epoch
step "curvature benchmark (ResNet18, batch 128)" 75 \
    "$PY" benchmarks/bench_gpu.py --part curvature --device cuda --batch 128 --out "$OUT_DIR"
step "BL vs ABS epoch (ResNet18, CUDA)" 120 \
    "$PY" benchmarks/bench_gpu.py --part epoch --device cuda --samples 10000 --epochs 3 \
    --out "$OUT_DIR"
fi

# 4. the command line under torch.distributed.run with nccl, against the plain run
step "hessbatch train under torch.distributed.run, $BACKEND, 1 process" 90 \
    bash "$SELF" --nccl-cli-step "$OUT_DIR" > "$OUT_DIR/nccl_cli.txt" 2>&1
tail -2 "$OUT_DIR/nccl_cli.txt" | tee "$OUT_DIR/nccl_cli_compare.txt"

# 5. two ranks: nccl equality (2 GPUs) and SyncBatchNorm with a padding micro-batch
if [ "$ONLY" = all ] && [ "$DEVICE" = cuda ]; then
    if [ "$NGPU" -ge 2 ]; then
        step "--nproc 2 with nccl equals 1 process (float64, 1e-7)" 60 \
            bash "$SELF" --ddp2-step "$OUT_DIR" > "$OUT_DIR/ddp2_cli.txt" 2>&1
        tail -2 "$OUT_DIR/ddp2_cli.txt"
        SBN=(--device cuda --backend nccl)
    else
        echo "SKIP --nproc 2 with nccl: one GPU (nccl needs one per rank)" | tee -a "$summary"
        SBN=(--device cuda:0 --backend gloo)
    fi
    # 43 training samples, B 8, micro 4: the last round is short, rank 1 runs a padding
    # micro-batch; a mismatch of SyncBatchNorm collectives would hang (the limit catches it)
    step "--sync-batchnorm on 2 ranks with a short last batch finishes" 60 \
        "$PY" -m hessbatch.cli train --model resnet18 --width 4 --data synthetic:54:3x8x8 \
        --batch-size 8 --micro-batch 4 --max-batch 16 --hessian-batch 8 --max-hvp 4 --method abs \
        --check-every 16 --patience 1 --epochs 2 --dtype float64 --quiet --threads 1 \
        --nproc 2 --sync-batchnorm --dist-timeout 60 "${SBN[@]}" --out "$OUT_DIR/syncbn2" \
        > "$OUT_DIR/syncbn2.txt" 2>&1
fi

echo "total $(( $(date +%s) - start )) s, $failed failed step(s)" | tee -a "$summary"
exit "$failed"
