#!/usr/bin/env bash
# The CPU speed goals of the fused attention, in one call, on an otherwise idle machine whose python3 has
# PyTorch, transformers and this package's extension built in place (nothing is downloaded):
#   1. the extension's CPU attention benchmark: fused ext vs the reference vs SDPA, 1 and all threads;
#   2. `powerbert bench`, bert-base random weights, 2 threads: B=16 N=128 and B=8 N=512 with the
#      paper-style counts, and full retention (goals: >= 0.95 of the FLOP ratio; full retention at most
#      3% slower than stock; peak memory at N=512 at most stock's);
#   3. the same B=16 N=128 run with one busy process beside it, at 1 and 2 threads (goals: >= 0.9 of the
#      FLOP ratio at 2 threads, and 2 threads never slower than 1);
#   4. per-op profiles of one configuration, reference attention (--backend torch) and fused (ext),
#      idle and with one busy process.
# JSON, profiles and logs go to $RESULTS (default benchmarks/results/cpu-<date>); a summary of the goals
# is printed at the end. THREADS (default 2) sets the thread count of the idle runs.
set -uo pipefail
cd "$(dirname "$0")/.."
results=${RESULTS:-benchmarks/results/cpu-$(date -u +%F)}
threads=${THREADS:-2}
mkdir -p "$results"
export PYTHONPATH=$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
status=0
counts=76,62,55,52,42,40,36,24,17,13,11,3
step() {  # step NAME COMMAND...: run, stdout to $results/NAME.out, stderr to NAME.log, remember a failure
    local name=$1; shift
    echo "== $name: $*"
    local start=$SECONDS
    if "$@" >"$results/$name.out" 2>"$results/$name.log"; then echo "   ok ($((SECONDS - start)) s)"
    else echo "   FAILED ($((SECONDS - start)) s): tail of $results/$name.log"; tail -n 15 "$results/$name.log"; status=1
    fi
}
bench() {  # bench NAME ARGS...: powerbert bench --json into $results/NAME.out
    local name=$1; shift
    step "$name" python3 -m powerbert_kernels.cli bench --config bert-base --json "$@"
}

step info python3 -m powerbert_kernels.cli info
step bench_ext python3 -m pytest benchmarks/test_bench_ext.py -q -s -p no:cacheprovider -k cpu_attention
bench b16_n128 --batch 16 --seq-len 128 --retention $counts --threads "$threads" --repeats 10
bench b16_n128_full --batch 16 --seq-len 128 --retention "$(python3 -c 'print(",".join(["128"] * 12))')" \
    --threads "$threads" --repeats 10
bench b8_n512 --batch 8 --seq-len 512 --retention $counts --threads "$threads" --repeats 6
bench b8_n512_full --batch 8 --seq-len 512 --retention "$(python3 -c 'print(",".join(["512"] * 12))')" \
    --threads "$threads" --repeats 6
bench b16_n128_load1_t1 --batch 16 --seq-len 128 --retention $counts --threads 1 --background-load 1 --repeats 10
bench b16_n128_load1_t2 --batch 16 --seq-len 128 --retention $counts --threads 2 --background-load 1 --repeats 10
for backend in torch ext; do
    for load in 0 1; do
        step "profile_${backend}_load$load" python3 benchmarks/profile_cpu.py --batch 16 --seq-len 128 \
            --retention $counts --threads 2 --background-load $load --backend $backend \
            --output "$results/profile_b16_n128_${backend}_load$load.md"
    done
done

python3 - "$results" <<'EOF'
import json, pathlib, sys

results = pathlib.Path(sys.argv[1])
rows = {}
for path in sorted(results.glob("b*.out")):
    try:
        rows[path.stem] = json.loads(path.read_text().strip().splitlines()[-1])
    except (ValueError, IndexError):
        print(f"{path.stem}: no result")
print("| run | threads | load | HF ms | PoWER ms | speed-up | FLOP ratio | of ratio | peak MiB HF / PoWER |")
print("|---|---|---|---|---|---|---|---|---|")
for name, r in rows.items():
    mem = f"{r['peak_mem_baseline_mb']:.1f} / {r['peak_mem_power_mb']:.1f}" if r.get("peak_mem_power_mb") else ""
    print(f"| {name} | {r.get('threads', '?')} | {r.get('background_load', '?')} | {r['baseline_ms']:.1f} | {r['power_ms']:.1f} | "
          f"{r['speedup']:.2f}x | {r['flop_ratio']:.2f}x | {r['speedup'] / r['flop_ratio']:.2f} | {mem} |")
def of_ratio(name):
    r = rows.get(name)
    return r["speedup"] / r["flop_ratio"] if r else float("nan")
goals = [
    ("idle B=16 N=128 >= 0.95 of the FLOP ratio", of_ratio("b16_n128") >= 0.95),
    ("idle B=8 N=512 >= 0.95 of the FLOP ratio", of_ratio("b8_n512") >= 0.95),
    ("full retention N=128 at most 3% slower", of_ratio("b16_n128_full") >= 1 / 1.03),
    ("full retention N=512 at most 3% slower", of_ratio("b8_n512_full") >= 1 / 1.03),
    ("load 1, 2 threads: >= 0.9 of the FLOP ratio", of_ratio("b16_n128_load1_t2") >= 0.9),
    ("load 1: 2 threads not slower than 1", "b16_n128_load1_t2" in rows and "b16_n128_load1_t1" in rows
     and rows["b16_n128_load1_t2"]["power_ms"] <= rows["b16_n128_load1_t1"]["power_ms"]),
    ("N=512 peak memory at most stock's", "b8_n512" in rows and rows["b8_n512"].get("peak_mem_power_mb") is not None
     and rows["b8_n512"]["peak_mem_power_mb"] <= rows["b8_n512"]["peak_mem_baseline_mb"]),
]
for text, met in goals:
    print(f"{'met    ' if met else 'NOT MET'}  {text}")
EOF
echo "results in $results"
exit $status
