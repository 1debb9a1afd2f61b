#!/usr/bin/env bash
# One short GPU check of the deformable-attention kernels, for the GPU machine described in
# ../shared/docs/environment-notes.md ("The GPU machine": torch 2.11, nvcc 13.0, no pycocotools,
# no hypothesis, no network). Three steps, each under its own timeout, about 5 minutes at most:
#
#   1. build   compile the CUDA extension (both kernels: cuda and cuda_v2) for sm_90      <=  90 s
#   2. tests   pytest -m gpu (both CUDA backends against the grid_sample reference)       <=  60 s
#   3. bench   bench/kernels.py on the paper's 800 x 1333 shapes, float32 and bfloat16,
#              torch / cuda / cuda_v2 (and deformops' Triton kernel when importable)     <= 130 s
#              (kernels.json is rewritten after every row: a timeout keeps what was measured)
#
# Usage, from anywhere:  bash bench/gpu_check.sh
# Results (logs, junit XML, kernels.json, summary.txt) go to $OUT when set, else bench/results/gpu_check.
# Optional wheels in .whl/ (git-ignored; e.g. deformops, hypothesis) are installed offline first.
# Exit status: 0 when every step passed, else 1 (the summary names the failed steps).
set -u
cd "$(dirname "$0")/.."

RESULTS=${OUT:-bench/results/gpu_check}
mkdir -p "$RESULTS"
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
# a fresh build folder per run: the check must compile today's sources, not reuse a cached .so
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$(mktemp -d /tmp/msdetr_ext.XXXXXX)}

if compgen -G ".whl/*.whl" > /dev/null; then
  SITE=/tmp/msdetr_gpu_site
  "$PY" -m pip install --quiet --no-index --no-deps --target "$SITE" .whl/*.whl && export PYTHONPATH="$PYTHONPATH:$SITE"
fi

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
} > "$RESULTS/environment.txt" 2>&1
cat "$RESULTS/environment.txt"
: > "$RESULTS/summary.txt"

failed=()
step() {  # step NAME SECONDS COMMAND...: run under a timeout, log to $RESULTS/NAME.log
  local name=$1 limit=$2
  shift 2
  local start rc
  start=$(date +%s)
  echo "== $name (timeout ${limit} s)"
  timeout --kill-after=10 "$limit" "$@" > "$RESULTS/$name.log" 2>&1
  rc=$?
  echo "$name: exit $rc after $(( $(date +%s) - start )) s" | tee -a "$RESULTS/summary.txt"
  tail -n 30 "$RESULTS/$name.log"
  [ "$rc" -eq 0 ] || failed+=("$name")
}

step build 90 "$PY" -c "
import time, torch
from msdetr_lite import ops
start = time.perf_counter()
names = ops.available_backends('cuda')
assert 'cuda' in names and 'cuda_v2' in names, ops._errors
print('built in', round(time.perf_counter() - start, 1), 's; backends on', torch.cuda.get_device_name(), names)
"

# only the files with GPU tests: collecting the others would need pycocotools
step tests 60 "$PY" -m pytest -m gpu -q -p no:cacheprovider --junitxml "$RESULTS/gpu_tests.xml" \
  $(grep -l "mark.gpu" tests/test_*.py)

step bench 130 "$PY" bench/kernels.py --devices cuda --shapes paper --dtypes float32 bfloat16 \
  --repeats 10 --warmup 3 --out "$RESULTS/kernels.json"

if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED: ${failed[*]}" | tee -a "$RESULTS/summary.txt"
  exit 1
fi
echo "all steps passed" | tee -a "$RESULTS/summary.txt"
