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
#   train-speed benchmarks/training_speed.py --device cuda: the bag-of-tricks ResNet-50's
#               training step (FastReID's, foreach, channels-last, float16 AMP) at 256x128,
#               batch 64, on SynthReID-tiny's JPEG files (generated under $FASTREID_DATASETS)
#   inference   benchmarks/inference_speed.py --device cuda: --eval-only extraction of the
#               bag-of-tricks ResNet-50 and the official MDPR configuration, FastReID's path
#               against channels-last, BatchNorm folded and float16 autocast, batch 64, with the
#               SynthReID accuracy of a ResNet-18 it trains (6 epochs) folded and under autocast
#   amp-train   each project's tiny SynthReID-tiny config (those tests/projects/* train), one
#               epoch through its train_net.py on CUDA with mixed precision (MODEL.DEVICE cuda
#               SOLVER.AMP.ENABLED True: float16 autocast with gradient scaling): MDPR's tiny.yml;
#               FactorizedKD's Dn1 tiny_teacher.yml, then its tiny_student.yml taught by it;
#               configs/Synthetic/tiny.yml as SpeedKD's teacher, then its tiny_kd.yml student.
#               One line per run: PASS or FAIL and its final mAP (each run's log: amp-*.log)
#   nccl        MDPR's tiny.yml for one epoch under torchrun on one GPU (python3 -m
#               torch.distributed.run --standalone --nproc_per_node 1): its log must say
#               "backend nccl, world size 1" (the process group the launcher joined)
#   eval        benchmarks/retrieval.py --sections eval: FastReID's Cython ranker (compiled
#               there: needs a C compiler and Python's headers) against evaluate_rank on the
#               CPU and on the GPU
#   rerank      benchmarks/retrieval.py --sections rerank (the CPU comparison with FastReID's
#               NumPy re-ranking, on this machine's CPU)
#   all-tests   the whole suite on this machine (pytest-xdist when installed)
#
# OUT defaults to logs/gpu_check; the training runs of amp-train and nccl go to RUNS (default
# $TMPDIR/gpu_check_runs), SynthReID-tiny to $FASTREID_DATASETS (default RUNS/datasets). A
# failing step is reported and the next one still runs; the exit status is the number of failed
# steps.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-logs/gpu_check}
BUNDLE=${BUNDLE:-.gpu_bundle}
PYTHON=${PYTHON:-python3}
RUNS=${RUNS:-${TMPDIR:-/tmp}/gpu_check_runs}
DATASETS=${FASTREID_DATASETS:-$RUNS/datasets}
STEPS=("$@")
STEPS_KNOWN="install cuda-tests rerank-gpu mdpr train-speed inference amp-train nccl eval rerank all-tests"
# shellcheck disable=SC2206  # one step per word
[ ${#STEPS[@]} -eq 0 ] && STEPS=($STEPS_KNOWN)
failed=0
for s in "${STEPS[@]}"; do
    case $s in
    install | cuda-tests | rerank-gpu | mdpr | train-speed | inference | amp-train | nccl | eval \
        | rerank | all-tests) ;;
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

# The schedule of the tests' tiny runs (tests/projects/*/test_train_net.py): one epoch, evaluated
# at its end, no progress bars.
ONE_EPOCH=(SOLVER.MAX_EPOCH 1 SOLVER.STEPS "[1]" TEST.EVAL_PERIOD 1 KDREID.PROGRESS False)
AMP_CUDA=(MODEL.DEVICE cuda SOLVER.AMP.ENABLED True)
AMP_LINE="Mixed precision training: torch.float16 autocast with gradient scaling"

final_map() {  # final_map LOG: "mAP M (DATASET)" of the last results table FastReID logged
    awk -F'|' '
        function trim(x) { gsub(/^ +| +$/, "", x); return x }
        /^\| Dataset/ { col = 0; for (i = 2; i < NF; i++) if (trim($i) == "mAP") col = i; row = NR + 2 }
        NR == row && col { found = "mAP " trim($col) " (" trim($2) ")" }
        END { if (found == "") exit 1; print found }' "$1"
}

train_run() {  # train_run NAME LIMIT PATTERN... -- COMMAND...: one training run, its output in
    # $OUT/NAME.log; it passes when it exits 0 within LIMIT seconds, ran on CUDA, and its log
    # holds every PATTERN (grep -E) and a results table. Prints PASS or FAIL, and the final mAP.
    local name=$1 limit=$2 log="$OUT/$1.log" patterns=() missing=() rc map
    shift 2
    while [ "$1" != "--" ]; do
        patterns+=("$1")
        shift
    done
    shift
    echo "-- $name: $*"
    FASTREID_DATASETS=$DATASETS timeout "$limit" "$@" >"$log" 2>&1
    rc=$?
    for pattern in "Running on cuda" "${patterns[@]}"; do
        grep -qE -- "$pattern" "$log" || missing+=("'$pattern'")
    done
    map=$(final_map "$log") || map="no results table"
    if [ "$rc" -eq 0 ] && [ ${#missing[@]} -eq 0 ] && [ "$map" != "no results table" ]; then
        echo "PASS $name: $map"
        return 0
    fi
    echo "FAIL $name: exit $rc, $map${missing[*]:+, its log lacks ${missing[*]}}; last lines:"
    tail -n 15 "$log" | sed 's/^/    /'
    return 1
}

amp_train() {  # the projects' tiny configs, one epoch each on CUDA with mixed precision
    local bad=0 fkd=$RUNS/amp-fkd-teacher speedkd=$RUNS/amp-speedkd-teacher run
    for run in amp-mdpr amp-fkd-teacher amp-fkd-student amp-speedkd-teacher amp-speedkd-student; do
        rm -rf "${RUNS:?}/$run"
    done
    train_run amp-mdpr 300 "$AMP_LINE" -- "$PYTHON" projects/MDPR/train_net.py \
        --config-file configs/MDPR/Synthetic/tiny.yml "${AMP_CUDA[@]}" "${ONE_EPOCH[@]}" \
        OUTPUT_DIR "$RUNS/amp-mdpr" || bad=$((bad + 1))
    if train_run amp-fkd-teacher 300 "$AMP_LINE" -- "$PYTHON" projects/FactorizedKD/train_net.py \
        --config-file configs/FactorizedKD/Synthetic/tiny_teacher.yml MODEL.FKD.VIEW Dn1 \
        "${AMP_CUDA[@]}" "${ONE_EPOCH[@]}" OUTPUT_DIR "$fkd"; then
        train_run amp-fkd-student 300 "$AMP_LINE" "loss_fkd_map" -- "$PYTHON" \
            projects/FactorizedKD/train_net.py \
            --config-file configs/FactorizedKD/Synthetic/tiny_student.yml \
            KD.MODEL_CONFIG "['$fkd/config.yaml']" KD.MODEL_WEIGHTS "['$fkd/model_final.pth']" \
            "${AMP_CUDA[@]}" "${ONE_EPOCH[@]}" OUTPUT_DIR "$RUNS/amp-fkd-student" \
            || bad=$((bad + 1))
    else
        echo "FAIL amp-fkd-student: not run, its teacher failed"
        bad=$((bad + 2))
    fi
    if train_run amp-speedkd-teacher 300 "$AMP_LINE" -- "$PYTHON" projects/SpeedKD/train_net.py \
        --config-file configs/Synthetic/tiny.yml "${AMP_CUDA[@]}" "${ONE_EPOCH[@]}" \
        OUTPUT_DIR "$speedkd"; then
        train_run amp-speedkd-student 300 "$AMP_LINE" "loss_kd_logits" -- "$PYTHON" \
            projects/SpeedKD/train_net.py --config-file configs/SpeedKD/Synthetic/tiny_kd.yml \
            KD.MODEL_WEIGHTS "('$speedkd/model_final.pth',)" "${AMP_CUDA[@]}" "${ONE_EPOCH[@]}" \
            OUTPUT_DIR "$RUNS/amp-speedkd-student" || bad=$((bad + 1))
    else
        echo "FAIL amp-speedkd-student: not run, its teacher failed"
        bad=$((bad + 2))
    fi
    echo "amp-train: $bad of 5 runs failed"
    [ "$bad" -eq 0 ]
}

nccl_one_gpu() {  # MDPR's tiny config under torchrun, one process: NCCL with world size 1
    rm -rf "${RUNS:?}/nccl-mdpr"
    train_run nccl-mdpr 300 "backend nccl, world size 1([^0-9]|$)" -- "$PYTHON" \
        -m torch.distributed.run --standalone --nproc_per_node 1 projects/MDPR/train_net.py \
        --config-file configs/MDPR/Synthetic/tiny.yml MODEL.DEVICE cuda "${ONE_EPOCH[@]}" \
        OUTPUT_DIR "$RUNS/nccl-mdpr"
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
    train-speed)
        step train-speed 420 env FASTREID_DATASETS="$DATASETS" "$PYTHON" \
            benchmarks/training_speed.py --device cuda --dataset SynthReIDTiny --batch 64 \
            --iters 10 --output-dir "${TMPDIR:-/tmp}/training_speed" ;;
    inference)
        step inference 600 env FASTREID_DATASETS="$DATASETS" "$PYTHON" \
            benchmarks/inference_speed.py --device cuda \
            --output-dir "${TMPDIR:-/tmp}/inference_speed" ;;
    amp-train) step amp-train 1500 amp_train ;;
    nccl) step nccl 300 nccl_one_gpu ;;
    rerank) step rerank 420 "$PYTHON" benchmarks/retrieval.py --sections rerank ;;
    all-tests)
        # shellcheck disable=SC2046  # "-n N" splits on purpose
        step all-tests 580 "$PYTHON" -m pytest -p no:cacheprovider -q $(xdist) ;;
    esac
done
echo "== $failed step(s) failed; logs in $OUT"
exit "$failed"
