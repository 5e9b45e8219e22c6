#!/usr/bin/env bash
# Issue 5's acceptance on a CUDA host with Nsight Compute: calibrate this GPU, then
# modelled vs measured DRAM bytes and time for the generated attention and scan kernels and
# the eager matmul, softmax and elementwise ops, the cost model's GPU tests, then `report
# --measure` on one example. The tables go to $OUT (default ./out); paste cost_table.txt
# into docs/cost-model.md with its date.
#
#   DEVICE=h100 EXAMPLE=llama SEQ_LEN=4096 bash scripts/measure_cost.sh
#
# ncu needs permission to read the counters (root, or the driver option
# NVreg_RestrictProfilingToAdminUsers=0); without it the byte columns say why and the
# time columns are still measured.
set -uo pipefail
out=${OUT:-out}
mkdir -p "$out"
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >/dev/null || exit 1
export PYTHONUNBUFFERED=1
{
  date -u +"%Y-%m-%d %H:%M UTC"
  python3 -c "import torch, triton; print(f'torch {torch.__version__}, triton {triton.__version__}, {torch.cuda.get_device_name()}')"
  if command -v ncu >/dev/null; then ncu --version | tail -1; else echo "ncu: not on PATH"; fi
} | tee "$out/versions.txt"

# 1. This machine's own ceilings, as a profile the tables below price against: the copy
#    bandwidth, matmul rates, the memory latency of a row-per-CTA softmax and the selective
#    scan's efficiency, each measured at a shape of its own (ioaware/calibrate.py).
profiles="$out/profiles"
priced_on="${DEVICE:-h100}"
if [ -n "${CALIBRATE-1}" ]; then
  if IOAWARE_PROFILE_DIR="$profiles" timeout "${CALIBRATE_TIMEOUT:-300}" \
      ioaware calibrate --name "${CALIBRATED_NAME:-this-gpu}" 2>&1 | tee "$out/calibrate.txt"; then
    priced_on="${CALIBRATED_NAME:-this-gpu}"
  else
    echo "calibrate failed: pricing against the built-in ${DEVICE:-h100} profile"
  fi
fi
export IOAWARE_PROFILE_DIR="$profiles"

# 2. Single ops: the acceptance table (bytes within ±15 %, time within 2x), priced against
#    the calibrated profile, then against the built-in one for comparison (no ncu rerun).
timeout "${CASES_TIMEOUT:-900}" python3 -m ioaware.measure --cases --device "$priced_on" \
  2>&1 | tee "$out/cost_table.txt"
if [ "$priced_on" != "${DEVICE:-h100}" ]; then
  timeout "${CASES_TIMEOUT:-900}" python3 -m ioaware.measure --cases --no-counters \
    --device "${DEVICE:-h100}" 2>&1 | tee "$out/cost_table_builtin.txt"
fi

# 3. The GPU tests of the cost model (each ratio printed with -s).
timeout "${GPU_TEST_TIMEOUT:-600}" python3 -m pytest -q -s -m gpu tests/gpu/test_cost_gpu.py \
  2>&1 | tee "$out/cost_gpu_tests.txt"

# 4. One example end to end: the modelled report, then measured beside it.
timeout "${REPORT_TIMEOUT:-600}" ioaware report "${EXAMPLE:-llama}" --device "$priced_on" \
  --dtype "${DTYPE:-bf16}" --batch "${BATCH:-4}" --seq-len "${SEQ_LEN:-4096}" \
  --json "$out/report.json" --plot "$out/roofline.png" --measure 2>&1 | tee "$out/report.txt"
