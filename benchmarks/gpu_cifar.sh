#!/usr/bin/env bash
# The accuracy benchmark's CIFAR-10-LT arms on one GPU, for when a GPU machine is at hand.
#
#   bash benchmarks/gpu_cifar.sh prepare              # here, once: writes benchmarks/gpu_carry/ (about 21 MB)
#   bash benchmarks/gpu_cifar.sh run [ARM ...]        # on the GPU machine, with benchmarks/gpu_carry carried
#
# `prepare` exports CIFAR-10-LT IR 100 as built here from ../shared/data/cifar10 (train, validation, test
# and lt_metadata.json, by `export_parquet`) and fetches the wheels the GPU image lacks (datasets, dill,
# multiprocess: pure Python). `run` unpacks those wheels beside the image's own PyTorch, transformers
# and accelerate, then trains every arm at once, one process each (a ResNet-32 uses a sliver of the
# GPU), through benchmarks/accuracy.py and so through recipes/run_ltap.py. Results merge into
# $OUT/cifar10_lt_<schedule>.json ($OUT is the device tool's output folder; benchmarks/results/ without it).
#
# Settings (environment): SCHEDULE=full (the paper's 200 epochs; cpu30 for the CPU schedule's GPU
# twin), DENSITY=0.05, SEEDS="0", WORKERS=3 (dataloader workers per arm). Default arms: dense,
# magnitude, ltap. Example with the device tool:
#   run(command="bash benchmarks/gpu_cifar.sh run", carry=["benchmarks/gpu_carry"], timeout_s=600)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CARRY="$ROOT/benchmarks/gpu_carry"
PYTHON="${PYTHON:-python3}"
WHEELS=(datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19)

prepare() {
    rm -rf "$CARRY"
    mkdir -p "$CARRY/wheels"
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
        --dest "$CARRY/wheels" "${WHEELS[@]}"
    "$PYTHON" - "$ROOT/../shared/data/cifar10" "$CARRY/cifar10_lt" <<'EOF'
import sys
from ltap_hf.data.loading import export_parquet, load_lt_dataset

export_parquet(load_lt_dataset("cifar10_lt", imbalance_ratio=100, data_dir=sys.argv[1]), sys.argv[2])
EOF
    du -sh "$CARRY"
}

run() {
    local arms=("$@")
    [ ${#arms[@]} -gt 0 ] || arms=(dense magnitude ltap)
    [ -d "$CARRY/cifar10_lt" ] || { echo "no $CARRY: run 'bash benchmarks/gpu_cifar.sh prepare' first, then carry it" >&2; exit 1; }
    local site="$CARRY/site"
    mkdir -p "$site"
    for wheel in "$CARRY"/wheels/*.whl; do "$PYTHON" -m zipfile -e "$wheel" "$site"; done
    export PYTHONPATH="$ROOT:$site${PYTHONPATH:+:$PYTHONPATH}"
    "$PYTHON" -c "import torch, transformers, accelerate, datasets, pyarrow; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), '| transformers', transformers.__version__, '| accelerate', accelerate.__version__, '| datasets', datasets.__version__, '| pyarrow', pyarrow.__version__)"
    local results="${OUT:-$ROOT/benchmarks/results}/cifar10_lt_${SCHEDULE:-full}.json"
    local pids=()
    for arm in "${arms[@]}"; do
        "$PYTHON" "$ROOT/benchmarks/accuracy.py" --dataset cifar10_lt --schedule "${SCHEDULE:-full}" --arms "$arm" \
            --densities "${DENSITY:-0.05}" --channel-densities "${DENSITY:-0.05}" --seeds ${SEEDS:-0} \
            --data-dir "$CARRY/cifar10_lt" --workers "${WORKERS:-3}" --results "$results" \
            > "${OUT:-/tmp}/gpu_cifar_$arm.log" 2>&1 &
        pids+=($!)
    done
    local status=0
    for pid in "${pids[@]}"; do wait "$pid" || status=1; done
    tail -n 3 "${OUT:-/tmp}"/gpu_cifar_*.log
    "$PYTHON" "$ROOT/benchmarks/accuracy.py" --dataset cifar10_lt --schedule "${SCHEDULE:-full}" --results "$results" --report-only
    return $status
}

case "${1:-}" in
    prepare) prepare ;;
    run) shift; run "$@" ;;
    *) echo "usage: bash benchmarks/gpu_cifar.sh prepare | run [ARM ...]" >&2; exit 2 ;;
esac
