#!/usr/bin/env bash
# The GPU check, one device call: `make gpu-bundle` copies this file to .gpu/run.sh; on a lent
# H200 run `bash .gpu/run.sh` with carry [".gpu"] and timeout_s 540. Designed for 8 minutes:
# the stages share BUDGET_S (450 s), each capped, so one slow stage cannot eat the others.
#
#   stages: preflight (versions, CUDA, the bundle, datasets) -> pytest -m gpu -> python -m bench
#           (bf16-mixed on CUDA: step time, tokens/s, MFU, device peak, our LoRA vs PEFT)
#           -> one full-data run of every registered method -> collect
#   outputs under $OUT (only 8 files come back): run.log, summary.md, records.json,
#           results.tar.gz, BENCHMARKS-$DEVICE.md, bench-$DEVICE.json
#
# DEVICE=cpu is the dry run (tiny sizes, bench --smoke), which tests/test_gpu_bundle.py and
# `make gpu-check` exercise on a CPU machine. Env: OUT (required), DEVICE (cuda), PYTHON
# (python3), BUDGET_S, SCRATCH (a temp folder), TRAIN_ARGS (extra key=value for every run).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUNDLE=$ROOT/.gpu
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-450}
: "${OUT:?set OUT to the folder the results go to}"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
SCRATCH=${SCRATCH:-$(mktemp -d /tmp/tunebench-gpu.XXXXXX)}
mkdir -p "$SCRATCH"

# Everything the harness would look up in packages the device lacks comes from the bundle;
# runs, reports and caches stay in scratch, out of $OUT (whose file count is limited).
export TUNEBENCH_MINILM_DIR=$BUNDLE/minilm TUNEBENCH_DATA_DIR=$BUNDLE/data
export RUNS_DIR=$SCRATCH/runs REPORTS_DIR=$SCRATCH/reports HF_HOME=$SCRATCH/hf
export WANDB_MODE=disabled HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg

if [ "$DEVICE" = cpu ]; then
    # The dry run: every stage on tiny sizes, so the whole path is proven in a minute or two
    # on 2 busy cores (the test's budget is 3 minutes).
    SIZES="train_size=32 eval_size=16 max_steps=2 batch_size=8 eval_batch_size=16 max_length=32"
    # methods and peft only: the bench's own tests run every section's smoke; here it is the
    # runner's path (bench runs, its page lands in $OUT) that needs proving, in little time.
    BENCH_ARGS="--smoke --device cpu --only methods,peft"
    # One thread: on a few shared cores, two spinning OpenMP threads per tiny step cost more
    # than they give (measured: 2x the CPU time of a 2-step run under load).
    export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
else
    SIZES=""
    BENCH_ARGS="--device $DEVICE"
fi

# run_stage NAME CAP_S CMD...: run CMD under min(CAP_S, budget left), SIGINT at the limit (the
# harness then writes a cancelled record); one line per stage into stages.tsv.
run_stage() {
    local name=$1 cap=$2 left limit start rc note=""
    shift 2
    left=$((BUDGET_S - SECONDS))
    if [ "$left" -lt 15 ]; then
        echo "== $name: skipped, ${left}s of the budget left"
        printf '%s\t\t\tskipped: budget spent\n' "$name" >>"$SCRATCH/stages.tsv"
        FAILED=1
        return
    fi
    limit=$((cap < left ? cap : left))
    echo "== $name (limit ${limit}s, $((SECONDS))s elapsed)"
    start=$SECONDS
    timeout -s INT -k 20 "$limit" "$@"
    rc=$?
    [ "$rc" -eq 124 ] && note="timed out at ${limit}s"
    [ "$rc" -ne 0 ] && FAILED=1
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" "$note" >>"$SCRATCH/stages.tsv"
    echo "== $name: exit $rc in $((SECONDS - start))s"
}

install_wheels() {
    # The device lacks datasets and two of its needs; they travel as CPython 3.12 wheels.
    local wheels=("$BUNDLE"/wheels/*.whl) site=$SCRATCH/site pyver
    if [ ! -e "${wheels[0]}" ]; then
        echo "no wheels in the bundle: using this python's own datasets"
        return 0
    fi
    pyver=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    if [ "$pyver" = 3.12 ]; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$site" "${wheels[@]}" || return 1
        export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
        echo "installed ${#wheels[@]} wheels into $site"
    else
        # Another python (the CPU dry run's venv): prove the wheels install for 3.12, but keep
        # them off the path, since multiprocess is built per Python version.
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --python-version 3.12 --implementation cp --only-binary=:all: \
            --target "$site-3.12" "${wheels[@]}" || return 1
        echo "the ${#wheels[@]} wheels install for 3.12 (not used by python $pyver)"
    fi
}

main() {
    FAILED=0
    cd "$ROOT" || exit 1
    echo "GPU check: DEVICE=$DEVICE OUT=$OUT SCRATCH=$SCRATCH budget ${BUDGET_S}s, $(date -u)"
    if [ "$DEVICE" != cpu ] && command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    fi
    local start=$SECONDS rc
    install_wheels
    rc=$?
    [ "$rc" -ne 0 ] && FAILED=1
    printf 'install wheels\t%s\t%s\t\n' "$rc" "$((SECONDS - start))" >>"$SCRATCH/stages.tsv"
    run_stage preflight 60 "$PY" -m gpu.check preflight "$DEVICE" "$SCRATCH/methods.txt"
    if [ "$FAILED" -ne 0 ]; then
        echo "preflight failed: nothing else can run"
    else
        run_stage "pytest -m gpu" 150 "$PY" -m pytest -q -m gpu -p no:cacheprovider \
            --junitxml="$SCRATCH/pytest.xml" tests
        # shellcheck disable=SC2086  # BENCH_ARGS and SIZES are word lists on purpose
        run_stage bench 180 "$PY" -m bench $BENCH_ARGS --no-progress --out "$SCRATCH/bench"
        local methods m
        methods=$(cat "$SCRATCH/methods.txt")
        for m in $methods; do
            # shellcheck disable=SC2086
            run_stage "train $m" 120 "$PY" -m experiments.train "method=$m" "device=$DEVICE" \
                wandb=disabled progress=false "runs_dir=$SCRATCH/runs" $SIZES ${TRAIN_ARGS:-}
        done
    fi
    "$PY" -m gpu.check collect "$SCRATCH" "$OUT" "$DEVICE" || FAILED=1
    echo "GPU check: $([ "$FAILED" -eq 0 ] && echo passed || echo FAILED) in ${SECONDS}s"
    return "$FAILED"
}

main 2>&1 | tee "$OUT/run.log"
exit "${PIPESTATUS[0]}"
