#!/usr/bin/env bash
# Every check that needs a CUDA GPU, in one call with a time budget, on a machine whose python3 already
# has PyTorch with CUDA, Triton and transformers (nothing is downloaded).
#
#   benchmarks/run_gpu.sh [--budget SECONDS]          the essential pass (default budget 450 s)
#   benchmarks/run_gpu.sh --full [--budget SECONDS]   the rest of the sweep (default budget 540 s)
#   benchmarks/run_gpu.sh --dry-run [--full]          print the plan; runs and writes nothing
#
# The essential pass, most important results first: the environment; the CUDA build of the extension
# (in the background, on the CPU, while the GPU works); the performance targets (Triton attention vs
# SDPA, select-gather vs copy bandwidth, bert-base end to end vs HF SDPA); the GPU tests of the Triton
# kernels (compiled, fp16/bf16/fp32); the extension's tests on CUDA and its targets; small batches
# under CUDA graphs; the extension's GPU benchmarks; `powerbert bench` on the GPU. The full pass adds
# the kernel sweeps over batch and length, the single- vs two-pass comparison and the tile grid.
#
# Each step runs under its own time limit and never past the pass's deadline: a step that does not fit
# is recorded as skipped, a step that overruns is stopped and recorded, and the next still runs. The
# results go to $RESULTS (default benchmarks/results/gpu-<date>): a log per step, the sweep's JSON and
# Markdown files, and summary.md (summary-full.md for --full: a table of the steps, then the tables of
# results), rewritten after every step. When $OUT is set (a folder that is copied back, at most a few
# files), summary.md, the pass's main tables (targets.md and .json; for --full sweep.* and tune.*)
# and results.tar.gz (the whole results folder) are refreshed there after every step too.
#
# Environment: PYTHON (default python3); WHEELS, a folder of wheels the machine lacks, installed with
# pip --no-index into the results folder first; MAX_JOBS for the build (default 4).
set -uo pipefail
cd "$(dirname "$0")/.."

usage() { echo "usage: benchmarks/run_gpu.sh [--dry-run] [--full] [--budget SECONDS]" >&2; }
dry_run=0
mode=essential
budget=
while [ $# -gt 0 ]; do
    case $1 in
        --dry-run) dry_run=1 ;;
        --full) mode=full ;;
        --budget)
            if [ $# -lt 2 ] || ! [[ $2 =~ ^[0-9]+$ ]] || [ "$2" -lt 1 ]; then
                usage; echo "run_gpu.sh: error: --budget needs a whole number of seconds >= 1" >&2; exit 2
            fi
            budget=$2; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage; echo "run_gpu.sh: error: unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done
if [ -z "$budget" ]; then
    if [ $mode = full ]; then budget=540; else budget=450; fi
fi

PYTHON=${PYTHON:-python3}
results=${RESULTS:-benchmarks/results/gpu-$(date -u +%F)}
sweep=benchmarks/gpu_sweep.py
# Steps: NAME EXPECTED LIMIT KIND COMMAND. EXPECTED is the seconds the step should take on an H200,
# estimated from what runs without one (the build's compile time and Triton's kernel builds measured on
# the CPU, the number of kernel builds and timed calls); the plan is ordered so that these add up to
# well under the budget. LIMIT is the most the step may take. KIND: run (in the foreground), bg (started
# in the background, its CPU work beside the GPU steps), wait (for the background step named as its
# command).
plan() {
    local pytest="$PYTHON -m pytest -v -rfE -p no:cacheprovider"
    if [ $mode = essential ]; then
        echo "env 10 30 run $PYTHON -m powerbert_kernels.cli info"
        # ops.cpp and ops_cuda.cu for this GPU's architecture only, niced beside the GPU steps.
        echo "build 150 360 bg env POWERBERT_CUDA=1 POWERBERT_EXT_REQUIRED=1 MAX_JOBS=${MAX_JOBS:-4} nice -n 10 $PYTHON setup.py build_ext --inplace"
        # About 15 kernel builds, then median timings and two bert-base models end to end.
        echo "targets 90 180 run $PYTHON $sweep --out $results --stem targets --sections correctness,target_attention,target_select_gather,end_to_end"
        # Mostly Triton building the tested configurations (fp16, bf16, fp32), spread over 4 workers.
        echo "tests_triton 90 150 run $pytest \$XDIST tests/test_triton_attention.py tests/test_triton_select_gather.py tests/test_triton_compile.py tests/test_dispatch.py"
        echo "build_done 0 240 wait build"
        # The C++ and CUDA kernels against the reference, every dtype and padding.
        echo "tests_ext 40 120 run $pytest \$XDIST tests/test_ext_ops.py"
        echo "ext_targets 20 60 run $PYTHON $sweep --out $results --stem ext --sections ext_targets"
        # Compiling both models for two batch sizes dominates.
        echo "small_batch 120 180 run $PYTHON $sweep --out $results --stem small_batch --sections small_batch"
        echo "bench_ext 30 90 run $pytest -s -k gpu benchmarks/test_bench_ext.py"
        # The CLI itself on the GPU (the same measurement as the targets' end to end).
        echo "bench_cli 20 60 run $PYTHON -m powerbert_kernels.cli bench --config bert-base --dtype float16 --device cuda --batch 128 --seq-len 128 --retention 76,62,55,52,42,40,36,24,17,13,11,3 --repeats 20 --json"
    else
        echo "env 10 30 run $PYTHON -m powerbert_kernels.cli info"
        echo "build 100 360 run env POWERBERT_CUDA=1 POWERBERT_EXT_REQUIRED=1 MAX_JOBS=${MAX_JOBS:-8} $PYTHON setup.py build_ext --inplace"
        # Three providers over B in {1, 32, 128} and N in {64 .. 1024}, then single vs two passes.
        echo "sweep 240 420 run $PYTHON $sweep --out $results --stem sweep --sections attention,select_gather,variants"
        # About 60 tile configurations at N=128 and 512, each built once.
        echo "tune 120 240 run $PYTHON $sweep --out $results --stem tune --tune --sections tune"
    fi
}

if [ $dry_run = 1 ]; then
    echo "plan: $mode pass, budget $budget s, results in $results${OUT:+ (summary also in \$OUT)}"
    clock=0
    bg_end=0
    while read -r name expected limit kind command; do
        case $kind in
            run) clock=$((clock + expected)) ;;
            bg) bg_end=$((clock + expected)) ;;
            wait) if [ $bg_end -gt $clock ]; then clock=$bg_end; fi ;;
        esac
        printf '  %-13s expected %4s s  limit %4s s  %-4s %s\n' "$name" "$expected" "$limit" "$kind" "$command"
    done < <(plan)
    echo "expected total: $clock s of the $budget s budget"
    exit 0
