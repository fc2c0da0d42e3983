#!/usr/bin/env bash
# `powerbert bench` on the CPU for the architectures beyond BERT (random weights, fp32, B=16, N=128):
# albert-base, distilbert and modernbert-base, each at the paper-like configuration (the default: RTE's
# learned fractions resampled to the depth) and at full retention. Run it on an otherwise idle machine;
# the JSON reports go to $RESULTS (default benchmarks/results/cpu). Goals: speed-up >= 0.9 x the FLOP
# ratio at the paper-like configuration, full retention within 5% of stock (speed-up >= 0.95).
set -euo pipefail
cd "$(dirname "$0")/.."
results=${RESULTS:-benchmarks/results/cpu}
python=${PYTHON:-python3}
mkdir -p "$results"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
for spec in albert-base:12 distilbert:6 modernbert-base:22; do
    config=${spec%%:*}
    layers=${spec##*:}
    full=$("$python" -c "print(','.join(['1.0'] * $layers))")
    for run in paper full; do
        suffix=""
        if [ "$run" = full ]; then suffix=_full; fi
        out="$results/bench_${config}_b16_n128$suffix.json"
        extra=()
        if [ "$run" = full ]; then extra=(--retention "$full"); fi
        "$python" -m powerbert_kernels.cli bench --config "$config" --batch 16 --seq-len 128 --device cpu \
            --repeats 10 "${extra[@]}" --json | tail -n 1 >"$out"
        "$python" -c "import json, sys; r = json.load(open(sys.argv[1])); print(f\"{sys.argv[2]:16s} {sys.argv[3]:5s} \
speed-up {r['speedup']:.2f}x  FLOP ratio {r['flop_ratio']:.2f}x  ({r['speedup'] / r['flop_ratio']:.2f} of ideal)\")" \
            "$out" "$config" "$run"
    done
done
