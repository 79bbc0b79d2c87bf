#!/usr/bin/env bash
# The accuracy benchmark's CIFAR-10-LT arms on one GPU, for when a GPU machine is at hand.
#
#   bash benchmarks/gpu_cifar.sh prepare              # here, once per regime: writes benchmarks/gpu_carry/
#   bash benchmarks/gpu_cifar.sh run [ARM ...]        # on the GPU machine, with benchmarks/gpu_carry carried
#
# `prepare` exports CIFAR-10-LT as built here from ../shared/data/cifar10 (train, validation, test and
# lt_metadata.json, by `export_parquet`: IR 100 with the default validation split into gpu_carry/cifar10_lt,
# about 9 MB; another regime into its own folder beside it) and fetches the wheels the GPU image lacks
# (datasets, dill, multiprocess: pure Python). `run` unpacks those wheels beside the image's own PyTorch,
# transformers and accelerate, then trains one process per (arm, density, seed) through
# benchmarks/accuracy.py and so through recipes/run_ltap.py, up to MAX_JOBS at once (a ResNet-32 uses a
# sliver of the GPU).
#
# Branching: the dense arm of every seed starts first; it hands over its branch point (its checkpoint at
# the last step before the first scoring window) about halfway through its run. Once each dense run holds
# its seed's branch-point lock (its log says "branch point ..."), the other arms start, wait on that lock,
# and train from the branch point on: about half the GPU time of running every arm from step 0, which
# NO_BRANCH=1 does instead. Results and run records (predictions, per-stage alpha, D and validation
# accuracy, per-layer densities, mask hashes) go to $OUT/cifar10_lt_<schedule>[_<regime>].json and
# $OUT/cifar10_lt_<schedule>[_<regime>]_records/ ($OUT is the device tool's output folder;
# benchmarks/results/ without it); branch points to BRANCH_DIR (default /tmp/gpu_cifar_branch_points, not
# brought back); per-run logs to /tmp/gpu_cifar_logs.
#
# Settings (environment): SCHEDULE=full (the paper's 200 epochs) or cpu30 (the CPU schedule, to fill
# its grid fast); DENSITIES="0.05" for the weight arms; CHANNEL_DENSITIES="0.3 0.15"; SEEDS="0";
# MAX_JOBS=8; WORKERS=2 (dataloader workers per run). Default arms: dense, magnitude, ltap.
# The regime, the same for `prepare` and `run`: LOSS (default: the recipe's balanced_softmax),
# IMBALANCE_RATIO (default 100), VAL_PER_CLASS (default: the dataset's 20), VAL_SHORTFALL (default: the
# dataset's from_train).
# Examples with the device tool (the whole CPU-schedule grid; then cross-entropy at IR 500):
#   run(command="SCHEDULE=cpu30 DENSITIES='0.3 0.1 0.05' bash benchmarks/gpu_cifar.sh run dense magnitude ltap ltap_novote ltap_channel",
#       carry=["benchmarks/gpu_carry"], timeout_s=600)
#   here: IMBALANCE_RATIO=500 VAL_PER_CLASS=300 bash benchmarks/gpu_cifar.sh prepare
#   run(command="SCHEDULE=cpu30 LOSS=ce IMBALANCE_RATIO=500 VAL_PER_CLASS=300 DENSITIES='0.05 0.02' SEEDS='0 1 2' bash benchmarks/gpu_cifar.sh run",
#       carry=["benchmarks/gpu_carry"], timeout_s=600)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CARRY="$ROOT/benchmarks/gpu_carry"
PYTHON="${PYTHON:-python3}"
WHEELS=(datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19)

# The regime's export in gpu_carry/: cifar10_lt for IR 100 with the default validation split.
export_name() {
    local name=cifar10_lt
    [ "${IMBALANCE_RATIO:-100}" = 100 ] || name+="_ir$IMBALANCE_RATIO"
    [ -z "${VAL_PER_CLASS:-}" ] || name+="_val$VAL_PER_CLASS"
    [ -z "${VAL_SHORTFALL:-}" ] || name+="_$VAL_SHORTFALL"
    echo "$name"
}