fi

mkdir -p "$results"
start_time=$SECONDS
deadline=$((start_time + budget))
# The two passes share the results folder; each keeps its own summary.
if [ $mode = full ]; then summary=$results/summary-full.md; copied="sweep.md sweep.json tune.md tune.json"
else summary=$results/summary.md; copied="targets.md targets.json"
fi
rows=()
declare -A bg_pid bg_start bg_limit
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1

if [ -n "${WHEELS:-}" ]; then
    $PYTHON -m pip install -q --no-index --no-deps --target "$results/site" "$WHEELS"/*.whl \
        && export PYTHONPATH=$PYTHONPATH:$PWD/$results/site
fi
XDIST=
if $PYTHON -c "import xdist" 2>/dev/null; then XDIST="-n 4"; fi
export XDIST

outcome() {  # outcome NAME: one line for the summary table from the step's log
    local log=$results/$1.log
    local line
    line=$(grep -E "^=+ .*(passed|failed|error|skipped).* in [0-9.]+s" "$log" 2>/dev/null | tail -n 1 | tr -d '=')
    if [ -z "$line" ]; then
        line=$(grep -v '^\s*$' "$log" 2>/dev/null | tail -n 1 | cut -c1-160)
    fi
    echo "${line## }" | tr '|' '/'
}

write_summary() {
    {
        echo "# GPU pass ($mode), $(date -u '+%F %H:%M UTC')"
        echo
        if [ -f "$results/gpu.txt" ]; then sed 's/^/    /' "$results/gpu.txt"; echo; fi
        echo "| step | status | seconds | limit | outcome |"
        echo "|---|---|---|---|---|"
        printf '%s\n' "${rows[@]}"
        echo
        echo "Deadline: $budget s from the start; logs, JSON and Markdown of every step in $results."
        for stem in targets ext small_batch sweep tune; do
            if [ -f "$results/$stem.md" ]; then echo; sed -E 's/^(#+) /#\1 /' "$results/$stem.md"; fi
        done
    } >"$summary"
    if [ -n "${OUT:-}" ]; then
        mkdir -p "$OUT"
        cp "$summary" "$OUT/summary.md"
        for file in $copied; do
            if [ -f "$results/$file" ]; then cp "$results/$file" "$OUT/$file"; fi
        done
        tar -czf "$OUT/results.tar.gz.part" -C "$(dirname "$results")" "$(basename "$results")" \
            && mv "$OUT/results.tar.gz.part" "$OUT/results.tar.gz"
    fi
}

record() {  # record NAME STATUS SECONDS LIMIT
    rows+=("| $1 | $2 | $3 | $4 | $(outcome "$1") |")
    echo "   $2 ($3 s)"
    write_summary
}

limit_for() {  # limit_for LIMIT: seconds a step may run now, within the deadline (0: none left)
    local left=$((deadline - SECONDS))
    if [ "$left" -lt 10 ]; then echo 0; elif [ "$1" -lt "$left" ]; then echo "$1"; else echo "$left"; fi
}

run_step() {  # run_step NAME LIMIT COMMAND...
    local name=$1 limit=$2; shift 2
    local allowed
    allowed=$(limit_for "$limit")
    echo "== $name (limit $allowed s): $*"
    if [ "$allowed" -eq 0 ]; then echo "not run: the pass's deadline" >"$results/$name.log"; record "$name" skipped 0 "$limit"; return; fi
    local begin=$SECONDS code
    timeout -k 10 "$allowed" "$@" </dev/null >"$results/$name.log" 2>&1
    code=$?
    if [ $code -eq 0 ]; then record "$name" ok $((SECONDS - begin)) "$limit"
    elif [ $code -eq 124 ] || [ $code -eq 137 ]; then record "$name" "TIMEOUT" $((SECONDS - begin)) "$limit"
    else record "$name" "FAILED ($code)" $((SECONDS - begin)) "$limit"; tail -n 15 "$results/$name.log"
    fi
}

start_bg() {  # start_bg NAME LIMIT COMMAND...
    local name=$1 limit=$2; shift 2
    echo "== $name (background, limit $limit s): $*"
    timeout -k 10 "$limit" "$@" </dev/null >"$results/$name.log" 2>&1 &
    bg_pid[$name]=$!
    bg_start[$name]=$SECONDS
    bg_limit[$name]=$limit
}

wait_bg() {  # wait_bg STEP NAME LIMIT: wait for background step NAME, at most LIMIT (and the deadline)
    local step=$1 name=$2 limit=$3
    local allowed
    allowed=$(limit_for "$limit")
    echo "== $step: waiting for $name (at most $allowed s)"
    local waited=0
    while kill -0 "${bg_pid[$name]}" 2>/dev/null && [ $waited -lt "$allowed" ]; do sleep 1; waited=$((waited + 1)); done
    if kill -0 "${bg_pid[$name]}" 2>/dev/null; then
        kill -- "${bg_pid[$name]}" 2>/dev/null
        wait "${bg_pid[$name]}" 2>/dev/null
        record "$name" "TIMEOUT" $((SECONDS - bg_start[$name])) "${bg_limit[$name]}"
        return
    fi
    wait "${bg_pid[$name]}"
    local code=$?
    if [ $code -eq 0 ]; then record "$name" ok $((SECONDS - bg_start[$name])) "${bg_limit[$name]}"
    elif [ $code -eq 124 ] || [ $code -eq 137 ]; then record "$name" "TIMEOUT" $((SECONDS - bg_start[$name])) "${bg_limit[$name]}"
    else record "$name" "FAILED ($code)" $((SECONDS - bg_start[$name])) "${bg_limit[$name]}"; tail -n 15 "$results/$name.log"
    fi
}

if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader >"$results/gpu.txt" 2>&1
fi
arch=$($PYTHON -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())" 2>/dev/null)
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$arch}
echo "python: $($PYTHON -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, "CUDA", torch.version.cuda)' 2>&1)" >>"$results/gpu.txt"

mapfile -t steps < <(plan)
for step in "${steps[@]}"; do
    read -r name _expected limit kind command <<<"$step"
    case $kind in
        run) eval "run_step $name $limit $command" ;;  # eval: the plan's words, and $XDIST, split
        bg) eval "start_bg $name $limit $command" ;;
        wait) wait_bg "$name" "$command" "$limit" ;;
    esac
done

failed=0
for row in "${rows[@]}"; do
    case $row in *"| ok |"*) ;; *) failed=1 ;; esac
done
echo "results in $results ($((SECONDS - start_time)) s)"
exit $failed
