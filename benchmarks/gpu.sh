#!/usr/bin/env bash
# One run on a CUDA machine, under 8 minutes, one markdown table (benchmarks/results/gpu-DATE.md):
#   1. the benchmark suite (`ssmbench bench --quick --device cuda`, its own table beside this one);
#   2. a PGD-AT epoch (PGD-10, batch 256) of S4 and of Mamba at L = 784 on 60,000 images
#      (MNIST's training set when $SSMBENCH_HOME has it, else random images of that shape);
#   3. AutoAttack standard on 1,000 digits examples (the 360 test images, then training images)
#      of the robust zoo model s4-pgd-tanh-digits, ours and the authors' code;
#   4. the mamba-ssm fused scan against ours (tests/test_mamba_cuda.py), if mamba_ssm imports;
#   5. two-process data-parallel training and evaluation over nccl under torchrun (needs 2 GPUs).
# Each step has a time limit; a step that fails or runs out of time is a row that says so.
#
#   bash benchmarks/gpu.sh            # on the GPU machine
#   bash benchmarks/gpu.sh --dry-run  # anywhere: every step on CPU at toy sizes (seconds)
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
DRY=0
[[ "${1:-}" == "--dry-run" ]] && DRY=1
if (( DRY )); then
    DEVICE=cpu; IMAGES=128; AA_EXAMPLES=4; AA_EPS=0.5; BATCH=64; STEPS=1; MODEL='{"n_layers": 1, "d_model": 8, "d_state": 4}'
    LIMIT_BENCH=600; LIMIT_EPOCH=600; LIMIT_AA=600; LIMIT_STEP=600
    OUT=${OUT:-$(mktemp -d)/gpu-dry-run.md}
else
    DEVICE=cuda; IMAGES=60000; AA_EXAMPLES=1000; AA_EPS=$($PYTHON -c 'print(8/255)'); BATCH=256; STEPS=10; MODEL='{}'
    # Worst case 120 + 2 x 90 + 2 x 50 + 30 + 2 x 30 = 490 s: a step past its limit becomes a row.
    LIMIT_BENCH=120; LIMIT_EPOCH=90; LIMIT_AA=50; LIMIT_STEP=30
    OUT=${OUT:-benchmarks/results/gpu-$(date -u +%F).md}
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$(dirname "$OUT")"
ROWS=()

row() {  # step, status, seconds, result
    ROWS+=("| $1 | $2 | $3 | $4 |")
}

timed() {  # limit, name, command...: run it, record a row from its last line (RESULT json or text)
    local limit=$1 name=$2; shift 2
    local start end status
    start=$(date +%s.%N)
    timeout "$limit" "$@" >"$WORK/out" 2>&1
    status=$?
    end=$(date +%s.%N)
    local seconds
    seconds=$($PYTHON -c "print(f'{$end - $start:.1f}')")
    local last
    last=$(grep -E '^RESULT ' "$WORK/out" | tail -n 1 | cut -c8-)
    if (( status == 124 )); then
        row "$name" "timed out (${limit} s)" "$seconds" ""
    elif (( status != 0 )); then
        row "$name" "failed ($status)" "$seconds" "$(tail -n 1 "$WORK/out" | tr '|' '/' | cut -c1-200)"
    elif [[ -n "$last" ]]; then
        row "$name" ok "$seconds" "$($PYTHON -c 'import json, sys; r = json.loads(sys.argv[1]); i = r.get("info", {}); print("; ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in {"timed_s": r["seconds"], **i}.items() if k != "robust"))' "$last")"
    else
        row "$name" ok "$seconds" "$(tail -n 1 "$WORK/out" | tr '|' '/' | cut -c1-200)"
    fi
    cat "$WORK/out" >>"$WORK/log"
}

# 1. The benchmark suite (CUDA sides where a benchmark has them; its own table in benchmarks/results).
if (( DRY )); then
    timed "$LIMIT_BENCH" "bench suite (tiny, cpu)" $PYTHON -c "import benchmarks; r = benchmarks.run_benchmarks(['mixers', 'commit'], 'tiny', benchmarks.RunOptions(threads=1)); r.write('$WORK/bench.json'); print('rows:', len(r.rows))"
else
    timed "$LIMIT_BENCH" "bench suite (quick, cuda)" $PYTHON -m ssmbench bench mixers mamba commit --quick --device cuda --out "benchmarks/results/gpu-bench-$(date -u +%F).json"
fi