prepare() {
    local export_dir="$CARRY/$(export_name)"
    rm -rf "$CARRY/wheels" "$CARRY/site" "$export_dir"
    mkdir -p "$CARRY/wheels"
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
        --dest "$CARRY/wheels" "${WHEELS[@]}"
    "$PYTHON" - "$ROOT/../shared/data/cifar10" "$export_dir" <<'EOF'
import os
import sys

from ltap_hf.data.loading import export_parquet, load_lt_dataset


def setting(name, kind):
    return kind(os.environ[name]) if os.environ.get(name) else None


dataset = load_lt_dataset("cifar10_lt", imbalance_ratio=setting("IMBALANCE_RATIO", float) or 100, data_dir=sys.argv[1],
                          val_per_class=setting("VAL_PER_CLASS", int), val_shortfall=setting("VAL_SHORTFALL", str))
export_parquet(dataset, sys.argv[2])
EOF
    du -sh "$CARRY"/*
}

run() {
    local arms=("$@")
    [ ${#arms[@]} -gt 0 ] || arms=(dense magnitude ltap)
    local data="$CARRY/$(export_name)"
    [ -d "$data" ] || { echo "no $data: run '[settings] bash benchmarks/gpu_cifar.sh prepare' first, then carry benchmarks/gpu_carry" >&2; exit 1; }
    local site="$CARRY/site"
    mkdir -p "$site"
    for wheel in "$CARRY"/wheels/*.whl; do "$PYTHON" -m zipfile -e "$wheel" "$site"; done
    export PYTHONPATH="$ROOT:$site${PYTHONPATH:+:$PYTHONPATH}"
    # Versions first (the image's own), then build the datasets cache once, before the runs share it.
    "$PYTHON" - "$data" <<'EOF'
import sys

import accelerate, datasets, matplotlib, pyarrow, torch, transformers
from ltap_hf.data.loading import load_lt_dataset

# The wheels of `prepare` are for Python 3.12 (multiprocess ships one per version).
assert sys.version_info[:2] == (3, 12), f"gpu_carry/wheels are for Python 3.12, this is {sys.version}"

print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "| transformers", transformers.__version__,
      "| accelerate", accelerate.__version__, "| datasets", datasets.__version__, "| pyarrow", pyarrow.__version__)
print(load_lt_dataset("cifar10_lt", data_dir=sys.argv[1]))
EOF
    local schedule="${SCHEDULE:-full}" logs=/tmp/gpu_cifar_logs
    # What every run shares; the results file's name carries the regime (accuracy.py's default name).
    local common=(--dataset cifar10_lt --schedule "$schedule" --data-dir "$data" --workers "${WORKERS:-2}"
                  --results-dir "${OUT:-$ROOT/benchmarks/results}" --branch-dir "${BRANCH_DIR:-/tmp/gpu_cifar_branch_points}")
    [ -z "${LOSS:-}" ] || common+=(--loss "$LOSS")
    [ "${IMBALANCE_RATIO:-100}" = 100 ] || common+=(--imbalance-ratio "$IMBALANCE_RATIO")
    [ -z "${VAL_PER_CLASS:-}" ] || common+=(--val-per-class "$VAL_PER_CLASS")
    [ -z "${VAL_SHORTFALL:-}" ] || common+=(--val-shortfall "$VAL_SHORTFALL")
    [ -z "${NO_BRANCH:-}" ] || common+=(--no-branch)
    rm -rf "$logs" && mkdir -p "$logs"

    # One background run of accuracy.py, when a slot is free; its exit status lands beside its log
    # (`wait -n` alone can miss a failure).
    launch() {
        local name="$1"
        shift
        while [ "$(jobs -rp | wc -l)" -ge "${MAX_JOBS:-8}" ]; do wait -n || true; done
        ( "$PYTHON" "$ROOT/benchmarks/accuracy.py" "${common[@]}" --no-report "$@" > "$logs/$name.log" 2>&1
          echo $? > "$logs/$name.rc" ) &
    }

    local arm seed density with_dense=0
    for arm in "${arms[@]}"; do [ "$arm" != dense ] || with_dense=1; done
    if [ -z "${NO_BRANCH:-}" ]; then
        # The dense arm of each seed first (without it among the arms: only the seed's branch point).
        for seed in ${SEEDS:-0}; do
            if [ $with_dense = 1 ]; then
                launch "dense_1.0_$seed" --arms dense --seeds "$seed"
            else
                launch "branch_point_$seed" --branch-point-only --seeds "$seed"
            fi
        done
        # Each holds its seed's branch-point lock once its log says "branch point ..." (or it has ended).
        for seed in ${SEEDS:-0}; do
            local first="$logs/dense_1.0_$seed"
            [ $with_dense = 1 ] || first="$logs/branch_point_$seed"
            until grep -q "^branch point" "$first.log" 2>/dev/null || [ -e "$first.rc" ]; do sleep 2; done
        done
    fi
    for arm in "${arms[@]}"; do
        [ "$arm" != dense ] || [ -n "${NO_BRANCH:-}" ] || continue
        local densities="${DENSITIES:-0.05}"
        [ "$arm" != dense ] || densities=1.0
        [ "$arm" != ltap_channel ] || densities="${CHANNEL_DENSITIES:-0.3 0.15}"
        for density in $densities; do
            for seed in ${SEEDS:-0}; do
                launch "${arm}_${density}_$seed" --arms "$arm" --densities "$density" --channel-densities "$density" --seeds "$seed"
            done
        done
    done
    wait
    local status=0
    for log in "$logs"/*.log; do
        echo "== $log (exit $(cat "${log%.log}.rc"))"; tail -n 2 "$log"
        [ "$(cat "${log%.log}.rc")" = 0 ] || status=1
    done
    "$PYTHON" "$ROOT/benchmarks/accuracy.py" "${common[@]}" --report-only
    return $status
}

case "${1:-}" in
    prepare) prepare ;;
    run) shift; run "$@" ;;
    *) echo "usage: bash benchmarks/gpu_cifar.sh prepare | run [ARM ...]" >&2; exit 2 ;;
esac
