#!/usr/bin/env bash
# The GPU checks of this repository, in one command, on a machine whose python3 already has a
# CUDA torch (and Triton) but no network: the GPU tests, then the GPU benchmarks, each step's
# output in a file of its own under $OUT.
#
#   make gpu-bundle                    # here, with PyPI: wheels of what such a machine lacks
#   bash tools/gpu_check.sh [STEP...]  # there, from the repository root, .gpu_bundle/ beside it
#
# Steps, in this order by default (each under its own time limit, seconds in brackets):
#   install     the bundle's wheels that python3 lacks, then this repository (pip, no index)
#   cuda-tests  the tests that need CUDA or Triton (-k "cuda or triton"), which skip elsewhere
#   rerank-gpu  benchmarks/retrieval.py --sections rerank_features --device cuda: Market-size
#               re-ranking from features to metrics, stage by stage, synchronised, at three
#               memory budgets (is it under the 100 ms asked of an H100?)
#   mdpr        benchmarks/mdpr_speed.py --device cuda: MDPR's training step, device waits, and
#               evaluation speed with the official configuration
#   eval        benchmarks/retrieval.py --sections eval: FastReID's Cython ranker (compiled
#               there: needs a C compiler and Python's headers) against evaluate_rank on the
#               CPU and on the GPU
#   rerank      benchmarks/retrieval.py --sections rerank (the CPU comparison with FastReID's
#               NumPy re-ranking, on this machine's CPU)
#   all-tests   the whole suite on this machine (pytest-xdist when installed)
#
# OUT defaults to logs/gpu_check. A failing step is reported and the next one still runs; the
# exit status is the number of failed steps.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-logs/gpu_check}
BUNDLE=${BUNDLE:-.gpu_bundle}
PYTHON=${PYTHON:-python3}
STEPS=("$@")
[ ${#STEPS[@]} -eq 0 ] && STEPS=(install cuda-tests rerank-gpu mdpr eval rerank all-tests)
failed=0
STEPS_KNOWN="install cuda-tests rerank-gpu mdpr eval rerank all-tests"
for s in "${STEPS[@]}"; do
    case $s in
    install | cuda-tests | rerank-gpu | mdpr | eval | rerank | all-tests) ;;
    *)
        echo "unknown step '$s' (steps: ${STEPS_KNOWN})" >&2
        exit 2 ;;
    esac
done
mkdir -p "$OUT"

step() {  # step NAME LIMIT COMMAND...: run, tee to $OUT/NAME.txt, keep going on failure
    local name=$1 limit=$2
    shift 2
    echo "== $name ($(date -u +%H:%M:%S), limit ${limit} s): $*" | tee "$OUT/$name.txt"
    local start=$SECONDS
    if declare -F "$1" >/dev/null; then  # a function of this script: no timeout around it
        "$@" 2>&1 | tee -a "$OUT/$name.txt"
    else
        timeout "$limit" "$@" 2>&1 | tee -a "$OUT/$name.txt"
    fi
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc after $((SECONDS - start)) s" | tee -a "$OUT/$name.txt"
    [ "$rc" -eq 0 ] || failed=$((failed + 1))
}

install_bundle() {
    local missing
    missing=$("$PYTHON" - "$BUNDLE" <<'EOF'
import glob, importlib.metadata as md, os, sys
for wheel in sorted(glob.glob(os.path.join(sys.argv[1], "*.whl"))):
    name = os.path.basename(wheel).split("-")[0].replace("_", "-")
    try:
        md.version(name)
    except md.PackageNotFoundError:
        print(wheel)
EOF
)
    if [ -n "$missing" ]; then
        # shellcheck disable=SC2086  # one path per word
        "$PYTHON" -m pip install --no-index --no-deps $missing || return 1
    fi
    "$PYTHON" -m pip install --no-index --no-deps --no-build-isolation -e . || return 1
    nvidia-smi || true
    "$PYTHON" - <<'EOF'
import torch, numpy, fastreid, kdreid
print("torch", torch.__version__, "CUDA", torch.version.cuda, "numpy", numpy.__version__)
print("GPU:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
try:
    import triton
    print("triton", triton.__version__)
except ImportError:
    print("triton: not installed")
EOF
}

xdist() {  # -n N when pytest-xdist is there
    "$PYTHON" -c "import xdist" 2>/dev/null && echo "-n $(($(nproc) / 2 > 1 ? $(nproc) / 2 : 1))"
}

for s in "${STEPS[@]}"; do
    case $s in
    install) step install 300 install_bundle ;;
    cuda-tests)
        step cuda-tests 300 "$PYTHON" -m pytest -p no:cacheprovider -rs -k "cuda or triton" ;;
    rerank-gpu)
        step rerank-gpu 420 "$PYTHON" benchmarks/retrieval.py --sections rerank_features \
            --device cuda --repeats 10 --memory-budgets 64 256 1024 ;;
    eval) step eval 300 "$PYTHON" benchmarks/retrieval.py --sections eval ;;
    mdpr)
        step mdpr 420 "$PYTHON" benchmarks/mdpr_speed.py --device cuda \
            --output-dir "${TMPDIR:-/tmp}/mdpr_speed" ;;
    rerank) step rerank 420 "$PYTHON" benchmarks/retrieval.py --sections rerank ;;
    all-tests)
        # shellcheck disable=SC2046  # "-n N" splits on purpose
        step all-tests 580 "$PYTHON" -m pytest -p no:cacheprovider -q $(xdist) ;;
    esac
done
echo "== $failed step(s) failed; logs in $OUT"
exit "$failed"