# 2. PGD-AT epochs at L = 784 on $IMAGES images of MNIST's shape.
SOURCE=$($PYTHON - "$WORK/mnist.safetensors" "$IMAGES" <<'PY'
import sys
import torch
from safetensors.torch import save_file
path, n = sys.argv[1], int(sys.argv[2])
try:
    from ssmbench.data import load_split
    images, labels = load_split("mnist", "train")
    images, labels = images[:n], labels[:n]
    source = "mnist"
except Exception:  # no MNIST here: random images of its shape (the timing does not depend on them)
    generator = torch.Generator().manual_seed(0)
    images, labels = torch.rand(n, 1, 28, 28, generator=generator), torch.randint(0, 10, (n,), generator=generator)
    source = "random"
save_file({"images": images.contiguous(), "labels": labels.contiguous()}, path)
print(source)
PY
)
for arch in s4 mamba; do
    CASE="{\"kind\": \"epoch\", \"arch\": \"$arch\", \"ads\": \"none\", \"dataset\": \"mnist\", \"batch_size\": $BATCH, \"train_file\": \"$WORK/mnist.safetensors\", \"steps\": $STEPS, \"model\": $MODEL, \"device\": \"$DEVICE\"}"
    timed "$LIMIT_EPOCH" "PGD-AT epoch, $arch, L 784, $IMAGES $SOURCE images, batch $BATCH" $PYTHON -P benchmarks/commit_worker.py "$CASE"
done

# 3. AutoAttack on $AA_EXAMPLES digits examples (test images first, then training images).
$PYTHON - "$WORK/digits.safetensors" <<'PY'
import sys
import torch
from safetensors.torch import save_file
from ssmbench.data import load_split
test, train = load_split("digits", "test"), load_split("digits", "train")
save_file({"images": torch.cat([test[0], train[0]]).contiguous(), "labels": torch.cat([test[1], train[1]]).contiguous()}, sys.argv[1])
PY
for implementation in ssmbench official; do
    CASE="{\"kind\": \"autoattack\", \"implementation\": \"$implementation\", \"checkpoint\": \"model_zoo/weights/s4-pgd-tanh-digits.safetensors\", \"test_file\": \"$WORK/digits.safetensors\", \"n_examples\": $AA_EXAMPLES, \"eps\": $AA_EPS, \"device\": \"$DEVICE\"}"
    timed "$LIMIT_AA" "AutoAttack standard ($implementation), $AA_EXAMPLES digits examples" $PYTHON -P benchmarks/commit_worker.py "$CASE"
done

# 4. The mamba-ssm fused scan, if the package imports (CUDA only).
if $PYTHON -c "import mamba_ssm" 2>/dev/null && [[ "$DEVICE" == cuda ]]; then
    timed "$LIMIT_STEP" "mamba-ssm fused scan vs ours" $PYTHON -m pytest -q tests/test_mamba_cuda.py
else
    row "mamba-ssm fused scan vs ours" "skipped" "0" "mamba_ssm does not import (pip install -e '.[cuda]') or no CUDA"
fi

# 5. Two processes over nccl (one GPU each) under torchrun: train, then evaluate the result.
GPUS=$($PYTHON -c "import torch; print(torch.cuda.device_count())")
if (( GPUS >= 2 )); then
    timed "$LIMIT_STEP" "torchrun 2 x nccl: train s4d" $PYTHON -m torch.distributed.run --standalone --nproc-per-node 2 -m ssmbench train s4d --at pgd --epochs 1 --train-examples 512 --eval-examples 64 --batch-size 64 --device cuda --out "$WORK/ddp"
    timed "$LIMIT_STEP" "torchrun 2 x nccl: eval pgd10" $PYTHON -m torch.distributed.run --standalone --nproc-per-node 2 -m ssmbench eval "$WORK/ddp" --attack pgd10 --n-examples 128 --batch-size 64 --no-checks --device cuda --leaderboard "$WORK/ddp.parquet"
else
    row "torchrun 2 x nccl" "skipped" "0" "needs 2 CUDA devices (nccl runs one process per GPU); this machine has $GPUS"
fi

{
    $PYTHON -c "import platform, torch; gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'; print(f'GPU run: {gpu}; torch {torch.__version__}; Python {platform.python_version()}; device $DEVICE' + ('; DRY RUN at toy sizes on CPU' if $DRY else '') + '.')"
    echo
    echo "| step | status | wall s | result |"
    echo "|---|---|---|---|"
    printf '%s\n' "${ROWS[@]}"
} >"$OUT"
cat "$OUT"
echo "wrote $OUT"
