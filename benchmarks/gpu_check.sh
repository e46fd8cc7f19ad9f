#!/usr/bin/env bash
# The GPU check sequence of docs/triton-backend.md, as one script for a lent or a user's GPU.
#
#   bash benchmarks/gpu_check.sh [OUTDIR]      # from the repository root; default OUTDIR gpu-check
#
# Each step has its own time limit (T_FP32, T_SELF, T_TEST, T_BF16, T_SAN, T_BENCH seconds; 0 skips it) and its log in OUTDIR/<step>.txt, so a slow step costs only
# itself. Steps: device and versions; bench_triton fp32 (with the copy bandwidth); the full
# self-check on CUDA; tests/test_triton_cuda.py; bench_triton bf16; compute-sanitizer's memcheck
# on the quick triton self-check; the bench presets, whose fastest optimlab backends go to
# OUTDIR/defaults.json (a copy of optimlab/_defaults.json; written only if the quick self-check
# passes).
set -u
out=${1:-${OUT:-gpu-check}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
py=${PYTHON:-python3}

step() {  # step NAME SECONDS COMMAND...
    local name=$1 secs=$2; shift 2
    [ "$secs" = 0 ] && { echo "== $name: skipped"; return; }
    echo "== $name ($(date -u +%H:%M:%S), limit ${secs}s): $*"
    timeout "$secs" "$@" >"$out/$name.txt" 2>&1
    local rc=$?
    tail -n 40 "$out/$name.txt"
    echo "== $name: exit $rc"
}

{ nvidia-smi -L; $py -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"; } 2>&1
step bench_triton_fp32 ${T_FP32:-150} $py benchmarks/bench_triton.py --no-compile
step selfcheck ${T_SELF:-200} $py -m optimlab.selfcheck --device cuda
step test_triton_cuda ${T_TEST:-100} $py -m pytest -q -p no:cacheprovider tests/test_triton_cuda.py -k "not test_selfcheck_triton_on_cuda"
step bench_triton_bf16 ${T_BF16:-100} $py benchmarks/bench_triton.py --no-compile --dtype bfloat16
step sanitizer ${T_SAN:-70} compute-sanitizer --tool memcheck --error-exitcode 1 \
    $py -m optimlab.selfcheck --device cuda --quick --backends triton
# the measured default: optimlab's two GPU backends on a real model and on many small tensors;
# merged into a copy of the committed table (its CUDA entry applies to this GPU name only)
cp optimlab/_defaults.json "$out/defaults.json"
step bench ${T_BENCH:-150} $py -m optimlab.bench --device cuda --presets gpt2-small,many-small \
    --dtypes float32,bfloat16 --warmup 1 --rounds 3 --min-time 0.05 \
    --backends optimlab-foreach,optimlab-triton --out /tmp/optimlab-bench --no-plot \
    --update-defaults "$out/defaults.json"
cp /tmp/optimlab-bench/results.json "$out/bench-results.json" 2>/dev/null
exit 0
