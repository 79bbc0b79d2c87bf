#!/usr/bin/env bash
# The accuracy benchmark's CIFAR-10-LT arms on one GPU, for when a GPU machine is at hand.
#
#   bash benchmarks/gpu_cifar.sh prepare              # here, once: writes benchmarks/gpu_carry/ (about 9 MB)
#   bash benchmarks/gpu_cifar.sh run [ARM ...]        # on the GPU machine, with benchmarks/gpu_carry carried
#
# `prepare` exports CIFAR-10-LT IR 100 as built here from ../shared/data/cifar10 (train, validation, test
# and lt_metadata.json, by `export_parquet`) and fetches the wheels the GPU image lacks (datasets, dill,
# multiprocess: pure Python). `run` unpacks those wheels beside the image's own PyTorch, transformers
# and accelerate, then trains one process per (arm, density, seed), up to MAX_JOBS at once (a ResNet-32
# uses a sliver of the GPU), through benchmarks/accuracy.py and so through recipes/run_ltap.py. Results
# merge into $OUT/cifar10_lt_<schedule>.json ($OUT is the device tool's output folder;
# benchmarks/results/ without it); per-run logs go to /tmp/gpu_cifar_logs.
#
# Settings (environment): SCHEDULE=full (the paper's 200 epochs) or cpu30 (the CPU schedule, to fill
# its grid fast); DENSITIES="0.05" for the weight arms; CHANNEL_DENSITIES="0.3 0.15"; SEEDS="0";
# MAX_JOBS=8; WORKERS=2 (dataloader workers per run). Default arms: dense, magnitude, ltap.
# Example with the device tool (the whole CPU-schedule grid):
#   run(command="SCHEDULE=cpu30 DENSITIES='0.3 0.1 0.05' bash benchmarks/gpu_cifar.sh run dense magnitude ltap ltap_novote ltap_channel",
#       carry=["benchmarks/gpu_carry"], timeout_s=600)
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
    # Versions first (the image's own), then build the datasets cache once, before the runs share it.
    "$PYTHON" - "$CARRY/cifar10_lt" <<'EOF'
import sys

import accelerate, datasets, matplotlib, pyarrow, torch, transformers
from ltap_hf.data.loading import load_lt_dataset

# The wheels of `prepare` are for Python 3.12 (multiprocess ships one per version).
assert sys.version_info[:2] == (3, 12), f"gpu_carry/wheels are for Python 3.12, this is {sys.version}"

print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "| transformers", transformers.__version__,
      "| accelerate", accelerate.__version__, "| datasets", datasets.__version__, "| pyarrow", pyarrow.__version__)
print(load_lt_dataset("cifar10_lt", imbalance_ratio=100, data_dir=sys.argv[1]))
EOF
    local schedule="${SCHEDULE:-full}" logs=/tmp/gpu_cifar_logs
    local results="${OUT:-$ROOT/benchmarks/results}/cifar10_lt_$schedule.json"
    rm -rf "$logs" && mkdir -p "$logs"
    for arm in "${arms[@]}"; do
        local densities="${DENSITIES:-0.05}"
        [ "$arm" = dense ] && densities=1.0
        [ "$arm" = ltap_channel ] && densities="${CHANNEL_DENSITIES:-0.3 0.15}"
        for density in $densities; do
            for seed in ${SEEDS:-0}; do
                while [ "$(jobs -rp | wc -l)" -ge "${MAX_JOBS:-8}" ]; do wait -n || true; done
                local name="${arm}_${density}_$seed"
                # Each run leaves its exit status beside its log: `wait -n` alone can miss a failure.
                ( "$PYTHON" "$ROOT/benchmarks/accuracy.py" --dataset cifar10_lt --schedule "$schedule" --arms "$arm" \
                    --densities "$density" --channel-densities "$density" --seeds "$seed" --no-report \
                    --data-dir "$CARRY/cifar10_lt" --workers "${WORKERS:-2}" --results "$results" \
                    > "$logs/$name.log" 2>&1; echo $? > "$logs/$name.rc" ) &
            done
        done
    done
    wait
    local status=0
    for log in "$logs"/*.log; do
        echo "== $log (exit $(cat "${log%.log}.rc"))"; tail -n 2 "$log"
        [ "$(cat "${log%.log}.rc")" = 0 ] || status=1
    done
    "$PYTHON" "$ROOT/benchmarks/accuracy.py" --dataset cifar10_lt --schedule "$schedule" --results "$results" --report-only
    return $status
}

case "${1:-}" in
    prepare) prepare ;;
    run) shift; run "$@" ;;
    *) echo "usage: bash benchmarks/gpu_cifar.sh prepare | run [ARM ...]" >&2; exit 2 ;;
esac
